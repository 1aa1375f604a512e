"""The report's plots as inline SVG strings (matplotlib, no files, no network).

Text stays text in the SVG (`svg.fonttype: none`), so the page is small and the labels are crisp
and searchable; the page's own font renders them.
"""
from __future__ import annotations

import io
import math

BLUE, ORANGE, GREEN, RED, GREY = "#3b6fb6", "#e08a2c", "#2f9e5b", "#c8453c", "#8a8f98"


def _figure(width: float = 10.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.edgecolor": "#c9ccd1", "axes.labelcolor": "#444",
                         "xtick.color": "#555", "ytick.color": "#555", "axes.grid": True,
                         "grid.color": "#eceef1", "grid.linewidth": 0.8, "legend.frameon": False,
                         "font.family": "sans-serif"})
    fig, ax = plt.subplots(figsize=(width, height))
    return plt, fig, ax


def _svg(plt, fig) -> str:
    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg", transparent=True)
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.find("<svg"):]


def _integer_steps(ax, last: int) -> None:
    """Whole-number step ticks from 0, also when only a step or two were logged."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(0, max(last, 2) * 1.03)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def loss_curve(steps: list[dict], best_step: int | None = None, stop_step: int | None = None,
               stop_label: str = "stopped") -> str | None:
    """Training loss per step, validation loss where measured, the best validation point and the stop."""
    train = [(s["step"], s["loss"]) for s in steps if s.get("loss") is not None]
    val = [(s["step"], s["val_loss"]) for s in steps if s.get("val_loss") is not None]
    if not train:
        return None
    plt, fig, ax = _figure()
    few = {"marker": "o", "markersize": 3} if len(train) <= 20 else {}  # a line of one point is invisible
    ax.plot(*zip(*train), color=BLUE, linewidth=1.3, label="train loss", alpha=0.9, **few)
    if val:
        ax.plot(*zip(*val), color=ORANGE, linewidth=1.6, marker="o", markersize=3.5, label="validation loss")
        best = min(val, key=lambda p: p[1]) if best_step is None else next((p for p in val if p[0] == best_step),
                                                                            min(val, key=lambda p: p[1]))
        ax.plot(*best, marker="*", markersize=13, color=GREEN, linestyle="none", zorder=5,
                label=f"best validation {best[1]:.3f} (step {best[0]})")
    if stop_step is not None:
        ax.axvline(stop_step, color=RED, linestyle="--", linewidth=1.1, label=stop_label)
    _integer_steps(ax, train[-1][0])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.legend(loc="upper right")
    return _svg(plt, fig)


def lr_curve(steps: list[dict]) -> str | None:
    points = [(s["step"], s["lr"]) for s in steps if s.get("lr") is not None]
    if not points:
        return None
    plt, fig, ax = _figure(height=2.4)
    ax.plot(*zip(*points), color=GREY, linewidth=1.5, **({"marker": "o", "markersize": 3} if len(points) <= 20 else {}))
    ax.fill_between(*zip(*points), color=GREY, alpha=0.12)
    _integer_steps(ax, points[-1][0])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return _svg(plt, fig)


def difference_plot(metrics: list[dict]) -> str | None:
    """tuned - base per metric with its bootstrap interval, on each metric's own scale
    (percentage points for shares, points for BLEU/chrF), green when the interval clears zero."""
    rows = [m for m in metrics if m.get("interval") and m.get("difference") is not None
            and not any(math.isnan(v) for v in m["interval"])]
    rows = [m for m in rows if m["name"] != "perplexity"]  # a ratio scale: shown in the table only
    if not rows:
        return None
    plt, fig, ax = _figure(height=0.3 * len(rows) + 0.8)
    scale = [100.0 if m["percent"] else 1.0 for m in rows]
    for y, (m, k) in enumerate(zip(rows, scale)):
        low, high = m["interval"]
        good = low > 0 if m["higher_is_better"] else high < 0
        bad = high < 0 if m["higher_is_better"] else low > 0
        color = GREEN if good else RED if bad else GREY
        ax.plot([low * k, high * k], [y, y], color=color, linewidth=2.6, solid_capstyle="round")
        ax.plot(m["difference"] * k, y, marker="o", color=color, markersize=6)
    ax.axvline(0, color="#555", linewidth=0.9)
    ax.set_yticks(range(len(rows)), [m["name"] + (" (pp)" if m["percent"] else " (pts)") for m in rows])
    ax.invert_yaxis()
    ax.set_xlabel("tuned − base, with 95% bootstrap interval")
    ax.grid(axis="y", visible=False)
    return _svg(plt, fig)
