"""model=hf on the Llama family (Llama, Mistral, Qwen2: grouped-query attention, RMSNorm, a
gated MLP): tiny random models built and saved here, pruned offline through the CLI by every
LM criterion, N:M, OWL and neuron granularity, in float32, bfloat16 and float16."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli
from tiny_lm import FAMILIES, corpus_and_tokenizer, save_family

transformers = pytest.importorskip("transformers")

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    """(folders by family, text file)."""
    root = tmp_path_factory.mktemp("llama")
    corpus, tokenizer = corpus_and_tokenizer(root)
    return {f: save_family(root, f, tokenizer) for f in FAMILIES}, corpus


def sweep(tmp_path, folder, corpus, *args) -> list[tuple[dict, object]]:
    """A multirun of the CLI (one process) on a tiny model, no training, half pruned:
    [(results.json, run folder)] in sweep order."""
    out = tmp_path / "sweep"
    run_cli(["-m", f"hydra.sweep.dir={out}", "cache.enabled=false", "model=hf",
             f"model.name={folder}", "dataset=text", f"dataset.path={corpus}",
             "dataset.seq_len=32", "optimizer=adamw", "train.epochs=0", "finetune.epochs=0",
             "train.batch_size=8", "strategy.amount=0.5", *args], cwd=tmp_path, env=OFFLINE)
    runs = sorted((p for p in out.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return [(json.loads((p / "results.json").read_text()), p) for p in runs]


def weight_names(layers: int = 2) -> list[str]:
    return [f"model.model.layers.{i}.{layer}.weight" for i in range(layers) for layer in LAYERS]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_lm_criterion_prunes_each_family(tmp_path, family_models, family):
    """Magnitude, Wanda and SparseGPT at 50% unstructured and 2:4: every block Linear (and
    nothing else) loses its half (per layer; 2 of every 4 inputs with 2:4); magnitude's mask
    is the brute-force top half of |W| over all block weights; SparseGPT moves the kept
    weights, the others keep them as they were. With model.offload=true each run gives the
    same pruned model, bit for bit."""
    folders, corpus = family_models
    dense = transformers.AutoModelForCausalLM.from_pretrained(folders[family]).state_dict()
    runs = sweep(tmp_path, folders[family], corpus, "strategy=l1,wanda,sparsegpt",
                 "strategy.pattern=null,2:4", "model.offload=false,true", "inference.measure=false")
    assert [(r["config"]["strategy"]["name"], r["config"]["strategy"]["pattern"],
             r["config"]["model"]["offload"]) for r, _ in runs] == [
        (s, p, o) for s in ("l1", "wanda", "sparsegpt") for p in (None, "2:4")
        for o in (False, True)]
    for (_, plain), (results, offloaded) in zip(runs[::2], runs[1::2], strict=True):
        # model.offload=true (one block at a time, strategies/offload.py): the same model;
        # magnitude too is scored one block at a time on the device
        once, blockwise = (torch.load(f / "checkpoints" / "pruned.pt")
                           for f in (plain, offloaded))
        assert all(torch.equal(once[n], blockwise[n]) for n in once), offloaded
        if results["config"]["strategy"]["name"] == "l1":
            assert "l1: 2 blocks one at a time" in next(offloaded.glob("*.log")).read_text()
    for results, folder in runs[::2]:
        strategy = results["config"]["strategy"]
        name, pattern = strategy["name"], strategy["pattern"]
        assert results["status"] == "ok"
        assert [layer["name"] for layer in results["pruned"]["layers"]] == weight_names()
        assert results["pruned"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
        pruned = torch.load(folder / "checkpoints" / "pruned.pt")
        for n in weight_names():
            w, before = pruned[n], dense[n.removeprefix("model.")]
            if pattern or name != "l1":  # per layer (per row for Wanda; 2 of 4 with 2:4)
                assert (w == 0).float().mean() == pytest.approx(0.5, abs=1e-3), (name, n)
            if pattern:
                assert ((w.view(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all(), (name, n)
            kept = w != 0
            moved = not torch.equal(w[kept], before[kept])
            assert moved == (name == "sparsegpt"), (name, n)
        for n in ("model.model.embed_tokens.weight", "model.lm_head.weight",
                  "model.model.norm.weight"):
            assert torch.equal(pruned[n], dense[n.removeprefix("model.")])
        if name == "l1" and pattern is None:  # global magnitude: the top half of all |W|
            everything = torch.cat([dense[n.removeprefix("model.")].abs().flatten()
                                    for n in weight_names()])
            threshold = everything.kthvalue(everything.numel() // 2).values
            for n in weight_names():  # (bfloat16-rounded weights tie at the threshold)
                size, kept = dense[n.removeprefix("model.")].abs(), pruned[n] != 0
                assert (size[kept] >= threshold).all() and (size[~kept] <= threshold).all()



def test_neuron_granularity_removes_whole_mlp_channels(tmp_path, family_models):
    """granularity=neuron on each family and criterion: half of every MLP's 64 channels go,
    each as a whole (its gate_proj and up_proj rows and its down_proj column); attention stays
    as it was; the compact model read back by prunebench's reader computes what the masked
    final model does."""
    from prunebench.models.hf import HFCausalLM
    from prunebench.pruning import compact

    folders, corpus = family_models
    runs = sweep(tmp_path, ",".join(str(folders[f]) for f in FAMILIES), corpus,
                 "strategy=l2,wanda,sparsegpt", "strategy.granularity=neuron",
                 "strategy.scope=layer")
    assert len(runs) == 9
    for results, folder in runs:
        assert results["status"] == "ok"
        model_folder = results["config"]["model"]["name"]
        dense = transformers.AutoModelForCausalLM.from_pretrained(model_folder).state_dict()
        final = torch.load(folder / "checkpoints" / "final.pt")
        mlp = [f"model.model.layers.{i}.mlp" for i in range(2)]
        assert results["compact"]["widths"] == {f"{m}.gate_proj.weight": [32, 64] for m in mlp}
        for m in mlp:
            gone = (final[f"{m}.gate_proj.weight"] == 0).all(1)
            assert gone.sum() == 32
            assert torch.equal((final[f"{m}.up_proj.weight"] == 0).all(1), gone)
            assert torch.equal((final[f"{m}.down_proj.weight"] == 0).all(0), gone)
            kept = dense[f"{m}.gate_proj.weight".removeprefix("model.")][~gone]
            assert torch.equal(final[f"{m}.gate_proj.weight"][~gone], kept)
        for n in weight_names():
            if "self_attn" in n:
                assert torch.equal(final[n], dense[n.removeprefix("model.")]), n
                assert "declares" in results["compact"]["fixed"][n]
        vocabulary = transformers.AutoConfig.from_pretrained(model_folder).vocab_size
        masked = HFCausalLM((32,), vocabulary, name=model_folder).eval()
        masked.load_state_dict(final)
        small = compact.load(folder / "checkpoints" / "compact.pt")
        assert small.model.model.layers[0].mlp.up_proj.weight.shape == (32, 32)
        x = torch.randint(vocabulary, (2, 32))
        with torch.no_grad():
            expected = masked(x)
            assert torch.allclose(small(x), expected, rtol=1e-5,
                                  atol=1e-5 * expected.abs().max())


def test_owl_spreads_the_sparsity_over_each_familys_layers(tmp_path, family_models):
    """allocation=owl with Wanda (sequential, its default) on each family, as the OWL
    authors' code prunes: one density per decoder block, the two blocks at exactly 0.5 -/+
    strategy.owl_lambda (0.08: min-max scaled, mean 1 - amount), and every output row of
    every Linear of a block losing round((1 - density) * width) weights. With
    model.offload=true the outlier ratios are taken one block at a time and the pruned model
    is the same, bit for bit."""
    folders, corpus = family_models
    runs = sweep(tmp_path, ",".join(str(folders[f]) for f in FAMILIES), corpus,
                 "strategy=wanda", "strategy.allocation=owl", "model.offload=false,true",
                 "inference.measure=false")
    assert [r["config"]["model"]["offload"] for r, _ in runs] == [False, True] * 3
    for (plain, once), (offloaded, blockwise) in zip(runs[::2], runs[1::2], strict=True):
        assert offloaded["allocation"] == plain["allocation"]  # ratios, densities
        assert "owl: 2 blocks one at a time" in next(blockwise.glob("*.log")).read_text()
        once, blockwise = (torch.load(f / "checkpoints" / "pruned.pt") for f in (once, blockwise))
        assert all(torch.equal(once[n], blockwise[n]) for n in once), offloaded
    for results, folder in runs[::2]:
        assert results["status"] == "ok"
        chosen = results["allocation"]
        blocks = {n: n.rpartition(".")[0].rsplit(".", 2)[0] for n in weight_names()}
        assert chosen["blocks"] == blocks  # model.model.layers.i
        density = chosen["block_densities"]
        assert sorted(density.values()) == pytest.approx([0.42, 0.58], abs=1e-9)
        pruned = torch.load(folder / "checkpoints" / "pruned.pt")
        for name in weight_names():
            zeros = (pruned[name] == 0).sum(1)
            width = pruned[name].shape[1]
            assert (zeros == round((1 - density[blocks[name]]) * width)).all(), name
        assert results["pruned"]["sparsity"] == pytest.approx(0.5, abs=0.02)



def test_half_precision_prunes_to_the_float32_masks(tmp_path, family_models):
    """model.dtype=bfloat16 / float16 on weights that all three dtypes hold exactly: magnitude
    gives float32's masks exactly; Wanda and SparseGPT, whose calibration statistics
    accumulate in float32 from activations computed in the lower precision, agree with
    float32's masks but for near-ties; every checkpoint is in the dtype asked for."""
    folders, corpus = family_models
    runs = sweep(tmp_path, str(folders["llama"]), corpus, "strategy=l1,wanda,sparsegpt",
                 "model.dtype=float32,bfloat16,float16")
    masks = {}
    for results, folder in runs:
        assert results["status"] == "ok"
        name, dtype = results["config"]["strategy"]["name"], results["config"]["model"]["dtype"]
        pruned = torch.load(folder / "checkpoints" / "pruned.pt")
        assert all(pruned[n].dtype == getattr(torch, dtype) for n in weight_names())
        masks[name, dtype] = torch.cat([(pruned[n] != 0).flatten() for n in weight_names()])
    for dtype in ("bfloat16", "float16"):
        assert torch.equal(masks["l1", dtype], masks["l1", "float32"])
        for name in ("wanda", "sparsegpt"):  # measured: at most 0.03% of the weights differ
            differ = (masks[name, dtype] != masks[name, "float32"]).float().mean().item()
            assert differ <= 1e-3, (name, dtype, differ)


