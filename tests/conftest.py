"""Test-wide settings: run neuron kernels eagerly unless a test asks for compilation.

The fused kernels are the same functions compiled or not; compiling costs seconds per
variant, so one dedicated test (tests/nn) covers the compiled path.
"""

import os

import torch

os.environ.setdefault("SPIKEBRIDGE_COMPILE", "0")
# One thread: on a shared 2-core machine idle OpenMP threads busy-wait and slow small models 10x.
torch.set_num_threads(1)
