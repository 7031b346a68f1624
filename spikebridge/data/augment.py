"""Training augmentation as separate choices: ``crop``, ``flip``, both, or ``none``.

``--augment crop,flip`` names each transform; a horizontal flip is never implied, since
digits and text are not mirror-symmetric (a flipped 2 is no digit; on scikit-learn's digits
it cost a teacher 3 points, issue 22). The old boolean spellings keep working: false (and
``--no-augment``) is ``none``; true (and ``--augment`` without a value) is deprecated and
means the old crop + flip, or ``crop`` alone on datasets whose entry says a flip may change
the class (``idx``), with a one-line notice naming the new spelling.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from spikebridge.errors import ConfigError

CROP, FLIP = "crop", "flip"
NONE = "none"
TRANSFORMS = (CROP, FLIP)
AUGMENT_CHOICES = (NONE, CROP, FLIP, f"{CROP},{FLIP}")
# The old boolean meant crop + flip: what `augment: true` still means where a flip is safe.
LEGACY_AUGMENT = f"{CROP},{FLIP}"
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NOTICES: set[str] = set()


@dataclass(frozen=True)
class Augment:
    """Which training transforms run: random crop (pad and shift), horizontal flip."""

    crop: bool = False
    flip: bool = False

    @property
    def any(self) -> bool:
        return self.crop or self.flip

    def __str__(self) -> str:
        return ",".join(t for t in TRANSFORMS if getattr(self, t)) or NONE


NO_AUGMENT = Augment()


def notice(old: str, instead: str) -> None:
    """Print ``warning: OLD is deprecated; INSTEAD`` to stderr: the format of
    ``config_cli.warn_deprecated``, which the config layer passes in (data sits below it)."""
    print(f"warning: {old} is deprecated; {instead}", file=sys.stderr, flush=True)


def legacy_default(flip_safe: bool) -> str:
    """What the deprecated ``augment: true`` means on a dataset (flip only where safe)."""
    return LEGACY_AUGMENT if flip_safe else CROP


def normalize_augment(
    value: str | bool, flip_safe: bool = True, warn: bool = True,
    warn_with: Callable[[str, str], None] = notice,
) -> str:  # fmt: skip
    """The canonical spelling (``none``, ``crop``, ``flip``, ``crop,flip``) of ``value``.

    ``value``: a comma-separated list of ``crop`` / ``flip`` (any order, spaces allowed),
    ``none``, or an old boolean. True is deprecated (notice through ``warn_with(old,
    instead)`` when ``warn``, once per process) and means :func:`legacy_default`. Anything
    else raises a one-sentence ``ConfigError``.
    """
    word = str(value).strip().lower()
    if word in _FALSE or word == NONE or word == "":
        return NONE
    if word in _TRUE:
        spelled = legacy_default(flip_safe)
        old = "augment as a boolean (--augment without a value, augment: true)"
        instead = f"it means {spelled} here; write --augment {spelled} (or augment: {spelled})"
        if warn and instead not in _NOTICES:
            _NOTICES.add(instead)
            warn_with(old, instead)
        return spelled
    parts = {p.strip() for p in word.split(",") if p.strip()}
    unknown = sorted(parts - set(TRANSFORMS))
    if unknown or not parts:
        raise ConfigError(
            f"augment is {value!r}; expected none or a comma-separated list of "
            f"{' and '.join(TRANSFORMS)} (e.g. crop,flip)."
        )
    return str(Augment(crop=CROP in parts, flip=FLIP in parts))


def parse_augment(value: str | bool) -> Augment:
    """The :class:`Augment` of a spelling (an old boolean true reads as crop + flip)."""
    spelled = normalize_augment(value, warn=False)
    parts = set(spelled.split(","))
    return Augment(crop=CROP in parts, flip=FLIP in parts)
