"""Files and runs, below training and export alike: atomic writes, checkpoints, strict
state loading, run configs, and a run's model rebuilt from its checkpoint.

    from nuq.runs import load_run
    run = load_run("runs/fmnist_resnet20_w2a2_lsq")   # run.model, run.config, run.checkpoint
"""

from .checkpoint import CHECKPOINT, load_checkpoint, load_strict, resolve_checkpoint, save_checkpoint
from .config import RunConfig, config_from_dict, load_config
from .files import atomic_write_bytes, write_json
from .load import LoadedRun, architecture, load_run, qat_summary, rebuild

__all__ = ["CHECKPOINT", "LoadedRun", "RunConfig", "architecture", "atomic_write_bytes", "config_from_dict",
           "load_checkpoint", "load_config", "load_run", "load_strict", "qat_summary", "rebuild",
           "resolve_checkpoint", "save_checkpoint", "write_json"]
