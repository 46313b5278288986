"""The comparison grid: validation before training, skipping finished cells, the table."""

from pathlib import Path

import pytest
from tests_helpers import needs_data

from nuq.commands.compare import GridConfig, cell_configs, markdown_table, run_grid

STUDY = Path(__file__).parents[2] / "configs" / "study" / "resnet20.yaml"


def test_bad_cell_fails_before_training(tmp_path):
    grid = GridConfig(out_dir=str(tmp_path), bits=(2, 99), seeds=(0,), methods={"lsq": {"qat": {"weight": "lsq"}}})
    with pytest.raises(ValueError, match="lsq_w99a99_s0"):
        run_grid(grid)
    assert not (tmp_path / "float").exists()
    grid = GridConfig(out_dir=str(tmp_path), bits=(2,), seeds=(0,), methods={"x": {"qat": {"act": "nope"}}})
    with pytest.raises(ValueError, match="unknown quantizer method"):
        cell_configs(grid)


def test_teacher_float_means_the_grids_float_run(tmp_path):
    kd = {"qat": {"weight": "lsq", "act": "lsq"}, "distill": {"teacher": "float", "temperature": 2.0}}
    grid = GridConfig(out_dir=str(tmp_path), bits=(2,), seeds=(0,), methods={"kd": kd, "other": {
        "qat": {"weight": "lsq", "act": "lsq"}, "distill": {"teacher": str(tmp_path / "elsewhere")}}})
    cells = {name: cfg for name, _, _, cfg in cell_configs(grid)}
    assert cells["kd"].distill.teacher == str(tmp_path / "float") and cells["kd"].distill.temperature == 2.0
    assert cells["other"].distill.teacher == str(tmp_path / "elsewhere")


def test_markdown_table_marks_best_and_reports_std():
    rows = [{"method": "float", "bits": 32, "seed": 0, "top1": 90.0, "top5": 99.0}]
    rows += [{"method": "a", "bits": 2, "seed": s, "top1": v, "top5": 0} for s, v in enumerate([80.0, 82.0])]
    rows += [{"method": "b", "bits": 2, "seed": s, "top1": v, "top5": 0} for s, v in enumerate([70.0, 70.0])]
    t = markdown_table(rows)
    assert "**81.00 ± 1.41**" in t and "70.00 ± 0.00" in t and "| float (32/32) | 90.00 |" in t


@needs_data
def test_grid_runs_and_resumes(tmp_path):
    base = {"model": {"name": "mlp", "kwargs": {"hidden": 64}}, "epochs": 2, "progress": False,
            "data": {"train_subset": 2000, "test_subset": 500, "batch_size": 100}, "optim": {"lr": 0.05}}
    grid = GridConfig(out_dir=str(tmp_path), base=base, bits=(2,), seeds=(0, 1),
                      methods={"lsq": {"qat": {"weight": "lsq", "act": "lsq"}}})
    rows = run_grid(grid)
    assert len(rows) == 3 and (tmp_path / "results.md").is_file() and (tmp_path / "results.csv").is_file()
    for png in ("accuracy_vs_bits", "training_curves", "quantizers_lsq", "entropy_act", "entropy_weight"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000, png
    assert all(r["top1"] > 40 for r in rows)  # chance is 10%
    mtime = (tmp_path / "lsq_w2a2_s1" / "checkpoint.pt").stat().st_mtime
    assert run_grid(grid) == rows  # finished cells are read, not retrained
    assert (tmp_path / "lsq_w2a2_s1" / "checkpoint.pt").stat().st_mtime == mtime
    # the grid changed: its finished cells are not reported as the new ones
    import dataclasses

    longer = dataclasses.replace(grid, base={**base, "optim": {"lr": 0.02}})
    with pytest.raises(ValueError, match=r"3 grid cell\(s\) hold results of a different config: float "
                                          r"\(optim.lr=0.05 -> 0.02\)"):
        run_grid(longer)
    # cells whose metrics (and config) alone were kept, e.g. committed without checkpoints, still count
    for run in ("float", "lsq_w2a2_s0", "lsq_w2a2_s1"):
        (tmp_path / run / "checkpoint.pt").unlink()
    assert run_grid(grid) == rows


def test_cells_run_bits_then_seed_then_method(tmp_path):
    methods = {"a": {"qat": {"weight": "lsq", "act": "lsq"}}, "b": {"qat": {"weight": "lsq", "act": "nulsq"}}}
    grid = GridConfig(out_dir=str(tmp_path), bits=(2, 3), seeds=(0, 1), methods=methods)
    order = [(b, s, m) for m, b, s, _ in cell_configs(grid)]
    assert order == [(b, s, m) for b in (2, 3) for s in (0, 1) for m in ("a", "b")]


def test_grid_from_shipped_weights_trains_no_float_run(tmp_path):
    kd = {"qat": {"weight": "lsq", "act": "lsq"}, "distill": {"teacher": "float"}}
    base = {"model": {"name": "resnet20", "kwargs": {"width": 16}}}
    grid = GridConfig(out_dir=str(tmp_path), base=base, bits=(2,), seeds=(0,), methods={"kd": kd},
                      init_from="pretrained:fashion_mnist")
    (_, _, _, cfg), = cell_configs(grid)
    assert cfg.init_from == "pretrained:fashion_mnist" and cfg.distill.teacher == "pretrained:fashion_mnist"
    from nuq.commands.compare import start_metrics
    from nuq.models.pretrained import record

    assert start_metrics(grid.init_from, cfg)["test_top1"] == record("resnet20", "fashion_mnist")["test_top1"]
    with pytest.raises(ValueError, match="test_subset"):
        run_grid(GridConfig(out_dir=str(tmp_path), base={**base, "data": {"test_subset": 100}}, bits=(2,),
                            seeds=(0,), methods={"kd": kd}, init_from="pretrained:fashion_mnist"))
    with pytest.raises(ValueError, match="float: a grid with init_from"):
        GridConfig(methods={"kd": kd}, init_from="pretrained:fashion_mnist", float={"epochs": 3})
    assert not (tmp_path / "float").exists()


def test_load_grid_restricts_methods(tmp_path):
    from nuq.commands.compare import load_grid

    grid = load_grid(STUDY, ["bits=[2]"], ["nulsq-a", "lsq"])
    assert list(grid.methods) == ["nulsq-a", "lsq"] and grid.bits == (2,)
    with pytest.raises(ValueError, match="--methods nope: not a method of the grid; allowed: lsq, nulsq-a"):
        load_grid(STUDY, [], ["nope"])