def test_export_hf_loads_with_from_pretrained_to_equal_logits(tmp_path, family_models):
    """export.hf=true on each family, at weight and at neuron granularity: hf/ holds
    safetensors, config and tokenizer; transformers alone loads it and computes the logits of
    the masked final model; at neuron granularity the saved config says 32 MLP channels and
    the weights are that small."""
    from prunebench.models.hf import HFCausalLM

    folders, corpus = family_models
    runs = sweep(tmp_path, ",".join(str(folders[f]) for f in FAMILIES), corpus, "strategy=l2",
                 "strategy.scope=layer", "strategy.granularity=weight,neuron", "export.hf=true")
    assert len(runs) == 6
    for results, folder in runs:
        assert results["status"] == "ok"
        neuron = results["config"]["strategy"]["granularity"] == "neuron"
        export = next(e for e in results["exports"] if e["file"] == "hf")
        hf = folder / "hf"
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in hf.iterdir()}
        assert not [p for p in folder.iterdir() if p.name.startswith(".prunebench-tmp")]
        loaded = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
        assert loaded.config.intermediate_size == (32 if neuron else 64)
        assert loaded.model.layers[1].mlp.down_proj.weight.shape == (32, 32 if neuron else 64)
        model_folder = results["config"]["model"]["name"]
        vocabulary = loaded.config.vocab_size
        masked = HFCausalLM((32,), vocabulary, name=model_folder).eval()
        masked.load_state_dict(torch.load(folder / "checkpoints" / "final.pt"))
        x = torch.randint(vocabulary, (2, 32))
        with torch.no_grad():
            expected = masked(x)
            diff = (loaded(input_ids=x).logits - expected).abs().max().item()
        assert diff <= 1e-5 * expected.abs().max().item(), diff
        assert export["max_abs_diff"] <= 1e-5 * expected.abs().max().item()
        tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
        assert tokenizer("the cat")["input_ids"] == transformers.AutoTokenizer.from_pretrained(
            model_folder)("the cat")["input_ids"]


