"""One PASS/FAIL line, with its key figures, for a run of scripts/check_cuda.sh.

    python scripts/check_cuda.py DIR NAME      reads DIR/NAME/results.json (exit 1 on FAIL)
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


def ddp(r: dict, folder: Path) -> tuple[bool, str]:
    """Against the single-process run of the same config: accuracy, weights, masks."""
    import torch

    alone = json.loads((folder.parent / "single" / "results.json").read_text())
    a, b = (torch.load(f / "checkpoints" / "final.pt", weights_only=True)
            for f in (folder, folder.parent / "single"))
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    masks = all(torch.equal(a[k] == 0, b[k] == 0) for k in a
                if k.endswith("weight") and a[k].dim() > 1)
    # equal up to the order of floating-point sums, which training amplifies over many steps
    # (and an 80% threshold then flips a few masks): the figures say how close, the accuracy
    # decides
    ok = r["status"] == "ok" and abs(r["final"]["accuracy"] - alone["final"]["accuracy"]) < 0.05
    return ok, (f"final accuracy {r['final']['accuracy']:.4f} vs {alone['final']['accuracy']:.4f}"
                f" in one process, max abs weight diff {diff:.2e}, same masks {masks}")


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


CHECKS = {"single": accuracy, "nccl-ddp": ddp, "amp-bf16": accuracy, "amp-fp16": accuracy,
          "latency": latency, "semi-structured": semi_structured}


def main() -> int:
    root, name = Path(sys.argv[1]), sys.argv[2]
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
