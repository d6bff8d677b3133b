"""``instructcv doctor``: what a (paper) run needs and what is missing on this machine."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from instructcv_core.cli._io import CONTEXT_SETTINGS, PROJECT_DIR, quiet_libraries

#: Approximate archive sizes (bytes) where a dataset spec publishes none (docs/datasets.md).
APPROX_SIZES = {
    "ADEChallengeData2016.zip": 923_000_000,
    "nyu_depth_v2_labeled.mat": 2_800_000_000,
    "splits.mat": 3_000,
    "SUNRGBD.zip": 6_400_000_000,
    "fewshot_data.zip": 700_000_000,
    "imagenette2-160.tgz": 99_000_000,
}
#: Disk allowance for everything a paper run writes besides the raw datasets (pairs, manifests,
#: checkpoints, evaluation outputs), an estimate; --outputs-gb changes it.
OUTPUTS_GB = {"paper": 20.0, "mini": 1.0}
GB = 1e9
#: Download size of the released weights when they are not on disk: an SD v1.5-sized InstructPix2Pix pipeline
#: in float32 safetensors (UNet 3.4 GB, VAE 0.3 GB, CLIP text encoder 0.5 GB), an estimate.
RELEASED_BYTES = 4_300_000_000
#: The jobs the doctor can check for: what each loads besides the datasets.
JOBS = ("full_reproduction", "released_evaluation")


@dataclass
class Check:
    item: str
    status: str  # "ok", "missing" or "info"
    detail: str
    fix: str = ""


@dataclass
class DoctorContext:
    profile: str
    settings: dict
    ops: dict
    data_root: Path
    verify: bool
    need_bytes: list[tuple[str, int]] = field(default_factory=list)  # (what, bytes) still to be written


def _load_run_config(path: Path | None) -> dict:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"{path}: unreadable run config ({exc})", param_hint="--config") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: a run config must be a mapping", param_hint="--config")
    return data


def _human(n: float) -> str:
    if n >= 0.1 * GB:
        return f"{n / GB:.1f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _url(url: str) -> str:
    if url.startswith("gdrive://"):
        from instructcv_core.data.download import gdrive_download_url

        return gdrive_download_url(url.removeprefix("gdrive://"))
    return url


def _file_state(remote, path: Path, verify: bool) -> tuple[bool, str]:
    """(usable, description) of one archive on disk."""
    from instructcv_core.data.download import ChecksumMismatch, verify_checksum

    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return False, f"{remote.filename}: {size:,} bytes, expected {remote.size:,} (partial or wrong file)"
    sidecar = path.parent / f".{remote.filename}.verified.json"
    try:
        record = json.loads(sidecar.read_text())
        stat = path.stat()
        if (record.get("checksum") == remote.checksum and record.get("size") == stat.st_size
                and record.get("mtime_ns") == stat.st_mtime_ns):
            return True, f"{remote.filename} verified"
    except (OSError, ValueError, AttributeError):
        pass
    if verify and remote.checksum:
        try:
            verify_checksum(path, remote.checksum)
        except ChecksumMismatch as exc:
            return False, f"{remote.filename}: checksum mismatch ({exc.actual}, expected {exc.expected})"
        return True, f"{remote.filename} verified ({remote.checksum.split(':')[0]})"
    how = "size ok" if remote.size is not None else "size not published"
    return True, f"{remote.filename} present ({how})"


def _dataset_check(ctx: DoctorContext, name: str) -> Check:
    from instructcv_core.data.datasets import dataset_module

    module = dataset_module(name)
    config = (ctx.ops.get(f"raw_{name}") or {}).get("config") or {}
    key = f"ops.raw_{name}.config"
    spec = module.SPEC
    if name == "imagenet_sub" and config.get("public_alternative"):
        spec = module.IMAGENETTE_SPEC
    item = f"dataset {name}"
    marker = Path(spec.root_subdir) / spec.marker

    def has_root(base: Path) -> bool:
        return (base / marker).exists() or (base / spec.marker).exists()

    if config.get("extracted_dir"):
        folder = Path(str(config["extracted_dir"])).expanduser()
        if has_root(folder):
            return Check(item, "ok", f"extracted copy at {folder}")
        return Check(item, "missing", f"extracted_dir {folder}: not a {spec.title} folder (expected {marker} inside it)",
                     f"fix {key}.extracted_dir")
    if spec.registration_only:
        return Check(item, "missing", f"{spec.title} needs registration ({spec.homepage})",
                     f"download it at {spec.homepage}, prepare {{train,val}}/<wnid>/ folders and set {key}.extracted_dir, "
                     f"or set {key}.public_alternative: true (Imagenette, downloaded automatically)")
    target = ctx.data_root / ctx.profile / "raw" / name
    archive_dir = config.get("archive_dir")
    folder = Path(str(archive_dir)).expanduser() if archive_dir else target / "downloads"
    required = [f for f in spec.files if f.required]
    present, problems, missing = [], [], []
    for remote in required:
        path = folder / remote.filename
        if not path.is_file():
            missing.append(remote)
            continue
        ok, text = _file_state(remote, path, ctx.verify)
        (present if ok else problems).append(text)
    unpacked = target / "extracted"
    extracted_here = has_root(unpacked)
    size_of = lambda r: r.size or APPROX_SIZES.get(r.filename, 0)  # noqa: E731
    if not missing and not problems:
        if not extracted_here:
            ctx.need_bytes.append((f"{name} extraction", sum(size_of(r) for r in required)))
        extra = "; extracted" if extracted_here else ""
        return Check(item, "ok", "; ".join(present) + f" in {folder}{extra}")
    if extracted_here and missing and not problems and not archive_dir:
        return Check(item, "missing", f"an extracted copy is in {unpacked} but the archives are gone from {folder}",
                     f"set {key}.extracted_dir: {unpacked} (or restore the archives)")
    ctx.need_bytes.append((f"{name} download + extraction", 2 * sum(size_of(r) for r in missing)
                           + sum(size_of(r) for r in required if r not in missing)))
    detail = "; ".join(problems + [f"{r.filename} missing" for r in missing])
    urls = "; ".join(f"{r.filename} ({_human(size_of(r)) if size_of(r) else 'size unknown'}): "
                     f"{_url(r.urls[0]) if r.urls else 'no URL'}" for r in missing)
    fix = (f"download into {folder}: {urls} (a run downloads them itself), or set {key}.archive_dir / "
           f"{key}.extracted_dir" if missing else f"delete the bad file(s) in {folder} and download again")
    if problems and missing:
        fix += f"; delete the bad file(s) in {folder}"
    return Check(item, "missing", detail, fix)


def _base_model_check(ctx: DoctorContext) -> Check:
    from pipelines.resources import DEFAULT_BASE_MODEL

    from instructcv_core.model.loading import BaseModelError, check_base_source

    if ctx.profile == "mini":
        from instructcv_core.model.pretrain_mini import VERSIONED_BASE, verify_checksums

        try:
            verify_checksums(VERSIONED_BASE)
        except BaseModelError as exc:
            return Check("base model", "missing", str(exc), "restore instructcv_core/model/mini_base/ from the "
                         "repository, or set base_model: {rebuild: true}")
        return Check("base model", "ok", f"pretrained mini base {VERSIONED_BASE.name}/ (sha256 checked)")
    source = str(ctx.settings.get("base_model") or DEFAULT_BASE_MODEL)
    try:
        check_base_source(source, allow_network=False)
    except BaseModelError as exc:
        network = " (a run with resources.settings.config.allow_network: true downloads it)" \
            if ctx.settings.get("allow_network") else ""
        local = source.startswith((".", "/", "~")) or Path(source).suffix != "" or Path(source).expanduser().exists()
        first = str(exc).split(". Provide")[0] if local else f"{source}: not in the local Hugging Face cache"
        how = "point resources.settings.config.base_model at" if local else f"`hf download {source}`{network}, or set " \
            "resources.settings.config.base_model to"
        return Check("base model", "missing", first, f"{how} a local diffusers folder (model_index.json, unet/, vae/, "
                     "text_encoder/, tokenizer/, scheduler/) or a .safetensors/.ckpt file")
    return Check("base model", "ok", f"{source} (found locally; weights not loaded)")


def _released_check(ctx: DoctorContext) -> Check:
    """The released InstructCV weights `released_evaluation` scores (found locally; not loaded)."""
    from instructcv_core.model.loading import BaseModelError
    from instructcv_core.model.released import RELEASED_MODEL, check_released_source

    source = str(ctx.settings.get("released_model") or RELEASED_MODEL)
    revision = ctx.settings.get("released_revision")
    try:
        kind = check_released_source(source, revision=revision, allow_network=False,
                                     single_file_config=ctx.settings.get("released_single_file_config"))
    except BaseModelError as exc:
        local = source.startswith((".", "/", "~")) or Path(source).suffix != "" or Path(source).expanduser().exists()
        if not local:
            ctx.need_bytes.append(("released weights download", RELEASED_BYTES))
        network = " (a run with resources.settings.config.allow_network: true downloads it)" \
            if ctx.settings.get("allow_network") else ""
        first = str(exc).split(". Provide")[0] if local else f"{source}: not in the local Hugging Face cache"
        fix = ("point resources.settings.config.released_model at" if local else
               f"`hf download {source} --local-dir <folder>`{network}, or set resources.settings.config.released_model to")
        return Check("released weights", "missing", first, f"{fix} a local diffusers folder (model_index.json, unet/, vae/, "
                     "text_encoder/, tokenizer/, scheduler/) or a .safetensors/.ckpt file")
    at = f" at {revision}" if revision else ""
    return Check("released weights", "ok", f"{source}{at} ({kind}, found locally; weights not loaded)")


def _paraphraser_check(ctx: DoctorContext) -> Check:
    config = (ctx.ops.get("paraphrase_bank") or {}).get("config") or {}
    model_id = str(config.get("model_id") or "humarin/chatgpt_paraphraser_on_T5_base")
    allow_bundled = config.get("allow_bundled")
    allow_bundled = ctx.profile == "mini" if allow_bundled is None else bool(allow_bundled)
    path = Path(model_id).expanduser()
    found = path.is_dir() and (path / "config.json").is_file()
    if not found and not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_id, "config.json")
            found = isinstance(cached, str) and Path(cached).exists()
        except Exception:  # an invalid repo id: not found
            found = False
    if found:
        return Check("paraphraser", "ok", f"{model_id} (found locally)")
    if allow_bundled:
        return Check("paraphraser", "info", f"{model_id} not found locally; the bundled paraphrase bank is used")
    return Check("paraphraser", "missing", f"{model_id} is not in the local Hugging Face cache",
                 f"`hf download {model_id}` (a run with ops.paraphrase_bank.config.allow_network: true downloads it), "
                 "or set ops.paraphrase_bank.config.allow_bundled: true")


def _gpu_check(ctx: DoctorContext) -> Check:
    import torch

    required = ctx.settings.get("require_gpu")
    required = ctx.profile == "paper" if required is None else bool(required)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        more = f" (+{count - 1} more)" if count > 1 else ""
        return Check("GPU", "ok", f"{props.name}, {props.total_memory / 2**30:.0f} GiB{more}")
    build = "CPU build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
    detail = f"no CUDA GPU ({build})"
    if not required:
        return Check("GPU", "info", detail + "; not required by this configuration")
    return Check("GPU", "missing", detail,
                 "run on a machine with a CUDA GPU (CUDA torch: INSTRUCTCV_TORCH_INDEX=https://download.pytorch.org/whl/cu128 "
                 "bash scripts/setup.sh), or set resources.settings.config.require_gpu: false to train on the CPU")


def _disk_check(ctx: DoctorContext, outputs_gb: float) -> Check:
    probe = ctx.data_root
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    needed = sum(n for _, n in ctx.need_bytes) + int(outputs_gb * GB)
    parts = ", ".join(f"{what} {_human(n)}" for what, n in ctx.need_bytes if n) or "no dataset downloads"
    detail = f"{_human(free)} free under {ctx.data_root}; needs about {_human(needed)} ({parts}; outputs {outputs_gb:g} GB)"
    if free >= needed:
        return Check("disk space", "ok", detail)
    return Check("disk space", "missing", detail,
                 f"free {_human(needed - free)} there, or set resources.settings.config.data_root (or --data-root) "
                 "to a larger disk")


def _packages_check() -> Check:
    from importlib import metadata

    import torch

    versions, missing = [], []
    for package in ("diffusers", "transformers", "dagster", "mlflow", "opencv-python-headless"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            missing.append(package)
    build = "CPU" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
    detail = f"python {sys.version.split()[0]}, torch {torch.__version__} ({build}), " + ", ".join(versions)
    if missing:
        return Check("python packages", "missing", detail + f"; missing: {', '.join(missing)}", "bash scripts/setup.sh")
    return Check("python packages", "ok", detail)


def render_table(checks: Sequence[Check], use_rich: bool) -> str | None:
    """Plain aligned text (returned), or a rich table printed directly (returns None)."""
    if use_rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_lines=False)
        for column in ("item", "status", "detail"):
            table.add_column(column, overflow="fold")
        colours = {"ok": "green", "missing": "bold red", "info": "yellow"}
        for c in checks:
            table.add_row(c.item, f"[{colours[c.status]}]{c.status}[/]", c.detail)
        Console().print(table)
        return None
    width_item = max(len("item"), *(len(c.item) for c in checks))
    width_status = max(len("status"), *(len(c.status) for c in checks))
    lines = [f"{'item':<{width_item}}  {'status':<{width_status}}  detail",
             f"{'-' * width_item}  {'-' * width_status}  {'-' * 6}"]
    lines += [f"{c.item:<{width_item}}  {c.status:<{width_status}}  {c.detail}" for c in checks]
    return "\n".join(lines)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--profile", type=click.Choice(["mini", "paper"]), default=None,
              help="The profile to check (default: the config's settings.profile, else paper).")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The run config of the run (default for paper: configs/paper.yaml).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Data root (default: the config's resources.settings.config.data_root, else data/ in the project).")
@click.option("--verify", is_flag=True, help="Check the checksums of archives not verified before (reads every byte).")
@click.option("--outputs-gb", type=float, default=None,
              help="Disk allowance in GB for what a run writes besides the raw datasets [default: paper 20, mini 1].")
@click.option("--release-stale", is_flag=True,
              help="Mark failed the Dagster runs whose processes died and free the pool slots they hold.")
@click.option("--job", type=click.Choice(JOBS), default="full_reproduction", show_default=True,
              help="The job to check for: everything (base model, paraphraser), or released_evaluation (the released weights).")
def doctor(profile: str | None, config: Path | None, data_root: Path | None, verify: bool,
           outputs_gb: float | None, release_stale: bool, job: str) -> None:
    """Report what a (paper) run needs and what is missing on this machine.

    Checks every source dataset (archives in the downloads folder, with size and, with --verify,
    checksum; or an extracted copy), the base model (found locally, weights not loaded) and the
    paraphrase model (with --job released_evaluation: the released InstructCV weights instead), the
    GPU, free disk space and the Python packages, and the Dagster instance
    ($DAGSTER_HOME): runs left STARTED by a killed process and the pool slots they hold
    (--release-stale frees them). Exit code 0 when a run needs nothing more (no downloads), 1
    otherwise; each missing item says what to do.

    \b
    Examples:
      instructcv doctor
      instructcv doctor --config my-paper.yaml --data-root /data/instructcv --verify
      instructcv doctor --profile mini --release-stale   # after a killed run
      instructcv doctor --job released_evaluation         # the released weights (configs/released.yaml)
    """
    root = PROJECT_DIR
    if config is None and (profile or "paper") == "paper":
        default = root / "configs" / ("released.yaml" if job == "released_evaluation" else "paper.yaml")
        config = default if default.is_file() else None
    run_config = _load_run_config(config)
    settings = ((run_config.get("resources") or {}).get("settings") or {}).get("config") or {}
    profile = profile or settings.get("profile") or "paper"
    if data_root is None:
        configured = Path(str(settings.get("data_root") or "data")).expanduser()
        data_root = configured if configured.is_absolute() else root / configured
    ctx = DoctorContext(profile=profile, settings=settings, ops=run_config.get("ops") or {},
                        data_root=data_root.resolve(), verify=verify)

    from instructcv_core.data.datasets import DATASETS

    quiet_libraries()
    checks: list[Check] = []
    if profile == "mini":
        checks += [Check(f"dataset {name}", "ok", "mini-benchmark, generated locally") for name in DATASETS]
    else:
        checks += [_dataset_check(ctx, name) for name in DATASETS]
    outputs_gb = OUTPUTS_GB[profile] if outputs_gb is None else outputs_gb
    models = [_released_check(ctx)] if job == "released_evaluation" else [_base_model_check(ctx), _paraphraser_check(ctx)]
    checks += [*models, _gpu_check(ctx), _disk_check(ctx, outputs_gb), _packages_check()]
    from instructcv_core.cli.doctor_runs import instance_checks

    checks += instance_checks(release_stale)

    source = f"config {config}" if config else "built-in defaults"
    job_text = "" if job == "full_reproduction" else f", job {job}"
    click.echo(f"instructcv doctor: profile {profile}{job_text}, {source}, data root {ctx.data_root}")
    text = render_table(checks, use_rich=_rich_available() and sys.stdout.isatty())
    if text is not None:
        click.echo(text)
    missing = [c for c in checks if c.status == "missing"]
    if not missing:
        click.echo(f"\nEverything the {profile} profile needs is here.")
        return
    click.echo(f"\n{len(missing)} missing:")
    for c in missing:
        click.echo(f"- {c.item}: {c.fix}")
    sys.exit(1)


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True
