"""Human-readable numbers shared by the CLI and the UI."""

from __future__ import annotations


def size(n: int | float | None) -> str:
    """Bytes as B, KiB, MiB, GiB or TiB."""
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def params(n: int | None) -> str:
    """A parameter count as 135.0M, 7.2B..."""
    if not n:
        return "—"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)
