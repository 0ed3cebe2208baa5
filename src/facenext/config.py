"""Typed configuration: YAML files plus ``key.path=value`` overrides, with unknown keys and wrong types rejected."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

# Mean and std of the F23 training faces, as computed by students of the course.
FACE_MEAN = (0.5103, 0.4014, 0.3509)
FACE_STD = (0.2708, 0.2363, 0.2226)


@dataclass
class DataConfig:
    root: str = "data/sample"  # data folder holding the competition (or the competition folder itself)
    term: str = "auto"  # competition term (f23, f24, ...; `facenext terms` lists them) or auto-detect from the layout
    terms_file: str | None = None  # YAML file of your own terms (the next term; README "A new term")
    image_size: int = 112  # training and inference resolution
    augment: str = "seed"  # augmentation preset: seed, randaug, light, wild (in-the-wild photos) or none
    crop_scale: float = 0.6  # the wild preset's smallest random resized crop, as a share of the image's area
    # Probability of erasing one box (5-10% of the image) with the mean colour; unset: the preset's (0.3 for seed and
    # randaug, none for light and none)
    erase: float | None = None
    # Where the seed and light presets' colour, warp and erasing run: cpu (the workers), gpu (batched on the training
    # device; workers only decode) or auto (gpu on CUDA when augmenting is at least a fifth of a worker's time).
    augment_device: str = "auto"
    mean: tuple[float, float, float] = FACE_MEAN
    std: tuple[float, float, float] = FACE_STD
    num_workers: int = 4  # DataLoader worker processes; 0 loads in the main process
    cache: bool = False  # decode each split once into a memory-mapped uint8 array on disk (few-core machines)
    cache_dir: str | None = None  # where the decoded cache lives (default $FACENEXT_CACHE_DIR or ~/.cache/facenext)
    # Train on the dev split's labelled photos too: the final run, once the recipe was chosen on dev (few photos a
    # person: 15 train and about 5 dev each on real faces). Dev accuracy then counts photos the model trained on.
    train_on_dev: bool = False


@dataclass
class ModelConfig:
    name: str = "lean"  # a ConvNeXt variant (lean, tiny, small, base, lean_nano, ...) or timm:<name>
    dims: list[int] | None = None  # override the variant's stage widths
    depths: list[int] | None = None  # override the variant's stage depths
    drop_path_rate: float = 0.1  # stochastic depth of the last block (linear from 0)
    drop_rate: float = 0.0  # dropout before the classifier
    # The verification embedding, which the classifier takes as input: the pooled features (both null/none), a
    # projection to embed_dim (Linear + BatchNorm1d), or neck: bn, the pooled features through a BatchNorm1d with a
    # frozen zero bias (BNNeck, Luo et al. 2019). The face head is the same on timm:<name> backbones.
    embed_dim: int | None = None
    neck: str = "none"
    # How the last feature map becomes one vector: avg (global average) or gdc (a learnt weight per channel and
    # position, MobileFaceNet's global depthwise convolution: a centred face's middle and corners need not count alike)
    pool: str = "avg"
    init_std: float = 0.02  # truncated-normal init std (the seed's notebook used 0.2)
    classifier: str | None = None  # linear or cosine; null: cosine under a margin loss (train.loss), else linear
    # Logit scale of the cosine classifier; null: 64 from 10,575 classes up, less for fewer (facenext.losses)
    cosine_scale: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 30  # with train.budget: the most epochs the plan may use
    batch_size: int = 256
    lr: float = 4e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    label_smoothing: float | None = None  # null: 0.1 under ce; margin losses refuse any other value than 0
    loss: str = "ce"  # ce, arcface or cosface (margin losses: cosine classifier, no mixup/cutmix or smoothing)
    # arcface (radians) or cosface margin; null: the paper's 0.5 / 0.35, less when the embedding is small for the
    # class count (facenext.losses.default_margin)
    margin: float | None = None
    schedule: str = "cosine"  # cosine (with warm-up, per iteration) or multistep (the seed's)
    warmup_epochs: float = 1.0
    # multistep: lr is multiplied by gamma at the start of each of these epochs (counted from the start of training,
    # warm-up included; 10 = after ten epochs), as torch's MultiStepLR stepped once per epoch does
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.6
    mixup: float = 0.0  # mixup alpha (0: off); with mixup or cutmix the loss takes soft targets
    cutmix: float = 0.0  # cutmix alpha (0: off)
    mix_prob: float = 1.0  # probability of mixing a batch
    ema: bool = False  # keep an exponential moving average of the weights, evaluated beside them
    ema_decay: float = 0.9998
    # Ramp the decay up as timm's ModelEmaV3 does, 1 - (1 + step)^(-2/3), capped at ema_decay: useful EMA weights in
    # short runs too, but the cap is reached late (0.999 after 31k steps, 0.9998 after 350k), so most runs end
    # below ema_decay; summary.json records the decay reached (ema_decay_reached). false: ema_decay from step 1.
    ema_warmup: bool = True
    accum_steps: int = 1  # gradient accumulation: optimizer steps every N batches
    clip_grad: float | None = None  # max gradient norm
    # Mixed precision on CUDA, chosen for the card in use: bf16 autocast where it is native (compute capability 8.0
    # and up: A100, L4, H100), fp16 with a GradScaler on older cards (P100, V100, T4). fp32 off CUDA.
    amp: bool = True
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (worth it on GPUs for long runs)
    sync_bn: bool = False  # SyncBatchNorm across processes under torchrun
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms (tests, resume checks)
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    keep_top_k: int = 3  # epoch checkpoints kept (best dev accuracy) for `facenext average`
    recovery_minutes: float = 20.0  # mid-epoch recovery checkpoint interval (0: only at epoch ends)
    time_limit: float | None = None  # hours; stop cleanly with a checkpoint after this long (Kaggle: 11.5 by default)
    # Training time to plan the LR schedule for: "11h", "90m", "5min", "300s" or a number of hours (null: off). After
    # each epoch the run is re-planned to the most epochs whose schedule ends inside the budget, train.epochs at most:
    # a budget is a ceiling, so a config that fits runs as written (raise train.epochs to fill a long budget). Time
    # spent before a resume counts. time_limit stays the hard stop; the budget only sets the schedule's length.
    budget: str | float | None = None
    # Stop after this many optimizer steps with a non-finite loss in a row, or once this many steps of an epoch are
    # skipped (non-finite losses and fp16 overflows) and they are more than a quarter of its steps so far
    max_bad_steps: int = 20
    init_from: str | None = None  # start from another run's weights (e.g. fine-tuning), classifier re-made if needed
    log_to: list[str] = field(default_factory=list)  # tensorboard and/or wandb, when installed
    plot: bool = True  # write curves.png at the end
    log_every: int = 50  # iterations between progress lines when not on a terminal (0: none)

    def __post_init__(self) -> None:
        # Every way a config is made (a file, overrides, a checkpoint's copy) refuses a budget that is no duration.
        budget_seconds(self.budget)


# The test-time augmentation specs facenext.inference.parse_tta reads (predict.tta, verify.tta, --tta) and the ways
# its views merge: here, free of torch, so that the CLI's help names them without importing it.
TTA_HELP = (
    "none, flip, five@S / ten@S (crops of S x the image), scales@S1,S2,... or a combination with +, e.g. flip+five@0.9"
)
MERGES = ("prob", "logit", "geo")
# verify.gallery: the known photos alone, or with unknown_dev's labelled photos (facenext.verification.identity)
KNOWN_ONLY, WITH_DEV = "known", "known+dev"
GALLERIES = (KNOWN_ONLY, WITH_DEV)


@dataclass
class PredictConfig:
    tta: str = "flip"  # a TTA spec: none, flip, five@0.9, ten@0.9, scales@..., or a combination with +
    batch_size: int = 256
    # F26's combined file: cls+ver-rows or sample (default: the download's *sample_submission*.csv, else refused)
    submission_format: str | None = None


# verify.expand / verify.rerank: chosen on dev among a few candidates, kept only where the choice holds out of bag
AUTO = "auto"


def neighbours(value: int | str, flag: str) -> int | None:
    """A verify.expand or verify.rerank setting: its number of neighbours, or None for ``auto``."""
    if value == AUTO:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"--{flag} {value} (verify.{flag}): give a number of neighbours (0: off) or {AUTO}")
    return value


def gallery_kind(value: str) -> str:
    """A verify.gallery setting, checked."""
    if value not in GALLERIES:
        raise UserError(f"--gallery {value} (verify.gallery): give {' or '.join(GALLERIES)}")
    return value


@dataclass
class VerifyConfig:
    tta: str = "flip"
    # Query expansion: each verification embedding averaged with its k nearest images of the same split (and the
    # known gallery), weighted by similarity^3 (facenext.verification.expansion); 0: off. Uses only the unlabelled
    # test images. auto: chosen on dev, or off where dev cannot tell it from noise (facenext.verification.choice).
    expand: int | str = AUTO
    # k-reciprocal re-ranking (after any expansion): distances from the neighbours two images share
    # (facenext.verification.reranking), k1 about the images each person has in a split; 0: off; auto as above.
    rerank: int | str = AUTO
    # Identity matching's gallery (F22-S24): the known photos alone, or with unknown_dev's labelled photos too: each
    # known person is the mean of all their photos, and the photos labelled no-match become no-match prototypes.
    # Dev is then scored with each photo left out of the gallery, so the threshold is still tuned on photos the
    # gallery does not hold (facenext.verification.identity). Scored by plain cosine: expand and rerank then apply
    # to pairs only. Real faces: known/unknown 0.46 against 0.23 (benchmarks/recipes.md, issue 26).
    gallery: str = WITH_DEV

    def __post_init__(self) -> None:
        neighbours(self.expand, "expand"), neighbours(self.rerank, "rerank")
        gallery_kind(self.gallery)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, as YAML and ``torch.load(weights_only=True)`` accept them."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a dataclass field's type; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {where} must be a list, got {value!r}")
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        if origin is tuple and len(args) > 1 and args[-1] is not Ellipsis and len(items) != len(args):
            raise UserError(f"config key {where} must have {len(args)} items, got {len(items)}")
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads 3e-3 (no dot) as a string; users mean the number.
        try:
            return float(value)
        except ValueError:
            pass
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation in (str, bool) and isinstance(value, annotation):
        return value
    raise UserError(f"config key {where} must be {getattr(annotation, '__name__', annotation)}, got {value!r}")


def coerce_value(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against a type annotation (lists become tuples where a tuple is expected); a wrong value is
    a UserError naming ``where``."""
    return _coerce(value, annotation, where)


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '<top>'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown config key {prefix}{unknown[0]}: valid keys here are {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def _apply_override(tree: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise UserError(f"override {override!r} must look like key.path=value, e.g. train.epochs=3")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {override!r}: {part} is not a section")
    # YAML parsing gives numbers, booleans, null and lists the same meaning they have in config files.
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def config_from_dict(values: dict[str, Any], overrides: typing.Iterable[str] = ()) -> Config:
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in (values or {}).items()}
    for override in overrides:
        _apply_override(tree, override)
    config = _build(Config, tree, "")
    if config.data.terms_file:
        # Every stage that reads a config (train, predict and verify through the run's config) then knows its term.
        from .competitions.terms import add_terms_file

        add_terms_file(config.data.terms_file)
    return config


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?)?")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def budget_seconds(value: str | float | None) -> float | None:
    """``train.budget`` in seconds (None when off); a bare number is hours, as in ``train.time_limit``."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) * 3600
    else:
        match = _DURATION.fullmatch(str(value).strip().lower())
        seconds = float(match[1]) * _UNIT_SECONDS[(match[2] or "h")[0]] if match else 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise UserError(f"train.budget={value!r} is not a duration: write e.g. 11h, 90m, 5min or 300s (hours if bare)")
    return seconds


# Settings that say where and how a run trains, not what it learns: a resume may change them (the data moved to
# another machine, another GPU or worker count, another time limit). train.epochs and train.budget change only the
# planned length. predict and verify are read after training. Every other setting changes the result.
OPERATIONAL_SETTINGS = frozenset(
    {
        "data.root", "data.terms_file", "data.num_workers", "data.cache", "data.cache_dir",
        "train.epochs", "train.budget", "train.device", "train.time_limit", "train.log_every",
        "train.recovery_minutes", "train.max_bad_steps", "train.keep_top_k", "train.log_to", "train.plot",
    }
)  # fmt: skip
OPERATIONAL_SECTIONS = ("predict", "verify")


@dataclass(frozen=True)
class SettingChange:
    key: str  # section.key
    saved: Any
    current: Any

    @property
    def operational(self) -> bool:
        return self.key in OPERATIONAL_SETTINGS or self.key.split(".")[0] in OPERATIONAL_SECTIONS

    def __str__(self) -> str:
        return f"{self.key} {self.saved} -> {self.current}"


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[SettingChange]:
    """The settings whose values differ between two ``Config.to_dict()`` trees (a key missing from one side, as in a
    config written by another version, differs too), in the current config's order."""
    missing = object()
    changes = []
    for section in dict.fromkeys([*current, *saved]):
        before, after = saved.get(section), current.get(section)
        if not isinstance(before, dict) or not isinstance(after, dict):
            if before != after:
                changes.append(SettingChange(section, before, after))
            continue
        for key in dict.fromkeys([*after, *before]):
            old, new = before.get(key, missing), after.get(key, missing)
            if old != new:
                changes.append(SettingChange(f"{section}.{key}", *(None if v is missing else v for v in (old, new))))
    return changes


def load_config(path: str | Path, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML config and apply ``key.path=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found: pass one of the files in configs/")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    return config_from_dict(values, overrides)
