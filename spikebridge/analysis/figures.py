"""The figures of ``spikebridge report`` (METHODS 3), drawn so that they cannot mislead.

Rules every figure follows:

- accuracy axes span 0-100 %: a model at chance drawn on 9.3-10.0 % looks like a trend;
- a *chance* line (``100 / classes``) and, where the run has one, a *reference* line (the ANN
  a converted run came from, the teacher of a distilled run), each named in the legend;
- epoch and time-step axes carry integer ticks only (one epoch is one tick, not 0.95-1.05);
- every energy comparison names the T and the accuracy of both sides, says when the ANN side
  is a MAC count of the same architecture rather than a trained network, and shows the
  ANN/SNN energy ratio only for a model clearly above chance (:func:`ratio_withheld`): a
  network that fires almost nothing is cheap because it does nothing.

Figures are drawn on matplotlib's Agg canvas directly (no global backend change, no display
needed); each ``plot_*`` returns the Figure (tests read its axes) after saving it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DPI = 120
CHANCE_MARGIN = 0.05
"""An SNN less than 5 points above chance gets no energy ratio (:func:`ratio_withheld`)."""
STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]


@dataclass(frozen=True)
class References:
    """Reference levels of a run's accuracy plots (fractions).

    ``num_classes`` gives the chance level; ``reference`` is ``(legend label, accuracy)``
    of the network the run is measured against (ANN before conversion, teacher), or None.
    """

    num_classes: int | None = None
    reference: tuple[str, float] | None = None

    @property
    def chance(self) -> float | None:
        return 1 / self.num_classes if self.num_classes else None


@dataclass(frozen=True)
class EnergySides:
    """Both sides of an energy comparison: the SNN at ``timesteps`` with its accuracy, and
    the ANN (a trained one with its accuracy, or a MAC count of the same architecture)."""

    timesteps: int
    snn_accuracy: float | None
    ann_accuracy: float | None
    ann_trained: bool

    def snn_label(self) -> str:
        return f"SNN at T = {self.timesteps}\nacc {_pct(self.snn_accuracy)}"

    def ann_label(self) -> str:
        if self.ann_trained:
            return f"ANN (trained, T = 1)\nacc {_pct(self.ann_accuracy)}"
        return "ANN: MAC count of the\nsame architecture\n(not a trained ANN)"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def ratio_withheld(snn_accuracy: float | None, refs: References, ann_accuracy: float | None):  # type: ignore[no-untyped-def]
    """Why no ANN/SNN energy ratio may be quoted for this SNN, or None when it may.

    Withheld when the SNN's accuracy is unknown, below chance + :data:`CHANCE_MARGIN`
    (5 points), or below half the trained ANN's accuracy: such a network is cheap because it
    barely fires, and its ratio would advertise a failure as a saving.
    """
    if snn_accuracy is None:
        return "the SNN's accuracy at this T is not recorded"
    chance = refs.chance
    if chance is not None and snn_accuracy < chance + CHANCE_MARGIN:
        return (
            f"the SNN's accuracy ({_pct(snn_accuracy)}) is within {100 * CHANCE_MARGIN:.0f} "
            f"points of chance ({_pct(chance)}): a network that does not work is cheap because "
            "it barely fires"
        )
    if ann_accuracy is not None and snn_accuracy < ann_accuracy / 2:
        return (
            f"the SNN's accuracy ({_pct(snn_accuracy)}) is below half the ANN's "
            f"({_pct(ann_accuracy)}): the two do not do the same job"
        )
    return None


# ----------------------------------------------------------------------------- helpers


def _figure(n_axes: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A matplotlib Figure on an Agg canvas with ``n_axes`` side-by-side axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")  # room for outside legends
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_axes)
    return fig, list(axes) if n_axes > 1 else [axes]


def _save(fig: Any, path: Path) -> Any:
    fig.savefig(path, dpi=DPI)
    return fig


def legend_below(ax: Any) -> None:
    """The legend under the axes, where it can hide no curve and no reference line."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)


