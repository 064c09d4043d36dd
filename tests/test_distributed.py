"""Multi-GPU configs on the CPU: a 2-process gloo run of the real bundle, launched as in the README with torchrun.

The run trains 2 epochs on a synthetic set; a test-only handler (tests/distributed_probe.py, wired in through a third
config file) records what each rank predicted. Checked: both ranks end with identical caches covering every training
sample, each cached mask is the prediction made for that sample in the last epoch by whichever rank trained on it,
samples changed ranks between the epochs (so the exchange mattered), only rank 0 wrote logs, and the checkpoint
resumes in a single-process train.json run. The same launch then runs the multi-GPU evaluation, and a second
training run checks the ``on_improvement`` policy with validation every 2nd epoch (ranks commit together, and the
newest of two ranks' predictions of a sample wins everywhere).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from fanet_monai.bundle import load_workflow

from fanet_monai import FANet
from fanet_monai.checkpoints import latest_checkpoint
from fanet_monai.data import folder_datalist, make_synthetic_dataset
from fanet_monai.distributed import backend_for, distributed_device
from fanet_monai.networks.ddp import needs_unused_parameter_detection, wrap_ddp
from fanet_monai.feedback import FeedbackMaskCache, rle_decode, rle_encode, sample_key
from fanet_monai.feedback.distributed import FeedbackCacheSyncHandler, cache_digest, resolve_updates
from fanet_monai.feedback.rle import RLEMask

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
TRAIN, EVALUATE = CONFIGS / "train.json", CONFIGS / "evaluate.json"
MULTI_TRAIN, MULTI_EVALUATE = CONFIGS / "multi_gpu_train.json", CONFIGS / "multi_gpu_evaluate.json"
META, LOGGING = CONFIGS / "metadata.json", CONFIGS / "logging.conf"

TINY = {
    "image_size": [64, 64],
    "batch_size": 2,
    "num_workers": 0,
    "max_epochs": 2,
    "num_passes": 2,
    "show_progress": False,
    "network_def#channels": [8, 16, 16, 16],
}


# ------------------------------------------------------------------------------------------------ fast unit checks
def test_only_logging_handlers_depend_on_the_main_process_flag():
    """multi_gpu_*.json set ``is_main_process`` (a config id, not handler positions); only loggers follow it."""
    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(MULTI_TRAIN)])
    assert parser["is_main_process"] == "$dist.get_rank() == 0"
    assert not any("#handlers#" in key for key in ConfigParser.load_config_file(str(MULTI_TRAIN)))
    logging_targets = {"StatsHandler", "TensorBoardStatsHandler", "ignite.handlers.ProgressBar",
                       "fanet_monai.progress.ProgressLogger"}
    rank_one = ConfigParser()
    rank_one.read_config([str(TRAIN), str(MULTI_TRAIN)])
    rank_one["is_main_process"] = False  # what a rank > 0 sees
    for section in ("train", "validate"):
        handlers = rank_one[section]["handlers"]
        for i, handler in enumerate(handlers):
            if not isinstance(handler, dict):
                continue
            disabled = "_disabled_" in handler and rank_one.get_parsed_content(f"{section}#handlers#{i}#_disabled_")
            assert disabled == (handler["_target_"] in logging_targets), (section, handler["_target_"])
    # what must run on every rank stays enabled everywhere
    feedback = parser["train#handlers"][0]  # inline: MONAI Label prepends its CheckpointLoader to a list of dicts
    assert "_disabled_" not in feedback and feedback["_target_"] == "fanet_monai.feedback.handler.FeedbackMaskHandler"
    validate = [h if isinstance(h, str) else h["_target_"] for h in parser["validate"]["handlers"]
                if isinstance(h, str) or "_disabled_" not in h]
    assert "LrScheduleHandler" in validate and "@validate#feedback_commit" in validate  # same decisions everywhere

    # train.json's own initialisation (determinism, data checks) is kept; the process group comes after it
    assert parser["initialize"][: len(ConfigParser.load_config_file(str(TRAIN))["initialize"])] == (
        ConfigParser.load_config_file(str(TRAIN))["initialize"]
    )
    assert any("init_distributed" in step for step in parser["initialize"])

    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(EVALUATE), str(MULTI_EVALUATE)])
    assert any("init_distributed" in step for step in parser["initialize"])
    assert parser["is_main_process"] == "$dist.get_rank() == 0"
    disabled = [h for h in parser["evaluate"]["handlers"] if isinstance(h, dict) and "_disabled_" in h]
    assert [(h["_target_"], h["_disabled_"]) for h in disabled] == [
        ("StatsHandler", "$not @is_main_process"), ("fanet_monai.progress.ProgressLogger", "$not @is_main_process")]


def test_ddp_decisions():
    assert backend_for("cpu") == "gloo" and backend_for(torch.device("cuda", 1)) == "nccl"
    if not torch.cuda.is_available():
        assert distributed_device() == torch.device("cpu")
    tiny = {"channels": (8, 16)}
    assert needs_unused_parameter_detection(FANet(variant="B4", **tiny))  # hard MixPool maps: no gradient
    assert needs_unused_parameter_detection(FANet(variant="B3", **tiny))
    assert not needs_unused_parameter_detection(FANet(variant="B4", straight_through=True, **tiny))
    assert not needs_unused_parameter_detection(FANet(variant="B1", **tiny))  # no MixPool at all


def test_resolve_updates_newest_stamp_wins_then_highest_rank():
    a, b, c = ({"shape": [1, 2], "runs": bytes([i, 2 - i]), "dtype": "|u1"} for i in range(3))
    gathered = [
        {"x": (2, a), "y": (1, a), "z": (3, a)},  # rank 0
        {"x": (1, b), "y": (1, b)},  # rank 1: x is older, y is a tie (padded sampler)
        {"w": (0, c)},  # rank 2
    ]
    resolved = resolve_updates(gathered)
    assert resolved == {"x": (0, a), "y": (1, b), "z": (0, a), "w": (2, c)}


def test_sync_handler_without_process_group_only_clears_the_changed_flags():
    cache = FeedbackMaskCache()
    cache.put("a.png", np.ones((1, 4, 4)))
    handler = FeedbackCacheSyncHandler(cache)
    record = handler.synchronize()
    assert record["sent"] == 1 and record["received"] == 0 and cache.export_updates() == {}
    other = FeedbackMaskCache()
    other.merge_updates({"a.png": rle_encode(np.ones((1, 4, 4))).to_dict()})
    assert cache_digest(cache) == cache_digest(other)
    other.merge_updates({"a.png": rle_encode(np.zeros((1, 4, 4))).to_dict()})
    assert cache_digest(cache) != cache_digest(other)


def test_wrap_ddp_on_a_one_rank_gloo_group(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already up in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = wrap_ddp(FANet(channels=(8, 16)), "cpu")
        assert ddp.find_unused_parameters and ddp.device_ids is None
        out = ddp(torch.rand(2, 4, 32, 32))
        out.mean().backward()  # unused MixPool parameters do not stall the reducer
        assert not wrap_ddp(FANet(channels=(8, 16), straight_through=True), "cpu").find_unused_parameters
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- the 2-process bundle
def _cli_overrides(overrides: dict) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    return args


def _torchrun(run_id: str, config_files: list, overrides: dict, cwd: Path, timeout: float = 240):
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", run_id,
        "--config_file", str([str(f) for f in config_files]),
        "--meta_file", str(META), "--logging_file", str(LOGGING),
        *_cli_overrides(overrides),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "tests"), env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, \
        f"torchrun failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return result


def _train_two_ranks(root: Path, dataset_dir: Path, layers: tuple = (), **extra) -> dict:
    """torchrun the training (``train.json`` + ``layers`` such as ``volume.json``) with the probe attached; returns
    the ranks' records and the run's settings."""
    probe = root / "probe.json"
    probe.write_text(json.dumps({
        "+imports": ["$import distributed_probe"],
        "probe": {
            "_target_": "distributed_probe.PredictionRecorder",
            "mask_handler": "@train#feedback_handler",
            "cache": "@feedback_cache",
            "sync": "@train#feedback_sync",
            "commit": "@validate#feedback_commit",
            "out_dir": str(root / "probe"),
        },
        "+initialize": ["$@probe.attach(@train#trainer)"],
    }))
    bundle_root = root / "bundle"
    overrides = {"bundle_root": str(bundle_root), "dataset_dir": str(dataset_dir), **TINY, **extra}
    _torchrun("training", [TRAIN, *layers, MULTI_TRAIN, probe], overrides, cwd=root)
    ranks = [torch.load(root / "probe" / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"root": root, "bundle_root": bundle_root, "dataset_dir": dataset_dir, "ranks": ranks,
            "overrides": overrides}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), num_images=10, height=64, width=64, seed=3)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, dataset_dir):
    return _train_two_ranks(tmp_path_factory.mktemp("ddp"), dataset_dir)


def _rank_of(records: list, epoch: int) -> dict:
    """``{sample key: rank that trained on it}`` in ``epoch``."""
    return {key: r for r, rank in enumerate(records) for key in rank["records"][epoch]}


@pytest.mark.slow
def test_two_ranks_end_with_identical_complete_caches_of_last_epoch_predictions(ddp_run):
    ranks = ddp_run["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert {r["backend"] for r in ranks} == {"gloo"}
    assert {r["network_type"] for r in ranks} == {"DistributedDataParallel"}
    assert all(r["find_unused_parameters"] for r in ranks)  # B4 with hard MixPool maps
    assert all(r["epochs"] == 2 for r in ranks)

    training_keys = {sample_key(i["image"]) for i in folder_datalist(ddp_run["dataset_dir"])["training"]}
    assert len(training_keys) == 8
    masks = [r["cache"]["masks"] for r in ranks]
    assert set(masks[0]) == training_keys
    assert masks[0] == masks[1]  # identical caches, byte for byte

    for epoch in (1, 2):
        seen = [set(r["records"][epoch]) for r in ranks]
        assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]  # the sampler split the set
        assert seen[0] | seen[1] == training_keys
    first, second = _rank_of(ranks, 1), _rank_of(ranks, 2)
    moved = {k for k in training_keys if first[k] != second[k]}
    assert moved, "no sample changed rank between the epochs: the test would not exercise the exchange"

    last = {**ranks[0]["records"][2], **ranks[1]["records"][2]}  # the last epoch's prediction of every sample
    for key in training_keys:
        expected = rle_decode(RLEMask.from_dict(last[key]))
        cached = rle_decode(RLEMask.from_dict(masks[0][key]))
        assert expected.shape == cached.shape == (1, 64, 64)
        assert np.array_equal(expected, cached), key

    for r in ranks:  # each rank sent its 4 predictions and received the other 4, every epoch
        assert [(h["epoch"], h["sent"], h["received"], h["consistent"]) for h in r["sync_history"]] == [
            (1, 4, 4, True), (2, 4, 4, True)]


@pytest.mark.slow
def test_only_rank_zero_writes_checkpoints_and_logs(ddp_run):
    models = ddp_run["bundle_root"] / "models"
    checkpoint = torch.load(latest_checkpoint(models), weights_only=True)
    assert latest_checkpoint(models).endswith("checkpoint_epoch=2.pt") and (models / "model.pt").is_file()
    assert checkpoint["feedback_cache"]["masks"] == ddp_run["ranks"][0]["cache"]["masks"]
    assert not any(k.startswith("module.") for k in checkpoint["network"])  # DDP unwrapped by ignite
    events = list((ddp_run["bundle_root"] / "eval").glob("events.out.tfevents.*"))
    assert events and {int(e.name.split(".")[-2]) for e in events} == {ddp_run["ranks"][0]["pid"]}


@pytest.mark.slow
def test_checkpoint_resumes_in_a_single_process_run(ddp_run):
    overrides = {**ddp_run["overrides"], "max_epochs": 3, "resume": True}
    workflow = load_workflow([TRAIN], **overrides)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    cache = workflow.parser.get_parsed_content("feedback_cache")
    network = workflow.parser.get_parsed_content("network")
    saved = torch.load(latest_checkpoint(ddp_run["bundle_root"] / "models"), weights_only=True)
    seen = {}

    from ignite.engine import Events

    @trainer.on(Events.EPOCH_STARTED)
    def capture(engine):
        if not seen:
            seen["epoch"] = engine.state.epoch
            seen["masks"] = cache.state_dict()["masks"]
            seen["weights"] = {k: v.clone() for k, v in network.state_dict().items()}

    workflow.run()
    assert seen["epoch"] == 3 and trainer.state.epoch == 3
    assert seen["masks"] == saved["feedback_cache"]["masks"]
    assert all(torch.equal(seen["weights"][k], v) for k, v in saved["network"].items())


@pytest.mark.slow
def test_multi_gpu_evaluation_gathers_every_image(ddp_run):
    root = ddp_run["root"]
    overrides = {**ddp_run["overrides"], "num_qualitative": 0, "output_dir": str(root / "mgpu_eval"),
                 "check_data": False}  # the data were checked by the training run
    _torchrun("evaluating", [TRAIN, EVALUATE, MULTI_EVALUATE], overrides, cwd=root)
    rows = (root / "mgpu_eval" / "metrics_per_pass.csv").read_text().splitlines()
    header = rows[0].split(",")
    n_images = {row.split(",")[header.index("n_images")] for row in rows[1:]}
    assert n_images == {"2"}  # both validation images, one per rank, gathered on rank 0


@pytest.mark.slow
def test_on_improvement_commits_the_newest_prediction_of_every_sample_on_every_rank(tmp_path_factory, dataset_dir):
    """Validation every 2nd epoch: each rank commits what it staged in epochs 1 and 2 at once, so a sample that
    changed rank was exported by both ranks; the epoch stamp must make the epoch-2 prediction win everywhere."""
    run = _train_two_ranks(tmp_path_factory.mktemp("ddp_commit"), dataset_dir, val_interval=2,
                           **{"feedback_cache#update_policy": "on_improvement"})
    ranks = run["ranks"]
    masks = [r["cache"]["masks"] for r in ranks]
    assert masks[0] == masks[1] and len(masks[0]) == 8
    assert [r["cache"]["pending"] for r in ranks] == [{}, {}]  # the first validation always commits
    assert ranks[0]["commit_best"] == ranks[1]["commit_best"] is not None  # all-gathered val_loss: same decision

    first, last = _rank_of(ranks, 1), _rank_of(ranks, 2)
    moved = [k for k in last if first[k] != last[k]]
    assert moved
    for r, rank in enumerate(ranks):  # epoch 1: nothing committed, nothing sent; epoch 2: both epochs' keys
        history = [(h["epoch"], h["sent"]) for h in rank["sync_history"]]
        staged = {k for e in (1, 2) for k in rank["records"][e]}
        assert history == [(1, 0), (2, len(staged))] and len(staged) > 4
    latest = {**ranks[0]["records"][2], **ranks[1]["records"][2]}
    stale = {**ranks[0]["records"][1], **ranks[1]["records"][1]}
    assert any(latest[k] != stale[k] for k in moved)  # the two candidates differ: the stamp decided
    for key, rle in latest.items():
        assert np.array_equal(rle_decode(RLEMask.from_dict(masks[0][key])), rle_decode(RLEMask.from_dict(rle))), key


@pytest.mark.slow
def test_patch_mode_two_ranks_share_complete_native_size_caches(tmp_path_factory):
    """Issue 19: patches of one image are cut on the rank that loads it, merged into its native-size mask there,
    and the merged mask is exchanged: both ranks end with the same cache, every mask at the image's own size."""
    data = make_synthetic_dataset(tmp_path_factory.mktemp("patch_data"), num_images=10, height=40, width=72, seed=5)
    run = _train_two_ranks(tmp_path_factory.mktemp("ddp_patch"), data, input_mode="patch", patch_size=[32, 32],
                           patches_per_image=2)
    masks = [r["cache"]["masks"] for r in run["ranks"]]
    assert masks[0] == masks[1] and len(masks[0]) == 8
    shapes = {rle_decode(RLEMask.from_dict(rle)).shape for rle in masks[0].values()}
    assert shapes == {(1, 72, 40)}  # the bitmap reader's (W, H) frame of the 40x72 images


