"""Given-name equivalence (nicknames, diminutives) loaded from ``data/nicknames.csv``.

Pure module: no I/O beyond reading the packaged data file once.

A name may belong to several groups ("chris" is Christopher, Christian and
Christina); two names are nickname-equivalent when they share a group.  Each group
is identified by its formal (first) name, so ``canonical_forms("jon")`` is
``{"john", "jonathan"}`` and ``canonical_forms("jonathan")`` is ``{"jonathan"}``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).with_name("data") / "nicknames.csv"


@lru_cache(maxsize=1)
def _groups() -> dict[str, frozenset[str]]:
    """name -> frozenset of group ids (formal names) it belongs to."""
    index: dict[str, set[str]] = {}
    for raw in DATA_FILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        names = [n.strip().lower() for n in line.split(",") if n.strip()]
        formal = names[0]
        for name in names:
            index.setdefault(name, set()).add(formal)
    return {name: frozenset(groups) for name, groups in index.items()}


def canonical_forms(name: str) -> frozenset[str]:
    """Group ids for ``name`` (lower-case, normalised); the name itself when unknown."""
    return _groups().get(name, frozenset((name,)))


def are_nicknames(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are different spellings of one given name via the table."""
    if not a or not b:
        return False
    return bool(canonical_forms(a) & canonical_forms(b))
