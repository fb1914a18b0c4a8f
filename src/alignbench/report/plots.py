"""The report's figures: helpfulness vs unsafe rate, safety and helpfulness vs compute, the trade-off
frontiers, and the training curves against RL iteration and against compute.

Figures are drawn with matplotlib's object API on an Agg canvas rather than ``pyplot``: no global
backend switch, no GUI needed, and nothing leaks into a caller's interactive session (the Hydra
callback runs inside the user's process). Every mean is drawn with its 95% bootstrap interval.
"""

from __future__ import annotations

from pathlib import Path

from alignbench.report.aggregate import ALGO_ORDER, X_METRIC, Y_METRIC, Comparison
from alignbench.report.bootstrap import Interval
from alignbench.report.curves import CURVE_METRICS
from alignbench.report.stats import pareto_step

DPI = 100
TERA = 1e12
WIDTH = 11.0  # inches: 1100 px at DPI, shown at most the page's width


def algo_colours(algos: list[str]) -> dict[str, str]:
    """One colour per algo, the same in every figure and every report: the project's algorithms keep
    their place in ``ALGO_ORDER`` (tab10), others follow (tab20 when there are many)."""
    from matplotlib import colormaps

    known = list(ALGO_ORDER)
    extra = [a for a in algos if a not in known]
    palette = colormaps["tab10" if len(known) + len(extra) <= 10 else "tab20"]
    return {algo: _hex(palette((known + extra).index(algo) % palette.N)) for algo in algos}


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


