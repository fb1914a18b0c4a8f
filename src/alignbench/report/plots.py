"""The two figures of the report: the helpfulness/unsafety Pareto plot and the training curves.

Figures are drawn with matplotlib's object API on an Agg canvas rather than ``pyplot``: no global
backend switch, no GUI needed, and nothing leaks into a caller's interactive session (the Hydra
callback runs inside the user's process).
"""

from __future__ import annotations

from pathlib import Path

from alignbench.report.aggregate import CURVE_METRICS, X_METRIC, Y_METRIC, Comparison
from alignbench.report.stats import pareto_step

DPI = 110


def algo_colours(algos: list[str]) -> dict[str, str]:
    """A stable colour per algo (tab10, then tab20 when there are many) shared by both figures."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(algos) <= 10 else "tab20"]
    return {algo: _hex(palette(index % palette.N)) for index, algo in enumerate(algos)}


def _hex(rgba: tuple[float, ...]) -> str:
    return "#" + "".join(f"{round(channel * 255):02x}" for channel in rgba[:3])


def _new_figure(width: float, height: float, rows: int = 1, cols: int = 1):
    """Figure + axes on an Agg canvas (imported lazily: only plotting needs matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, [ax for row in axes for ax in row]


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def _rate_interval(mean: float, half_width: float | None):
    """Error-bar lengths of mean ± half_width clipped to [0, 1] (both axes are rates); None: no bar."""
    if half_width is None:
        return None
    return [[mean - max(0.0, mean - half_width)], [min(1.0, mean + half_width) - mean]]


def plot_pareto(comparison: Comparison, path: Path) -> Path:
    """Scatter every seed, the per-algo mean with its 95% t-interval, and the front as a staircase.

    Algos with a single seed get their mean marker but no error bar, and the legend says
    ``n=1, no CI`` so the missing bar is not read as certainty.
    """
    figure, (ax,) = _new_figure(7.5, 5.5)
    colours = algo_colours(comparison.algos)
    for algo in comparison.algos:
        colour = colours[algo]
        seeds = comparison.seed_points.get(algo, [])
        if seeds:
            ax.scatter([p[0] for p in seeds], [p[1] for p in seeds], color=colour, alpha=0.45, s=22)
        if algo not in comparison.intervals:
            continue
        x_est, y_est = comparison.intervals[algo]
        label = algo if x_est.half_width is not None else f"{algo} (n=1, no CI)"
        ax.errorbar(
            x_est.mean,
            y_est.mean,
            xerr=_rate_interval(x_est.mean, x_est.half_width),
            yerr=_rate_interval(y_est.mean, y_est.half_width),
            fmt="o",
            markersize=9,
            markeredgecolor="black",
            color=colour,
            capsize=4,
            label=label,
        )
    if comparison.front:
        xs, ys = pareto_step([comparison.mean_points[algo] for algo in comparison.front])
        ax.plot(xs, ys, color="black", linestyle="--", linewidth=1.2, label="Pareto front (algo means)")
    if not comparison.mean_points:
        ax.text(0.5, 0.5, f"no job reported both {X_METRIC} and {Y_METRIC}", ha="center", transform=ax.transAxes)
    ax.set_xlabel(f"{X_METRIC}  (higher is better →)")
    ax.set_ylabel(f"{Y_METRIC}  (lower is better ↓)")
    ax.set_title("Helpfulness vs unsafe rate: seeds (small), mean ± 95% t-CI within [0, 1] (large)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return _save(figure, path)


def plot_curves(comparison: Comparison, path: Path) -> Path:
    """One panel per training metric logged by any algo, one seed-mean line per algo.

    ``train/lambda`` only exists for Lagrangian methods, so its panel simply has fewer lines;
    metrics nobody logged get no panel at all.
    """
    metrics = [m for m in CURVE_METRICS if m in comparison.curves]
    if not metrics:
        figure, (ax,) = _new_figure(6, 2.5)
        ax.text(0.5, 0.5, "no training history (history.jsonl) found", ha="center", va="center")
        ax.set_axis_off()
        return _save(figure, path)
    cols = 2 if len(metrics) > 1 else 1
    rows = (len(metrics) + cols - 1) // cols
    figure, axes = _new_figure(6 * cols, 3.8 * rows, rows, cols)
    colours = algo_colours(comparison.algos)
    for ax, metric in zip(axes, metrics):
        for algo, curve in comparison.curves[metric].items():
            seeds = max(curve.counts)
            ax.plot(curve.steps, curve.means, color=colours[algo], label=f"{algo} (≤{seeds} seeds)")
        ax.set_title(f"{metric} (mean over seeds)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(metrics):]:
        ax.set_axis_off()
    return _save(figure, path)