def integer_ticks(ax: Any, values: list[int]) -> None:
    """Whole-number x ticks: every value when there are few, else a whole-number locator;
    half a step of margin either side, so one value is one tick in the middle."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    if not values:
        return
    low, high = min(values), max(values)
    ax.set_xlim(low - 0.5, high + 0.5)
    if high - low <= 12:
        ax.xaxis.set_major_locator(FixedLocator(list(range(low, high + 1))))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def accuracy_axis(ax: Any, refs: References) -> None:
    """0-100 % y axis with the chance line and the reference line, both in the legend."""
    ax.set_ylim(0, 100)
    if refs.chance is not None:
        ax.axhline(100 * refs.chance, color="black", ls=":", lw=1,
                   label=f"chance (1/{refs.num_classes} = {_pct(refs.chance)})")  # fmt: skip
    if refs.reference is not None:
        label, accuracy = refs.reference
        ax.axhline(100 * accuracy, color="gray", ls="--", lw=1.2,
                   label=f"{label}: {_pct(accuracy)}")  # fmt: skip


# ----------------------------------------------------------------------------- figures


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key`` where it is a number."""
    pairs = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_curves(records: list[dict[str, Any]], path: Path, refs: References = References()) -> Any:
    """Loss, accuracy (%, 0-100, chance and reference lines) and learning rate per epoch
    from ``metrics.jsonl`` records."""
    fig, (loss_ax, acc_ax, lr_ax) = _figure(3, 15, 5.2)
    highest = 0.0
    for key in [k for k in records[0] if k.endswith("loss")]:
        epochs, values = _series(records, key)
        if epochs:
            loss_ax.plot(epochs, values, marker="o", ms=4, label=key.replace("_", " "))
            highest = max(highest, *values)
    if refs.num_classes:  # the loss of a uniform guess: a loss near it has learned nothing
        uniform = math.log(refs.num_classes)
        loss_ax.axhline(uniform, color="black", ls=":", lw=1,
                        label=f"cross-entropy of a uniform guess: ln {refs.num_classes} = "
                        f"{uniform:.2f}")  # fmt: skip
        highest = max(highest, uniform)
    loss_ax.set_ylim(0, 1.1 * highest if math.isfinite(highest) and highest > 0 else None)
    loss_ax.set(xlabel="epoch", ylabel="loss (nats)", title="Loss per epoch")
    for split in ("train", "val", "test"):
        epochs, values = _series(records, f"{split}_accuracy")
        if epochs:
            acc_ax.plot(epochs, [100 * v for v in values], marker="o", ms=4, label=split)
    accuracy_axis(acc_ax, refs)
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy per epoch")
    epochs, values = _series(records, "lr")
    lr_ax.plot(epochs, values, marker="o", ms=4, color="tab:green", label="lr at epoch start")
    lr_ax.set_ylim(bottom=0)
    lr_ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate")
    all_epochs = sorted({r["epoch"] for r in records if isinstance(r.get("epoch"), int)})
    for ax in (loss_ax, acc_ax, lr_ax):
        integer_ticks(ax, all_epochs)  # epochs are whole numbers
        ax.grid(alpha=0.3)
        legend_below(ax)
    return _save(fig, path)


def plot_timesteps(
    curves: dict[str, dict[int, float]], path: Path, refs: References = References()
) -> Any:
    """Accuracy (%, 0-100) against the number of simulated time-steps t, one line per source
    (distinct line styles, so identical curves stay visible), with chance and reference."""
    fig, (ax,) = _figure(1, 7.5, 5.4)
    for i, (label, by_t) in enumerate(curves.items()):
        ts, (ls, marker) = sorted(by_t), STYLES[i % len(STYLES)]
        ax.plot(ts, [100 * by_t[t] for t in ts], ls=ls, marker=marker, ms=5, label=label)
    accuracy_axis(ax, refs)
    ax.set(
        xlabel="time-steps t (simulation steps)",
        ylabel="accuracy (%)",
        title="Accuracy after t time-steps (running mean of outputs)",
    )
    integer_ticks(ax, sorted({t for by_t in curves.values() for t in by_t}))
    ax.grid(alpha=0.3)
    legend_below(ax)
    return _save(fig, path)