@pytest.mark.parametrize("args, key", [
    (["model=gpt", "export.hf=true"], "export.hf"),
    (["model=hf", "export.hf=true", "strategy=l2", "strategy.scope=global"],
     "strategy.scope=layer"),
    (["model=hf", "model.dtype=float64"], "model.dtype"),
    (["model=hf", "model.device_map=balanced"], "model.device_map"),
    (["model=hf", "dataset.calibration=pile"], "dataset.calibration=pile"),
    (["model=hf", "model.offload=yes"], "model.offload"),
    # nothing is downloaded here: datasets' offline mode (or its absence) gives one line
    (["model=hf", "dataset.calibration=c4"], "dataset.calibration=c4"),
    (["model=hf", "dataset.calibration=wikitext2"], "dataset.calibration=wikitext2"),
    (["model=hf", "dataset.calibration_path=x.txt"], "dataset.calibration_path"),
    pytest.param(["model=hf", "model.device_map=auto"], "model.device_map",
                 marks=pytest.mark.skipif(torch.cuda.is_available(),
                                          reason="refused only where there is no GPU")),
])
def test_llm_keys_are_checked_in_one_line(tmp_path, family_models, args, key):
    folders, corpus = family_models
    if "model=hf" in args:
        args = [*args, f"model.name={folders['llama']}"]
    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}", "dataset=text",
                    f"dataset.path={corpus}", "dataset.seq_len=32", "train.epochs=0", *args],
                   cwd=tmp_path, check=False, env=OFFLINE)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and key in errors[0], proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


