"""The pretraining corpus of the mini base: captioned scenes of the mini world (its "LAION").

Stable Diffusion learned what a cat or a bus looks like from captioned web images before
InstructCV fine-tuned it; the mini base learns the same from scenes drawn by the mini renderer
(:mod:`instructcv_core.data.mini.scenes`) with a caption naming what they show. The corpus is its own
seed stream (:data:`CORPUS_STREAM`), disjoint from the streams of the mini datasets' writers, so no
mini-benchmark image (train or test) is in it; it names every category the renderer knows, the
external benchmarks' too (SD had seen sheep and boats before InstructCV was tested on them) and the
mini Pets breeds (SD knows what a samoyed looks like).

Besides the scene images, the autoencoder is fitted on what the model will have to draw
(:func:`target_images`): white-on-black silhouettes of the corpus objects, gray depth maps of the
corpus scenes, solid palette colours and the scenes with box outlines. These are reconstruction
targets built from the corpus's own geometry with the tasks' encoders, no instruction and no
benchmark label: they give the autoencoder the visual vocabulary of the outputs, as SD's VAE had
seen masks, diagrams and flat colours among its training images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from instructcv_core.data.mini.pets import MINI_BREEDS, breed_kind, species_of
from instructcv_core.data.mini.scenes import INDOOR, KINDS, OUTDOOR, SMALL_ROOMS, Scene, render_scene, render_single_object

#: First entropy word of every corpus image's generator. The mini dataset writers seed theirs with
#: small integers (the run seed, a folder or split index, the image index), never with this word.
CORPUS_STREAM = 0x6D696E69  # "mini"
STYLES = (INDOOR, OUTDOOR, SMALL_ROOMS)
#: Share of corpus images that show one object filling the frame (pet-photo style).
SINGLE_SHARE = 0.3


@dataclass(frozen=True)
class CorpusItem:
    """One corpus image (uint8 ``(S, S, 3)``), its caption and the scene it was drawn from."""

    image: np.ndarray
    caption: str
    scene: Scene


def _article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def caption_of(names: list[str]) -> str:
    """``["bus", "cat"]`` -> "a photo of a bus and a cat".

    Captions name each category once, in alphabetical order, and scenes hold at most 3 objects: the
    corpus has a few hundred distinct captions, whose text-encoder states are computed once
    (:func:`instructcv_core.model.pretrain_mini.caption_states`).
    """
    listed = [_article(n) for n in names]
    things = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
    return f"a photo of {things}"


def render_item(seed: int, index: int, size: int) -> CorpusItem:
    """Corpus image ``index``: a seeded scene, resized to ``size`` px square as the pair builder does."""
    rng = np.random.default_rng([CORPUS_STREAM, seed, index])
    width, height = int(rng.integers(160, 193)), int(rng.integers(120, 145))
    if rng.random() < SINGLE_SHARE:
        names = sorted(KINDS) + list(MINI_BREEDS)
        name = names[int(rng.integers(len(names)))]
        kind = breed_kind(name) if name in MINI_BREEDS else KINDS[name]
        scene = render_single_object(rng, width, height, kind, INDOOR)
        label = f"{name} {species_of(name)[1]}" if name in MINI_BREEDS else name
        caption = caption_of([label])
    else:
        style = STYLES[int(rng.integers(len(STYLES)))]
        scene = render_scene(rng, width, height, list(KINDS.values()), (1, 3), style)
        caption = caption_of(sorted({o.kind.name for o in scene.objects}))
    image = np.asarray(Image.fromarray(scene.image).resize((size, size), Image.Resampling.LANCZOS))
    return CorpusItem(image, caption, scene)


def target_images(item: CorpusItem, size: int, rng: np.random.Generator, box_width: int = 12) -> list[np.ndarray]:
    """Output-like images of one corpus scene for the autoencoder, each ``size`` px square (see module doc)."""
    from instructcv_core.tasks.classification import encode_classification
    from instructcv_core.tasks.colours import PALETTE
    from instructcv_core.tasks.depth import encode_depth
    from instructcv_core.tasks.detection import encode_detection
    from instructcv_core.tasks.segmentation import encode_segmentation

    scene = item.scene
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    colours = list(PALETTE.values())
    drawn = [
        encode_segmentation(obj.mask),
        encode_depth(scene.depth_m),
        encode_detection(scene.image, [o.box for o in scene.objects if o.kind == obj.kind], width=box_width),
        encode_classification(colours[int(rng.integers(len(colours)))], (16, 16)),
    ]
    return [np.asarray(Image.fromarray(d).resize((size, size), Image.Resampling.LANCZOS)) for d in drawn]


def _render_range(args: tuple[int, int, int, int]) -> tuple[list[np.ndarray], list[str], list[np.ndarray]]:
    seed, start, stop, size = args
    images, captions, targets = [], [], []
    for index in range(start, stop):
        item = render_item(seed, index, size)
        images.append(item.image)
        captions.append(item.caption)
        targets.extend(target_images(item, size, np.random.default_rng([CORPUS_STREAM, seed, index, 1])))
    return images, captions, targets


def all_captions() -> list[str]:
    """Every caption the corpus can hold, sorted: 1 to 3 distinct categories, or one breed."""
    from itertools import combinations

    names = sorted(KINDS)
    sets = [c for n in (1, 2, 3) for c in combinations(names, n)]
    return sorted({caption_of(list(c)) for c in sets} | {caption_of([f"{b} {species_of(b)[1]}"]) for b in MINI_BREEDS})


def build_corpus(seed: int, count: int, size: int, workers: int = 1) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(scene images ``(count, S, S, 3)``, their captions, output-like images ``(4 * count, S, S, 3)``).

    The same for any ``workers`` (each image has its own generator); order is the index order.
    """
    chunk = 256
    jobs = [(seed, start, min(start + chunk, count), size) for start in range(0, count, chunk)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_render_range, jobs))
    else:
        parts = [_render_range(job) for job in jobs]
    images = [im for part in parts for im in part[0]]
    captions = [c for part in parts for c in part[1]]
    targets = [t for part in parts for t in part[2]]
    return np.stack(images), captions, np.stack(targets)


__all__ = ["CORPUS_STREAM", "CorpusItem", "all_captions", "build_corpus", "caption_of", "render_item", "target_images"]
