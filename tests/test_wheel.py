"""The wheel carries its bundle (issue 23): built from a clean copy of the source, its
``fanet_monai/packaged_bundle`` equals the repository's ``bundle/`` file for file; installed with ``pip install
--target`` (next to the test environment's dependencies, without the source tree on the path) it trains, evaluates,
infers and packages from another directory; and an error before the command line's handler is two lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fanet_monai.data import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = "fanet_monai/packaged_bundle/"
pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                                reason="builds the wheel from the git checkout's files")


def _source_files() -> list[str]:
    """The checkout's files as a clone would have them: tracked, plus new files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a clean copy of the checkout (no stale ``build/``), without build isolation (offline)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    for name in _source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             str(source), "-w", str(work / "dist")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = (work / "dist").glob("fanet_monai-*.whl")
    return built


def test_the_wheel_carries_the_repositorys_bundle_file_for_file(wheel):
    expected = {name[len("bundle/"):]: (ROOT / name).read_bytes() for name in _source_files()
                if name.startswith("bundle/") and not name.startswith("bundle/models/")}
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name[len(PACKAGED):]: archive.read(name) for name in archive.namelist()
                    if name.startswith(PACKAGED) and not name.endswith("/")}
        entry_points = archive.read(next(n for n in archive.namelist() if n.endswith("entry_points.txt"))).decode()
    assert {"configs/train.json", "configs/inference.json", "configs/metadata.json", "configs/logging.conf",
            "docs/README.md", "scripts/__init__.py", "LICENSE"} <= set(packaged)
    assert packaged.keys() == expected.keys()  # nothing missing, nothing extra (no weights)
    assert [name for name in expected if packaged[name] != expected[name]] == []
    assert "fanet = fanet_monai.console:main" in entry_points


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The wheel installed with ``--target`` (its dependencies are the test environment's); the environment that
    puts only it on the path."""
    target = tmp_path_factory.mktemp("site") / "target"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                             str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FANET_"))}
    env["PYTHONPATH"] = str(target)
    return target, env


def _fanet(installed, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    target, env = installed
    result = subprocess.run([str(target / "bin" / "fanet"), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    if check:
        assert result.returncode == 0, f"fanet {' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_an_installed_wheel_trains_evaluates_infers_and_packages_from_another_directory(installed, tmp_path):
    target, env = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run(
        [sys.executable, "-c", "import fanet_monai, fanet_monai.bundle as b; print(fanet_monai.__file__); "
                               "print(b.packaged_bundle_dir())"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in probe), probe  # the wheel's code and bundle, not the checkout

    make_synthetic_dataset(elsewhere / "data", num_images=8, height=32, width=32, seed=0)
    tiny = ["--image_size", "[32,32]", "--num_workers", "0", "--num_passes", "2", "--network_def#channels",
            "[4,8,8,8]"]
    _fanet(installed, elsewhere, "train", "data", "--bundle_root", "run", "--max_epochs", "1", "--batch_size", "4",
           "--show_progress", "False", *tiny)
    assert (elsewhere / "run" / "models" / "model.pt").is_file()
    _fanet(installed, elsewhere, "evaluate", "data", "--bundle_root", "run", "--num_workers", "0",
           "--num_qualitative", "0")
    _fanet(installed, elsewhere, "infer", "data/images", "masks", "--bundle_root", "run", "--num_workers", "0")
    masks = sorted((elsewhere / "masks").rglob("*.png"))
    assert len(masks) == 8
    assert all(np.asarray(Image.open(m)).shape == (32, 32) for m in masks)
    _fanet(installed, elsewhere, "package", "zoo", "--bundle_root", "run", "--torchscript", "False")
    for name in ("configs/inference.json", "configs/metadata.json", "models/model.pt", "docs/README.md",
                 "scripts/fanet_monai/bundle.py"):
        assert (elsewhere / "zoo" / name).is_file(), name
    assert not (elsewhere / "zoo" / "scripts" / "fanet_monai" / "packaged_bundle").exists()  # code, not the bundle


def test_a_wheel_without_its_bundle_or_a_dependency_fails_in_two_lines(installed, tmp_path):
    target, env = installed
    broken = tmp_path / "broken"
    shutil.copytree(target, broken, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(broken / "fanet_monai" / "packaged_bundle" / "configs")
    result = _fanet((target, {**env, "PYTHONPATH": str(broken)}), tmp_path, "train", "data", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 2, result.stderr
    assert "has no bundle configs" in lines[0] and "pip wheel" in lines[0]

    blocked = tmp_path / "blocked"  # a dependency that cannot be imported: shadowed by a broken module
    blocked.mkdir()
    (blocked / "monai.py").write_text("raise ImportError('monai is broken here', name='monai')\n")
    result = _fanet((target, {**env, "PYTHONPATH": f"{target}{os.pathsep}{blocked}"}), tmp_path, "train", "data",
                    check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 2, result.stderr
    assert lines[0].startswith("fanet: cannot start: the package 'monai'") and "pip install" in lines[1]
