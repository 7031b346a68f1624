"""Progress of long loops, for a listener that wants it (the demo's worker lanes).

The training loop reports every batch with :func:`report`; without a listener that is one
``None`` check. ``spikebridge demo`` runs steps in worker processes whose own progress bars
are off (they would fight over one terminal), so each worker installs a listener
(:func:`listening`) that forwards a few ticks a second to the main process, which draws one
line per lane (see :mod:`spikebridge.demo_progress`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Tick:
    """Where a training run is: ``step`` of ``steps`` batches in epoch ``epoch`` (1-based)
    of ``epochs``. ``fraction`` is the share of the whole run done."""

    epoch: int
    epochs: int
    step: int
    steps: int

    @property
    def fraction(self) -> float:
        return (self.epoch - 1 + self.step / max(self.steps, 1)) / max(self.epochs, 1)

    def describe(self) -> str:
        return f"epoch {self.epoch}/{self.epochs}, batch {self.step}/{self.steps}"


Listener = Callable[[Tick], None]
_listener: Listener | None = None


def report(epoch: int, epochs: int, step: int, steps: int) -> None:
    """Tell the listener, if any, that batch ``step`` of ``steps`` of epoch ``epoch`` is done."""
    if _listener is not None:
        _listener(Tick(epoch, epochs, step, steps))


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every :func:`report` of this process to ``listener`` while the block runs."""
    global _listener
    before, _listener = _listener, listener
    try:
        yield
    finally:
        _listener = before
