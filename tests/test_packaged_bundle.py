"""``fanet package``: the written folder is a self-contained model-zoo bundle. It trains one epoch, evaluates and
infers with ``python -m monai.bundle run`` from its own folder in MONAI Label's environment, where ``fanet_monai``
is not installed, and passes the zoo checks (verify_metadata with the zoo's schema, verify_net_in_out,
ckpt_export)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import monai.bundle
from fanet_monai.data import make_synthetic_dataset
from fanet_monai.packaging import SCRIPTS_IMPORT, package_bundle
from test_evaluation import SMALL, mask_echo_checkpoint
from test_monailabel_server import clean_env, monailabel_python
from test_zoo import SCHEMA, SCHEMA_MD5

pytestmark = pytest.mark.slow

TINY = {"image_size": [32, 32], "network_def#channels": SMALL, "num_workers": 0, "batch_size": 4, "num_passes": 3,
        "show_progress": False}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("package")
    run = tmp / "run"
    mask_echo_checkpoint(run / "models" / "model.pt")
    bundle = package_bundle(tmp / "bundle", run, label_name="cell", **TINY)
    data = make_synthetic_dataset(tmp / "data", num_images=10, height=40, width=52, seed=5)
    return bundle, data


def test_layout_and_configs(packaged):
    bundle, _ = packaged
    for path in ("configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
                 "configs/multi_gpu_train.json", "configs/multi_gpu_evaluate.json", "configs/logging.conf",
                 "models/model.pt", "models/model.ts", "docs/README.md", "LICENSE", "scripts/__init__.py",
                 "scripts/fanet_monai/__init__.py", "scripts/fanet_monai/inferers/refinement.py"):
        assert (bundle / path).is_file(), path
    assert not list((bundle / "scripts").rglob("__pycache__"))
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["imports"][0] == SCRIPTS_IMPORT and inference["image_size"] == [32, 32]
    assert inference["network_def"]["channels"] == SMALL
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "fanet-monai" not in meta["required_packages_version"]
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "cell"}


def test_package_refuses_weights_that_do_not_fit(tmp_path):
    run = tmp_path / "run"
    mask_echo_checkpoint(run / "models" / "model.pt")
    with pytest.raises(ValueError, match="does not fit the bundle's network_def: pass the overrides"):
        package_bundle(tmp_path / "out", run, torchscript=False)  # trained narrow, packaged at default widths
    with pytest.raises(FileNotFoundError, match="no trained network to package"):
        package_bundle(tmp_path / "out", tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"\['no_such_id'\] match no id"):
        package_bundle(tmp_path / "out", run, torchscript=False, no_such_id=1, **TINY)


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"the zoo's schema is not at {SCHEMA} (../shared absent)")
def test_verify_metadata(packaged):
    pytest.importorskip("jsonschema")
    bundle, _ = packaged
    monai.bundle.verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA),
                                 hash_val=SCHEMA_MD5, hash_type="md5")


def run_in_monailabel_env(bundle: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([monailabel_python(), *args], cwd=bundle, env=clean_env(), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return result


def test_runs_without_fanet_monai_installed(packaged, tmp_path):
    bundle, data = packaged
    python = monailabel_python()
    probe = subprocess.run([python, "-c", "import fanet_monai"], cwd=tmp_path, env=clean_env(), capture_output=True)
    assert probe.returncode != 0 and b"No module named 'fanet_monai'" in probe.stderr
    before = (bundle / "models" / "model.pt").read_bytes()

    run_in_monailabel_env(bundle, "-m", "monai.bundle", "run", "--config_file", "configs/train.json",
                          "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
                          "--bundle_root", ".", "--dataset_dir", str(data), "--max_epochs", "1")
    assert list((bundle / "models").glob("checkpoint_epoch=1.pt"))
    assert (bundle / "models" / "model.pt").read_bytes() != before  # the epoch's best network

    run_in_monailabel_env(bundle, "-m", "monai.bundle", "run", "evaluating",
                          "--config_file", "['configs/train.json','configs/evaluate.json']",
                          "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
                          "--bundle_root", ".", "--dataset_dir", str(data))
    assert (bundle / "eval" / "metrics_per_pass.csv").is_file()

    out = tmp_path / "pred"
    run_in_monailabel_env(bundle, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                          "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
                          "--bundle_root", ".", "--dataset_dir", str(data / "images"), "--output_dir", str(out))
    for image in sorted((data / "images").glob("*.png")):
        mask = np.asarray(Image.open(out / image.name))
        assert mask.shape == (40, 52) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}


def test_zoo_checks_in_the_monailabel_env(packaged):
    bundle, _ = packaged
    check = (
        "import monai.bundle as b\n"
        "b.verify_net_in_out(net_id='network_def', meta_file='configs/metadata.json',"
        " config_file='configs/inference.json', device='cpu', n=2)\n"
        "b.ckpt_export(net_id='network_def', filepath='models/exported.ts', ckpt_file='models/model.pt',"
        " meta_file='configs/metadata.json', config_file='configs/inference.json', bundle_root='.')\n"
        "import sys; assert 'fanet_monai' in sys.modules and sys.modules['fanet_monai'].__file__.startswith("
        "__import__('os').path.abspath('scripts')), sys.modules['fanet_monai'].__file__\n"
    )
    run_in_monailabel_env(bundle, "-c", "import sys; sys.path.insert(0, '.')\n" + check)
    assert (bundle / "models" / "exported.ts").stat().st_size > 0


def test_reviewed_network_packages_and_refines_in_the_monailabel_env(tmp_path):
    """A network with a reviewed channel (``reviewed_input``), packaged from its run: the metadata lists the channel,
    the zoo checks pass, and refine-my-mask in MONAI Label's environment (no fanet_monai installed) feeds it the
    annotator's reviewed pixels and gives them back exactly."""
    from fanet_monai.cli import run
    from fanet_monai.run import release_claims

    data = make_synthetic_dataset(tmp_path / "data", num_images=6, height=32, width=40, seed=0)
    root = tmp_path / "run"
    assert run(["train", str(data), "--bundle_root", str(root), "--max_epochs", "1", "--batch_size", "2",
                "--show_progress", "False", "--image_size", "[32,32]", "--num_workers", "0", "--reviewed_input",
                "True", "--mask_mix", "annotator_errors", "--network_def#channels", json.dumps(SMALL)]) == 0
    release_claims()
    bundle = tmp_path / "bundle"
    assert run(["package", str(bundle), "--bundle_root", str(root)]) == 0
    image = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 5 and image["channel_def"]["3"].startswith("reviewed pixels")
    assert image["channel_def"]["4"].startswith("feedback mask")
    assert json.loads((bundle / "configs" / "inference.json").read_text())["reviewed_input"] is True
    check = ("import sys; sys.path.insert(0, '.')\nimport monai.bundle as b\n"
             "b.verify_net_in_out(net_id='network_def', meta_file='configs/metadata.json',"
             " config_file='configs/inference.json', device='cpu', n=1)\n"
             "b.ckpt_export(net_id='network_def', filepath='models/exported.ts', ckpt_file='models/model.pt',"
             " meta_file='configs/metadata.json', config_file='configs/inference.json', bundle_root='.')\n")
    run_in_monailabel_env(bundle, "-c", check)
    labels = tmp_path / "labels"
    labels.mkdir()
    for path in sorted((data / "images").glob("*.png")):
        label = np.full((32, 40), 128, np.uint8)  # 128: not looked at yet
        label[:, :20] = 0  # the left half reviewed: background, except a drawn box
        label[4:14, 4:14] = 255
        Image.fromarray(label).save(labels / path.name)
    out = tmp_path / "pred"
    run_in_monailabel_env(bundle, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                          "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
                          "--bundle_root", ".", "--dataset_dir", str(data / "images"), "--output_dir", str(out),
                          "--start_mask_dir", str(labels), "--displayable_configs#unreviewed_value", "128")
    for path in sorted((data / "images").glob("*.png")):
        mask = np.asarray(Image.open(out / path.name)) > 0
        expected = np.zeros((32, 20), bool)
        expected[4:14, 4:14] = True
        assert mask.shape == (32, 40) and np.array_equal(mask[:, :20], expected)


