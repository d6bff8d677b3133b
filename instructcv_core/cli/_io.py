"""Small helpers shared by the ``instructcv`` commands: the project folder, click settings, atomic
output files and quieting the model libraries. Nothing heavy is imported at module level."""

from __future__ import annotations

import io
import os
from pathlib import Path

import click

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

#: The checkout this package runs from (``<root>/instructcv_core/cli/_io.py``).
PROJECT_DIR = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    """The checkout this package runs from: the folder holding ``pipelines/`` and ``instructcv_core/``."""
    root = PROJECT_DIR
    if not (root / "pipelines").is_dir():
        raise click.ClickException(
            f"{root}: no pipelines/ folder here; `reproduce` needs the project checkout (install it with "
            "`pip install -e .` from the repository)")
    return root


def _usual_permissions(tmp: str | Path) -> None:
    """mkstemp creates 0600; outputs get the usual permissions (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``records.atomic_write``), with the usual permissions."""
    from instructcv_core.data.records import atomic_write  # lazy: records imports pyarrow (and numpy)

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)
        _usual_permissions(tmp)

    atomic_write(Path(path), write)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_png(path: Path, array) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


def write_npy(path: Path, array) -> None:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes(path, buffer.getvalue())


def quiet_libraries() -> None:
    """Silence the loading bars and notices of diffusers/transformers (our own bar is enough)."""
    try:  # transformers first: importing diffusers already logs through it
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover - optional nicety
        pass
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
