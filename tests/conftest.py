"""Test-wide settings: run neuron kernels eagerly unless a test asks for compilation.

The fused kernels are the same functions compiled or not; compiling costs seconds per
variant, so one dedicated test (tests/nn) covers the compiled path.
"""

import os

import torch

os.environ.setdefault("SPIKEBRIDGE_COMPILE", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
