"""Structured configs: the schema Hydra checks while composing, before any work.

`prunebench_schema` (in Hydra's ConfigStore, first in conf/config.yaml's defaults) types every
top-level key, so a wrong type or an unknown key in a YAML file fails at composition with
Hydra's message. Each group's node types the keys all its options share (a strategy's
amount, threshold, scope, granularity; an optimizer's lr) and stays open for an option's own
keys (a model's widths, a criterion's settings), which the option's `_target_` signature checks
when it is built. So a new strategy, model or dataset is still one module plus one YAML.
Value ranges and combinations are checked in config/checks.py, a strategy's own keys in its
constructor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


def key(default: Any, help: str) -> Any:
    """A schema key with its help text, which the configuration reference of the docs shows
    (docs/hooks/prunebench_docs.py: a key without one fails the docs build)."""
    return field(default=default, metadata={"help": help})


def node(factory: Any, help: str) -> Any:
    """A nested node (a dataclass or a container) with its help text."""
    return field(default_factory=factory, metadata={"help": help})


@dataclass
class GradClip:
    max_norm: float | None = key(None, "clip the global gradient norm to this (dense training "
                                       "and fine-tuning); null: no clipping")
    max_value: float | None = key(None, "clip every gradient element to [-max_value, max_value]")


@dataclass
class Regularization:
    l1: float = key(0.0, "proximal soft-threshold step after each optimizer step on the "
                         "prunable weights (weights reach exact zeros)")
    l2: float = key(0.0, "adds 0.5 * l2 * ||w||^2 of the prunable weights to the loss")


@dataclass
class Train:
    epochs: int = key(30, "epochs of dense training; 0 prunes at initialization, then trains "
                          "the pruned net in fine-tuning")
    batch_size: int = key(64, "training batch size (also of fine-tuning and calibration)")
    threads: int | None = key(None, "torch CPU threads; null keeps torch's default")
    amp: str | None = key(None, "null | bf16 | fp16: mixed precision on CUDA (a logged no-op "
                                "elsewhere)")
    compile: bool = key(False, "train through torch.compile(model)")
    lr_schedule: str = key("cosine", "none | cosine | step")
    lr_step_size: int = key(10, "epochs between decays (lr_schedule=step)")
    lr_gamma: float = key(0.1, "decay factor (lr_schedule=step)")
    grad_clip: GradClip = node(GradClip, "gradient clipping in dense training and fine-tuning")
    regularization: Regularization = node(Regularization, "sparsity-inducing penalties")


@dataclass
class Distill:
    alpha: float = key(0.0, "weight of the dense teacher's KL term; 0: plain fine-tuning, no "
                            "teacher built")
    temperature: float = key(4.0, "softmax temperature of teacher and student")


@dataclass
class Finetune:
    epochs: int = key(10, "fine-tuning epochs with the masks held")
    lr_scale: float = key(0.1, "fine-tuning lr = optimizer.lr * lr_scale")
    bn_recalibrate: bool = key(True, "after every mask change re-estimate BatchNorm running "
                                     "statistics (a no-op without batch norm)")
    bn_batches: int = key(100, "training batches for that re-estimate, no gradient steps")
    distill: Distill = node(Distill, "knowledge distillation from the dense model "
                                     "(Hinton et al. 2015)")


@dataclass
class Dense:
    checkpoint: str | None = key(None, "trained weights (state_dict, Lightning .ckpt, "
                                       ".safetensors) loaded instead of dense training")
    checkpoint_prefix: str | None = key(None, "which wrapped model of a checkpoint to load (a "
                                              "Lightning module's `net` beside its `teacher`); "
                                              "null: the one that fits the model")


@dataclass
class Cache:
    enabled: bool = key(True, "reuse dense models across runs and sweeps")
    dir: str = key("outputs/cache", "where the dense models are cached")


@dataclass
class Component:
    """A group option: what to build, and the name tables show."""

    _target_: str = key(MISSING, "the class (or function) Hydra builds for this option")
    name: str = key(MISSING, "the option's name in tables and run names")


@dataclass
class Strategy(Component):
    amount: float | None = key(None, "fraction of prunable weights to remove, 0 <= amount < 1 "
                                     "(of units at granularity=neuron)")
    threshold: float | None = key(None, "remove what scores below it (instead of amount)")
    scope: str = key("global", "global | layer (= uniform) | row; alias of allocation")
    allocation: str | None = key(None, "global | uniform | row | erk | lamp | owl; null: from "
                                       "scope")
    granularity: str = key("weight", "weight | neuron (whole output units / channels)")
    exclude: list[str] = node(list, "regex name patterns of layers left dense")
    pattern: str | None = key(None, "N:M, e.g. 2:4: N of every M weights along the input "
                                    "dimension removed; null: unstructured")
    allow_collapse: bool = key(False, "granularity=neuron: let a layer lose all its units "
                                      "(reported as collapsed)")
    owl_m: float = key(5.0, "allocation=owl: a weight whose |W_ij| * ||X_j|| is above owl_m "
                            "x the mean over its block is an outlier")
    owl_lambda: float = key(0.08, "allocation=owl: the blocks' densities spread over "
                                  "[-owl_lambda, +owl_lambda] around 1 - amount; a block "
                                  "is a transformer block (the model's first ModuleList), "
                                  "or each layer of a model without one (an MLP, a CNN)")


@dataclass
class Optimizer:
    _target_: str = key(MISSING, "the torch.optim class")
    _partial_: bool = key(True, "built later with the model's parameters")
    lr: float = key(MISSING, "learning rate of dense training (fine-tuning scales it)")


@dataclass
class Baseline:
    random_same_density: bool = key(False, "also fine-tune a random mask with the run's "
                                           "per-layer densities")
    shuffled_mask: bool = key(False, "also train the run's mask shuffled within each layer")
    reinit: bool = key(False, "also train the run's mask on re-initialized weights, from "
                              "scratch")
    reinit_budget: str = key("epochs", "epochs (Scratch-E) | matched_flops (Scratch-B)")


@dataclass
class Export:
    """Files written from the final model (results/export.py)."""

    onnx: bool = key(False, "checkpoints/final.onnx (+ compact.onnx), checked by onnxruntime")
    safetensors: bool = key(False, "checkpoints/final.safetensors")
    semi_structured: bool = key(False, "CUDA: 2:4 Linears as sparse semi-structured tensors, "
                                       "latency against dense")
    sparse: bool = key(False, "checkpoints/final_sparse.pt: prunable weights as CSR parts")
    hf: bool = key(False, "model=hf: hf/ in the run folder, save_pretrained's format "
                          "(safetensors, config, tokenizer), checked by from_pretrained")
    compressed: bool = key(False, "checkpoints/final.pbz: the pruned, quantized model, "
                                  "entropy-coded, its bytes in results.json (needs "
                                  "compress.quantize; docs/compression.md)")


@dataclass
class Compress:
    """Quantization after fine-tuning and the compressed file (prunebench/compress/)."""

    quantize: str = key("none", "none | int8 (symmetric per output channel) | kmeans (weight "
                                "sharing): the `quantized` phase after final")
    bits: int = key(8, "kmeans: 2^bits shared values per layer (1..16); int8: 8")
    finetune_epochs: int = key(0, "epochs training the shared values, masks and cluster "
                                  "assignment fixed")
    lr_scale: float | None = key(None, "learning rate of that fine-tuning = optimizer.lr * "
                                       "lr_scale; null: finetune.lr_scale")
    index_bits: int | None = key(None, "width of the relative positions in the compressed "
                                       "file; null: per layer, the width that makes it smallest")


@dataclass
class Inference:
    """Latency of the final model's forms (pruning/latency.py)."""

    measure: bool = key(True, "time the dense, masked, sparse and compact forms; false skips "
                              "the latency block")
    kernel: str = key("auto", "auto (per layer, the faster by measurement) | dense | csr")


