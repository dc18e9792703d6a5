"""The one reader of ingest snapshot images: values as written, and no path outside the dataset folder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from trainflow.data.snapshot_images import read_image, read_mask, read_size
from trainflow.errors import UserFacingError


def test_reads_images_masks_and_sizes_as_written(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "a.png")
    Image.fromarray(mask, mode="L").save(tmp_path / "images" / "a_mask.png")
    Image.fromarray(pixels[..., 0], mode="L").save(tmp_path / "images" / "grey.png")

    assert np.array_equal(read_image(tmp_path, "images/a.png"), pixels)
    assert np.array_equal(read_mask(tmp_path, "images/a_mask.png"), mask)
    assert read_size(tmp_path, "images/a.png") == (5, 7)
    grey = read_image(tmp_path, "images/grey.png")
    assert grey.shape == (5, 7, 3) and np.array_equal(grey[..., 2], pixels[..., 0])


_segment = st.text(alphabet="abc._-", min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(before=st.lists(_segment, max_size=3), after=st.lists(_segment, max_size=3), absolute=st.booleans())
def test_a_manifest_path_leaving_the_folder_is_one_sentence(tmp_path_factory, before, after, absolute):
    root = tmp_path_factory.mktemp("dataset")
    relative = "/".join([*before, "..", *after]) if not absolute else "/" + "/".join([*before, *after, "x.png"])
    for reader in (read_image, read_mask, read_size):
        with pytest.raises(UserFacingError, match="not a path inside the dataset folder"):
            reader(root, relative)