CLOZE = [("the cat sat on the", [" mat", " park"], 0), ("a dog ran to the", [" tea", " park"], 1),
         ("we like green", [" tea", " mat"], 0), ("naïve café au", [" cat", " lait"], 1),
         ("the cat sat on", [" the", " we"], 0), ("a dog ran", [" green", " to"], 1)]


def cloze_accuracy(model, tokenizer) -> float:
    """The test's own multiple-choice accuracy: the choice whose tokens get the highest
    summed log-probability after the question (the harness's loglikelihood, computed here)."""
    right = 0
    for question, choices, answer in CLOZE:
        scores = []
        for choice in choices:
            whole = tokenizer(question + choice, add_special_tokens=False)["input_ids"]
            start = len(tokenizer(question, add_special_tokens=False)["input_ids"])
            with torch.no_grad():
                logits = model(torch.tensor([whole[:-1]])).float().log_softmax(-1)[0]
            scores.append(sum(logits[i - 1, whole[i]].item() for i in range(start, len(whole))))
        right += int(max(range(len(choices)), key=scores.__getitem__) == answer)
    return right / len(CLOZE)


def calibration_file(root):
    """A calibration text unlike the evaluation text (the same words, other sentences)."""
    file = root / "calibration.txt"
    if not file.exists():
        file.write_text(" ".join(f"the {a} ran to the {b}." for a in ("cat", "dog", "tea")
                                 for b in ("mat", "park", "café")) * 3, encoding="utf-8")
    return file


