#!/usr/bin/env bash
# Builds the peer environment: a separate virtualenv with the libraries we compare against
# (SpikingJelly 2.0, snnTorch 1.0, NIR, nirtorch) for the peer tests (`pytest -m peer`) and
# the side-by-side benchmarks. Never a runtime dependency of spikebridge.
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
"$venv/bin/python" - <<'PY'
import torch, spikingjelly, snntorch
from spikingjelly.activation_based import neuron, ann2snn
print("peer env ready: torch", torch.__version__, "| snntorch", snntorch.__version__)
PY
