"""The native-resolution, volume, annotation-loop and ONNX Runtime benchmarks run every step at tiny sizes (their
``--smoke`` modes) and report what they measured; the tables in the README come from the same code at full size."""

from __future__ import annotations

import importlib.util
import json

import pytest

from benchmarks import annotation_loop, native_resolution, volumes


@pytest.mark.slow
def test_native_resolution_smoke_scores_every_configuration_per_fold(tmp_path, capsys):
    runs = native_resolution.main(["--smoke", "--workdir", str(tmp_path)])
    assert {r["config"] for r in runs} == set(native_resolution.CONFIGS)
    assert {(r["fold"], r["seed"]) for r in runs} == {(0, 0), (1, 0)}
    for run in runs:
        assert {"p1", "refined", "refined_clean"} <= set(run)
        assert 0 <= run["refined"]["dice"] <= 1 and run["refined_clean"]["betti0"] >= 0
    table = capsys.readouterr().out
    assert "| fanet_patch | 2 |" in table and "Δ Dice patch − resize" in table
    # started again: every run is found in runs.jsonl and skipped
    assert len(native_resolution.main(["--smoke", "--workdir", str(tmp_path)])) == len(runs)


@pytest.mark.slow
def test_volume_benchmark_smoke_trains_every_network_at_equal_epochs_and_time(tmp_path, capsys):
    runs = volumes.main(["--smoke", "--workdir", str(tmp_path), "--learning-rate", "1e-3", "fanet_3d=3e-4"])
    by_budget = {(r["config"], r["budget"]) for r in runs}
    assert {(c, "epochs") for c in ("fanet_3d", "fanet_slice", "basicunet_3d", "unet_3d", "dynunet_3d")} <= by_budget
    assert ("unet_3d", "time") in by_budget and ("fanet_3d", "time") not in by_budget
    fanet = next(r for r in runs if r["config"] == "fanet_3d")
    assert [row["pass"] for row in fanet["rows"]] == [1, 2, "early_stop"]
    assert {"dice_class_1", "dice_class_2", "hd95_class_1", "hd95_class_2"} <= set(fanet["rows"][0])
    assert {r["config"]: r["learning_rate"] for r in runs if r["config"] in ("fanet_3d", "unet_3d")} == {
        "fanet_3d": 3e-4, "unet_3d": 1e-3}
    table = capsys.readouterr().out
    assert "### equal epochs" in table and "| fanet_3d | 1 | 0.0003 |" in table and "| unet_3d | 1 | 0.001 |" in table
    assert json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[0])["fold"] == 0


def test_two_class_start_check_trains_every_network_on_the_same_batches(capsys):
    from benchmarks import two_class_start

    rows = two_class_start.main(["--smoke"])
    names = [r["network"] for r in rows if r["step"] == 2]
    assert names[0] == "BasicUNet" and "FANet B4, prior 0.05, head 4" in names and len(names) == 6
    for row in rows:
        assert row["loss"] > 0 and 0 <= row["dice_1"] <= 1 and 0 <= row["dice_2"] <= 1
    prior = {r["network"]: r["loss"] for r in rows if r["step"] == 1}
    # starting at the prior, the first Dice-CE is far below the even-odds start's
    assert prior["FANet B4, prior 0.05"] < prior["FANet B4"] - 0.3
    assert "| network | step | loss |" in capsys.readouterr().out


def test_volume_benchmark_learning_rates_per_configuration():
    names = ["fanet_3d", "unet_3d"]
    assert volumes.learning_rates(["1e-3", "fanet_3d=3e-4"], names) == {"fanet_3d": 3e-4, "unet_3d": 1e-3}
    assert volumes.learning_rates(["unet_3d=0.01", "2e-4"], names) == {"fanet_3d": 2e-4, "unet_3d": 2e-4}
    for bad, message in ((["fanet=1e-3", "1e-3"], "unknown configuration 'fanet'"), (["fast"], "not a number"),
                         (["0"], "must be > 0"), (["fanet_3d=1e-3"], "no rate for ['unet_3d']")):
        with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
            volumes.learning_rates(bad, names)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_onnx_runtime_benchmark_smoke_times_both_engines_on_the_same_masks(capsys):
    from benchmarks import onnx_runtime

    rows = onnx_runtime.main(["--smoke"])
    assert [r["input"] for r in rows] == ["32² RGB image", "16³ patch"]
    for row in rows:
        assert row["eager"] > 0 and row["onnxruntime"] > 0
        assert row["ratio"] == pytest.approx(row["onnxruntime"] / row["eager"])
        assert row["max_logit_diff"] < 1e-4 and row["mask_agreement"] == 1.0
    assert "| onnxruntime / eager |" in capsys.readouterr().out


@pytest.mark.slow
def test_series_overhead_benchmark_smoke_times_bare_inference_and_the_series_path(capsys):
    from benchmarks import series_overhead

    (row,) = series_overhead.main(["--smoke"])
    assert row["series"] == "synthetic CT" and row["shape"] == [32, 32, 12] and row["instances"] == 12
    assert row["bare_s"] > 0 and row["overhead"] == pytest.approx(row["series_s"] / row["bare_s"])
    assert 0 < row["bare_gib"] < 16 and 0 < row["series_gib"] < 16
    assert "| overhead |" in capsys.readouterr().out


