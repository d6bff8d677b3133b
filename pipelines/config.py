"""Dagster run-config classes generated from the library's stage configs (one declaration per knob).

A stage's knobs are declared once, as fields of a dataclass in ``instructcv_core`` (type, default,
``metadata["help"]``, validation in ``__post_init__``); :func:`run_config_class` turns it into the
``dg.Config`` an asset takes, and :func:`run_config_overrides` returns what a run config actually
set, for ``instructcv_core.presets.resolve`` to lay over the profile's preset.

Unset versus null: every generated field is optional with default ``None``, meaning "take the
profile's preset". Dagster cannot tell an omitted key from an explicit ``null``: a run config's
``key: null`` reaches the asset exactly as an omitted key (``model_fields_set`` lacks it; checked
with dagster 1.13). So ``null`` in a run config always means "the preset", and a knob whose
meaningful value is "none" has an explicit value instead, declared and normalised by its dataclass:
``max_grad_norm: .inf`` (no clipping),
``checkpoints_total_limit: 0`` (keep every checkpoint).

Types follow ``typing.get_type_hints`` of the dataclass: ``X | None`` becomes ``X``, tuples become
lists (Dagster config has no tuples; the dataclasses convert them back), ``Literal`` choices stay
choices (as an Enum named ``<class>_<field>``: Dagster config has no optional ``Literal``), so Dagster
rejects a wrong type or choice before the run starts, naming the key.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from typing import Any, Literal, Optional, Union

import dagster as dg
from pydantic import Field, create_model


def _config_type(hint: Any, enum_name: str) -> Any:
    """The Dagster-config spelling of a dataclass field's type (without the outer Optional)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"a config field may be one type or None, got {hint}")
        return _config_type(inner[0], enum_name)
    if origin is tuple:
        elements = {a for a in args if a is not Ellipsis}
        if len(elements) != 1:
            raise TypeError(f"a tuple config field needs one element type, got {hint}")
        return list[_config_type(elements.pop(), enum_name)]
    if origin is list:
        return list[_config_type(args[0], enum_name)]
    if origin is Literal:
        return enum.Enum(enum_name, {str(choice): choice for choice in args})
    if hint in (bool, int, float, str):
        return hint
    raise TypeError(f"no Dagster config type for {hint}")


def run_config_class(core_cls: type, name: str, *, exclude: typing.Iterable[str] = (), base: type = dg.Config,
                     doc: str = "") -> type:
    """A ``dg.Config`` subclass of ``base`` with one optional field per field of ``core_cls``.

    Each field defaults to ``None`` ("the profile's preset") and is described by the dataclass field's
    ``metadata["help"]``. ``exclude``: fields that are not run config (paths, seed, resolution: they
    come from settings or upstream assets). ``base`` carries hand-written fields (e.g. deployment
    knobs) that the generated class adds to.
    """
    exclude = set(exclude)
    unknown = exclude - {f.name for f in dataclasses.fields(core_cls)}
    if unknown:
        raise ValueError(f"{core_cls.__name__} has no field(s) {', '.join(sorted(unknown))} to exclude")
    hints = typing.get_type_hints(core_cls)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(core_cls):
        if field.name in exclude:
            continue
        help_text = field.metadata.get("help")
        if not help_text:
            raise ValueError(f"{core_cls.__name__}.{field.name} has no metadata['help'] to describe it in the run config")
        fields[field.name] = (Optional[_config_type(hints[field.name], f"{name}_{field.name}")],
                              Field(default=None, description=f"{help_text} (unset: the profile's preset)"))
    # named as if declared in the calling module (the asset module), where Dagster shows it
    generated = create_model(name, __base__=base, __module__=sys._getframe(1).f_globals["__name__"], **fields)
    generated.__doc__ = doc or f"Run config of {core_cls.__name__}; unset knobs take the profile's preset."
    generated.__core_config__ = core_cls  # what run_config_overrides keeps fields of
    return generated


def run_config_overrides(config: dg.Config) -> dict[str, Any]:
    """The knobs of a generated config that the run config set (to a value other than ``null``)."""
    core_cls = getattr(type(config), "__core_config__", None)
    if core_cls is None:
        raise TypeError(f"{type(config).__name__} was not made by run_config_class")
    knobs = {f.name for f in dataclasses.fields(core_cls)}
    values = {name: getattr(config, name) for name in sorted(config.model_fields_set & knobs)}
    return {name: value.value if isinstance(value, enum.Enum) else value for name, value in values.items()
            if value is not None}
