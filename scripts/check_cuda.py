"""One PASS/FAIL line, with its key figures, for a run of scripts/check_cuda.sh.

    python scripts/check_cuda.py DIR NAME      reads DIR/NAME/results.json (exit 1 on FAIL)
    python scripts/check_cuda.py DIR --verdict what the pairs of runs of one config say together
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def accuracy(r: dict, _: Path) -> tuple[bool, str]:
    ok = r["status"] == "ok" and r["final"]["accuracy"] > 0.5
    return ok, (f"final accuracy {r['final']['accuracy']:.4f} (dense "
                f"{r['dense']['accuracy']:.4f}), sparsity {r['final']['sparsity']:.3f}, "
                f"{r['timing']['total_s']:.1f} s")


# a run compared with another of the same config: its reference (single-again tells cuDNN's
# run-to-run nondeterminism from what DDP changes; under deterministic=true both should vanish)
REFERENCE = {"single-again": "single", "nccl-ddp": "single",
             "deterministic-again": "deterministic", "nccl-ddp-deterministic": "deterministic"}


def weights_apart(a: Path, b: Path) -> tuple[float, bool]:
    """(max abs difference of the final weights, whether the masks are the same) of two run
    folders."""
    import torch

    x, y = (torch.load(f / "checkpoints" / "final.pt", weights_only=True) for f in (a, b))
    diff = max(float((x[k].double() - y[k].double()).abs().max()) for k in x)
    masks = all(torch.equal(x[k] == 0, y[k] == 0) for k in x
                if k.endswith("weight") and x[k].dim() > 1)
    return diff, masks


def against_reference(r: dict, folder: Path) -> tuple[bool, str]:
    """Against the run of the same config named in REFERENCE: accuracy, weights, masks. Two
    runs under deterministic=true must be equal to the bit; otherwise they may differ by the
    order of floating-point sums, which training amplifies over many steps (and an 80%
    threshold then flips a few masks): the figures say how close, the accuracy decides."""
    reference = REFERENCE[folder.name]
    other = json.loads((folder.parent / reference / "results.json").read_text())
    diff, masks = weights_apart(folder, folder.parent / reference)
    close = abs(r["final"]["accuracy"] - other["final"]["accuracy"]) < 0.05
    exact = folder.name == "deterministic-again"
    ok = r["status"] == "ok" and (diff == 0 and masks if exact else close)
    return ok, (f"final accuracy {r['final']['accuracy']:.4f} vs {other['final']['accuracy']:.4f}"
                f" in {reference}, max abs weight diff {diff:.2e}, same masks {masks}")


def verdict(root: Path) -> str:
    """What the pairs say together: is DDP's difference more than run-to-run noise?"""
    apart = {name: weights_apart(root / name, root / ref) for name, ref in REFERENCE.items()
             if (root / name / "checkpoints" / "final.pt").exists()
             and (root / ref / "checkpoints" / "final.pt").exists()}
    if set(apart) != set(REFERENCE):
        return f"VERDICT: incomplete (pairs present: {', '.join(apart) or 'none'})"
    (noise, _), (ddp, _), (det_noise, _), (det_ddp, _) = (
        apart[n] for n in ("single-again", "nccl-ddp", "deterministic-again",
                           "nccl-ddp-deterministic"))
    figures = (f"max abs weight diff: run to run {noise:.2e}, DDP vs one process {ddp:.2e}; "
               f"deterministic=true: run to run {det_noise:.2e}, DDP vs one process "
               f"{det_ddp:.2e}")
    if det_noise != 0:
        return f"VERDICT: deterministic=true is not deterministic here ({figures})"
    if det_ddp == 0:
        return (f"VERDICT: DDP equals one process; the default-mode gap is nondeterminism "
                f"({figures})")
    # on CPU (DEVICE=cpu, 2 gloo ranks) the order of the ranks' sums alone gives about 1e-6
    return (f"VERDICT: DDP differs from one process beyond nondeterminism, by {det_ddp:.2e}: "
            f"the ranks' summation order, or DDP itself if far larger ({figures})")


def latency(r: dict, _: Path) -> tuple[bool, str]:
    lat = r.get("latency") or {}
    if r["status"] != "ok" or "speedup" not in lat:
        return False, str(r.get("failed_steps") or lat)[:300]
    return True, (f"speedup {lat['speedup']:.2f}x [{lat['speedup_low']:.2f}, "
                  f"{lat['speedup_high']:.2f}] form {lat['speedup_form']}; kernels "
                  + json.dumps(lat.get("kernels"))[:300])


def semi_structured(r: dict, _: Path) -> tuple[bool, str]:
    semi = r.get("semi_structured") or {}
    if not semi.get("converted"):  # skipped, none 2:4, or failed (failed_steps says why)
        return False, str(r.get("failed_steps") or semi)[:300]
    ok = semi["max_abs_diff"] < 0.05
    return ok, (f"{len(semi['converted'])} Linear layers 2:4, speedup {semi['speedup']:.2f}x "
                f"({semi['sparse_ms']:.3f} ms vs {semi['dense_ms']:.3f} ms dense, batch "
                f"{semi['batch']}), max abs diff {semi['max_abs_diff']:.2e}, left dense "
                f"{semi['left_dense']}")


CHECKS = {"single": accuracy, "deterministic": accuracy, "amp-bf16": accuracy,
          "amp-fp16": accuracy, "latency": latency, "semi-structured": semi_structured,
          **dict.fromkeys(REFERENCE, against_reference)}


def main() -> int:
    root, name = Path(sys.argv[1]), sys.argv[2]
    if name == "--verdict":
        print(verdict(root), flush=True)
        return 0
    folder = root / name
    try:
        results = json.loads((folder / "results.json").read_text())
        ok, figures = CHECKS[name](results, folder)
    except Exception as err:  # a missing key or file is this path's FAIL, not the script's end
        ok, figures = False, f"{type(err).__name__}: {err}"
    print(f"{'PASS' if ok else 'FAIL'} {name}: {figures}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
