"""The paper-style results table and the mean-curve plot."""
from __future__ import annotations

import math
from pathlib import Path
from collections.abc import Iterable

__all__ = ["COLUMNS", "summarize", "format_table", "plot_curves", "curves_title", "duration_text"]

#: (column, result key, direction arrow)
COLUMNS = [("SI", "SI", "↑"), ("SD", "SD", "↓"), ("CI", "CI", "↑"), ("CD", "CD", "↓"), ("SAD", "SAD", "↓"),
           ("SIC", "SIC", "↑"), ("CAD", "CAD", "↓"), ("CIC", "CIC", "↑"), ("MS", "MS", "↓")]


def summarize(records: Iterable[dict], methods: list[str]) -> dict[str, dict[str, float | None]]:
    """Mean of each metric over pairs, per method (``None`` where the metric does not apply)."""
    by_method: dict[str, list[dict]] = {m: [] for m in methods}
    for record in records:
        by_method.setdefault(record["method"], []).append(record)
    summary = {}
    for method, rows in by_method.items():
        summary[method] = {}
        for _, key, _ in COLUMNS:
            values = [r["metrics"].get(key) for r in rows if r["metrics"].get(key) is not None]
            summary[method][key] = sum(values) / len(values) if values else None
        summary[method]["pairs"] = len(rows)
    return summary


def format_table(summary: dict[str, dict[str, float | None]], title: str = "", caption: str = "") -> str:
    """Markdown table: one row per method, NA where a metric does not apply; ``caption`` goes below it."""
    header = "| method | " + " | ".join(f"{c}{arrow}" for c, _, arrow in COLUMNS) + " | pairs |"
    lines = ([f"{title}", ""] if title else []) + [header, "|---" * (len(COLUMNS) + 2) + "|"]
    for method, values in summary.items():
        cells = []
        for _, key, _ in COLUMNS:
            v = values.get(key)
            cells.append("NA" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {values.get('pairs', 0)} |")
    if caption:
        lines += ["", f"_{caption}_"]
    return "\n".join(lines) + "\n"


def curves_title(conditional: Iterable[str] = ()) -> str:
    """The title of ``curves.png``: what the curves are and why deletion ends at cosine 1.0.

    Args:
        conditional: methods drawn with their conditional curves (one-map methods have no simultaneous ones).

    Returns:
        Two lines of title text.

    Examples:
        >>> "simultaneous" in curves_title(), "conditional" in curves_title(["grad-cam"])
        (True, True)
    """
    conditional = list(conditional)
    title = ("mean simultaneous curves: both images perturbed together, each by its own map\n"
             "deletion ends at cosine 1.0: with every pixel deleted both images are the same fill image")
    if conditional:
        title += f"\n(conditional curves, one image perturbed, for {', '.join(conditional)})"
    return title


def plot_curves(records: Iterable[dict], methods: list[str], path: Path):
    """Mean simultaneous insertion and deletion curves per method (conditional where only those exist).

    Saves the figure to ``path`` and returns it (a ``matplotlib.figure.Figure``), titled by :func:`curves_title`.
    """
    # object-oriented: no pyplot, no backend switch (safe in a Jupyter kernel)
    from matplotlib.figure import Figure

    records = list(records)
    fig = Figure(figsize=(11, 4.6))
    axes = fig.subplots(1, 2)
    conditional: set[str] = set()
    for ax, kind in zip(axes, ("insertion", "deletion")):
        for method in methods:
            rows = [r for r in records if r["method"] == method]
            curves = [c for c in (r["curves"].get(f"S-{kind}") for r in rows) if c]
            if not curves:  # a one-map method: only conditional curves
                curves = [c for c in (r["curves"].get(f"C-{kind}") for r in rows) if c]
                conditional.update([method] if curves else [])
            if not curves:
                continue
            length = min(len(c) for c in curves)
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(length)]
            ax.plot([i / (length - 1) for i in range(length)], mean, label=method)
        ax.set_title(f"mean {kind} curve")
        ax.set_xlabel("fraction of pixels " + ("inserted" if kind == "insertion" else "deleted"))
        ax.set_ylabel("cosine similarity")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(curves_title(m for m in methods if m in conditional), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def duration_text(seconds: float) -> str:
    """A duration for a progress line: seconds below 90 s, minutes below 90 min, else hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
