"""The one patch-batch check (:func:`naslung.data.patches.check_patches`) and the payload decoder built on it."""

from __future__ import annotations

import numpy as np
import pytest

from naslung.data.patches import PatchArrayError, check_patches
from naslung.scoring import PayloadError, decode_payload, encode_payload


def test_check_patches_accepts_batches_with_or_without_the_channel_axis() -> None:
    x = np.random.default_rng(0).random((3, 32, 32, 32), dtype=np.float32)
    assert check_patches(x, "here") is x
    five = check_patches(x[:, None], "here")
    assert five.shape == (3, 32, 32, 32) and np.shares_memory(five, x)
    assert check_patches(np.zeros((2, 8, 8, 8), np.float32), "here", size=None).shape == (2, 8, 8, 8)
    assert check_patches(np.zeros((0, 32, 32, 32), np.float32), "here", allow_empty=True).shape[0] == 0
    assert check_patches(x * 300, "here", values=False).max() > 1  # values not checked on request
    assert check_patches((x * 255).astype(np.uint8), "here", dtypes=(np.float32, np.uint8)).dtype == np.uint8


@pytest.mark.parametrize(
    ("arr", "words"),
    [
        (np.zeros((2, 32, 32, 32), np.float64), ["dtype float64", "expected float32"]),
        (np.zeros((2, 16, 32, 32), np.float32), ["shape (2, 16, 32, 32)", "(N, 32, 32, 32)"]),
        (np.zeros((2, 2, 32, 32, 32), np.float32), ["shape (2, 2, 32, 32, 32)"]),
        (np.zeros((32, 32, 32), np.float32), ["shape (32, 32, 32)"]),
        (np.zeros((0, 32, 32, 32), np.float32), ["zero patches"]),
        (np.full((2, 32, 32, 32), 1.5, np.float32), ["[0, 1]", "max 1.5"]),
        ([[0.5]], ["numpy array", "list"]),
    ],
)
def test_check_patches_names_where_and_what(arr: np.ndarray, words: list[str]) -> None:
    with pytest.raises(PatchArrayError) as err:
        check_patches(arr, "batch from the moon")
    text = str(err.value)
    assert text.startswith("batch from the moon: ") and all(w in text for w in words), text


def test_non_finite_patches_are_named_by_index() -> None:
    x = np.zeros((12, 32, 32, 32), np.float32)
    x[3, 0, 0, 0] = np.nan
    x[11, 1, 2, 3] = np.inf
    with pytest.raises(PatchArrayError, match=r"non-finite values \(NaN/inf\) in patch\(es\) \[3, 11\]"):
        check_patches(x, "here")


def test_payload_errors_are_the_patch_check_with_status_422() -> None:
    for bad, word in (
        (np.zeros((1, 32, 32, 32), np.int16), "dtype int16"),
        (np.zeros((1, 32, 32), np.float32), "shape"),
        (np.full((1, 32, 32, 32), -0.5, np.float32), "[0, 1]"),
    ):
        with pytest.raises(PayloadError) as err:
            decode_payload(encode_payload(bad), max_bytes=1 << 20)
        assert err.value.status == 422 and err.value.message.startswith("payload: ") and word in err.value.message
