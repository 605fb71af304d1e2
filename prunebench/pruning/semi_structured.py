"""`export.semi_structured=true`: 2:4 Linear weights as torch's semi-structured sparse tensors.

On CUDA (compute capability 8.0 and up), every Linear whose weight has at least 2 zeros in
each group of 4 along its input dimension is converted with
torch.sparse.to_sparse_semi_structured (cuSPARSELt or CUTLASS kernels, fp16), and the whole
model's forward on one test batch is timed against the same fp16 model kept dense
(torch.utils.benchmark, same process). Elsewhere the step is skipped with a log line and the
reason is recorded. Measured speedups depend on shapes: see the README's LM criteria section.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def is_2_4(weight: Tensor) -> bool:
    """At least 2 zeros in every group of 4 consecutive inputs of every row."""
    w = weight.detach().flatten(1)
    if w.shape[1] % 4:
        return False
    return bool(((w == 0).view(w.shape[0], -1, 4).sum(-1) >= 2).all())


def unavailable(device: torch.device) -> str | None:
    """Why semi-structured kernels cannot run here, or None."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"needs CUDA (device is {device.type})"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "needs a GPU of compute capability 8.0 or higher"
    return None


def latency_ms(model: nn.Module, x: Tensor) -> float:
    from prunebench.pruning.sparse import torch_benchmark

    timer = torch_benchmark().Timer("model(x)", globals={"model": model, "x": x})
    return timer.blocked_autorange(min_run_time=0.5).median * 1e3


def first_tensor(out) -> Tensor:
    """A model's output tensor (Hugging Face models return an object with `logits`)."""
    if torch.is_tensor(out):
        return out
    return out.logits if hasattr(out, "logits") else out[0]


@torch.no_grad()
def run(model: nn.Module, example: Tensor) -> dict:
    """Convert the 2:4 Linear layers of a copy of `model`; latency against dense, in fp16."""
    device = next(model.parameters()).device
    reason = unavailable(device)
    if reason is not None:
        log.info("export.semi_structured: skipped: %s", reason)
        return {"skipped": reason}
    from torch.sparse import to_sparse_semi_structured

    dense = copy.deepcopy(model).half().eval()
    x = example if not example.is_floating_point() else example.half()
    sparse = copy.deepcopy(dense)
    converted, left = [], {}
    for name, module in sparse.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if not is_2_4(module.weight):
            left[name] = "not 2:4"
            continue
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight),
                                         requires_grad=False)
            converted.append(name)
        except (RuntimeError, ValueError) as err:  # shapes the kernels do not take
            left[name] = str(err).splitlines()[0]
    if not converted:
        log.info("export.semi_structured: no Linear layer is 2:4 (strategy.pattern=2:4)")
        return {"converted": [], "left_dense": left}
    out_dense, out_sparse = first_tensor(dense(x)), first_tensor(sparse(x))
    dense_ms, sparse_ms = latency_ms(dense, x), latency_ms(sparse, x)
    result = {"converted": converted, "left_dense": left, "dtype": "float16",
              "batch": list(x.shape), "dense_ms": dense_ms, "sparse_ms": sparse_ms,
              "speedup": dense_ms / sparse_ms,
              "max_abs_diff": float((out_dense.float() - out_sparse.float()).abs().max())}
    log.info("export.semi_structured: %d Linear layers 2:4, forward %.3f ms vs %.3f ms dense "
             "(%.2fx)", len(converted), sparse_ms, dense_ms, result["speedup"])
    return result