def _bar(est: Interval | None, complement: bool = False):
    """Error-bar lengths ``[[below], [above]]`` of an interval (of 1 - value when ``complement``)."""
    if est is None or est.low is None or est.high is None:
        return None
    mean, low, high = (1 - est.mean, 1 - est.high, 1 - est.low) if complement else (est.mean, est.low, est.high)
    return [[max(0.0, mean - low)], [max(0.0, high - mean)]]


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_pareto(comparison: Comparison, path: Path) -> Path:
    """Seeds (small), each group's mean with its 95% bootstrap interval, and the front of the means;
    groups on the significance-aware front (no group dominates them significantly) are ringed."""
    figure, (ax,) = _new_figure(WIDTH * 0.75, 6.0)
    colours = algo_colours(comparison.algos)
    for group in comparison.plain_groups:
        colour = colours[group.algo]
        seeds = comparison.seed_points.get(group.name, [])
        if seeds:
            ax.scatter([p[0] for p in seeds], [p[1] for p in seeds], color=colour, alpha=0.4, s=18)
        x_est, y_est = group.metrics.get(X_METRIC), group.metrics.get(Y_METRIC)
        if x_est is None or y_est is None:
            continue
        on_front = group.name in comparison.front
        ax.errorbar(x_est.mean, y_est.mean, xerr=_bar(x_est), yerr=_bar(y_est), fmt="o", markersize=10 if on_front else 8,
                    markeredgecolor="black", markeredgewidth=2.0 if on_front else 0.8, color=colour, capsize=4,
                    label=group.label + (" (n=1, no CI)" if x_est.half_width is None else ""))
    points = {g.name: (g.metrics[X_METRIC].mean, g.metrics[Y_METRIC].mean) for g in comparison.plain_groups
              if g.metrics.get(X_METRIC) and g.metrics.get(Y_METRIC)}
    if comparison.front_means:
        xs, ys = pareto_step([points[name] for name in comparison.front_means])
        ax.plot(xs, ys, color="black", linestyle="--", linewidth=1.0, label="front of the means")
    if not points:
        _empty(ax, f"no group reported both {X_METRIC} and {Y_METRIC}")
        return _save(figure, path)
    ax.set_xlabel(f"{X_METRIC}  (higher is better →)")
    ax.set_ylabel(f"{Y_METRIC}  (lower is better ↓)")
    ax.set_title("Means with 95% bootstrap intervals (seeds x prompts); thick ring: not significantly dominated",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(figure, path)


def plot_compute(comparison: Comparison, path: Path) -> Path:
    """Unsafe rate and helpfulness against each group's training FLOPs (log x), with intervals."""
    figure, axes = _new_figure(WIDTH, 4.2, 1, 2)
    colours = algo_colours(comparison.algos)
    groups = [g for g in comparison.plain_groups if g.perf.get("flops") and g.perf["flops"].mean > 0]
    if not groups:
        for ax in axes:
            _empty(ax, "no job reported its training FLOPs")
        return _save(figure, path)
    for ax, metric in zip(axes, (Y_METRIC, X_METRIC)):
        for group in groups:
            est, flops = group.metrics.get(metric), group.perf["flops"]
            if est is None:
                continue
            bar = _bar(flops)
            ax.errorbar(flops.mean / TERA, est.mean, xerr=None if bar is None else [[v / TERA for v in side] for side in bar],
                        yerr=_bar(est), fmt="o", color=colours[group.algo], markeredgecolor="black", capsize=3,
                        label=group.label)
        ax.set_xlabel("training TFLOPs (estimated; every stage, warm-up and role)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("Safety against compute (lower is safer)", fontsize=10)
    axes[1].set_title("Helpfulness against compute", fontsize=10)
    axes[1].legend(fontsize=7, loc="best")
    return _save(figure, path)


def plot_frontiers(comparison: Comparison, path: Path) -> Path:
    """One frontier per algorithm: helpfulness x (1 - unsafe) and (1 - over-refusal) x (1 - unsafe)."""
    figure, axes = _new_figure(WIDTH, 4.8, 1, 2)
    colours = algo_colours(comparison.algos)
    panels = (("helpfulness", "eval/helpfulness", False, "helpfulness (higher is better →)"),
              ("refusal", "eval/over_refusal_rate", True, "1 - over-refusal rate (higher is better →)"))
    for ax, (plane, metric, complement, xlabel) in zip(axes, panels):
        for frontier in comparison.frontiers:
            points = [p for p in frontier.points if p.unsafe is not None and
                      (p.helpfulness if plane == "helpfulness" else p.over_refusal) is not None]
            xs_est = [p.helpfulness if plane == "helpfulness" else p.over_refusal for p in points]
            xs = [1 - e.mean if complement else e.mean for e in xs_est]
            ys = [1 - p.unsafe.mean for p in points]
            hv = frontier.hypervolume.get(plane)
            label = frontier.algo + (f" (HV {hv.format(3).split(' (')[0]})" if hv else "")
            colour = colours.get(frontier.algo, "#333333")
            ax.plot(xs, ys, "-", color=colour, alpha=0.6)
            for point, x, y, est in zip(points, xs, ys, xs_est):
                ax.errorbar(x, y, xerr=_bar(est, complement), yerr=_bar(point.unsafe, True), fmt="o",
                            color=colour, capsize=2, markersize=5, label=label if point is points[0] else None)
        for group in comparison.plain_groups:  # algorithms without a knob (sft, ppo, ...): one point each
            est, unsafe = group.metrics.get(metric), group.metrics.get(Y_METRIC)
            if est is not None and unsafe is not None:
                ax.errorbar(1 - est.mean if complement else est.mean, 1 - unsafe.mean, xerr=_bar(est, complement),
                            yerr=_bar(unsafe, True), fmt="s", color=colours[group.algo], markeredgecolor="black",
                            capsize=2, label=group.label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("1 - unsafe rate (higher is safer ↑)")
        ax.grid(alpha=0.3)
    if not comparison.frontiers:
        for ax in axes:
            _empty(ax, "no trade-off sweep (run experiment=frontier)")
        return _save(figure, path)
    axes[0].set_title("Frontiers: helpfulness x safety (knob values joined in sweep order)", fontsize=10)
    axes[1].set_title("Frontiers: answering must-answer prompts x safety", fontsize=10)
    axes[0].legend(fontsize=7, loc="best")
    return _save(figure, path)


def plot_curves(comparison: Comparison, path: Path, axis: str = "iteration") -> Path:
    """One panel per training metric anyone logged, one line per group (seed mean) with a 95% t-band."""
    curves = comparison.curves.get(axis, {})
    metrics = [m for m in CURVE_METRICS if m in curves]
    if not metrics:
        figure, (ax,) = _new_figure(6, 2.5)
        _empty(ax, "no RL training history (history.jsonl)" + (" with perf/flops" if axis == "compute" else ""))
        return _save(figure, path)
    cols = 3 if len(metrics) > 4 else 2 if len(metrics) > 1 else 1
    rows = (len(metrics) + cols - 1) // cols
    figure, axes = _new_figure(WIDTH, 3.2 * rows, rows, cols)
    colours = algo_colours(comparison.algos)
    algo_of = {g.name: g.algo for g in comparison.groups}
    label_of = {g.name: g.label for g in comparison.groups}
    for ax, metric in zip(axes, metrics):
        scale = TERA if axis == "compute" else 1.0
        for name, curve in curves[metric].items():
            colour = colours.get(algo_of.get(name, name), "#333333")
            seeds = max(curve.counts)
            ax.plot([x / scale for x in curve.x], curve.mean, color=colour, marker="o" if len(curve.x) <= 12 else None, markersize=3,
                    label=f"{label_of.get(name, name)} ({seeds} seed{'s' if seeds > 1 else ''})")
            band = [(x, lo, hi) for x, lo, hi in zip(curve.x, curve.low, curve.high) if lo is not None]
            if band:
                ax.fill_between([b[0] / scale for b in band], [b[1] for b in band], [b[2] for b in band], color=colour,
                                alpha=0.15)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("RL iteration" if axis == "iteration" else "training TFLOPs so far (stages included)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes[len(metrics):]:
        ax.set_axis_off()
    return _save(figure, path)
