"""The HW2P2 competitions: terms as data (``terms``), families as objects (``families``)."""

from .families import (
    FAMILIES,
    KINDS,
    Combined,
    Family,
    IdentityMatching,
    Layout,
    PairScoring,
    combined_score,
    family_of,
)
from .terms import DEFAULT_TERM, TERMS, Term, get_term, numbered_name, term_of_slug

__all__ = [
    "DEFAULT_TERM",
    "FAMILIES",
    "KINDS",
    "TERMS",
    "Combined",
    "Family",
    "IdentityMatching",
    "Layout",
    "PairScoring",
    "Term",
    "combined_score",
    "family_of",
    "get_term",
    "numbered_name",
    "term_of_slug",
]