def plot_firing_rates(
    rates: dict[str, float], path: Path, overall: float | None, timesteps: int | None = None,
    images: int | None = None,
) -> Any:  # fmt: skip
    """Horizontal bars: spikes per neuron per step of each site over the first ``timesteps``
    steps (named in the title), input to output; the all-sites rate as a line."""
    names = list(rates)
    fig, (ax,) = _figure(1, 8, max(3.0, 0.28 * len(names) + 1.5))
    ax.barh(range(len(names)), [rates[n] for n in names], color="tab:blue", label="site")
    if overall is not None and math.isfinite(overall):
        ax.axvline(overall, color="tab:red", ls="--", label=f"all sites: {overall:.3f}")
    top = max([*rates.values(), 0.0])
    for i, name in enumerate(names):  # a bar too short to see gets its value written
        if rates[name] == 0:
            ax.text(0, i, " 0: no spike", va="center", fontsize=7, color="tab:red")
        elif rates[name] < 0.02 * top:
            ax.text(rates[name], i, f" {rates[name]:.2g}", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()  # the first site (stem) on top
    ax.set_xlim(0, top * 1.1 or 1.0)
    at = f" at T = {timesteps}" if timesteps else ""
    seen = f", {images} images" if images else ""
    ax.set(
        xlabel="firing rate (spikes per neuron per time-step)",
        ylabel="spiking site",
        title=f"Firing rate per layer{at}{seen}",
    )
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_operations(m: dict[str, Any], path: Path, sides: EnergySides, refs: References) -> Any:
    """Bars: MACs (ANN) vs SOPs + analog first-layer MACs (SNN) per image, and the energy
    estimate in µJ, each side labelled with its T and accuracy; the ANN/SNN ratio is written
    on the chart unless :func:`ratio_withheld` says why not."""
    fig, (ops_ax, energy_ax) = _figure(2, 12, 5)
    ann_x, snn_x = sides.ann_label(), sides.snn_label()
    sops, first = m["sops_per_image"] / 1e6, (m.get("first_layer_macs_per_image") or 0) / 1e6
    ops_ax.bar([ann_x], [m["macs_per_image"] / 1e6], color="tab:orange", label="MACs (ANN)")
    ops_ax.bar([snn_x], [first], color="tab:red", label="first-layer MACs (SNN, analog)")
    ops_ax.bar([snn_x], [sops], bottom=[first], color="tab:blue", label="SOPs (SNN, ACs)")
    ops_ax.set(ylabel="operations per image (millions)", title="Operations per image")
    ann_uj, snn_uj = m["ann_energy_estimate_uj"], m["energy_estimate_uj"]
    bars = energy_ax.bar([ann_x, snn_x], [ann_uj, snn_uj], color=["tab:orange", "tab:blue"])
    energy_ax.bar_label(bars, [f"{ann_uj:#.3g} µJ", f"{snn_uj:#.3g} µJ"], fontsize=8)
    energy_ax.set(
        ylabel="energy per image (µJ, estimate)",
        title="Energy estimate: E_MAC 4.6 pJ, E_AC 0.9 pJ (45 nm)",
    )
    energy_ax.set_ylim(0, max(ann_uj, snn_uj) * 1.3)
    withheld = ratio_withheld(sides.snn_accuracy, refs, sides.ann_accuracy)
    if withheld is not None:  # the bar of a network that does not work is no saving
        bars[1].set(facecolor="lightgray", hatch="//", edgecolor="gray")
    text = (
        f"ANN / SNN energy: {ann_uj / snn_uj:.3g}x"
        if withheld is None and snn_uj > 0
        else "ratio withheld: " + (withheld or "the SNN used no energy")
    )
    if not sides.ann_trained and withheld is None:
        text += "\n(ANN side: MAC count, not a trained ANN)"
    energy_ax.text(0.5, 0.97, _wrap(text), transform=energy_ax.transAxes, ha="center",
                   va="top", fontsize=8, bbox={"facecolor": "white", "alpha": 0.8})  # fmt: skip
    for ax in (ops_ax, energy_ax):
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    ops_ax.legend(fontsize=8)
    return _save(fig, path)


def _wrap(text: str, width: int = 60) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())
