"""model=hf: a tiny random GPT-2 with a BPE tokenizer trained here, saved with save_pretrained
and loaded back through the CLI offline: prune, fine-tune, evaluate. The dense perplexity is
checked against transformers' own loss on the same windows."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import run_cli
from tiny_lm import corpus_and_tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, text file): GPT-2 family, 2 blocks of width 32, 300-token BPE."""
    root = tmp_path_factory.mktemp("hf")
    corpus, tokenizer = corpus_and_tokenizer(root)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32,
                                     n_layer=2, n_head=2, bos_token_id=1, eos_token_id=1)
    folder = root / "gpt2-tiny"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, corpus


def run_tiny(tmp_path, tiny, *args) -> tuple[dict, object]:
    """The CLI on the tiny model and text, offline, no dense training, half of the weights
    (or units) pruned: (results.json, run folder)."""
    folder, corpus = tiny
    out = tmp_path / "run"
    run_cli([f"hydra.run.dir={out}", "cache.enabled=false", "model=hf", f"model.name={folder}",
             "dataset=text", f"dataset.path={corpus}", "dataset.seq_len=32", "optimizer=adamw",
             "train.epochs=0", "train.batch_size=8", "strategy.amount=0.5", *args],
            cwd=tmp_path, env=OFFLINE)
    return json.loads((out / "results.json").read_text()), out


def test_hf_model_loads_prunes_finetunes_and_evaluates_offline(tmp_path, tiny):
    folder, corpus = tiny
    results, out = run_tiny(tmp_path, tiny, "finetune.epochs=2", "strategy=wanda",
                            "compress.quantize=int8")
    assert results["status"] == "ok"
    assert results["config"]["dataset"]["tokenizer"] == str(folder)
    # GPT-2's Conv1D block layers, as Linear, are what was pruned; nothing outside the blocks
    names = [layer["name"] for layer in results["final"]["layers"]]
    assert len(names) == 8 and all(n.startswith("model.transformer.h.") for n in names)
    assert "model.transformer.h.0.attn.c_attn.weight" in names
    assert results["final"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert results["final"]["perplexity"] < results["pruned"]["perplexity"]
    final = torch.load(out / "checkpoints" / "final.pt")
    for dense in ("model.transformer.wte.weight", "model.lm_head.weight",
                  "model.transformer.ln_f.weight"):
        assert torch.count_nonzero(final[dense]) == final[dense].numel()
    # compress.quantize=int8 on the block layers (Linear, [out, in]): symmetric per output row,
    # reported as perplexity
    quantized = torch.load(out / "checkpoints" / "quantized.pt")
    for name in names:
        w = final[name].double()
        scale = (w.abs().amax(1) / 127)[:, None]
        reference = torch.where(scale > 0, torch.round(w / scale.clamp_min(1e-30)) * scale, 0)
        assert torch.allclose(quantized[name].double(), reference, atol=1e-6), name
    assert math.isfinite(results["quantized"]["perplexity"])
    assert "accuracy" not in results["quantized"]

    # the dense phase is the saved model itself: transformers' own shifted loss agrees
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor(tokenizer(corpus.read_text(), add_special_tokens=False)["input_ids"])
    test = ids[len(ids) - round(len(ids) * 0.05):]
    losses = []
    with torch.no_grad():
        for start in range(0, (len(test) - 1) // 32 * 32, 32):
            window = test[start:start + 33][None]  # 32 inputs and their 32 next tokens
            losses.append(model(input_ids=window, labels=window).loss.item())
    assert results["dense"]["perplexity"] == pytest.approx(
        math.exp(sum(losses) / len(losses)), rel=1e-4)
    protocol = results["protocol"]  # the windows scored, as counted here
    assert (protocol["split"], protocol["seq_len"], protocol["overlapping"]) == ("test", 32, False)
    assert protocol["windows"] == len(losses) and protocol["tokens_scored"] == 32 * len(losses)
    assert protocol["tokenizer"] == str(folder) and str(corpus) in protocol["text"]


def test_hf_neuron_pruning_removes_mlp_units_and_keeps_qkv_whole(tmp_path, tiny):
    """granularity=neuron on GPT-2: half of every MLP's hidden units go; c_attn, whose split
    into heads one removed unit breaks, stays whole by the trial removal; the compact model
    read back by prunebench's reader computes what final.pt's masked model does."""
    from prunebench.models.hf import HFCausalLM
    from prunebench.pruning import compact

    folder, _ = tiny
    results, out = run_tiny(tmp_path, tiny, "finetune.epochs=1", "strategy=l2")
    assert results["status"] == "ok"
    blocks = "model.transformer.h"
    assert results["compact"]["widths"] == {f"{blocks}.{i}.mlp.c_fc.weight": [64, 128]
                                            for i in range(2)}
    for i in range(2):
        why = results["compact"]["fixed"][f"{blocks}.{i}.attn.c_attn.weight"]
        assert why.startswith("removing a unit breaks the forward")
    vocabulary = transformers.AutoConfig.from_pretrained(folder).vocab_size
    masked = HFCausalLM((32,), vocabulary, name=str(folder)).eval()
    masked.load_state_dict(torch.load(out / "checkpoints" / "final.pt"))
    small = compact.load(out / "checkpoints" / "compact.pt")
    x = torch.randint(vocabulary, (2, 32))
    with torch.no_grad():
        expected = masked(x)
        assert torch.allclose(small(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


@pytest.mark.parametrize("args, key", [
    (["model.name=/nonexistent/tiny-model", "model.tokenizer=bytes"], "model.name"),
    (["model.name=/nonexistent/tiny-model"], "model.tokenizer"),
    (["dataset=wikitext2", "model=gpt"], "wikitext2"),
])
def test_hf_offline_errors_are_one_line(tmp_path, tiny, args, key):
    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}", "model=hf", "dataset=text",
                    f"dataset.path={tiny[1]}", "dataset.seq_len=32", *args], cwd=tmp_path,
                   check=False, env=OFFLINE)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and errors[0].startswith("prunebench: error:"), proc.stderr
    assert key in errors[0], proc.stderr


def test_unreachable_hub_fails_at_once_without_retries(tmp_path, tiny):
    """A hub id while the hub is out of reach (HF_ENDPOINT at a closed local port, offline
    mode not set): one probe, then the local cache only, so one line and none of
    huggingface_hub's retry warnings (five per file, about 50 s, before the probe)."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}", "model=hf",
                    "model.name=nobody/no-such-model", "model.tokenizer=bytes", "dataset=text",
                    f"dataset.path={tiny[1]}", "dataset.seq_len=32"], cwd=tmp_path,
                   check=False, env=env)
    output = proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode != 0 and "Traceback" not in output, output
    assert len(errors) == 1 and "model.name=nobody/no-such-model" in errors[0], output
    assert "out of reach" in output and "Retrying" not in output, output


@pytest.mark.parametrize("status, offline", [(200, False), (502, True), (407, True)])
def test_hub_probe_takes_answers_but_not_a_gateway_error(monkeypatch, status, offline):
    """An endpoint that answers is reachable; a proxy's 407 or a gateway's 502 is not."""
    import http.server
    import threading

    from huggingface_hub import constants

    from prunebench.models import hub

    class Endpoint(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802  (http.server's naming)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "PROBE_PAUSE_S", 0.0)
    hub.reachable.cache_clear()
    try:
        hub.offline_unless_reachable("model.name=someone/model", "someone/model")
        assert constants.HF_HUB_OFFLINE is offline
    finally:
        server.shutdown()
        hub.reachable.cache_clear()
