"""The feedback study (benchmarks/feedback_study.py): its smoke mode, statistics, and the training time budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

import fanet_monai.budget as budget_module
from fanet_monai.budget import TrainingTimeBudget
from fanet_monai.metrics import PassWiseMetrics, segmentation_metrics

from benchmarks import feedback_study as study


def test_time_budget_stops_before_an_epoch_would_overrun(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: clock["now"])

    def step(engine, batch):
        clock["now"] += 1.0  # every iteration costs one "second"

    engine = Engine(step)
    TrainingTimeBudget(seconds=7.5).attach(engine)
    engine.run([0, 1], max_epochs=20)  # 2 s per epoch: epochs end at 2, 4, 6; 6 + 2 > 7.5 stops there
    assert engine.state.epoch == 3 and clock["now"] == 6.0

    unlimited = Engine(step)
    TrainingTimeBudget(None).attach(unlimited)
    unlimited.run([0], max_epochs=4)
    assert unlimited.state.epoch == 4
    with pytest.raises(ValueError, match="seconds"):
        TrainingTimeBudget(0)


def test_connectivity_metrics_through_the_paper_metric_interface():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 8, 2:14] = 1
    pred = target.clone()
    pred[1, :, 8, 7:9] = 0  # cut the second line in two
    values = segmentation_metrics(pred, target, ["f1", "cldice", "betti0_error"])
    assert list(values) == ["f1", "cldice", "betti0_error"]
    assert values["cldice"][0] == 1.0 and values["cldice"][1] < values["f1"][1] + 0.05
    assert values["betti0_error"].tolist() == [0.0, 1.0]
    metric = PassWiseMetrics(["f1", "cldice"])
    metric.update(0, pred, target)
    metric.update(1, target, target)
    table = metric.aggregate()
    assert table[1]["cldice"] == 1.0 and table[0]["cldice"] < 1.0
    with pytest.raises(ValueError, match="unknown metrics"):
        PassWiseMetrics(["betti1"])


def test_paired_difference_marks_only_intervals_that_exclude_zero():
    assert study.paired_difference([0.80, 0.81, 0.82], [0.70, 0.70, 0.71]).endswith("*")
    assert not study.paired_difference([0.80, 0.70, 0.82], [0.75, 0.78, 0.79]).endswith("*")
    assert study.mean_sd([1.0, 3.0]) == "2.000 ± 1.414"


def test_pairs_parse_fold_and_seed():
    assert study.parse_pairs(["0:0", "2:1", "4:2"]) == [(0, 0), (2, 1), (4, 2)]
    with pytest.raises(SystemExit, match="FOLD:SEED"):
        study.parse_pairs(["2-1"])


def test_fold_datalist_holds_out_a_contiguous_block(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(9):
        (tmp_path / "images" / f"{i:02d}.png").touch()
    out = study.fold_datalist(tmp_path, fold=1, fold_size=3, out=tmp_path / "fold1.json")
    lists = json.loads(out.read_text())
    assert [Path(it["image"]).stem for it in lists["validation"]] == ["03", "04", "05"]
    assert len(lists["training"]) == 6 and lists["training"][0]["label"] == str((tmp_path / "masks" / "00.png").resolve())
    with pytest.raises(SystemExit, match="fold 3"):
        study.fold_datalist(tmp_path, fold=3, fold_size=3, out=tmp_path / "x.json")


@pytest.mark.slow
def test_feedback_study_smoke(tmp_path, capsys):
    runs = study.main(["--smoke", "--workdir", str(tmp_path)])
    # 2 folds x 1 seed: every configuration at equal epochs, the baselines again at FANet's seconds
    keys = sorted((r["config"], r["fold"], r["budget"]) for r in runs)
    assert keys == sorted([(c, f, "epochs") for c in ("basicunet", "b1", "b4_default") for f in (0, 1)]
                          + [(c, f, "time") for c in ("basicunet", "b1") for f in (0, 1)])
    fanet = next(r for r in runs if r["config"] == "b4_default" and r["fold"] == 0)
    passes = [row for row in fanet["rows"] if row["pass"] != "early_stop"]
    assert len(passes) == 2 and all(0 <= row["cldice"] <= 1 and row["betti0_error"] >= 0 for row in passes)
    for r in runs:  # equal-time runs may train up to 100x the epochs: the clock, not max_epochs, stops them
        assert r["epochs"] >= 1 and (r["epochs"] < 100 if r["budget"] == "time" else r["epochs"] == 1)
    printed = capsys.readouterr().out
    assert "Δ Dice vs BasicUNet" in printed and "thin, equal time" in printed
    assert (tmp_path / "dice_per_pass.png").stat().st_size > 1000
    # a second start resumes: nothing is trained again
    again = study.main(["--smoke", "--workdir", str(tmp_path)])
    assert len(again) == len(runs)
    assert np.isfinite([r["train_s"] for r in runs]).all()
