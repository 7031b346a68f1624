"""The plot of a conversion error table (METHODS 2.3): the error terms per activation site
and the input variance / firing rate below them
(:func:`spikebridge.conversion.decompose_errors` measures the table)."""

from __future__ import annotations

from pathlib import Path

from spikebridge.conversion.decomposition import ErrorTable


def plot_errors(table: ErrorTable, path_png: str | Path) -> Path:
    """Plot the error terms per site (top) and input variance / firing rate (bottom) to PNG.

    Uses matplotlib's Agg canvas directly, so the global backend is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    idx = list(range(len(table.rows)))
    fig = Figure(figsize=(max(6.0, 0.18 * len(idx) + 3), 6.5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for key, label in [
        ("quantization", "quantization |e_q|"),
        ("deviation", "deviation |e_d|"),
        ("propagated", "propagated |clip(z̄)−a|"),
        ("total", "total |r−a|"),
    ]:
        top.plot(idx, [getattr(r, key) for r in table.rows], marker="o", ms=3, label=label)
    top.set_ylim(bottom=0)
    top.set_ylabel("mean absolute error")
    top.set_title(f"Conversion error per activation site (T = {table.timesteps})")
    top.legend(fontsize=8)
    bottom.plot(idx, [r.input_variance for r in table.rows], color="tab:purple", marker=".")
    bottom.set_ylabel("input variance over t", color="tab:purple")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("activation site (input → output)")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    rate_ax = bottom.twinx()
    rate_ax.plot(idx, [r.firing_rate for r in table.rows], color="tab:gray", ls="--")
    rate_ax.set_ylim(bottom=0)
    rate_ax.set_ylabel("firing rate (spikes/neuron/step)", color="tab:gray")
    fig.tight_layout()
    path = Path(path_png)
    fig.savefig(path, dpi=120)
    return path
