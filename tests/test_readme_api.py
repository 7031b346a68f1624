"""The README's Python API blocks run as written (a user copies them first)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def api_blocks() -> list[str]:
    """The ```python blocks of the README's "Python API" section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_shows_conversion_training_evaluation_and_export() -> None:
    code = "\n".join(api_blocks())
    for call in ("convert(", "fit(", "evaluate(", "export_nir(", "init_from_teacher("):
        assert call in code, f"the README's Python API no longer shows {call}"


def test_the_readme_api_blocks_run(tmp_path: Path) -> None:
    script = tmp_path / "readme_api.py"
    script.write_text("\n\n".join(api_blocks()), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "model.nir").stat().st_size > 0
    assert "'8':" in done.stdout  # evaluate() gave accuracy at every t <= 8
