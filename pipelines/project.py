"""Where the project lives, and the Dagster instance folder it uses by default."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"
DAGSTER_HOME = PROJECT_ROOT / "dagster_home"


def ensure_dagster_home() -> Path:
    """Point DAGSTER_HOME at the project's ``dagster_home`` when it is unset (absolute, existing).

    The CLI reads DAGSTER_HOME before it imports our code, so the setup script also makes the
    virtualenv's interpreter default it at start-up; this covers other interpreters and the Python API.
    """
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        DAGSTER_HOME.mkdir(exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(DAGSTER_HOME)
        return DAGSTER_HOME
    path = Path(home)
    if not path.is_absolute():
        raise RuntimeError(f"DAGSTER_HOME={home!r} must be an absolute path (e.g. {DAGSTER_HOME})")
    path.mkdir(parents=True, exist_ok=True)
    return path
