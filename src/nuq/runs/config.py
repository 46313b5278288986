"""Run configuration: one frozen dataclass tree, loaded strictly from YAML.

``load_config(path, overrides)`` reads a YAML file, applies ``key.sub=value``
overrides and builds :class:`RunConfig`; unknown keys anywhere are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config_utils import apply_overrides, check_choice, check_type, from_dict, read_yaml, to_dict
from ..qconfig import QATConfig

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
#: train.compile: off, the whole model, or each quantizer module on its own
COMPILE_MODES = (False, True, "quantizers")


@dataclass(frozen=True)
class TrainConfig:
    """``train:``: how a run is computed (see :mod:`nuq.train.execution`), not part of its identity."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool | str = False
    log_every: int = 50

    def __post_init__(self) -> None:
        check_choice(self.precision, PRECISIONS, "train.precision")
        check_type(self.channels_last, bool, "train.channels_last")
        if not (isinstance(self.compile, bool) or self.compile == "quantizers"):
            raise ValueError(f"train.compile={self.compile!r}; allowed: true (the whole model), "
                             "'quantizers' (each quantizer module on its own), false")
        check_type(self.log_every, int, "train.log_every", positive=True)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet20"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion_mnist"
    data_dir: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 500
    pad: int = 2
    flip: bool = True
    #: decoding processes for image-folder datasets (tensor-resident sets ignore it)
    workers: int = 4
    #: crop size of image-folder datasets (None: 224); tensor datasets refuse it
    image_size: int | None = None

    def __post_init__(self) -> None:
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 8):
            raise ValueError(f"data.image_size={self.image_size!r}; allowed: an int >= 8, or null for the default")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"data.workers={self.workers!r}; allowed: an int >= 0")
        for k in ("batch_size", "eval_batch_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"data.{k}={v!r}; allowed: a positive int")


@dataclass(frozen=True)
class OptimConfig:
    """Weights: SGD (Nesterov) by default. Quantizer parameters get their own optimiser
    (``q_optimizer``) at ``q_lr_mult`` times the weight lr; AdamW at 1/100 is the nuLSQ
    supplement's recipe (C-I, C-II). ``q_weight_decay`` is a float or "same"."""

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 1e-3
    q_optimizer: str = "adamw"
    q_lr_mult: float = 0.01
    q_weight_decay: float | str = 0.0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        check_choice(self.optimizer, OPTIMIZERS, "optim.optimizer")
        check_choice(self.q_optimizer, OPTIMIZERS, "optim.q_optimizer")
        check_choice(self.schedule, SCHEDULES, "optim.schedule")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"optim.lr={self.lr!r}; allowed: a positive float")
        if isinstance(self.q_weight_decay, str) and self.q_weight_decay != "same":
            raise ValueError(f"optim.q_weight_decay={self.q_weight_decay!r}; allowed: a float or 'same'")
        if self.warmup_epochs < 0:
            raise ValueError(f"optim.warmup_epochs={self.warmup_epochs!r}; allowed: >= 0")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a float teacher run (loss: alpha*KL*T^2 + (1-alpha)*CE)."""

    teacher: str | None = None
    temperature: float = 1.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"distill.temperature={self.temperature!r}; allowed: > 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill.alpha={self.alpha!r}; allowed: a float in [0, 1]")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs. ``qat: null`` trains the float model;
    ``init_from`` names a run directory (or checkpoint file) to start from: a float
    run for QAT, or a higher-bit QAT run for progressive fine-tuning."""

    name: str = "run"
    out_dir: str = "runs/run"
    seed: int = 0
    epochs: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    qat: QATConfig | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)
    #: how the run is computed (precision, channels_last, compile): not part of its identity
    train: TrainConfig = field(default_factory=TrainConfig)
    init_from: str | None = None
    calib_batches: int = 8
    ckpt_every_steps: int | None = None
    device: str = "auto"
    sync_bn: bool = False
    progress: bool = True
    resume: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs={self.epochs!r}; allowed: a positive int")
        if self.calib_batches < 1:
            raise ValueError(f"calib_batches={self.calib_batches!r}; allowed: a positive int")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def identity(self) -> dict[str, Any]:
        """What the run computes: the config less the execution settings of ``train``
        (a checkpoint written under bf16 resumes under fp32, compiled or not)."""
        d = self.to_dict()
        d.pop("train")
        return d


def same_config(saved: dict[str, Any], cfg: RunConfig) -> bool:
    """Whether a checkpoint's config dict describes ``cfg``. Keys the saved dict lacks (a
    checkpoint written before they existed) count at their defaults; a dict that does not
    parse (keys of a newer version) is a different config."""
    try:
        return config_from_dict(saved).identity() == cfg.identity()
    except ValueError:
        return False


def config_diff(saved: dict[str, Any], cfg: RunConfig) -> list[str]:
    """Dotted keys (``optim.lr=0.1 -> 0.05``) where a saved config and ``cfg`` differ."""
    try:
        old = config_from_dict(saved).identity()
    except ValueError as e:
        return [f"the saved config does not parse here ({e})"]
    out: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in dict.fromkeys([*a, *b]):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else k)
        elif a != b:
            out.append(f"{key}={a!r} -> {b!r}")

    walk(old, cfg.identity(), "")
    return out


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return from_dict(RunConfig, data, "config")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML ``path`` (None = defaults), apply ``overrides``, validate."""
    data = read_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, list(overrides or [])))


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
