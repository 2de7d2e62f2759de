"""The pruning run's report: JSON for machines, a table for people, and the plot that judges the levels.

A pruned level earns its place only if it beats the obvious alternative, the dense model at a smaller input
size. The table lists both, and the plot draws the levels' accuracy against latency over the dense model's
resolution front, all measured on the same split in one run. The plot is drawn on a bare matplotlib Figure
(Agg canvas, bundled DejaVu font), so no display, pyplot state or font download is ever involved.
"""

from __future__ import annotations

import io
import json
from itertools import pairwise
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from revperception.io import atomic_write_bytes, atomic_write_text

_HEADERS = ("model", "input px", "params", "GFLOPs", "latency ms", "mAP50", "mAP50-95", "vs front")


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """The report as JSON (sorted keys, so reports of two runs diff cleanly), written atomically."""
    atomic_write_text(path, json.dumps(report, sort_keys=True, indent=2) + "\n")


def front_map50_at(report: dict[str, Any], latency_ms: float) -> float | None:
    """The dense model's mAP50 at `latency_ms` on its resolution front: linear between the two measured sizes
    around it (front points faster than a slower one but less accurate are kept: the front is what was measured);
    None outside the measured latencies."""
    points = sorted((p["latency_ms"], p["map50"]) for p in report["front"].values() if p.get("latency_ms"))
    for (t0, m0), (t1, m1) in pairwise(points):
        if t0 <= latency_ms <= t1:
            return m0 if t1 == t0 else m0 + (m1 - m0) * (latency_ms - t0) / (t1 - t0)
    return None


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, level in report["levels"].items():
        front = front_map50_at(report, level["latency_ms"]) if level.get("latency_ms") else None
        gap = "-" if front is None or level.get("map50") is None else f"{level['map50'] - front:+.3f}"
        rows.append([f"level {name}", *_cells(level), gap])
    for point in report["front"].values():
        rows.append(["dense", *_cells(point), ""])
    return rows


def _cells(entry: dict[str, Any]) -> list[str]:
    def fmt(key: str, spec: str, scale: float | None = None) -> str:
        value = entry.get(key)
        return "-" if value is None else format(value if scale is None else value * scale, spec)

    return [str(entry.get("imgsz", "-")), fmt("params", ","), fmt("flops", ".2f", 1e-9), fmt("latency_ms", ".1f"),
            fmt("map50", ".3f"), fmt("map50_95", ".3f")]


def format_table(report: dict[str, Any]) -> str:
    """The levels and the dense model's front as plain text; `vs front` is a level's mAP50 minus the front's at
    the same latency."""
    rows = [list(_HEADERS), *_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + f"\n(mAP on the {report.get('split', 'val')} split)\n"


def markdown_table(report: dict[str, Any]) -> str:
    """The same table as GitHub markdown, for the docs."""
    lines = ["| " + " | ".join(row) + " |" for row in [list(_HEADERS), *_rows(report)]]
    lines.insert(1, "|---|" + "|".join("---:" for _ in _HEADERS[1:]) + "|")
    return "\n".join(lines) + "\n"


def _save_png(figure: Figure, path: Path) -> None:
    """Render in memory, then write atomically: a reader never sees half a PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def plot_report(report: dict[str, Any], out_dir: str | Path, stem: str) -> Path:
    """`{stem}_map_vs_latency.png` in `out_dir`: the levels against the dense model's resolution front."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.add_subplot()
    ax.set_title(f"mAP50 against CPU latency ({report.get('split', 'val')} split, batch 1)")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("mAP50")
    ax.grid(alpha=0.3)
    front = sorted((p["latency_ms"], p["map50"], p["imgsz"]) for p in report["front"].values()
                   if p.get("latency_ms") is not None)
    if front:
        ax.plot([t for t, _, _ in front], [m for _, m, _ in front], "-o", color="black", label="dense, by input size")
        for t, m, size in front:
            ax.annotate(str(size), (t, m), xytext=(4, -10), textcoords="offset points", fontsize=8)
    for name, level in report["levels"].items():
        if level.get("latency_ms") is not None and level.get("map50") is not None:
            ax.plot([level["latency_ms"]], [level["map50"]], "*", markersize=14,
                    label=f"level {name} ({level['imgsz']} px)")
    ax.legend(loc="lower right")
    path = out / f"{stem}_map_vs_latency.png"
    _save_png(figure, path)
    return path
