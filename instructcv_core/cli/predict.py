"""``instructcv predict``: task inference from the instruction, reading the input images, resolving the
checkpoint, sampling, and decoding/writing the outputs."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from instructcv_core.cli._io import CONTEXT_SETTINGS, quiet_libraries, write_npy, write_png, write_text

#: Image files ``predict`` takes from a folder (case-insensitive suffixes).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: ``--task`` choices: inferred from the instruction, or a task of the registry (`instructcv_core.tasks`).
TASK_CHOICES = ("auto", "segmentation", "detection", "depth", "classification")  # tests check it against TASKS
DEFAULT_OUT = "instructcv-out"

# --------------------------------------------------------------------------------------------------
# predict: task inference


def infer_task(instruction: str) -> str:
    """The task an instruction asks for, by the documented rule (``docs/cli.md``):

    1. a task whose rule settles it (classification: the instruction names two different palette
       colours and has a conditional word: "Show red if the picture has a cat, otherwise show green";
       the first colour named means "present");
    2. otherwise each task's keywords (whole words, any case): segment*/mask*/cut out/highlight* ->
       segmentation; detect*/box*/bounding/locat*/find*/rectangle* -> detection;
       depth*/distance*/far/farther/farthest/close/closer/closest -> depth.

    Raises ``ValueError`` (with what matched) when no task or several tasks match.
    """
    from instructcv_core.tasks import TASKS

    for name, task in TASKS.items():
        if task.decisive and task.recognise(instruction):
            return name
    keyworded = [(name, task) for name, task in TASKS.items() if not task.decisive]
    matches = {name: word for name, task in keyworded if (word := task.recognise(instruction))}
    if len(matches) == 1:
        return next(iter(matches))
    if not matches:
        hints = ", ".join(task.instruction_hint for _, task in keyworded)
        decisive = " or ".join(t.instruction_hint for t in TASKS.values() if t.decisive)
        raise ValueError(
            f"cannot tell the task of the instruction {instruction!r} (no keyword of any task: {hints}, or "
            f"{decisive}); pass --task")
    found = ", ".join(f"{task} ({word!r})" for task, word in matches.items())
    raise ValueError(f"the instruction {instruction!r} matches several tasks: {found}; pass --task")


# --------------------------------------------------------------------------------------------------
# predict: inputs, checkpoint, outputs


class ImageReadError(ValueError):
    """An input image cannot be decoded; the message names the file."""


def read_image(path: Path):
    """uint8 RGB ``(H, W, 3)`` of an image file (EXIF orientation applied)."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
    except Exception as exc:  # Pillow raises many types for unreadable data
        raise ImageReadError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from exc
    array = np.asarray(rgb, dtype=np.uint8)
    if array.size == 0:
        raise ImageReadError(f"{path}: empty image")
    return array