@pytest.mark.slow
def test_volume_patch_mode_two_ranks_share_complete_volume_caches(tmp_path_factory):
    """The same in 3-D (``volume.json``): 16³ patches of 20x24x28 volumes, each merged into its volume's mask on
    the rank that loaded it; both ranks end with the same cache of whole-volume masks."""
    from fanet_monai.data import make_volume_dataset

    data = make_volume_dataset(tmp_path_factory.mktemp("volume_data"), num_volumes=10, shape=(20, 24, 28),
                               kind="tubes", seed=2)
    run = _train_two_ranks(tmp_path_factory.mktemp("ddp_volume"), data, layers=(CONFIGS / "volume.json",),
                           patch_size=[16, 16, 16], patches_per_image=2, **{"network_def#channels": [4, 8, 8, 8]})
    ranks = run["ranks"]
    assert {r["network_type"] for r in ranks} == {"DistributedDataParallel"}
    masks = [r["cache"]["masks"] for r in ranks]
    assert masks[0] == masks[1] and len(masks[0]) == 8  # 10 volumes, two held out for validation
    shapes = {rle_decode(RLEMask.from_dict(rle)).shape for rle in masks[0].values()}
    assert shapes == {(1, 20, 24, 28)}
    for epoch in (1, 2):  # the sampler split the volumes between the ranks
        seen = [set(r["records"][epoch]) for r in ranks]
        assert not seen[0] & seen[1] and seen[0] | seen[1] == set(masks[0])
