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

Floats are :data:`RunFloat`: Dagster checks them as ``Any`` and the Config class takes a number and
nothing else. PyYAML reads ``1e-4`` as the *text* "1e-4" (YAML 1.1 wants a dot and a signed exponent:
``1.0e-4``), which Dagster's Float check would refuse without saying why; a text value here is refused
with the spelling to write instead, and NaN (no knob means anything by it, and it passes every range
check) is refused too. The project's executor builds every step's config when the run starts
(`pipelines.run_config_check`), so these are refused before any step runs.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import sys
import types
import typing
from typing import Annotated, Any, Literal, Optional, Union

import dagster as dg
import yaml
from pydantic import Field, PlainValidator, WithJsonSchema, create_model

_SCIENTIFIC = re.compile(r"([-+]?)([0-9][0-9_]*)(?:\.([0-9_]*))?[eE]([-+]?)([0-9]+)")


def yaml_float_spelling(text: str) -> str:
    """How to write the number ``text`` so that YAML 1.1 (PyYAML) reads a float: ``1e-4`` -> ``1.0e-4``,
    ``5E3`` -> ``5.0e+3``, ``inf`` -> ``.inf``; a number without an exponent as it is (unquoted)."""
    text, number = text.strip(), float(text)
    if math.isinf(number):
        return "-.inf" if number < 0 else ".inf"
    match = _SCIENTIFIC.fullmatch(text)
    if match:
        sign, whole, fraction, exponent_sign, exponent = match.groups()
        text = f"{sign}{whole}.{fraction or '0'}e{exponent_sign or '+'}{exponent}"
    return text if yaml.safe_load(text) == number else repr(number)


def run_float(value: Any) -> float:
    """A float knob's value: a number (int or float, not NaN); text gets the YAML spelling to write."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got the text {value!r}") from None
        if math.isnan(number):
            raise ValueError(f"expected a number, got the text {value!r}")
        reason = ("YAML reads scientific notation as a number only with a dot and a signed exponent"
                  if _SCIENTIFIC.fullmatch(value.strip()) else
                  "YAML spells infinity .inf" if math.isinf(number) else "a quoted number stays text")
        raise ValueError(f"{value!r} is text, not a number ({reason}); write {yaml_float_spelling(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    if math.isnan(value):
        raise ValueError("NaN is not a valid value (it passes every range check and means nothing here)")
    return float(value)


#: A float run-config field: Dagster checks it as Any (so a text value reaches `run_float`, which names
#: the fix); the asset gets a float. Shown as a number in the config's JSON schema.
RunFloat = Annotated[Any, PlainValidator(run_float), WithJsonSchema({"type": "number"})]


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
    if hint is float:
        return RunFloat
    if hint in (bool, int, str):
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
