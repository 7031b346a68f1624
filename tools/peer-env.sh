#!/usr/bin/env bash
# Builds the peer environment: a separate virtualenv with the libraries we compare against
# (SpikingJelly 2.0, snnTorch 1.0, Norse 1.1, NIR, nirtorch) for the peer tests
# (`pytest -m peer`) and the side-by-side benchmarks. Never a runtime dependency of spikebridge.
#
# Usage (from the repository root):  bash tools/peer-env.sh [VENV_DIR]   (default .peer-venv,
# git-ignored). Tests find it at .peer-venv/bin/python, or at $SPIKEBRIDGE_PEER_PYTHON.
# The peers are installed with --no-deps so that none of them replaces the pinned CPU torch
# (SpikingJelly declares torchvision/torchaudio, which it does not need for what we use).
set -euo pipefail
venv=${1:-.peer-venv}
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0                       # CPU build from local disk
"$venv/bin/pip" install -q --no-deps spikingjelly==2.0.0 snntorch==1.0.0 nir nirtorch
"$venv/bin/pip" install -q numpy loguru tqdm h5py requests packaging scipy matplotlib tensorboard
# Norse 1.1.0 (benchmarks/framework_bench.py): an sdist, pure Python; --no-deps keeps the CPU
# torch (it declares torchvision, which its LIF modules do not import); nir/nirtorch above.
"$venv/bin/pip" install -q --no-deps norse==1.1.0
"$venv/bin/python" - <<'PY'
import torch, spikingjelly, snntorch, norse
from spikingjelly.activation_based import neuron, ann2snn
from norse.torch import LIFBoxCell
print("peer env ready: torch", torch.__version__, "| snntorch", snntorch.__version__,
      "| norse", norse.__version__)
PY