def calibration_windows_sha256(tokens: list[int], samples: int, seq_len: int,
                               seed: int) -> str:
    """SHA-256 of the windows a calibration draw takes from one token stream: for each
    window, a document drawn (the only one) and an offset drawn below len - seq_len."""
    import hashlib

    stream, generator = torch.tensor(tokens), torch.Generator().manual_seed(seed)
    digest = hashlib.sha256()
    for _ in range(samples):
        torch.randint(1, (1,), generator=generator)
        start = int(torch.randint(len(stream) - seq_len, (1,), generator=generator))
        digest.update(stream[start:start + seq_len].numpy().tobytes())
    return digest.hexdigest()


def test_eval_tasks_run_the_harness_on_each_phase(tmp_path, family_models):
    """eval.tasks with a task the test defines (a YAML over a JSON file): its accuracy on the
    dense, pruned and final models equals the test's own log-likelihood count, lands in
    results.json with the harness's version and the task's config, and in the table. Wanda
    calibrates on a text of its own (dataset.calibration=text): the windows it read are the
    ones drawn here from that file with calibration.seed's generator."""
    import lm_eval

    from prunebench.models.hf import HFCausalLM

    folders, corpus = family_models
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "cloze.json").write_text(json.dumps(
        [{"question": q, "choices": c, "answer": a} for q, c, a in CLOZE]))
    (tasks / "cloze.yaml").write_text(
        "task: tiny_cloze\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'cloze.json'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    out = tmp_path / "run"
    proc = run_cli([f"hydra.run.dir={out}", "cache.enabled=false", "model=hf",
                    f"model.name={folders['llama']}", "dataset=text", f"dataset.path={corpus}",
                    "dataset.seq_len=32", "optimizer=adamw", "train.epochs=0",
                    "finetune.epochs=1", "train.batch_size=8", "strategy=wanda",
                    "strategy.amount=0.5", "eval.tasks=[tiny_cloze]",
                    f"eval.include_path={tasks}", "dataset.calibration=text",
                    f"dataset.calibration_path={calibration_file(tmp_path)}",
                    "calibration.samples=12", "calibration.seed=7"], cwd=tmp_path, env=OFFLINE)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "ok"
    tokenizer = transformers.AutoTokenizer.from_pretrained(folders["llama"])
    assert results["calibration"]["source"] == "text"
    assert results["calibration"]["sha256"] == calibration_windows_sha256(
        tokenizer(calibration_file(tmp_path).read_text(), add_special_tokens=False)["input_ids"],
        samples=12, seq_len=32, seed=7)
    assert (results["calibration"]["windows"], results["calibration"]["seq_len"]) == (12, 32)
    vocabulary = transformers.AutoConfig.from_pretrained(folders["llama"]).vocab_size
    for phase in ("dense", "pruned", "final"):
        model = HFCausalLM((32,), vocabulary, name=str(folders["llama"])).eval()
        model.load_state_dict(torch.load(out / "checkpoints" / f"{phase}.pt"))
        assert results[phase]["tasks"]["tiny_cloze"]["acc"] == pytest.approx(
            cloze_accuracy(model, tokenizer)), phase
        harness = results[phase]["harness"]
        assert harness["lm_eval"] == lm_eval.__version__
        assert harness["configs"]["tiny_cloze"]["output_type"] == "multiple_choice"
        assert harness["samples"]["tiny_cloze"]["effective"] == len(CLOZE)
    assert "tiny_cloze acc" in proc.stdout
