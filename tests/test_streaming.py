"""Streaming reducers (`evaluation.streaming`) == the batch reducers of the protocols, value for value,
and shards merged == the unsharded run."""

import math

import numpy as np
import pytest

from instructcv_core.evaluation import streaming
from instructcv_core.evaluation.protocols import paper, standard
from instructcv_core.tasks.base import per_image


def _same(a, b) -> None:
    """Exact equality of nested results (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (a.keys(), b.keys())
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert a == b, (a, b)


def _split(items: list, parts: int) -> list[list]:
    size = math.ceil(len(items) / parts)
    return [items[i:i + size] for i in range(0, len(items), size)]


# ------------------------------------------------------------------------------------------------
# segmentation


def _seg_images(rng, n_images=9, num_classes=6, shape=(23, 31), background=None):
    """(image_id, {class: score map}, gt labels): random classes asked, some images missing a class."""
    images = []
    for i in range(n_images):
        gt = rng.integers(0, num_classes, shape).astype(np.int64)
        gt[rng.random(shape) < 0.1] = 255  # ignored pixels
        classes = [c for c in range(num_classes) if c != background and (i % 4 or rng.random() < 0.8)]
        # integer-valued scores make exact ties frequent (the first-maximum rule is exercised)
        scores = {c: rng.integers(100, 140, shape).astype(np.float32) for c in rng.permutation(classes)}
        images.append((f"img{i}", scores, gt))
    return images


@pytest.mark.parametrize("background", [None, 0])
def test_running_argmax_equals_combine_class_scores(background):
    rng = np.random.default_rng(0)
    for _, scores, gt in _seg_images(rng, background=background):
        combined = streaming.ClassScoreArgmax(gt.shape, standard.SEG_THRESHOLD, background)
        for c, s in scores.items():  # arrival order, not class order
            combined.add(c, s)
        expected = standard.combine_class_scores(scores, gt.shape, standard.SEG_THRESHOLD, background)
        assert np.array_equal(combined.labels(), expected)
    with pytest.raises(ValueError, match="added twice"):
        combined.add(next(iter(scores)), next(iter(scores.values())))
    with pytest.raises(ValueError, match="GT shape"):
        streaming.ClassScoreArgmax((2, 2)).add(0, np.zeros((3, 2)))


@pytest.mark.parametrize("background", [None, 0])
def test_standard_segmentation_streams_to_the_batch_result_and_shards_merge(background):
    rng = np.random.default_rng(1)
    images = _seg_images(rng, background=background)
    k = 6

    def batch(items):
        return standard.segmentation_miou(items, num_classes=k, ignore_index=255, background=background)

    expected = {**batch([(s, g) for _, s, g in images]),
                "per_image": per_image(batch, [i for i, _, _ in images], [(s, g) for _, s, g in images], "miou")}

    def stream(items):
        acc = streaming.StandardSegmentation(k, 255, background=background)
        for image_id, scores, gt in items:
            combined = acc.new_image(gt.shape)
            for c, s in scores.items():
                combined.add(c, s)
            acc.update(image_id, combined, gt)
        return acc

    _same(stream(images).compute(), expected)
    assert expected["warnings"]  # some images were not asked every class: the warning is reproduced
    shards = [stream(part) for part in _split(images, 3)]
    for shard in shards[1:]:
        shards[0].merge(shard)
    _same(shards[0].compute(), expected)


def _paper_pairs(rng, n_images=7):
    pairs = []
    for i in range(n_images):
        gt_shape = (40, 52)
        for c in ["cat", "dog", "tree"][: 1 + i % 3]:
            pred = None if (i == 3 and c == "cat") else rng.random((16, 16)) < 0.4
            pairs.append((f"img{i}", c, pred, rng.random(gt_shape) < 0.3))
    pairs.append(("img5", "cat", rng.random((16, 16)) < 0.4, rng.random((40, 52)) < 0.3))  # overwrites
    pairs.append(("img9", "cat", None, rng.random((40, 52)) < 0.3))  # an image without any prediction
    return pairs


def test_paper_segmentation_streams_to_the_batch_result_and_shards_merge():
    pairs = _paper_pairs(np.random.default_rng(2))
    expected = paper.segmentation_miou(pairs)
    assert expected["overwritten_pairs"] == 1 and expected["skipped_nan_images"] == 2  # img3, img9

    def stream(items):
        acc = streaming.PaperSegmentation()
        for item in items:
            acc.update(*item)
        return acc

    _same(stream(pairs).compute(), expected)
    first, second = stream(pairs[:9]), stream(pairs[9:])  # the cut falls inside an image's pairs
    first.merge(second)
    _same(first.compute(), expected)


def test_class_iou_sums_equal_fss_miou_with_per_image_values():
    rng = np.random.default_rng(3)
    samples = [(f"img{i}", ["a", "b", "c"][i % 3], rng.random((12, 9)) < 0.5, rng.random((12, 9)) < 0.4 * (i != 4))
               for i in range(10)]
    samples.append(("img10", "d", np.zeros((12, 9), bool), np.zeros((12, 9), bool)))  # empty union: NaN
    triples = [s[1:] for s in samples]
    expected = {**standard.fss_miou(triples), "per_image": per_image(standard.fss_miou, [s[0] for s in samples], triples, "miou")}

    def stream(items):
        acc = streaming.ClassIoUSums()
        for item in items:
            acc.update(*item)
        return acc

    _same(stream(samples).compute(), expected)
    first, second = stream(samples[:4]), stream(samples[4:])
    first.merge(second)
    _same(first.compute(), expected)


# ------------------------------------------------------------------------------------------------
# depth


def test_paper_depth_streams_to_the_batch_result():
    rng = np.random.default_rng(4)
    samples = [(rng.integers(0, 256, (30, 40), dtype=np.uint8), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
               for _ in range(6)]
    acc = streaming.PaperDepth()
    for gt, out in samples:
        acc.update(gt, out)
    _same(acc.compute(), paper.depth_metrics(samples))
    _same(streaming.PaperDepth().compute(), paper.depth_metrics([]))
    first, second = streaming.PaperDepth(), streaming.PaperDepth()
    for i, (gt, out) in enumerate(samples):
        (first if i < 2 else second).update(gt, out)
    first.merge(second)
    _same(first.compute(), paper.depth_metrics(samples))


@pytest.mark.parametrize("eigen_crop", [False, True])
def test_standard_depth_streams_to_the_batch_result(eigen_crop):
    rng = np.random.default_rng(5)
    ids, samples = [], []
    for i in range(7):
        gt = rng.uniform(0.5, 9.0, (48, 64)).astype(np.float32)
        gt[rng.random(gt.shape) < 0.2] = 0
        if i == 2:
            gt[:] = 0  # no valid pixel: skipped
        ids.append(f"img{i // 2}")  # two outputs for most images
        samples.append((rng.uniform(0, 12, (48, 64)).astype(np.float32), gt))

    def depth(items):
        return standard.depth_metrics(items, eigen_crop=eigen_crop)

    expected = {**depth(samples), "per_image": per_image(depth, ids, samples, "rmse")}
    assert expected["skipped_images"] == 1
    acc = streaming.StandardDepth(eigen_crop=eigen_crop)
    for image_id, (pred, gt) in zip(ids, samples):
        acc.update(image_id, pred, gt)
    _same(acc.compute(), expected)
    first, second = streaming.StandardDepth(eigen_crop=eigen_crop), streaming.StandardDepth(eigen_crop=eigen_crop)
    for n, (image_id, (pred, gt)) in enumerate(zip(ids, samples)):
        (first if n < 3 else second).update(image_id, pred, gt)  # the cut splits img1's two outputs
    first.merge(second)
    _same(first.compute(), expected)


def test_the_task_scorer_streams_to_the_batch_reducers_end_to_end():
    """`ClosedSetSegmentation.score` on a synthetic ADE20K split (benchmarks/scoring_memory.py --check)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "scoring_memory.py"
    spec = importlib.util.spec_from_file_location("scoring_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--images", "3", "--classes", "10", "--height", "40", "--width", "52", "--check"]) == 0


def test_channel_mean_fast_path_equals_numpy_mean():
    """`channel_values(x, "mean")` on uint8 RGB: the same float32 numbers as ``x.astype(float32).mean(axis=2)``."""
    from instructcv_core.tasks.arrays import channel_values

    rng = np.random.default_rng(6)
    every_sum = np.array([[[r, g, b] for g in range(256) for b in (0, 1, 127, 128, 255)] for r in range(256)], np.uint8)
    for x in [every_sum, *(rng.integers(0, 256, (int(rng.integers(1, 90)), int(rng.integers(1, 90)), 3), dtype=np.uint8)
                           for _ in range(20))]:
        got = channel_values(x, "mean")
        assert got.dtype == np.float32 and np.array_equal(got, x.astype(np.float32).mean(axis=2))
