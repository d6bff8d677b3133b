"""Strict reading of a run-config YAML file, before Dagster sees it.

Dagster parses ``-c file.yaml`` with PyYAML's defaults, under which several mistakes pass in
silence. `check_run_config` refuses each of them, naming the file, the line and the key path:

- an empty file (or one holding only comments): it would run the built-in mini defaults;
- a key given twice in one mapping: the last one would win unnoticed;
- anchors and aliases (``&name`` / ``*name``): expanded under a free-form mapping they can grow
  without bound (and a run record serialises the expansion); the project's configs need none;
- ``$VAR`` or ``${VAR}`` in a value: Dagster does not expand environment variables in values, so
  it would become a literal folder name; write the value itself;
- a ``resources.settings.config.data_root`` that is not a folder, or whose nearest existing
  ancestor is not a writable folder (a missing one is created by the run; that is announced).

``instructcv reproduce`` runs this check before starting the job; before ``dagster job execute
-c FILE``, run ``python -m instructcv_core.run_config FILE``. The *values* (NaN, a batch size of 0,
``1e-4`` read as text, ...) are checked by every run itself before its first step, however it was
started (the pipeline's run-config check).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

_ENV_REFERENCE = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")


class RunConfigError(ValueError):
    """A run-config file that would be misread; the message names the file, line and key path."""


def load_run_config(path: Path) -> dict:
    """The mapping in ``path``, read strictly (see the module docstring); `RunConfigError` otherwise."""
    path = Path(path)
    text = path.read_text()
    try:
        data = yaml.load(text, Loader=_strict_loader(path))
    except yaml.YAMLError as exc:  # RunConfigError from the loader propagates as it is
        raise RunConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        raise RunConfigError(f"{path}: empty run config (it would run the built-in defaults); give its settings")
    if not isinstance(data, dict):
        raise RunConfigError(f"{path}: a run config is a mapping (resources:, ops:), got {type(data).__name__}")
    _refuse_env_references(data, path, "")
    return data


def check_data_root(value: str, base: Path, source: str) -> Path:
    """The absolute data root ``value`` (relative to ``base``), usable or created by the run.

    Raises `RunConfigError` naming ``source`` (where the value came from) when the path or one of
    its ancestors is a file, or when the nearest existing ancestor cannot be written.
    """
    root = Path(value).expanduser()
    root = root if root.is_absolute() else Path(base) / root
    if root.exists() and not root.is_dir():
        raise RunConfigError(f"{source}: data_root {root} exists and is not a folder")
    ancestor = root
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunConfigError(f"{source}: data_root {root} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunConfigError(f"{source}: data_root {root} cannot be created or written: {ancestor} is not writable")
    return root


def check_run_config(path: Path, project_root: Path) -> list[str]:
    """Check ``path`` strictly; return notes for the person running it (e.g. a folder to be created)."""
    data = load_run_config(path)
    settings = ((data.get("resources") or {}).get("settings") or {}).get("config") or {}
    notes = []
    if "data_root" in settings:
        root = check_data_root(str(settings["data_root"]), project_root, f"{path}: resources.settings.config")
        if not root.exists():
            notes.append(f"data_root {root} does not exist yet; the run will create it")
    return notes


def _strict_loader(path: Path) -> type[yaml.SafeLoader]:
    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise RunConfigError(
                    f"{path}:{event.start_mark.line + 1}: YAML alias '*{event.anchor}' is not allowed in a run "
                    "config (aliases can expand without bound); write the values out"
                )
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):  # noqa: ANN001
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise RunConfigError(
                        f"{path}:{line}: key {key!r} is given twice in one mapping (first on line {seen[key]}); "
                        "keep one"
                    )
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _refuse_env_references(value: Any, path: Path, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_env_references(item, path, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_env_references(item, path, f"{where}[{i}]")
    elif isinstance(value, str) and (match := _ENV_REFERENCE.search(value)):
        raise RunConfigError(
            f"{path}: {where}: {match.group(0)!r} would be taken literally (environment variables are not "
            "expanded in run-config values); write the value itself"
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m instructcv_core.run_config RUN_CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        notes = check_run_config(Path(args[0]), Path.cwd())
    except (RunConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}")
    print(f"{args[0]}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
