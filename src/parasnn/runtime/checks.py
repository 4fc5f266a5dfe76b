"""Checks of option values shared by every module: one wording for one kind of mistake."""
from __future__ import annotations

__all__ = ["require_positive_int"]


def require_positive_int(value, name: str) -> int:
    """``value`` if it is an integer ≥ 1 (``bool`` is not one); otherwise a :class:`ValueError`
    ``"<name> must be an integer >= 1, got <value>"`` that names the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value