def test_repository_bundle_still_uses_the_installed_package():
    """The repository's configs import the installed ``fanet_monai``; ``bundle/scripts`` holds only the shim."""
    root = Path(__file__).resolve().parents[1] / "bundle"
    assert sorted(p.name for p in (root / "scripts").iterdir() if p.name != "__pycache__") == ["__init__.py"]
    for name in ("train.json", "inference.json"):
        assert SCRIPTS_IMPORT not in json.loads((root / "configs" / name).read_text())["imports"]
    assert "fanet_monai" in sys.modules


def test_the_volume_layer_sets_network_arguments_the_way_monai_merges_it():
    """``volume.json`` sets three of ``network_def``'s arguments (``network_def#...`` ids), not a copy of it: the
    packaged configs hold what MONAI's ``ConfigParser`` makes of the layered files, and every other argument
    (``reviewed_input``, ``in_channels``, ...) stays the base config's."""
    from fanet_monai.packaging import _merge_layer

    configs = Path(__file__).resolve().parents[1] / "bundle" / "configs"
    layer = json.loads((configs / "volume.json").read_text())
    assert "network_def" not in layer and "network_def#prior_probability" in layer
    for name in ("train.json", "inference.json"):
        base = json.loads((configs / name).read_text())
        parser = monai.bundle.ConfigParser()
        parser.read_config([str(configs / name), str(configs / "volume.json")])
        merged = _merge_layer(base, layer)
        assert merged["network_def"] == parser.get("network_def")
        assert merged["network_def"]["reviewed_input"] == "@reviewed_input"  # the base config's wiring kept
        assert merged["network_def"]["prior_probability"] == 0.05 and "slice_axis" in merged["network_def"]
        assert "network_def" in base and "prior_probability" not in base["network_def"]  # the input is untouched
    evaluate = _merge_layer(json.loads((configs / "evaluate.json").read_text()), layer)
    assert evaluate["network_def#prior_probability"] == 0.05  # no network_def there: set over train.json at load
