"""Run-length codec: exact round trips for any shape, compactness, serialisation."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from fanet_monai.feedback.rle import RLEMask, rle_decode, rle_encode


def blobs(shape: tuple[int, int], centres: list[tuple[int, int, int]]) -> np.ndarray:
    """Binary mask with one disk per ``(row, column, radius)``."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for r, c, radius in centres:
        mask |= (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
    return mask


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=24))
    density = draw(st.sampled_from([0.0, 0.02, 0.5, 0.98, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random(shape) < density


@settings(max_examples=150, deadline=None)
@given(masks())
def test_round_trip_random(mask: np.ndarray) -> None:
    rle = rle_encode(mask)
    out = rle_decode(rle)
    assert out.shape == mask.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask)
    assert rle.foreground == int(mask.sum())
    assert int(rle.run_lengths.sum()) == mask.size
    assert rle.run_lengths.dtype == np.min_scalar_type(int(rle.run_lengths.max(initial=0)))


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((1, 37), dtype=bool),
        np.ones((1, 37), dtype=bool),
        np.zeros((5, 300)),
        np.ones((300, 5)),
        np.eye(7, 11),
        np.zeros((0,)),
        np.zeros((3, 0, 4)),
        np.array([1]),
        np.array([0]),
        np.ones((256, 256), dtype=np.uint8),  # one run of 65,536 needs uint32
    ],
    ids=["1xN-zero", "1xN-one", "wide-zero", "tall-one", "eye", "empty-1d", "empty-3d", "one", "zero", "full-256"],
)
def test_edge_cases(mask: np.ndarray) -> None:
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle), mask != 0)
    assert rle_decode(rle).shape == mask.shape
    assert rle_decode(rle, dtype=bool).dtype == np.bool_


def test_run_layout() -> None:
    assert rle_encode(np.array([0, 0, 1, 1, 1, 0, 1])).run_lengths.tolist() == [2, 3, 1, 1]
    assert rle_encode(np.array([1, 1, 0])).run_lengths.tolist() == [0, 2, 1]  # leading zero-length background run
    assert rle_encode(np.array([[0, 1], [1, 1]])).run_lengths.tolist() == [1, 3]  # C order
    assert rle_encode(np.zeros(0)).run_lengths.tolist() == []
    assert rle_encode(np.ones((256, 256))).dtype == "<u4"
    assert rle_encode(np.ones(300)).dtype == "<u2"
    assert rle_encode(np.ones(3)).dtype == "|u1"


def test_nonzero_is_foreground() -> None:
    values = np.array([[0.0, -1.0, 0.2], [3.0, 0.0, np.nan]])
    np.testing.assert_array_equal(rle_decode(rle_encode(values)), [[0, 1, 1], [1, 0, 1]])


def test_compactness_256() -> None:
    mask = blobs((256, 256), [(60, 70, 30), (170, 160, 45), (200, 40, 12)])
    rle = rle_encode(mask)
    ratio = rle.nbytes / mask.size
    assert ratio < 0.05, f"RLE takes {rle.nbytes} bytes = {ratio:.2%} of the raw uint8 mask"
    np.testing.assert_array_equal(rle_decode(rle), mask)


def test_torch_input() -> None:
    mask = torch.rand(2, 17, 9, generator=torch.Generator().manual_seed(0)) > 0.6
    np.testing.assert_array_equal(rle_decode(rle_encode(mask)), mask.numpy())
    np.testing.assert_array_equal(rle_decode(rle_encode(mask.float())), mask.numpy())


def test_serialisation() -> None:
    mask = blobs((40, 90), [(20, 30, 10), (5, 80, 6)])
    rle = rle_encode(mask)
    assert pickle.loads(pickle.dumps(rle)) == rle
    as_dict = rle.to_dict()
    assert set(as_dict) == {"shape", "runs", "dtype"} and isinstance(as_dict["runs"], bytes)
    assert RLEMask.from_dict(as_dict) == rle
    buffer = io.BytesIO()
    torch.save(as_dict, buffer)
    buffer.seek(0)
    assert RLEMask.from_dict(torch.load(buffer, weights_only=True)) == rle
    # runs given as a uint8 tensor (e.g. after a tensor all-gather) are accepted too
    as_tensor = {**as_dict, "runs": torch.frombuffer(bytearray(rle.runs), dtype=torch.uint8)}
    np.testing.assert_array_equal(rle_decode(RLEMask.from_dict(as_tensor)), mask)


def test_invalid() -> None:
    with pytest.raises(ValueError, match="add up"):
        rle_decode(RLEMask(shape=(3, 3), runs=np.array([1, 2], dtype=np.uint8).tobytes(), dtype="|u1"))
    with pytest.raises(ValueError, match="unsigned"):
        RLEMask(shape=(2,), runs=b"\x01\x01", dtype="|i1")
    with pytest.raises(ValueError, match="multiple"):
        RLEMask(shape=(2,), runs=b"\x01\x01\x00", dtype="<u2")
    with pytest.raises(ValueError, match="non-negative"):
        RLEMask(shape=(-1,), runs=b"", dtype="|u1")