@dataclass
class Calibration:
    """The training samples data-driven criteria score on (pruning/session.py)."""

    seed: int | None = key(None, "seed of the calibration draw, independent of the model "
                                 "seed; null: seed + 1")
    samples: int | None = key(None, "at most this many training samples (windows) per "
                                    "calibration draw; null: what the criterion's batches take")


@dataclass
class Objective:
    name: str = key("final_accuracy", "final_accuracy | final_accuracy_at_min_sparsity | "
                                      "sparsity_at_max_drop: what a run returns to a sweeper")
    min_sparsity: float = key(0.9, "constraint of final_accuracy_at_min_sparsity")
    max_drop: float = key(0.01, "constraint of sparsity_at_max_drop (dense - final accuracy)")


@dataclass
class Eval:
    """Zero-shot tasks of EleutherAI's lm-evaluation-harness (training/zero_shot.py)."""

    tasks: list[str] = node(list, "lm-eval task names run on the dense, pruned and final "
                                  "models (model=hf; the lm-eval extra), e.g. [boolq, piqa]")
    include_path: str | None = key(None, "a folder of your own task YAMLs for eval.tasks")
    limit: int | None = key(None, "at most this many documents per task (null: all)")
    batch_size: int = key(8, "documents per forward pass of the harness")


@dataclass
class Config:
    model: Component = node(Component, "the network (conf/model/)")
    dataset: Component = node(Component, "the data and its splits (conf/dataset/)")
    optimizer: Optimizer = node(Optimizer, "the optimizer (conf/optimizer/)")
    strategy: Strategy = node(Strategy, "the pruning criterion and selection (conf/strategy/)")
    schedule: Component = node(Component, "when masks change (conf/schedule/)")
    seed: int = key(0, "seed of initialization, splits, batches and masks")
    device: str = key("auto", "auto | cpu | cuda | mps (auto: cuda, then mps, then cpu)")
    deterministic: bool = key(False, "torch's deterministic kernels (cuDNN, cuBLAS, atomics), so "
                                     "two runs of one config give equal weights on a GPU too "
                                     "(slower there; an op without one warns and runs as before)")
    resume: Any = key("auto", "auto: continue an unfinished run in the run folder | true | "
                              "false")
    train: Train = node(Train, "dense training")
    dense: Dense = node(Dense, "a trained model instead of dense training")
    finetune: Finetune = node(Finetune, "recovery after pruning")
    cache: Cache = node(Cache, "the dense-model cache")
    baseline: Baseline = node(Baseline, "controls trained next to the run (pruning/controls.py)")
    export: Export = node(Export, "files written from the final model")
    inference: Inference = node(Inference, "latency of the final model")
    compress: Compress = node(Compress, "quantization after pruning (prunebench/compress/)")
    objective: Objective = node(Objective, "the number a run returns to a sweeper")
    eval: Eval = node(Eval, "zero-shot tasks beside perplexity (lm-evaluation-harness)")
    calibration: Calibration = node(Calibration, "the calibration draw of data-driven "
                                                 "criteria, recorded in results.json")
    logger: dict[str, Any] = node(dict, "experiment trackers by name (conf/logger/)")


GROUPS = ("model", "dataset", "optimizer", "strategy", "schedule")


def register() -> None:
    """Store the schema; group nodes stay open to their options' own keys."""
    node = OmegaConf.structured(Config)
    for group in GROUPS:
        OmegaConf.set_struct(node[group], False)
    ConfigStore.instance().store(name="prunebench_schema", node=node)