@pytest.mark.slow
def test_annotation_loop_smoke_measures_maps_partial_labels_and_correction_loops(tmp_path, capsys):
    records = annotation_loop.main(["--smoke", "--workdir", str(tmp_path)])
    assert {r["source"] for r in records} == {"smoke", "smoke3d"} and len(records) == 4
    for r in records:
        assert set(r["detection"]) == set(annotation_loop.MAPS)
        for scores in r["detection"].values():
            assert all(0 <= scores[k] <= 1 for k in ("ap", "auroc", "top1", "top5", "top10") if scores[k] == scores[k])
        assert r["partial"]["keep reviewed"]["reviewed"] == 1.0  # the annotator's reviewed pixels, kept exactly
        assert r["partial"]["label"]["reviewed"] == 1.0
        assert set(r["loop"]) == set(annotation_loop.STRATEGIES)  # the more-passes control included
        for strategy, rows in r["loop"].items():
            assert [row["step"] for row in rows] == list(range(4))
            corrected = [row["corrected"] for row in rows]
            assert corrected == sorted(corrected)  # the annotator's effort only grows
            if "refine" not in strategy:  # by hand: the mask is exactly the corrected one
                assert all(row["dice"] == row["corrected_dice"] for row in rows)
    out = capsys.readouterr().out
    assert "| keep reviewed |" in out and "| hand, oracle |" in out and "AUROC" in out
    assert "| hand, converged start |" in out and "Control (more passes, then by hand)" in out
    assert (tmp_path / "annotation_loop.png").stat().st_size > 0
    # --rerun recomputes one strategy's loops in place, leaving the rest of every record as it was
    for r in records:
        r["loop"]["look+refine, local"] = []
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    sources = [f"smoke=2d:{tmp_path / 'runs'}:{tmp_path / 'data'}",
               f"smoke3d=3d:{tmp_path / 'runs3d'}:{tmp_path / 'folds'}"]
    rerun = annotation_loop.main(["--source", *sources, "--steps", "3", "--images", "2", "--workdir", str(tmp_path),
                                  "--rerun", "look+refine, local"])
    assert len(rerun) == len(records)
    for before, after in zip(records, rerun):
        assert [row["step"] for row in after["loop"]["look+refine, local"]] == list(range(4))
        assert after["loop"]["hand, oracle"] == before["loop"]["hand, oracle"] and after["dice"] == before["dice"]


def test_annotation_loop_pixel_differences_leave_out_pairs_that_never_reach_the_common_dice():
    both = annotation_loop.paired_pixels([100.0, 200.0, 300.0], [150.0, 260.0, 330.0])
    assert both.startswith("-47 [") and "pairs" not in both
    dropped = annotation_loop.paired_pixels([100.0, float("nan"), 300.0], [150.0, 260.0, 330.0])
    assert dropped.startswith("-40 [") and dropped.endswith("(2 of 3 pairs: the others never reach it)")
    assert annotation_loop.paired_pixels([float("nan")], [1.0]) == "not reached"


def _loop_record(source: str, fold: int, image: str, dice: float, steps: list[tuple[int, float]]) -> dict:
    rows = [{"step": k, "corrected": c, "corrected_dice": d, "dice": d} for k, (c, d) in enumerate(steps)]
    strategies = {s: rows for s in annotation_loop.STRATEGIES}
    return {"source": source, "fold": fold, "seed": fold, "image": image, "dice": dice,
            "partial": {"start only": {"reviewed": dice + 0.1, "rest": dice}}, "loop": strategies}


def test_annotation_loop_compares_two_networks_on_the_same_images_paired_per_pair():
    first = [_loop_record("a", f, "x.png", 0.70, [(0, 0.70), (400, 0.75), (900, 0.80)]) for f in (0, 1, 2)]
    second = [_loop_record("b", f, "x.png", 0.72, [(0, 0.72), (200, 0.78), (500, 0.80)]) for f in (0, 1, 2)]
    second.append(_loop_record("b", 9, "y.png", 0.5, [(0, 0.5)]))  # an image the first network was not run on
    table = annotation_loop.compare(first, second)
    assert "## b − a: 3 images, 3 (fold, seed) pairs" in table
    assert "| product's Dice | 0.700 ± 0.000 | 0.720 ± 0.000 | +0.020 [+0.020, +0.020]* |" in table
    # both reach the common Dice 0.80: at 900 pixels with the first network, at 500 with the second
    assert "| px to the common Dice, look+refine | 900 ± 0 | 500 ± 0 | -400" in table
    assert "| Dice at 500 corrected px, look+refine | 0.760 ± 0.000 | 0.800 ± 0.000 | +0.040" in table
    with pytest.raises(SystemExit, match="share no test image"):
        annotation_loop.compare(first, second[-1:])
