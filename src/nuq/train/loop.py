"""The training loop: float training or QAT, with resumable atomic checkpoints.

``train(cfg)`` runs one :class:`RunConfig` end to end and returns its final metrics.
A run directory holds ``config.yaml`` (the resolved config), ``checkpoint.pt``
(model, optimisers, scheduler position, RNG states, metrics so far), ``metrics.json``
and ``log.csv`` (plus TensorBoard scalars when ``tensorboard`` is installed).
Re-running the same config resumes from the checkpoint; since the batches of an epoch
depend only on (seed, epoch), the resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..data import load_dataset, make_loader
from ..nn.walk import split_parameters
from ..prepare import signed_inputs
from ..runs.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from ..runs.config import RunConfig, config_diff, same_config, save_config
from ..runs.files import write_json
from ..runs.load import qat_summary, rebuild
from ..runs.rundir import run_directory
from . import distributed as ddp
from . import execution as ex
from .build import build_model, build_teacher
from .evaluate import evaluate
from .health import constant_layers, constant_output_message
from .schedule import lr_factor
from .tblog import TensorBoardLog


class TrainingDiverged(RuntimeError):
    """The loss, a parameter or a buffer became NaN or Inf; the last checkpoint on disk is
    the last good state."""


def nonfinite_state(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers holding NaN or Inf (one host
    read for the whole model)."""
    items = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point() and v.numel()]
    if not items:
        return []
    ok = torch.stack([torch.isfinite(v).all() for _, v in items])
    if bool(ok.all()):
        return []
    return [k for (k, _), good in zip(items, ok.tolist()) if not good]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _make_optimizer(kind: str, params: list, lr: float, wd: float, cfg) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=wd)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def build_optimizers(model: nn.Module, cfg: RunConfig) -> list[torch.optim.Optimizer]:
    """One optimiser for the weights, one for the quantizer parameters (if any)."""
    o = cfg.optim
    weights, qparams = split_parameters(model)
    opts = [_make_optimizer(o.optimizer, weights, o.lr, o.weight_decay, o)]
    if qparams:
        qwd = o.weight_decay if o.q_weight_decay == "same" else float(o.q_weight_decay)
        opts.append(_make_optimizer(o.q_optimizer, qparams, o.lr * o.q_lr_mult, qwd, o))
    return opts


