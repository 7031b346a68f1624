"""docs/EXPORT.md: the peer snippets that the peer tests execute exist, compile, and keep
the limits the docs state (snnTorch: one image at a time, a reset before each image)."""

from __future__ import annotations

import ast

import pytest
from peer_nir_run import snippet


@pytest.mark.parametrize("peer", ["spikingjelly", "snntorch"])
def test_peer_snippets_compile_and_use_the_documented_names(peer: str) -> None:
    tree = ast.parse(snippet(peer))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert {"path", "images", "logits"} <= names  # what peer_nir_run.py provides and reads
    assigned = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}  # fmt: skip
    assert "logits" in assigned and not {"path", "images"} & assigned


def test_snntorch_snippet_runs_one_image_at_a_time_after_a_reset() -> None:
    code = snippet("snntorch")
    assert "images.split(1)" in code and "utils.reset(net)" in code
    assert code.index("images.split(1)") < code.index("utils.reset(net)")  # reset per image


def test_a_missing_snippet_is_reported() -> None:
    with pytest.raises(LookupError, match="no snippet for lava"):
        snippet("lava")
