"""Face verification from L2-normalised embeddings, by cosine similarity.

``metrics`` (one threshold sweep, EER, AUC, TAR@FAR, k-fold accuracy), ``embeddings`` (and their per-run cache),
``identity`` (known/unknown identity matching), ``pairs`` (pair scoring), ``similarity`` (how a split is scored:
cosine, after ``expansion`` and ``reranking`` where asked), ``plots``; ``verify`` runs the term's family: evaluate on
dev, write the test submission, and ``verify.json``.
"""

from .command import verify

__all__ = ["verify"]