def distill_loss(logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None,
                 temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher || student) at temperature T + (1 - alpha) * CE."""
    ce = F.cross_entropy(logits, target)
    if teacher_logits is None:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1), log_target=True,
                  reduction="batchmean") * (t * t)
    return alpha * kl + (1 - alpha) * ce


class Trainer:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.dist = ddp.setup(cfg.device)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        d = cfg.data
        train_set = load_dataset(d.name, d.data_dir, True, d.image_size).subset(d.train_subset, seed=cfg.seed)
        test_set = load_dataset(d.name, d.data_dir, False, d.image_size).subset(d.test_subset, seed=0)
        self.num_classes, self.in_channels = train_set.num_classes, train_set.in_channels
        # under DDP, data.batch_size is per process and every rank reads its own shard
        self.train_loader = make_loader(train_set, d.batch_size, train=True, seed=cfg.seed, pad=d.pad, flip=d.flip,
                                        rank=self.dist.rank, world_size=self.dist.world_size, workers=d.workers)
        self.test_loader = make_loader(test_set, d.eval_batch_size, train=False, workers=d.workers)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"data.batch_size={d.batch_size} exceeds the {len(train_set)} training samples")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        ex.check_execution(cfg.train, self.device)
        self.teacher = build_teacher(cfg, self.num_classes, self.in_channels, self.device)

    def _calib_batches(self):
        loader = make_loader(self.train_loader.data, self.cfg.data.batch_size, train=False,
                             workers=self.cfg.data.workers)
        for i, (x, _) in enumerate(loader):
            if i >= self.cfg.calib_batches:
                break
            yield x.to(self.device)

    def _schedulers(self, opts) -> list[torch.optim.lr_scheduler.LambdaLR]:
        o = self.cfg.optim
        warm = int(round(o.warmup_epochs * self.steps_per_epoch))
        return [torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, self.total_steps, warm, o.schedule, o.warmup_start_factor)) for opt in opts]

    def _state(self, step: int) -> dict[str, Any]:
        return {
            "format": "nuq-checkpoint-1", "nuq_version": __version__, "config": self.cfg.to_dict(),
            "model": self.bare.state_dict(), "signed_inputs": signed_inputs(self.bare),
            "optimizers": [o.state_dict() for o in self.opts], "schedulers": [s.state_dict() for s in self.scheds],
            "step": step, "history": self.history, "rng_cpu": torch.get_rng_state(),
            "num_classes": self.num_classes, "in_channels": self.in_channels,
            # running sums of the epoch so far (loss * n, correct, n, seconds), so that a
            # resumed epoch logs the statistics of all its batches
            "epoch_sums": self._sums.detach().cpu(),
            **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
        }

    def _restore(self, ckpt: dict[str, Any]) -> int:
        """Optimiser, scheduler, RNG and history state; the model was rebuilt from ``ckpt``."""
        for o, s in zip(self.opts, ckpt["optimizers"], strict=True):
            o.load_state_dict(s)
        for sch, s in zip(self.scheds, ckpt["schedulers"], strict=True):
            sch.load_state_dict(s)
        torch.set_rng_state(ckpt["rng_cpu"])
        self.history = list(ckpt["history"])
        if self.scaler is not None and "grad_scaler" in ckpt:  # absent when saved under bf16/fp32
            self.scaler.load_state_dict(ckpt["grad_scaler"])
        step = int(ckpt["step"])
        if step % self.steps_per_epoch and "epoch_sums" in ckpt:
            self._resumed_sums = ckpt["epoch_sums"].to(torch.float64)
        return step

    def run(self) -> dict[str, Any]:
        if not self.dist.is_main:
            return self._run()
        with run_directory(self.out):
            return self._run()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        main = self.dist.is_main
        ckpt_path = self.out / CHECKPOINT
        resume = cfg.resume and ckpt_path.is_file()
        ckpt = load_checkpoint(ckpt_path) if resume else None
        if ckpt is not None and not same_config(ckpt["config"], cfg):
            diff = ", ".join(config_diff(ckpt["config"], cfg)[:6])
            raise ValueError(f"{self.out} holds a run of a different config (differs in: {diff}); use another "
                             "out_dir, or resume: false to start over")
        if ckpt is not None:
            self.model = rebuild(ckpt, self.num_classes, self.in_channels)[0].to(self.device)
        else:
            self.model = build_model(cfg, self.num_classes, self.in_channels, self._calib_batches(), self.device)
            self.model.to(self.device)
        self.bare = ex.to_memory_format(self.model, cfg.train)
        self._health_checked = False
        self.model = ex.maybe_compile(ddp.wrap(self.bare, self.dist, self.device, cfg.sync_bn), cfg.train)
        self.opts = build_optimizers(self.bare, cfg)
        self.scheds = self._schedulers(self.opts)
        self.scaler = ex.grad_scaler(cfg.train, self.device)
        self.history: list[dict[str, Any]] = []
        self._sums = torch.zeros(4, dtype=torch.float64)
        self._resumed_sums: torch.Tensor | None = None
        step = self._restore(ckpt) if ckpt is not None else 0
        if main:
            save_config(cfg, self.out / "config.yaml")
        start_epoch = step // self.steps_per_epoch
        self.tb = TensorBoardLog(self.out) if main else None
        for epoch in range(start_epoch, cfg.epochs):
            step = self._train_epoch(epoch, step)
            ddp.sync_buffers(self.model, self.dist)
            # every rank evaluates the whole test set: identical numbers, no reduction needed
            metrics = evaluate(self.bare, self.test_loader, self.device)
            row = {"epoch": epoch + 1, "step": step, **self._epoch_stats,
                   **{f"test_{k}": v for k, v in metrics.items()}}
            self._check_sync(row)
            self.history.append(row)
            if main:
                save_checkpoint(self._state(step), ckpt_path)
                self._log(row)
            ddp.barrier(self.dist)
        if self.tb is not None:
            self.tb.close()
        final = {"name": cfg.name, "quant": qat_summary(cfg.qat), **(self.history[-1] if self.history else {}),
                 "nuq_version": __version__}
        if main:
            write_json({"final": final, "history": self.history, "config": cfg.to_dict()}, self.out / "metrics.json")
        return final

    def _check_sync(self, row: dict[str, Any]) -> None:
        """Under DDP, fail loudly if the ranks' models have drifted apart."""
        if not self.dist.enabled:
            return
        sums = ddp.gather_floats(ddp.state_checksum(self.model), self.dist)
        row["world_size"] = self.dist.world_size
        row["rank_checksums"] = sums
        if any(s != sums[0] for s in sums):
            raise RuntimeError(f"DDP ranks hold different models after epoch {row['epoch']}: checksums {sums}")

    def _train_epoch(self, epoch: int, step: int) -> int:
        cfg, tc = self.cfg, self.cfg.train
        self.model.train()
        self.train_loader.set_epoch(epoch)
        skip = step - epoch * self.steps_per_epoch  # batches already done before a mid-epoch kill
        # loss * n, correct, n accumulate on the device and are read once per log interval:
        # a host read per step would serialise a GPU step
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        prior = self._resumed_sums if skip else None
        self._resumed_sums = None
        t0 = time.perf_counter() - (float(prior[3]) if prior is not None else 0.0)
        if prior is not None:
            sums += prior[:3].to(self.device)
        show = cfg.progress and self.dist.is_main
        bar = tqdm(self.train_loader, total=self.steps_per_epoch, disable=None if show else True, leave=False,
                   desc=f"{cfg.name} ep {epoch + 1}/{cfg.epochs}", dynamic_ncols=True)
        for i, (x, y) in enumerate(bar):
            if i < skip:
                continue
            x = ex.input_format(x.to(self.device, non_blocking=True), tc)
            y = y.to(self.device, non_blocking=True)
            with ex.autocast(tc, self.device):
                logits = self.model(x)
                t_logits = None
                if self.teacher is not None:
                    with torch.no_grad():
                        t_logits = self.teacher(x)
                loss = distill_loss(logits.float(), y, None if t_logits is None else t_logits.float(),
                                    cfg.distill.temperature, cfg.distill.alpha)
            for o in self.opts:
                o.zero_grad(set_to_none=True)
            self._backward_step(loss)
            step += 1
            if not self._health_checked:  # once per process, after the lazy quantizer init
                self._health_checked = True
                with ex.autocast(tc, self.device):  # every rank: SyncBatchNorm's forward is collective
                    dead = constant_layers(self.bare, x)
                if dead and self.dist.is_main:
                    warnings.warn(constant_output_message(dead), stacklevel=1)
            with torch.no_grad():
                n = y.numel()
                sums[0] += loss.detach().double() * n
                sums[1] += (logits.argmax(1) == y).sum()
                sums[2] += n
            last = i + 1 == self.steps_per_epoch
            ckpt_now = (cfg.ckpt_every_steps and step % cfg.ckpt_every_steps == 0 and not last
                        and self.dist.is_main)
            if ckpt_now or last or step % tc.log_every == 0:
                self._sums = torch.cat([sums.cpu(), torch.tensor([time.perf_counter() - t0], dtype=torch.float64)])
                self._check_finite(epoch, step)
                tot_loss, tot_correct, tot_n = self._sums[:3].tolist()
                bar.set_postfix(loss=f"{tot_loss / tot_n:.3f}", acc=f"{100 * tot_correct / tot_n:.1f}")
            if ckpt_now:
                save_checkpoint(self._state(step), self.out / CHECKPOINT)
        tot_loss, tot_correct, tot_n, _ = self._sums.tolist()
        self._sums = torch.zeros(4, dtype=torch.float64)  # an end-of-epoch checkpoint starts a new epoch
        self._epoch_stats = {"train_loss": tot_loss / max(tot_n, 1), "train_top1": 100 * tot_correct / max(tot_n, 1),
                             "lr": self.opts[0].param_groups[0]["lr"], "epoch_time_s": time.perf_counter() - t0}
        return step

    def _backward_step(self, loss: torch.Tensor) -> None:
        """Backward, optional gradient clipping and the optimiser/scheduler steps (through the
        GradScaler under fp16: it skips a step whose gradients overflowed)."""
        scaler = self.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if self.cfg.optim.grad_clip:
            if scaler is not None:  # clip the true gradients, not the scaled ones
                for o in self.opts:
                    scaler.unscale_(o)
            nn.utils.clip_grad_norm_(self.bare.parameters(), self.cfg.optim.grad_clip)
        for o in self.opts:
            scaler.step(o) if scaler is not None else o.step()
        if scaler is not None:
            scaler.update()
        for s in self.scheds:
            s.step()

    def _check_finite(self, epoch: int, step: int) -> None:
        """Stop a diverged run (loss, parameters or buffers non-finite) before it writes a
        checkpoint: the one on disk stays the last good state."""
        tot_loss = float(self._sums[0])
        bad = [] if math.isfinite(tot_loss) else ["the training loss"]
        bad += nonfinite_state(self.bare)
        if bad:
            names = ", ".join(bad[:6]) + (f" (+{len(bad) - 6} more)" if len(bad) > 6 else "")
            ckpt = self.out / CHECKPOINT
            last = f"the last good state is {ckpt}" if ckpt.is_file() else "no checkpoint was written before"
            raise TrainingDiverged(f"NaN or Inf by epoch {epoch + 1}, step {step} in {names}; {last} "
                                   "(lower optim.lr or q_lr_mult, or check the quantizer init)")

    def _log(self, row: dict[str, Any]) -> None:
        path = self.out / "log.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            self.tb.epoch(row)
        if self.cfg.progress and self.dist.is_main:
            tqdm.write(f"[{self.cfg.name}] epoch {row['epoch']}: loss {row['train_loss']:.3f} "
                       f"train {row['train_top1']:.2f}% test {row['test_top1']:.2f}%")
            sys.stdout.flush()  # epoch lines show up promptly in redirected logs


def train(cfg: RunConfig) -> dict[str, Any]:
    """Train (float or QAT) as configured; resumes from ``cfg.out_dir`` if possible."""
    return Trainer(cfg).run()
