"""Feedback mask cache: storage, binarization, update policies, checkpoints, distributed updates, sample keys."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from fanet_monai.feedback.cache import FeedbackMaskCache, sample_key


def blob_mask(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``(1, H, W)`` mask with a few disks."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[:height, :width]
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(3):
        r, c, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(4, max(5, min(height, width) // 4))
        mask |= (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
    return mask[None].astype(np.uint8)


def test_put_get_round_trip() -> None:
    cache = FeedbackMaskCache()
    masks = {"a.jpg": blob_mask(37, 91), "b.png": blob_mask(120, 16, seed=1), "c.nii.gz": np.ones((4, 5, 6))}
    for key, mask in masks.items():
        cache.put(key, mask)
    assert len(cache) == 3 and set(cache.keys()) == set(masks) and "a.jpg" in cache and "zzz" not in cache
    for key, mask in masks.items():
        out = cache.get(key)
        assert out is not None and out.dtype == np.uint8 and out.shape == mask.shape
        np.testing.assert_array_equal(out, mask)
    assert cache.get("missing.jpg") is None
    cache.put("a.jpg", np.zeros((37, 91)))  # overwrite, with another shape
    assert cache.get("a.jpg").shape == (37, 91) and cache.get("a.jpg").sum() == 0 and len(cache) == 3


def test_binarization() -> None:
    cache = FeedbackMaskCache()
    probabilities = np.array([[0.1, 0.5, 0.51, 0.9]])
    cache.put("p", probabilities)
    np.testing.assert_array_equal(cache.get("p"), [[0, 0, 1, 1]])
    cache.put("t", torch.tensor([[0.2, 0.7], [0.5, 1.0]], dtype=torch.bfloat16))
    np.testing.assert_array_equal(cache.get("t"), [[0, 1], [0, 1]])
    cache.put("i", np.array([0, 3, 0, 255], dtype=np.uint8))
    np.testing.assert_array_equal(cache.get("i"), [0, 1, 0, 1])
    cache.put("b", torch.tensor([True, False]))
    np.testing.assert_array_equal(cache.get("b"), [1, 0])


def test_every_epoch_writes_immediately() -> None:
    cache = FeedbackMaskCache()
    assert cache.update_policy == "every_epoch"
    cache.put("a", np.ones((2, 3)))
    assert "a" in cache and cache.pending == 0
    assert cache.commit() == 0 and cache.discard() == 0 and "a" in cache


def test_on_improvement_stages_until_commit() -> None:
    cache = FeedbackMaskCache(update_policy="on_improvement")
    cache.put("a", np.ones((2, 3)))
    cache.put("b", np.ones((4, 1)))
    assert len(cache) == 0 and cache.pending == 2 and cache.get("a") is None
    assert cache.commit() == 2
    assert cache.pending == 0 and set(cache.keys()) == {"a", "b"}
    cache.put("a", np.zeros((2, 3)))
    assert cache.get("a").sum() == 6  # still the committed mask
    assert cache.discard() == 1
    assert cache.pending == 0 and cache.get("a").sum() == 6
    with pytest.raises(ValueError, match="update_policy"):
        FeedbackMaskCache(update_policy="sometimes")


def test_state_dict_weights_only(tmp_path: Path) -> None:
    cache = FeedbackMaskCache(update_policy="on_improvement")
    cache.put("a.jpg", blob_mask(64, 48))
    cache.commit()
    cache.put("b.jpg", blob_mask(30, 70, seed=2))  # staged
    path = tmp_path / "checkpoint.pt"
    torch.save({"cache": cache.state_dict()}, path)
    state = torch.load(path, weights_only=True)["cache"]
    restored = FeedbackMaskCache()
    restored.load_state_dict(state)
    assert restored.update_policy == "on_improvement" and restored.keys() == ["a.jpg"] and restored.pending == 1
    np.testing.assert_array_equal(restored.get("a.jpg"), blob_mask(64, 48))
    restored.commit()
    np.testing.assert_array_equal(restored.get("b.jpg"), blob_mask(30, 70, seed=2))
    assert restored.state_dict()["masks"].keys() == {"a.jpg", "b.jpg"}


def test_pickle() -> None:
    cache = FeedbackMaskCache()
    cache.put("a.jpg", blob_mask(20, 33))
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.keys() == ["a.jpg"] and copy.update_policy == "every_epoch"
    np.testing.assert_array_equal(copy.get("a.jpg"), blob_mask(20, 33))


def test_export_merge_updates() -> None:
    rank0, rank1 = FeedbackMaskCache(), FeedbackMaskCache()
    rank0.put("a.jpg", blob_mask(16, 16))
    rank1.put("b.jpg", blob_mask(24, 8, seed=3))
    updates0, updates1 = rank0.export_updates(), rank1.export_updates()
    assert set(updates0) == {"a.jpg"} and set(updates1) == {"b.jpg"}
    assert rank0.export_updates() == {}  # nothing written since the previous call
    # the updates travel as builtins/bytes (e.g. all_gather_object); simulate the trip with pickle
    for cache, others in ((rank0, updates1), (rank1, updates0)):
        cache.merge_updates(pickle.loads(pickle.dumps(others)))
    for cache in (rank0, rank1):
        assert set(cache.keys()) == {"a.jpg", "b.jpg"}
        np.testing.assert_array_equal(cache.get("b.jpg"), blob_mask(24, 8, seed=3))
        assert cache.export_updates() == {}  # merged masks are not exported again
    staged = FeedbackMaskCache(update_policy="on_improvement")
    staged.put("c.jpg", np.ones((2, 2)))
    assert staged.export_updates() == {}
    staged.commit()
    assert set(staged.export_updates()) == {"c.jpg"}


def test_sizes() -> None:
    cache = FeedbackMaskCache()
    for seed in range(4):
        cache.put(f"{seed}.jpg", blob_mask(256, 256, seed=seed))
    assert cache.raw_nbytes == 4 * 256 * 256
    assert cache.nbytes < 0.05 * cache.raw_nbytes
    assert "masks=4" in repr(cache)


def test_sample_key() -> None:
    assert sample_key("/data/kvasir/images/cju0qkwl35piu0993l0dewei2.jpg") == "cju0qkwl35piu0993l0dewei2.jpg"
    assert sample_key(Path("/data/x/a.nii.gz")) == "a.nii.gz"
    assert sample_key("b.png") == "b.png"
    assert sample_key({"filename_or_obj": "/tmp/c.png", "spatial_shape": (4, 4)}) == "c.png"
    assert sample_key(MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "/tmp/d.png"})) == "d.png"
    with pytest.raises(ValueError, match="no file name"):
        sample_key({"spatial_shape": (4, 4)})
    with pytest.raises(ValueError, match="no file name"):
        sample_key(MetaTensor(torch.zeros(1, 2, 2)))
    with pytest.raises(ValueError, match="decollate"):
        sample_key({"filename_or_obj": ["/tmp/a.png", "/tmp/b.png"]})
    with pytest.raises(ValueError, match="no file name"):
        sample_key("/data/images/")
