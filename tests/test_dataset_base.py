"""`check_images`: the thread-pooled `check_image` every dataset reader uses."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from instructcv_core.data.datasets.base import check_image, check_images


@pytest.fixture
def images(tmp_path):
    """30 PNGs of distinct sizes, with a truncated file at 7 and a missing one at 19."""
    rng = np.random.default_rng(0)
    paths, expected = [], []
    for i in range(30):
        path = tmp_path / f"{i:02d}.png"
        if i == 19:
            expected.append("file not found")  # never written
        else:
            w, h = 8 + i, 40 - i
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
            expected.append((w, h))
        paths.append(path)
    data = paths[7].read_bytes()
    paths[7].write_bytes(data[: len(data) // 2])  # header intact, pixel data cut off
    expected[7] = check_image(paths[7])
    return paths, expected


def test_results_are_in_input_order_with_reasons_in_place(images):
    paths, expected = images
    results = check_images(paths)
    assert results == expected
    assert results[7].startswith("undecodable image (")
    assert results[19] == "file not found"
    good = [i for i in range(30) if i not in (7, 19)]
    assert [results[i] for i in good] == [(8 + i, 40 - i) for i in good]


def test_worker_count_does_not_change_results(images):
    paths, _ = images
    one = check_images(paths, workers=1)
    assert check_images(paths, workers=4) == one
    assert check_images(paths[::-1], workers=4) == one[::-1]


def test_empty_list_and_bad_worker_count(tmp_path):
    assert check_images([]) == []
    with pytest.raises(ValueError, match="workers"):
        check_images([tmp_path / "a.png"], workers=0)


def test_check_images_reports_progress_to_its_logger(tmp_path, monkeypatch, caplog):
    import logging

    import numpy as np
    from PIL import Image

    import instructcv_core.data.datasets.base as base

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(paths[-1])
    monkeypatch.setattr(base, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="instructcv_core"):
        base.check_images(paths, workers=1)
    assert [r.getMessage() for r in caplog.records][-1] == "checked 3 of 3 images (100%)"


def test_read_path_pairs_skips_blank_lines_and_names_a_bad_line(tmp_path):
    import pytest

    from instructcv_core.data.datasets.base import read_path_pairs

    good = tmp_path / "list.txt"
    good.write_text("/a/rgb_1.jpg /a/depth_1.png 518.8579\n\n  \nb.jpg b.png\n")
    assert read_path_pairs(good, "<rgb> <depth>") == [("/a/rgb_1.jpg", "/a/depth_1.png"), ("b.jpg", "b.png")]
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg b.png\nonly_one.jpg\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected `<rgb> <depth>`"):
        read_path_pairs(bad, "<rgb> <depth>")