def list_images(path: Path) -> list[Path]:
    """The image files of a folder (not recursive), sorted by name."""
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def resolve_checkpoint(path: Path) -> Path:
    """The diffusers pipeline folder that ``path`` names.

    Accepted: the pipeline folder itself (has ``model_index.json``), a training output folder with a
    ``pipeline/`` subfolder, or a variant folder (``data/<profile>/train/<fp|rp>``) with the
    ``current.json`` pointer the training asset writes.
    """
    if not path.exists():
        raise click.BadParameter(f"{path}: no such file or folder", param_hint="--checkpoint")
    if not path.is_dir():
        raise click.BadParameter(f"{path}: a file, not a diffusers pipeline folder (no model_index.json)",
                                 param_hint="--checkpoint")
    if (path / "model_index.json").is_file():
        return path
    if (path / "pipeline" / "model_index.json").is_file():
        return path / "pipeline"
    pointer = path / "current.json"
    if pointer.is_file():
        try:
            target = Path(json.loads(pointer.read_text())["pipeline_dir"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise click.BadParameter(f"{pointer}: unreadable checkpoint pointer ({exc})", param_hint="--checkpoint")
        if (target / "model_index.json").is_file():
            return target
        raise click.BadParameter(f"{pointer} names {target}, which is not a diffusers pipeline folder "
                                 "(no model_index.json)", param_hint="--checkpoint")
    raise click.BadParameter(
        f"{path}: not a diffusers pipeline folder (no model_index.json); give a training output's pipeline "
        "folder, e.g. data/<profile>/train/<fp|rp>/<run>/pipeline", param_hint="--checkpoint")


def output_stems(paths: Sequence[Path]) -> dict[Path, str]:
    """File-name stem of every input's outputs: the image's stem, or its full name with the dot
    replaced (``a_jpg``) when two inputs share a stem."""
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    return {p: p.stem if counts[p.stem] == 1 else p.name.replace(".", "_") for p in paths}


def decode_and_write(task: str, output, image, out_dir: Path, stem: str, arguments: dict | None = None) -> dict:
    """Write the raw output and the decoded result of one image; returns a JSON-able summary.

    ``output``: the generated uint8 RGB image (generation resolution); ``image``: the input (its
    size is the size of every decoded result); ``arguments``: what the task read from the
    instruction (classification: its colours).
    """
    from instructcv_core.tasks import task as registered

    height, width = image.shape[:2]
    files = {"output": out_dir / f"{stem}.output.png"}
    write_png(files["output"], output)
    prediction = registered(task).describe(output, image, arguments or {})
    for name, (suffix, content) in prediction.files.items():
        files[name] = out_dir / f"{stem}{suffix}"
        if suffix.endswith(".png"):
            write_png(files[name], content)
        elif suffix.endswith(".npy"):
            write_npy(files[name], content)
        else:
            write_text(files[name], content)
    summary: dict[str, Any] = {"task": task, "size": [width, height], **prediction.fields, "text": prediction.text}
    summary["files"] = {k: str(v) for k, v in files.items()}
    return summary


# --------------------------------------------------------------------------------------------------
# predict: the command


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(path_type=Path),
              help="Trained pipeline folder (has model_index.json), a training output holding pipeline/, "
                   "or data/<profile>/train/<fp|rp>.")
@click.option("--image", "image", required=True, type=click.Path(exists=True, path_type=Path),
              help="An image file, or a folder: every jpg/jpeg/png/bmp/webp in it (not recursive), sorted.")
@click.option("--instruction", required=True, help='What to do, e.g. "Segment the cat".')
@click.option("--out", "out", type=click.Path(path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="Output folder (created).")
@click.option("--task", type=click.Choice(TASK_CHOICES), default="auto", show_default=True,
              help="How to decode the output; auto infers it from the instruction (see docs/cli.md).")
@click.option("--steps", type=int, default=100, show_default=True, help="Sampling steps.")
@click.option("--text-guidance", type=float, default=7.5, show_default=True, help="Text guidance scale s_T.")
@click.option("--image-guidance", type=float, default=1.5, show_default=True, help="Image guidance scale s_I.")
@click.option("--resolution", type=int, default=256, show_default=True,
              help="Generation resolution (square, multiple of 8; the mini checkpoints are trained at 64).")
@click.option("--scheduler", type=click.Choice(["euler_ancestral", "euler", "ddim", "dpmsolver++"]),
              default="euler_ancestral", show_default=True, help="Sampler.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed (every image uses it).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda when available), cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="Model precision.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Images per UNet call.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image instead of a summary line.")
def predict(checkpoint: Path, image: Path, instruction: str, out: Path, task: str, steps: int, text_guidance: float,
            image_guidance: float, resolution: int, scheduler: str, seed: int, device: str, dtype: str,
            batch_size: int, as_json: bool) -> None:
    """Run one instruction on an image or on every image of a folder.

    Writes, per image, into --out: <stem>.output.png (the generated image) and the decoded result at
    the input's size: segmentation -> <stem>.mask.png, <stem>.overlay.png; detection ->
    <stem>.boxes.png, <stem>.boxes.json; depth -> <stem>.depth.png (TURBO colour map, 0-10 m),
    <stem>.depth.npy (float32 metres); classification -> <stem>.class.json. Unreadable images of a
    folder are skipped with a warning (exit code 1 at the end).

    \b
    Examples:
      instructcv predict --checkpoint data/paper/train/rp --image cat.jpg --instruction "Segment the cat"
      instructcv predict --checkpoint ckpt/pipeline --image photos/ --instruction "Estimate the depth of this image." --out depth/
      instructcv predict --checkpoint ckpt/pipeline --image dog.png --task detection --instruction "Where is the dog?" --json
    """
    instruction = instruction.strip()
    if not instruction:
        raise click.BadParameter("the instruction is empty", param_hint="--instruction")
    if task == "auto":
        try:
            task = infer_task(instruction)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--task") from None
    from instructcv_core.tasks import task as registered

    try:
        arguments = registered(task).instruction_arguments(instruction)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--instruction") from None
    if batch_size < 1:
        raise click.BadParameter(f"must be >= 1, got {batch_size}", param_hint="--batch-size")
    pipeline_dir = resolve_checkpoint(checkpoint)

    folder_mode = image.is_dir()
    paths = list_images(image) if folder_mode else [image]
    if not paths:
        raise click.BadParameter(f"{image}: the folder has no images ({', '.join(IMAGE_SUFFIXES)})", param_hint="--image")
    if out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out}: exists and is not a folder", param_hint="--out")
    first = None
    if not folder_mode:  # fail on an unreadable single image before loading the model
        try:
            first = read_image(paths[0])
        except ImageReadError as exc:
            raise click.ClickException(str(exc)) from None

    quiet_libraries()
    from instructcv_core.inference.config import Request, SamplerConfig
    from instructcv_core.inference.sampler import InstructCVSampler, resolve_device

    try:
        config = SamplerConfig(steps=steps, text_guidance=text_guidance, image_guidance=image_guidance,
                               scheduler=scheduler, resolution=resolution, batch_size=batch_size, dtype=dtype,
                               device=device)
        resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise click.UsageError(str(exc)) from None
    try:
        sampler = InstructCVSampler.from_pretrained(pipeline_dir, config)
    except Exception as exc:  # diffusers/torch raise many types for bad folders or devices
        raise click.ClickException(f"{pipeline_dir}: could not load the pipeline ({type(exc).__name__}: {exc})") from None

    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    stems = output_stems(paths)
    failed: list[Path] = []
    bar = tqdm(total=len(paths), unit="img", desc=task, file=sys.stderr, disable=None, dynamic_ncols=True)
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = {}
            for path in chunk:
                try:
                    images[str(path)] = first if first is not None else read_image(path)
                except ImageReadError as exc:
                    failed.append(path)
                    tqdm.write(f"warning: {exc}; skipped", file=sys.stderr)
            requests = [Request(key, instruction, seed) for key in images]
            for index, output in sampler.generate(requests, images):
                key = requests[index].image_key
                path = Path(key)
                summary = decode_and_write(task, output, images[key], out, stems[path], arguments)
                summary = {"image": str(path), "instruction": instruction, **summary}
                if as_json:
                    tqdm.write(json.dumps(summary), file=sys.stdout)
                else:
                    main_file = next(v for k, v in summary["files"].items() if k != "output") if len(summary["files"]) > 1 \
                        else summary["files"]["output"]
                    tqdm.write(f"{path.name}: {task}, {summary['text']} -> {main_file}", file=sys.stdout)
            bar.update(len(chunk))
    finally:
        bar.close()
    if failed:
        names = ", ".join(str(p) for p in failed)
        raise click.ClickException(f"{len(failed)} of {len(paths)} images could not be read and were skipped: {names}")
