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


@dataclass
class GradClip:
    max_norm: float | None = None
    max_value: float | None = None


@dataclass
class Regularization:
    l1: float = 0.0
    l2: float = 0.0


@dataclass
class Train:
    epochs: int = 30
    batch_size: int = 64
    threads: int | None = None
    amp: str | None = None  # null | bf16 | fp16
    compile: bool = False
    lr_schedule: str = "cosine"
    lr_step_size: int = 10
    lr_gamma: float = 0.1
    grad_clip: GradClip = field(default_factory=GradClip)
    regularization: Regularization = field(default_factory=Regularization)


@dataclass
class Distill:
    alpha: float = 0.0  # 0: plain fine-tuning, no teacher
    temperature: float = 4.0


@dataclass
class Finetune:
    epochs: int = 10
    lr_scale: float = 0.1
    bn_recalibrate: bool = True  # a no-op for models without batch norm
    bn_batches: int = 100
    distill: Distill = field(default_factory=Distill)


@dataclass
class Dense:
    checkpoint: str | None = None  # trained weights instead of training (models/checkpoint.py)
    checkpoint_prefix: str | None = None  # the wrapper attribute to load (`net`); None: found


@dataclass
class Cache:
    enabled: bool = True
    dir: str = "outputs/cache"


@dataclass
class Component:
    """A group option: what to build, and the name tables show."""

    _target_: str = MISSING
    name: str = MISSING


@dataclass
class Strategy(Component):
    amount: float | None = None
    threshold: float | None = None
    scope: str = "global"  # alias of allocation: global | layer (= uniform)
    allocation: str | None = None  # global | uniform | erk | lamp | owl; null: from scope
    granularity: str = "weight"
    exclude: list[str] = field(default_factory=list)  # name patterns of layers left dense
    pattern: str | None = None  # N:M, e.g. 2:4 (strategies/patterns.py)


@dataclass
class Optimizer:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = MISSING


@dataclass
class Baseline:
    random_same_density: bool = False
    shuffled_mask: bool = False
    reinit: bool = False
    reinit_budget: str = "epochs"  # epochs (Scratch-E) | matched_flops (Scratch-B)


@dataclass
class Export:
    """Files written from the final model (results/export.py)."""

    onnx: bool = False         # checkpoints/final.onnx (+ compact.onnx), checked by onnxruntime
    safetensors: bool = False  # checkpoints/final.safetensors
    semi_structured: bool = False  # CUDA: 2:4 Linears as sparse tensors, latency vs dense
    sparse: bool = False       # checkpoints/final_sparse.pt: prunable weights as CSR parts


@dataclass
class Inference:
    """Latency of the final model's forms (pruning/latency.py)."""

    measure: bool = True
    kernel: str = "auto"       # auto | dense | csr (pruning/sparse.py)


@dataclass
class Objective:
    name: str = "final_accuracy"
    min_sparsity: float = 0.9
    max_drop: float = 0.01


@dataclass
class Config:
    model: Component = field(default_factory=Component)
    dataset: Component = field(default_factory=Component)
    optimizer: Optimizer = field(default_factory=Optimizer)
    strategy: Strategy = field(default_factory=Strategy)
    schedule: Component = field(default_factory=Component)
    seed: int = 0
    device: str = "auto"
    resume: Any = "auto"  # auto | true | false
    train: Train = field(default_factory=Train)
    dense: Dense = field(default_factory=Dense)
    finetune: Finetune = field(default_factory=Finetune)
    cache: Cache = field(default_factory=Cache)
    baseline: Baseline = field(default_factory=Baseline)
    export: Export = field(default_factory=Export)
    inference: Inference = field(default_factory=Inference)
    objective: Objective = field(default_factory=Objective)
    logger: dict[str, Any] = field(default_factory=dict)  # conf/logger: trackers by name


GROUPS = ("model", "dataset", "optimizer", "strategy", "schedule")


def register() -> None:
    """Store the schema; group nodes stay open to their options' own keys."""
    node = OmegaConf.structured(Config)
    for group in GROUPS:
        OmegaConf.set_struct(node[group], False)
    ConfigStore.instance().store(name="prunebench_schema", node=node)
