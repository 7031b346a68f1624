"""Live progress of the demo's worker lanes (``spikebridge demo`` with ``--jobs`` > 1).

Steps run in spawned worker processes whose progress bars are off (several processes cannot
share one terminal's bars). Each worker sends its log lines and a few training ticks a second
(:class:`~spikebridge.engine.progress.Tick`) through one queue to the main process, which
prints every line itself and shows, per running step (a *lane*), where it is, how long it
has run and the estimated time left:

* on a terminal, one line per lane at the bottom, redrawn in place;
* otherwise (a log file, a pipe), one plain line per lane every ``plain_every`` seconds.

The ETA extrapolates the training ticks seen so far: it covers the training epochs, not the
final test and measurement that follow them.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.queues import SimpleQueue
from typing import Any

from spikebridge.engine import progress
from spikebridge.engine.progress import Tick

SEND_EVERY_S = 0.5  # a worker forwards at most one tick per step this often
REDRAW_EVERY_S = 0.5  # terminal: the lane lines are redrawn at most this often
PLAIN_EVERY_S = 60.0  # not a terminal: one plain line per lane this often

_queue: SimpleQueue | None = None  # the worker's end of the queue (set by the pool initializer)


def install_queue(queue: SimpleQueue | None) -> None:
    """Worker side: remember the queue (it can only reach a worker through the initializer)."""
    global _queue
    _queue = queue


class _Forwarder:
    """Worker side: sends ``("log", name, line)`` and rate-limited ``("tick", name, tick)``."""

    def __init__(self, queue: SimpleQueue, name: str) -> None:
        self.queue, self.name, self.sent = queue, name, 0.0

    def log(self, message: str) -> None:
        self.queue.put(("log", self.name, message))

    def tick(self, tick: Tick) -> None:
        now = time.monotonic()
        if now - self.sent >= SEND_EVERY_S or tick.step == tick.steps:
            self.sent = now
            self.queue.put(("tick", self.name, tick))


def run_reported(name: str, make: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Worker side: ``make(*args, log=...)`` with its log lines and training ticks sent to
    the main process. The queue's ``put`` is synchronous, so every line of the step is in
    the queue before its result reaches the main process."""
    if _queue is None:  # no queue installed: print as a worker always did
        return make(*args, log=lambda message: print(f"[{name}] {message}", flush=True))
    forward = _Forwarder(_queue, name)
    with progress.listening(forward.tick):
        return make(*args, log=forward.log)


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Lane:
    """A running step as the main process sees it."""

    name: str
    started: float  # time.monotonic() at its start
    tick: Tick | None = None
    first: tuple[float, float] | None = None  # (time, fraction) of the first tick seen
    seen: float | None = None  # time of the latest tick

    def update(self, tick: Tick, now: float) -> None:
        if self.first is None or tick.fraction < self.first[1]:  # first tick, or a new run
            self.first = (now, tick.fraction)
        self.tick, self.seen = tick, now

    def eta(self) -> float | None:
        """Seconds of training left, from the rate since the first tick (None: unknown yet)."""
        if self.tick is None or self.first is None or self.seen is None:
            return None
        done, spent = self.tick.fraction - self.first[1], self.seen - self.first[0]
        if done <= 0 or spent <= 0:
            return None
        return (1 - self.tick.fraction) * spent / done

    def line(self, now: float) -> str:
        parts = [f"{self.name}: {duration(now - self.started)} in"]
        if self.tick is not None:
            parts.append(f"{self.tick.describe()} ({100 * self.tick.fraction:.0f} % of training)")
            eta = self.eta()
            parts.append(f"ETA {duration(eta)}" if eta is not None else "ETA -")
        else:
            parts.append("no training batch yet (setting up, converting or testing)")
        return ", ".join(parts)


@dataclass
class LaneBoard:
    """Main side: prints the workers' lines and shows the lanes' progress (module docstring)."""

    log: Callable[[str], None]
    tty: bool
    plain_every: float = PLAIN_EVERY_S
    lanes: dict[str, Lane] = field(default_factory=dict)
    drawn: int = 0  # terminal lines the board occupies now
    last_draw: float = 0.0
    last_plain: float = field(default_factory=time.monotonic)

    def start(self, name: str) -> None:
        self.lanes[name] = Lane(name, time.monotonic())

    def stop(self, name: str) -> None:
        self.lanes.pop(name, None)
        self.redraw(force=True)

    def say(self, line: str) -> None:
        """Print ``line`` above the lane lines."""
        self._clear()
        self.log(line)
        sys.stdout.flush()
        self.redraw(force=True)

    def drain(self, queue: SimpleQueue) -> None:
        """Take every message the workers have sent so far."""
        while not queue.empty():
            kind, name, payload = queue.get()
            if kind == "log":
                self.say(f"[{name}] {payload}")
            elif name in self.lanes:
                self.lanes[name].update(payload, time.monotonic())
        self.refresh()

    def refresh(self) -> None:
        """Terminal: redraw when due. Otherwise: one plain line per lane when due."""
        now = time.monotonic()
        if self.tty:
            self.redraw()
        elif self.lanes and now - self.last_plain >= self.plain_every:
            self.last_plain = now
            for lane in self.lanes.values():
                self.log(f"[progress] {lane.line(now)}")
            sys.stdout.flush()

    def redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty or (not force and now - self.last_draw < REDRAW_EVERY_S):
            return
        self._clear()
        width = max(20, shutil.get_terminal_size().columns - 1)  # no wrapping: 1 row per line
        for lane in self.lanes.values():
            sys.stdout.write(lane.line(now)[:width] + "\n")
        sys.stdout.flush()
        self.drawn, self.last_draw = len(self.lanes), now

    def _clear(self) -> None:
        if self.tty and self.drawn:
            sys.stdout.write("\x1b[F\x1b[K" * self.drawn)  # up one line and erase it, each
            sys.stdout.flush()
        self.drawn = 0

    def close(self) -> None:
        """Erase the lane lines (the demo ends or stops)."""
        self._clear()
