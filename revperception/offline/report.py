"""The pruning run's report: JSON for machines, text and markdown tables for people, and its two plots.

The plots are the paper's Fig. 3 (mAP50 against parameter sparsity, with and without fine-tuning)
and Fig. 5 (CPU latency at batch 1 against sparsity). They are drawn on a bare matplotlib Figure
(Agg canvas, bundled DejaVu font), so no display, pyplot state or font download is ever involved.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from revperception.checkpoint import atomic_write_bytes, atomic_write_text

_HEADERS = ("step", "filter %", "param sparsity %", "FLOP ratio", "mAP50", "mAP50-95", "mAP50 no FT",
            "latency ms", "passed")


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """The report as JSON (sorted keys, so reports of two runs diff cleanly), written atomically."""
    atomic_write_text(path, json.dumps(report, sort_keys=True, indent=2) + "\n")


def _pruned_step(report: dict[str, Any]) -> int | None:
    return ((report.get("levels") or {}).get("pruned") or {}).get("step")


def _cell(value: Any, fmt: Callable[[Any], str]) -> str:
    return "-" if value is None else fmt(value)


def _rows(report: dict[str, Any], mark: str) -> list[list[str]]:
    """One row per step, led by the dense model as step 0 when the steps do not include it."""
    dense = report["dense"]
    steps = list(report["steps"])
    if not any(s.get("step") == 0 for s in steps):
        steps.insert(0, {"step": 0, "filter_fraction": 0.0, "param_sparsity": 0.0, "flops_ratio": 1.0,
                         "map50": dense.get("map50"), "map50_95": dense.get("map50_95"),
                         "map50_no_finetune": dense.get("map50"), "latency_ms": dense.get("latency_ms")})
    chosen = _pruned_step(report)
    pct, ratio, ms = (lambda v: f"{100 * v:.1f}"), (lambda v: f"{v:.3f}"), (lambda v: f"{v:.1f}")
    return [[
        f"{s['step']}{mark if s['step'] == chosen else ''}", _cell(s.get("filter_fraction"), pct),
        _cell(s.get("param_sparsity"), pct), _cell(s.get("flops_ratio"), ratio), _cell(s.get("map50"), ratio),
        _cell(s.get("map50_95"), ratio), _cell(s.get("map50_no_finetune"), ratio), _cell(s.get("latency_ms"), ms),
        _cell(s.get("passed"), lambda v: "yes" if v else "no"),
    ] for s in steps]


def _footnote(report: dict[str, Any], mark: str) -> str:
    chosen = _pruned_step(report)
    return "" if chosen is None else f"\n{mark} the `pruned` level (step {chosen})\n"


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the steps (step 0 is the dense model, * marks the `pruned` level) for the CLI."""
    rows = [list(_HEADERS), *_rows(report, "*")]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n" + _footnote(report, "*")


def markdown_table(report: dict[str, Any]) -> str:
    """The same table as GitHub markdown, numbers right-aligned, for the README."""
    lines = ["| " + " | ".join(row) + " |" for row in [list(_HEADERS), *_rows(report, "\\*")]]
    lines.insert(1, "|" + "|".join("---:" for _ in _HEADERS) + "|")
    return "\n".join(lines) + "\n" + _footnote(report, "\\*")


def _save_png(figure: Figure, path: Path) -> None:
    """Render in memory, then write atomically: a reader never sees half a PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def _plot_steps(
    ax: Axes, steps: list[dict[str, Any]], key: str, label: str, *, color: str, dense: float | None,
) -> None:
    """A line from the dense value at 0 % through every step that has `key`; failed steps are drawn hollow."""
    points = [(100 * s["param_sparsity"], s[key], s.get("passed", True)) for s in steps if s.get(key) is not None]
    if not points:
        return
    line = ([(0.0, dense)] if dense is not None else []) + [(x, y) for x, y, _ in points]
    ax.plot(*zip(*line, strict=True), "-", color=color, label=label, zorder=2)
    for ok in (True, False):
        xy = [(x, y) for x, y, passed in points if bool(passed) == ok]
        if xy:
            ax.plot(*zip(*xy, strict=True), "o", color=color, markerfacecolor=color if ok else "white", zorder=3)


def _legend(ax: Axes, failed: bool) -> None:
    """The legend, with a hollow grey marker explaining hollow points when any step failed."""
    if failed:
        ax.plot([], [], "o", color="grey", markerfacecolor="white", label="step failed the tolerance")
    ax.legend(loc="best")


def _figure(title: str, ylabel: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("parameter sparsity (%)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return figure, ax


def plot_report(report: dict[str, Any], out_dir: str | Path, stem: str) -> list[Path]:
    """`{stem}_map_vs_sparsity.png` and `{stem}_latency_vs_sparsity.png` in `out_dir`, each written atomically.

    The dense model is the star at 0 % and a horizontal line; steps that failed the accuracy tolerance
    are hollow, so the plot shows where the search stopped and why.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps, dense, reference = report["steps"], report["dense"], report.get("reference")
    failed = not all(s.get("passed", True) for s in steps)

    figure, ax = _figure("mAP50 against parameter sparsity", "mAP50")
    ax.axhline(dense["map50"], color="black", linestyle=":", linewidth=1)
    ax.plot([0], [dense["map50"]], "*", color="black", markersize=12, label=f"dense ({dense['map50']:.3f})")
    _plot_steps(ax, steps, "map50", "fine-tuned", color="tab:blue", dense=dense["map50"])
    _plot_steps(ax, steps, "map50_no_finetune", "without fine-tuning", color="tab:orange", dense=dense["map50"])
    if reference and reference.get("map50") is not None:
        ax.axhline(reference["map50"], color="tab:green", linestyle="--",
                   label=f"{reference.get('name', 'reference')} ({reference['map50']:.3f})")
    chosen = next((s for s in steps if s["step"] == _pruned_step(report)), None)
    if chosen is not None and chosen.get("map50") is not None:
        ax.annotate(f"pruned: step {chosen['step']}\n{100 * chosen['param_sparsity']:.1f} %, {chosen['map50']:.3f}",
                    (100 * chosen["param_sparsity"], chosen["map50"]), xytext=(0, -42), textcoords="offset points",
                    ha="center", arrowprops={"arrowstyle": "->"})
    _legend(ax, failed)
    paths = [out / f"{stem}_map_vs_sparsity.png"]
    _save_png(figure, paths[0])

    figure, ax = _figure("CPU latency at batch 1 against parameter sparsity", "latency (ms)")
    if dense.get("latency_ms") is not None:
        ax.axhline(dense["latency_ms"], color="black", linestyle="--", linewidth=1)
        ax.plot([0], [dense["latency_ms"]], "*", color="black", markersize=12,
                label=f"dense ({dense['latency_ms']:.1f} ms)")
    _plot_steps(ax, steps, "latency_ms", "pruned", color="tab:blue", dense=dense.get("latency_ms"))
    ax.set_ylim(bottom=0)
    _legend(ax, failed)
    paths.append(out / f"{stem}_latency_vs_sparsity.png")
    _save_png(figure, paths[1])
    return paths
