"""``facenext verify``: embed with a run's model, then evaluate on dev and write the test submission."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..combined import format_setting, weights_id, write_run_submission
from ..config import gallery_kind
from ..data.layout import find_layout
from ..io import write_json
from ..limits import runs_record
from .choice import ScoringSetting
from .embeddings import EmbeddingCache, open_run, weights_fingerprint
from .identity import verify_identities
from .pairs import verify_pairs

logger = logging.getLogger(__name__)


def verify(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    tta: str | None = None,
    weights: str = "best",
    data_root: str | None = None,
    cache: bool = True,
    fmt: str | None = None,
    expand_k: int | str | None = None,
    rerank: int | str | None = None,
    gallery: str | None = None,
) -> dict[str, Any]:
    """Score the dev verification set and write the test submission, for whichever family the term uses.

    ``cache=False`` recomputes every embedding (and refreshes the cache files). For the combined task (F26) the
    pair scores are saved and, once ``predict`` has saved the test logits in the same folder, the submission with
    both parts is written in the format ``fmt`` (default: the sample submission or predict.submission_format).
    ``expand_k`` and ``rerank``: query expansion and k-reciprocal re-ranking (``verification.similarity``), a number
    or ``auto`` (chosen on dev, ``verification.choice``); default: the run's verify.expand and verify.rerank.
    ``gallery``: identity matching against the known photos, or with unknown_dev's labelled photos too (default:
    the run's verify.gallery).
    """
    run, facts = open_run(run_dir, weights)
    tta = tta or facts.tta
    out = Path(out_dir) if out_dir else Path("submissions") / run.name
    layout = find_layout(data_root or facts.data_root, facts.term)
    embeddings = EmbeddingCache(run, tta, out, weights_fingerprint(facts, tta), use_cache=cache)
    setting = ScoringSetting(facts.expand if expand_k is None else expand_k, facts.rerank if rerank is None else rerank)
    # the pair scores record the weights: F26's file takes them only beside logits of the same weights
    verifiers = {
        "identity": lambda: verify_identities(embeddings, layout, out, setting, gallery_kind(gallery or facts.gallery)),
        "pairs": lambda: verify_pairs(embeddings, layout, out, setting, weights_id(run.path, weights)),
    }
    result, choice = verifiers[layout.family.verifier]()
    if layout.family.one_file:
        fmt, source = format_setting(fmt, run.config.predict.submission_format, run.folder.config_file)
        combined = write_run_submission(out, layout, fmt, len(run.classes), run.path, "verify", source)
        if combined is not None:
            result["submission"] = str(combined)
    elif "submission" in result:  # the runs behind the file, for `submit` to count against the parameter limit
        record = {**runs_record([run.path]), "term": layout.term.key}
        write_json(Path(result["submission"]).with_suffix(".json"), record)
    summary = {
        "run": str(run.path),
        "term": layout.term.key,
        "tta": tta,
        "expand": choice.scoring.expand,
        "rerank": choice.scoring.rerank,
        "scoring": choice.summary(),
        **result,
    }
    summary["embedded_images"] = embeddings.embedded
    write_json(out / "verify.json", summary)
    return summary
