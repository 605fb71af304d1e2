"""model.offload=true (strategies/offload.py): Wanda and SparseGPT one decoder block at a time.

A process whose weights stay on disk holds about one block plus the calibration activations
(and the masks it returns), far under the whole model; a run killed mid-model by SIGKILL
resumes at the next block and ends with the model of a run never killed (and of one without
offload). Equality of offload and no offload on every Llama family (magnitude, Wanda,
SparseGPT, OWL): tests/test_hf_llama.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import run_cli
from tiny_lm import corpus_and_tokenizer, save_family

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# Prunes a checkpoint folder with its blocks on disk (offload.open_checkpoint), with Wanda's
# statistics and half of every row removed, after a warm-up on a one-block copy (the
# libraries' one-time allocations); prints the peak RSS growth of the pruning alone.
MEASURED = r"""
import json, sys
from pathlib import Path
import torch
from prunebench.strategies import offload
from prunebench.strategies.wanda import accumulate_squares, wanda_scores

def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                if l.startswith(field + ":"))

def prune(folder, work):
    model, store = offload.open_checkpoint(Path(folder), Path(work), torch.device("cpu"))
    weights = {n: p for n, p in model.named_parameters()
               if n.startswith("model.layers.") and p.dim() == 2}
    new = {n: torch.ones((), dtype=torch.bool).expand(p.shape) for n, p in weights.items()}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(model.config.vocab_size, (4, 32), generator=g), None)
               for _ in range(2)]
    sums = {}
    def start(group):
        sums.clear()
        return lambda n, x: accumulate_squares(sums, n, x)
    def prune_group(group):
        for n in group:
            scores = wanda_scores(weights[n], sums[n].sqrt())
            keep = torch.ones_like(scores, dtype=torch.bool)
            keep.scatter_(1, scores.argsort(dim=1, stable=True)[:, :scores.shape[1] // 2], False)
            new[n] = keep
            weights[n].mul_(keep)
    offload.sequential(model, weights, batches, store, start, prune_group, new, label="test")
    return new

torch.set_num_threads(1)
prune(sys.argv[3], sys.argv[4])  # warm-up
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
base = rss("VmRSS")
masks = prune(sys.argv[1], sys.argv[2])
print(json.dumps({"growth": rss("VmHWM") - base,
                  "mask_bytes": sum(m.numel() for m in masks.values())}))
"""


def random_checkpoint(folder, layers: int) -> int:
    """A Llama config of `layers` blocks of about 4 MB each (float32), random weights written
    straight to safetensors (no initialization pass); the bytes of the blocks' Linears."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    config = transformers.AutoConfig.for_model(
        "llama", vocab_size=300, hidden_size=256, intermediate_size=1024,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, tie_word_embeddings=False)
    with init_empty_weights():
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    g = torch.Generator().manual_seed(layers)
    state = {n: torch.randn(p.shape, generator=g) * (1.0 if "norm" in n else 0.05)
             for n, p in skeleton.state_dict().items()}
    folder.mkdir()
    config.save_pretrained(folder)
    save_file(state, folder / "model.safetensors")
    return sum(v.numel() * 4 for n, v in state.items()
               if n.startswith("model.layers.") and v.dim() == 2)


@pytest.mark.slow  # a fresh measured process and a 90 MB model: about a minute when loaded
def test_offload_from_disk_holds_one_block_and_matches_in_memory(tmp_path):
    """24 blocks (90 MB) pruned from disk in a fresh process: its peak RSS grows by far less
    than the blocks' bytes (the bool masks it returns are a quarter of them); the pruned
    blocks it wrote equal the same pruning of the model held in memory."""
    from safetensors.torch import load_file

    from prunebench.strategies import offload

    big = random_checkpoint(tmp_path / "big", 24)
    random_checkpoint(tmp_path / "small", 1)
    proc = subprocess.run(
        [sys.executable, "-c", MEASURED, str(tmp_path / "big"), str(tmp_path / "work"),
         str(tmp_path / "small"), str(tmp_path / "warm")], capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"},
        timeout=600)
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    block = big / 24
    assert measured["mask_bytes"] == big // 4
    # measured: 40 MB for 94 MB of blocks, of which 24 MB are the masks; the rest is one
    # block's transients (its weights, scores and sort indices, its checkpoint's bytes)
    assert measured["growth"] < measured["mask_bytes"] + 6 * block, (measured, big)
    assert measured["growth"] < 0.55 * big, (measured, big)

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "big").eval()
    weights = {n: p for n, p in model.named_parameters()
               if n.startswith("model.layers.") and p.dim() == 2}
    new = {n: torch.ones_like(p, dtype=torch.bool) for n, p in weights.items()}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(300, (4, 32), generator=g), None) for _ in range(2)]
    sums = {}

    def start(group):
        sums.clear()
        return lambda n, x: sums.__setitem__(n, sums.get(n, 0) + x.pow(2).sum(0))

    def prune_group(group):  # Wanda's |W| ||X||, half of each row, computed here
        for n in group:
            scores = weights[n].abs() * sums[n].sqrt()
            keep = torch.ones_like(scores, dtype=torch.bool)
            keep.scatter_(1, scores.argsort(dim=1, stable=True)[:, :scores.shape[1] // 2], False)
            new[n] = keep
            weights[n].mul_(keep)

    store = offload.BlockStore(tmp_path / "memory", torch.device("cpu"))
    with torch.no_grad():
        offload.sequential(model, weights, batches, store, start, prune_group, new)
    for i in range(24):
        saved = load_file(tmp_path / "work" / f"block-{i}.safetensors")
        for n in (n for n in weights if n.startswith(f"model.layers.{i}.")):
            assert torch.equal(saved[n], weights[n]), n
            assert torch.equal(saved[f"mask:{n}"], new[n]), n
            assert (weights[n] == 0).float().mean() == 0.5
    assert not (tmp_path / "memory").exists()  # blocks in memory: the folder goes at the end


# The CLI with a SIGKILL right after the checkpoint of block KILL_AFTER (offload.py's own
# checkpoint, then the process killed as a scheduler would kill it)
KILLED = r"""
import os, signal, sys
from prunebench.strategies import offload
after = int(os.environ.get("KILL_AFTER", "0"))
checkpoint = offload.BlockStore.checkpoint
def checkpoint_then_die(self, index, *args):
    checkpoint(self, index, *args)
    if index + 1 == after:
        os.kill(os.getpid(), signal.SIGKILL)
offload.BlockStore.checkpoint = checkpoint_then_die
from prunebench.cli import main
sys.argv = ["prunebench", *sys.argv[1:]]
main()
"""


@pytest.mark.slow  # kill-and-resume: three runs of the CLI
def test_sigkill_mid_model_resumes_at_the_next_block(tmp_path):
    """SparseGPT at 2:4 with offload on a 4-block Llama, SIGKILLed after block 2: progress
    says 2 blocks; the same command again resumes at block 2 and ends with the pruned model
    of a run without offload, bit for bit."""
    corpus, tokenizer = corpus_and_tokenizer(tmp_path)
    folder = save_family(tmp_path, "llama", tokenizer, layers=4)
    common = ["cache.enabled=false", "model=hf", f"model.name={folder}", "dataset=text",
              f"dataset.path={corpus}", "dataset.seq_len=32", "optimizer=adamw",
              "train.epochs=0", "finetune.epochs=0", "train.batch_size=8", "strategy=sparsegpt",
              "strategy.pattern=2:4", "inference.measure=false"]
    run = tmp_path / "run"
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", KILLED, f"hydra.run.dir={run}", *common, "model.offload=true"]
    killed = subprocess.run(args, capture_output=True, text=True, timeout=600,
                            env={**env, "KILL_AFTER": "2"}, cwd=tmp_path)
    assert killed.returncode == -9, killed.stderr
    assert json.loads((run / "offload" / "progress.json").read_text())["blocks_done"] == 2
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env,
                             cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at block 2 of 4" in resumed.stdout + resumed.stderr
    assert not (run / "offload").exists()
    run_cli([f"hydra.run.dir={tmp_path / 'plain'}", *common], cwd=tmp_path, env=OFFLINE)
    once = torch.load(tmp_path / "plain" / "checkpoints" / "pruned.pt")
    twice = torch.load(run / "checkpoints" / "pruned.pt")
    assert once.keys() == twice.keys()
    for n in once:
        assert torch.equal(once[n], twice[n]), n
    assert (once["model.model.layers.3.mlp.up_proj.weight"] == 0).float().mean() == 0.5
