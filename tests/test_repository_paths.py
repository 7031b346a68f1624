"""Nothing in the repository depends on the development machine's file system.

A figure or a test must be reproducible from a checkout: every tracked file (``git ls-files``)
is searched for absolute paths into someone's home or work folder (the ``work``, ``root``
and ``Users`` folders at the file-system root, ``home/<user>``, Windows user folders; the
patterns are in ``_PREFIXES``). Paths that any machine has (``/tmp``,
``/usr/share/datasets``, the package's documented defaults) are fine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_START = r"(?<![\w.~/-])"
"""A path starts here: not inside a URL (a host name then a path) or a relative path."""
_PREFIXES = (  # spelled in pieces so that this file does not match itself
    "/" + "work/",
    "/" + r"home/[\w.-]+/",
    "/" + "root/",
    "/" + "Users/",
    r"[A-Za-z]:\\" + r"Users\\",
)
_MACHINE_PATH = re.compile("|".join(_START + prefix for prefix in _PREFIXES))


def machine_paths(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every line of ``text`` holding a machine's absolute path."""
    return [
        (n, line.strip())
        for n, line in enumerate(text.splitlines(), start=1)
        if _MACHINE_PATH.search(line)
    ]


def test_the_pattern_finds_machine_paths_and_nothing_else() -> None:
    found = "\n".join(
        [
            "bash " + "/work" + "/shared/tools/peer-env.sh",
            "cd " + "/home" + "/alice/src",
            "ls " + "/root" + "/.cache",
            "open " + "/Users" + "/bob/data",
            "C:" + "\\Users" + "\\carol\\x",
        ]
    )
    assert [n for n, _ in machine_paths(found)] == [1, 2, 3, 4, 5]
    fine = "\n".join(
        [
            "bash tools/peer-env.sh",
            "/usr/share/datasets/fashion-mnist and /tmp/bench.json",
            "https://example.org" + "/work" + "/page and ~" + "/work" + "/x",
            "runs" + "/work" + "/x (relative)",
        ]
    )
    assert machine_paths(fine) == []


def test_no_tracked_file_names_a_machine_path() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    hits = []
    for name in filter(None, listed.split("\0")):
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary files (images, archives)
            continue
        hits += [f"{name}:{n}: {line[:120]}" for n, line in machine_paths(text)]
    assert not hits, "absolute paths of a machine in tracked files:\n" + "\n".join(hits)
