"""Classification as colour blocks: "Show <colour> if the picture has <class>, otherwise show <colour2>."

Target ``v(y)``: a solid block of the positive colour when the named class is in the image, of the
negative colour when it is not. Each image yields one positive question and negatives (other
classes named); images whose records carry a species (Oxford-IIIT Pet) also answer the paper's
binary cat/dog question. The `paper` protocol is the official binary near-tie rule, the `standard`
one the N-way argmax of colour margins.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from instructcv_core.instructions.templates import FP_TEMPLATES, render, test_instruction
from instructcv_core.tasks.base import (
    MetricSpec,
    Prediction,
    Question,
    Target,
    per_image,
    per_image_means,
    per_image_results,
    query_seed,
    swap_probe,
)
from instructcv_core.tasks.category_names import prompt_name
from instructcv_core.tasks.colours import PALETTE, Colour, draw_colour_pair, mean_rgb, rgb

#: The two answers of the binary variant (records with a ``species``).
SPECIES = ("cat", "dog")
#: The official FP construction of the binary variant (``build_data/format_dataset_fp.py``,
#: ``proc_oxford_pets_binary``): fixed colours, five questions per cat image and four per dog image.
#: Each: (class named, colour if present, colour if absent, colour shown). The official wording
#: ("show purple if there exists cat, otherwise show orange") is rendered with our FP template.
OFFICIAL_FP_BINARY: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "cat": (("cat", "purple", "orange", "purple"), ("cat", "purple", "black", "purple"),
            ("dog", "purple", "blue", "blue"), ("dog", "purple", "red", "red"), ("dog", "purple", "green", "green")),
    "dog": (("dog", "orange", "black", "orange"), ("dog", "green", "black", "green"),
            ("cat", "orange", "red", "red"), ("cat", "orange", "blue", "blue")),
}
#: Pair variants only one manifest takes: the binary questions with random colour pairs (RP, the
#: official ``proc_oxford_pets_binary_ifelse``) and with the fixed official FP colours. Where the
#: fixed-colour questions are not built (``BuildConfig.fp_binary_colours: random``), FP takes the
#: random-colour ones (`construction.manifest.fp_pairs`).
RP_ONLY_VARIANTS = frozenset({"binary"})
FP_ONLY_VARIANTS = frozenset({"binary_fp"})

# --------------------------------------------------------------------------------------------
# encoding and decoding


def encode_classification(colour: Colour, size: tuple[int, int]) -> np.ndarray:
    """A solid block of ``colour``: uint8 RGB of shape ``(height, width, 3)`` for ``size=(width, height)``.

    ``colour`` is an (r, g, b) tuple or a :data:`PALETTE` name. The official builder fills the
    target with the positive colour when the queried class is present and with the negative colour
    when it is absent (the absent class is named in the prompt).
    """
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive (width, height), got {size!r}")
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = np.array(rgb(colour), dtype=np.uint8)
    return out


def classification_margin(image: np.ndarray, positive: Colour, negative: Colour) -> float:
    """``dist(mean, negative) - dist(mean, positive)``, Euclidean in RGB (0..255 units).

    ``mean`` is the mean RGB colour over all pixels. Positive margin: the image is nearer the
    positive colour (class present); negative: nearer the negative colour; 0: a tie. Its absolute
    value serves as a confidence, and as input to the official near-tie rule.
    """
    mean = mean_rgb(image)
    pos = np.array(rgb(positive), dtype=np.float64)
    neg = np.array(rgb(negative), dtype=np.float64)
    return float(np.linalg.norm(mean - neg) - np.linalg.norm(mean - pos))


def decode_classification(image: np.ndarray, positive: Colour, negative: Colour) -> bool:
    """True iff the image's mean RGB colour is strictly nearer (Euclidean) to ``positive`` than to
    ``negative``, i.e. ``classification_margin(...) > 0``; an exact tie gives False."""
    return classification_margin(image, positive, negative) > 0


def classification_scores(output: np.ndarray, colours: Mapping[str, Colour]) -> dict[str, float]:
    """Euclidean RGB distance (0..255 units) from the output's mean colour to each named colour;
    smaller is closer. ``colours`` maps a label to an (r, g, b) tuple or a PALETTE name."""
    mean = mean_rgb(output)
    return {
        name: float(np.linalg.norm(mean - np.array(rgb(colour), dtype=np.float64)))
        for name, colour in colours.items()
    }


def palette_colours(instruction: str) -> list[str]:
    """The distinct palette colour names named in ``instruction``, in order of appearance
    (``rosy brown`` is one colour, not ``brown``)."""
    names = sorted(PALETTE, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(n).replace(r"\ ", r"\s+") for n in names) + r")\b", re.IGNORECASE)
    found: list[str] = []
    for match in pattern.finditer(instruction):
        name = re.sub(r"\s+", " ", match.group(1).lower())
        if name not in found:
            found.append(name)
    return found


def nearest_palette(colours: np.ndarray) -> np.ndarray:
    """Index of the nearest :data:`PALETTE` colour (Euclidean RGB) for each ``(N, 3)`` row."""
    palette = np.array(list(PALETTE.values()), dtype=np.float64)
    return np.linalg.norm(colours[:, None, :] - palette[None], axis=2).argmin(axis=1)


# --------------------------------------------------------------------------------------------
# pairs


def _rng(seed: int, *parts: str) -> np.random.Generator:
    digest = hashlib.sha256("|".join([str(seed), *map(str, parts)]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _with_negatives(variant, true_class, class_names, record, config) -> list[tuple[str, str, bool]]:
    if true_class is None:
        raise ValueError(f"{record.image_path}: no class label")
    others = sorted(c for c in class_names if c != true_class)
    rng = _rng(config.seed, record.dataset, record.image_id, variant, "negatives")
    k = min(config.classification_negatives, len(others))
    negatives = [others[i] for i in sorted(rng.choice(len(others), size=k, replace=False))] if k else []
    return [(variant, true_class, True)] + [(variant, n, False) for n in negatives]


# --------------------------------------------------------------------------------------------
# evaluation


class ClassificationEvaluation:
    """Pets, ImageNet-sub: the official binary near-tie rule (paper); N-way argmax of margins (standard)."""

    kind = "classification"
    metrics = MetricSpec(
        {"paper": {"accuracy": (0, 100, True)},
         "standard": {"accuracy": (0, 100, True), "binary_accuracy": (0, 100, True)}},
        {"paper": "accuracy", "standard": "accuracy"})

    def metric_ranges(self, benchmark):
        """Binary accuracy only where the images answer the binary question."""
        if benchmark.binary_species:
            return self.metrics.ranges
        return {p: {m: r for m, r in ranges.items() if m != "binary_accuracy"} for p, ranges in self.metrics.ranges.items()}

    def questions(self, bench, config, phrasings=None):
        """Standard: every class of the dataset (the N-way decision), plus cat and dog where the images
        answer the binary question, in the FP template with the configured colours. Paper: the
        official inference instruction (:func:`~instructcv_core.evaluation.protocols.paper.paper_classification_prompt`:
        "Show red if there exsits cat; if not, show green instead.", ``infer/edit_cli_cls.py``) for
        cat and dog there; elsewhere for the true class and one seeded other class, scored with the
        same official rule."""
        from instructcv_core.evaluation.protocols import paper

        pos, neg = config.positive_colour, config.negative_colour

        def ask(image_id, category):
            text = test_instruction("classification", config.instruction_mode(), config.seed,
                                    f"{bench.name}|{image_id}|{category}", category=prompt_name(bench.dataset, category),
                                    color=pos, color2=neg)
            return Question(image_id, text, category, False, True, pos, neg)

        def ask_paper(image_id, category):
            text = paper.paper_classification_prompt(prompt_name(bench.dataset, category))
            return Question(image_id, text, category, True, False, paper.PAPER_POSITIVE_COLOUR, paper.PAPER_NEGATIVE_COLOUR)

        for image_id in bench.image_ids:
            record = bench.records[image_id]
            classes = list(bench.categories)
            for name in classes:
                yield ask(image_id, name)
            if bench.spec.binary_species:
                for species in SPECIES:
                    yield ask(image_id, species)
                    yield ask_paper(image_id, species)
            else:
                others = [c for c in classes if c != record.label_name]
                rng = np.random.default_rng(query_seed(config.seed, bench.name, image_id, "negative"))
                yield ask_paper(image_id, record.label_name)
                if others:
                    yield ask_paper(image_id, others[int(rng.integers(len(others)))])

    def query_counts(self, benchmark, images, classes, present, phrasings):
        standard = images * classes
        if benchmark.binary_species:  # cat/dog asked beside the 37 breeds: two more outputs per image
            return 2 * images, standard + 2 * images, standard + 2 * images
        return 2 * images, standard, standard  # true class + one other, both among the classes

    def swap_candidates(self, bench, config, rank):
        """The true class of each image against one other class, the first by ``rank``."""
        candidates = []
        for image_id in bench.image_ids:
            truth = bench.records[image_id].label_name
            others = sorted(c for c in bench.categories if c != truth)
            if truth and others:
                other = min(others, key=lambda c: rank(f"{image_id}|{c}"))
                candidates.append((image_id, truth, other))
        return candidates

    def swap_asks(self, asked, other):
        return [(asked, "asked"), (other, "other")]  # both classes asked: their margins are compared

    def judge_swap(self, bench, pair, output_image, config, cache):
        """The margin towards the positive colour of the answer for A against that of the answer for B."""
        asked, other = swap_probe(pair, "asked"), swap_probe(pair, "other")
        mine = classification_margin(output_image(asked.output_digest), config.positive_colour, config.negative_colour)
        theirs = classification_margin(output_image(other.output_digest), config.positive_colour, config.negative_colour)
        return mine, theirs

    def score(self, bench, outputs, output_image, target_image, config):
        from instructcv_core.evaluation.intervals import PerImageMean
        from instructcv_core.evaluation.protocols import paper, standard

        predictions = []
        margins: dict[str, dict[str, float]] = {}
        paper_outputs: dict[str, dict[str, np.ndarray]] = {}
        for row in outputs.itertuples():
            output = output_image(row.output_digest)
            margin = classification_margin(output, row.colour, row.colour2)
            if row.standard:  # False outside the standard subset (evaluation/subset.py)
                margins.setdefault(row.image_id, {})[row.category] = margin
            if row.paper:
                paper_outputs.setdefault(row.image_id, {})[row.category] = output
            predictions.append({"query_id": row.query_id, "margin": margin})
        out = {"predictions": pd.DataFrame(predictions)}
        if "paper" in config.protocols:
            samples = []
            for image_id, asked in paper_outputs.items():
                record = bench.records[image_id]
                if bench.spec.binary_species:  # the official binary script: the cat answer and the dog answer
                    # the official label comes from the breed in the file name ("Bengal" -> dog)
                    label = paper.official_pets_label(image_id) or "unknown"
                    samples.append((image_id, label, asked["cat"], asked["dog"]))
                else:  # the same rule on (true class, one other class): the true class plays "cat"
                    other = next(c for c in sorted(asked) if c != record.label_name)
                    samples.append((image_id, "cat", asked[record.label_name], asked[other]))
            each = per_image_results(paper.classification_accuracy, [s[0] for s in samples], samples)
            out["paper"] = {**paper.classification_accuracy(samples), "bootstrap": per_image_means(each, ["accuracy"])}
        if "standard" in config.protocols:
            names = set(bench.categories)
            multi = [(bench.records[i].label_name, {c: m for c, m in asked.items() if c in names}) for i, asked in margins.items()]
            result = dict(standard.classification_accuracy(multi))
            result["per_image"] = per_image(standard.classification_accuracy, list(margins), multi, "accuracy")
            result["bootstrap"] = {"accuracy": PerImageMean(result["per_image"])}
            if bench.spec.binary_species:
                binary = [(bench.records[i].species, {c: asked[c] for c in SPECIES}) for i, asked in margins.items()]
                result["binary_accuracy"] = standard.classification_accuracy(binary)["accuracy"]
                result["bootstrap"]["binary_accuracy"] = PerImageMean(
                    per_image(standard.classification_accuracy, list(margins), binary, "accuracy"))
            out["standard"] = result
        return out


# --------------------------------------------------------------------------------------------
# the task


class ClassificationTask:
    name = "classification"
    evaluations = {"classification": ClassificationEvaluation()}
    instruction_hint = "'show <colour> if ..., otherwise <colour>'"
    decisive = True  # two colours and a condition: whatever else the instruction names
    draws = "colour"
    official_folder_tag = None  # the official classification script reads image files, not per-category folders
    _conditional = re.compile(r"\b(if|otherwise|else|when|whether|yes|no)\b", re.IGNORECASE)

    def has_labels(self, record) -> bool:
        return record.label_name is not None

    def targets(self, record, root: Path, image, class_names, config) -> list[Target]:
        """Positive and negative colour blocks; every draw is seeded by the image and the question.

        Pets' binary cat/dog questions come with seeded random colour pairs (variant ``binary``, for
        the RP manifest, as the official RP builder) and, with ``fp_binary_colours: official``, once more
        with the official FP builder's fixed colours (variant ``binary_fp``, :data:`OFFICIAL_FP_BINARY`,
        for the FP manifest; with ``random`` the FP manifest takes the ``binary`` questions too)."""
        size = (image.shape[1], image.shape[0])
        questions: list[tuple[str, str, bool]] = []  # (variant, class named, is it the image's class)
        if record.species is not None:
            if "binary" in config.pets_variants:
                for species in SPECIES:
                    questions.append(("binary", species, species == record.species))
            if "breeds" in config.pets_variants:
                questions += _with_negatives("breeds", record.label_name, class_names, record, config)
        else:
            questions += _with_negatives("classes", record.label_name, class_names, record, config)

        targets = []
        for variant, name, positive in questions:
            rng = _rng(config.seed, record.dataset, record.image_id, variant, name)
            color, color2 = draw_colour_pair(rng)
            block = encode_classification(PALETTE[color if positive else color2], size)
            targets.append(Target(block, name, prompt_name(record.dataset, name), variant, positive, color, color2))
        if record.species is not None and "binary" in config.pets_variants and config.fp_binary_colours == "official":
            for name, color, color2, shown in OFFICIAL_FP_BINARY[record.species]:
                targets.append(Target(encode_classification(shown, size), name, prompt_name(record.dataset, name),
                                      "binary_fp", name == record.species, color, color2, tag=f"{color}/{color2}"))
        return targets

    def expected_pairs(self, record, class_names, config) -> int:
        negatives = min(config.classification_negatives, max(0, len(class_names) - 1))
        if record.species is not None:
            # RP's two questions, and FP's fixed ones where FP does not share RP's
            binary = 2 + len(OFFICIAL_FP_BINARY[record.species]) * (config.fp_binary_colours == "official")
            return binary * ("binary" in config.pets_variants) + (1 + negatives) * ("breeds" in config.pets_variants)
        return 1 + negatives

    def manifest_pairs(self, record, class_names, config, manifest: str) -> int:
        """:meth:`expected_pairs` of one training manifest: less the binary questions only the other one
        takes (FP: the random-colour pairs, RP: the fixed official FP colours; with ``fp_binary_colours:
        random`` both take the random-colour pairs)."""
        total = self.expected_pairs(record, class_names, config)
        if record.species is None or "binary" not in config.pets_variants or config.fp_binary_colours == "random":
            return total
        return total - (2 if manifest == "fp" else len(OFFICIAL_FP_BINARY[record.species]))

    def instruction_slots(self, row) -> dict[str, str]:
        return {"category": row.category_text, "color": row.color, "color2": row.color2}

    def recognise(self, instruction: str) -> str | None:
        match = self._conditional.search(instruction)
        return match.group(0) if match and len(palette_colours(instruction)) >= 2 else None

    def instruction_arguments(self, instruction: str) -> dict:
        """The colours the instruction names: the first means "present", the second "absent"."""
        colours = palette_colours(instruction)
        if len(colours) < 2:
            raise ValueError(
                f"a classification instruction must name two palette colours (present first, then absent), e.g. "
                f"'Show red if the picture has a cat, otherwise show green'; found {colours or 'none'}. "
                f"Palette: {', '.join(PALETTE)}")
        return {"colours": colours}

    def describe(self, output, image, arguments) -> Prediction:
        """The decision (present or absent), its margin and the distances to both colours, as JSON."""
        import json

        positive, negative = arguments["colours"][0], arguments["colours"][1]
        margin = classification_margin(output, positive, negative)
        decision = {
            "present": bool(margin > 0),
            "positive_colour": positive,
            "negative_colour": negative,
            "margin": margin,
            "distance": classification_scores(output, {positive: positive, negative: negative}),
            "mean_rgb": [float(v) for v in output.reshape(-1, 3).mean(axis=0)],
        }
        answer = f"present ({positive})" if decision["present"] else f"absent ({negative})"
        return Prediction(files={"class": (".class.json", json.dumps(decision, indent=1) + "\n")},
                          fields={k: decision[k] for k in ("present", "positive_colour", "negative_colour", "margin")},
                          text=f"{answer}, margin {margin:+.1f}")

    def preview(self, output, image, colour, colour2, config) -> np.ndarray:
        margin = classification_margin(output, colour, colour2)
        return encode_classification(colour if margin > 0 else colour2, (32, 32))

    def truth_preview(self, bench, row, target_image) -> np.ndarray:
        """The expected colour block of the question."""
        record = bench.records[row.image_id]
        present = row.category in (record.label_name, record.species)
        return encode_classification(row.colour if present else row.colour2, (32, 32))

    def reconstruction_metrics(self, originals, round_trips) -> dict[str, float]:
        """``colour_accuracy``: the share of blocks whose round-trip mean colour is nearest the same
        :data:`PALETTE` colour as the original's."""
        before = nearest_palette(originals.reshape(len(originals), -1, 3).astype(np.float64).mean(axis=1))
        after = nearest_palette(round_trips.reshape(len(round_trips), -1, 3).astype(np.float64).mean(axis=1))
        return {"colour_accuracy": float((before == after).mean())}

    def probe_instruction(self, bench, category, config) -> str:
        """The FP template with the configured colours."""
        return render(FP_TEMPLATES[self.name], category=prompt_name(bench.dataset, category) if category else "object",
                      color=config.positive_colour, color2=config.negative_colour)


TASK = ClassificationTask()

__all__ = ["SPECIES", "TASK", "ClassificationEvaluation", "ClassificationTask", "classification_margin",
           "classification_scores", "decode_classification", "encode_classification", "nearest_palette",
           "palette_colours"]
