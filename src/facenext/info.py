"""Model summary for a config: parameters, multiply-accumulates, embedding size and competition limits."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from .competitions import DEFAULT_TERM, TERMS, Term, get_term
from .config import Config
from .errors import UserError
from .limits import limit_margin

logger = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    name: str
    num_classes: int
    classes_from: str  # where num_classes came from
    parameters: int
    image_size: int
    macs: int  # multiply-accumulates of one image at image_size
    embed_dim: int
    limit: str = ""  # the margin to the term's parameter limit
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"model: {self.name}",
            f"classes: {self.num_classes} ({self.classes_from})",
            f"parameters: {self.parameters:,} ({self.parameters / 1e6:.2f} M)",
            f"MACs at {self.image_size} px: {self.macs:,} ({self.macs / 1e9:.3f} G)",
            f"embedding size: {self.embed_dim}",
            *([self.limit] if self.limit else []),
            *self.warnings,
        ]


def resolve_num_classes(config: Config) -> tuple[int, str]:
    """The identities of the competition under data.root, else the term's class count (F23 for ``auto``)."""
    from .data.layout import AmbiguousData, find_layout, list_classes

    try:
        layout = find_layout(config.data.root, config.data.term)
    except AmbiguousData:
        raise  # two competitions under data.root: counting either one's classes could mislead
    except UserError:
        layout = None
    if layout is not None:
        classes = list_classes(layout.train)
        if classes:
            where = "class ids in" if (layout.train / "labels.txt").is_file() else "identity folders in"
            return len(classes), f"{where} {layout.train}"
    key = DEFAULT_TERM if config.data.term == "auto" else config.data.term
    try:
        term = get_term(key)
    except KeyError as e:
        raise UserError(f"{e.args[0]} (config key data.term)") from None
    return term.num_classes, f"{term.key.upper()} {term.title} competition"


def config_term(config: Config) -> Term:
    """The config's term: data.term, else the one found under data.root, else F23."""
    from .data.layout import find_layout

    if config.data.term not in ("auto", ""):
        try:
            return get_term(config.data.term)
        except KeyError as e:
            raise UserError(f"{e.args[0]} (config key data.term)") from None
    try:
        return find_layout(config.data.root).term
    except UserError:
        return get_term(DEFAULT_TERM)


def limit_warnings(parameters: int) -> list[str]:
    """One line per competition whose parameter limit ``parameters`` exceeds."""
    limits = [(t.key, t.title, t.param_limit) for t in TERMS.values() if t.param_limit is not None]
    return [
        f"warning: {parameters / 1e6:.2f} M parameters exceed the {key.upper()} ({title}) limit of {limit / 1e6:g} M"
        for key, title, limit in limits
        if parameters > limit
    ]


def count_macs(model: torch.nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass on a single RGB image (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_info(config: Config) -> ModelInfo:
    """Build the config's model on the CPU and describe it."""
    from .models.factory import count_parameters, model_from_config

    num_classes, source = resolve_num_classes(config)
    term = config_term(config)
    model = model_from_config(config, num_classes)
    parameters = count_parameters(model)
    return ModelInfo(
        name=config.model.name,
        num_classes=num_classes,
        classes_from=source,
        parameters=parameters,
        image_size=config.data.image_size,
        macs=count_macs(model, config.data.image_size),
        embed_dim=int(getattr(model, "embed_dim", 0)),
        limit=f"limit ({term.key.upper()}): {limit_margin(parameters, term)}",
        warnings=limit_warnings(parameters),
    )


def print_info(config: Config) -> ModelInfo:
    info = model_info(config)
    logger.info("\n".join(info.lines()))
    return info
