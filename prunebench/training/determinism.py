"""`deterministic=true`: torch's deterministic kernels, so two runs of one config on a GPU
give the same weights (on CPU they do anyway).

By default cuDNN picks convolution kernels by speed, some of which add in a varying order, and
a few CUDA ops (index_add, scatter_add) use atomics: two runs of the same config then differ by
rounding, which training amplifies and a threshold can turn into different masks. With the key
on, torch.use_deterministic_algorithms picks the deterministic kernel of every op that has
one, cuDNN is told to use deterministic kernels and not to benchmark, and cuBLAS gets the fixed
workspace it needs (CUBLAS_WORKSPACE_CONFIG, unless already set). An op with no deterministic
kernel warns (torch's warning names it) and runs as before, rather than ending the run: on
CUDA that is AdaptiveAvgPool2d's backward, which the ResNets' head uses (with its 1x1 output
each input element should receive a single atomic add, so no order to vary:
scripts/check_cuda.sh's deterministic pair checks that the weights come out equal). It costs
speed on a GPU. Set for every run from its config (also back to off), since the flags are
global to the process and a sweep may run several runs in one.
"""

from __future__ import annotations

import os

import torch

CUBLAS_WORKSPACE = ":4096:8"  # what torch's reproducibility notes ask for (CUDA >= 10.2)


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
