"""The order cell-type labels are shown in: numbers as numbers (1, 2, 10), then names.

Many public datasets label cells 0..k; sorted as text they would read 0, 1, 10, 11, 2.
"""

from __future__ import annotations

from collections.abc import Iterable


def label_key(label: str) -> tuple:
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def ordered(labels: Iterable[str]) -> list[str]:
    """Distinct labels, numeric ones by value first, the rest alphabetically."""
    return sorted(set(labels), key=label_key)
