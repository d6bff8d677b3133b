"""Typed checks for annotation files: every error names the file and the field path.

A reader validates what it parses with these helpers, so that a wrong type or an out-of-range
value is reported as, e.g., ``annotations/instances_val2017.json: annotations[id=17].bbox[2]: must
be > 0, got -3.0`` instead of a bare KeyError or a silently wrong record.

Two outcomes, by scope: `AnnotationError` (raised) for a problem with a whole file (its structure,
duplicate ids, an empty category table), which stops the reader; and the same message turned
into a quarantine entry for a problem confined to one annotation (a degenerate box, a malformed
polygon), which drops that annotation, keeps its image with the others and says why.

A reader that stops names every bad field of the file, not only the first: it gathers them in a
`FieldErrors` and raises one `SchemaErrors` listing up to `MAX_LISTED` of them and how many more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

MAX_LISTED = 20  # how many problems (or values) one error message lists before "and N more"
T = TypeVar("T")


class AnnotationError(ValueError):
    """An annotation file that breaks its format's schema; names the file and the field path."""

    def __init__(self, file: Path | str, field: str, problem: str) -> None:
        self.file, self.field, self.problem = str(file), field, problem
        where = f"{self.file}: {field}: " if field else f"{self.file}: "
        super().__init__(where + problem)


class SchemaErrors(AnnotationError):
    """Several bad fields of one file, one per line (``errors``: each as an `AnnotationError`)."""

    def __init__(self, file: Path | str, errors: list[AnnotationError]) -> None:
        self.errors = list(errors)
        shown = [f"  {e.field}: {e.problem}" if e.field else f"  {e.problem}" for e in self.errors[:MAX_LISTED]]
        if len(self.errors) > MAX_LISTED:
            shown.append(f"  and {len(self.errors) - MAX_LISTED} more")
        super().__init__(file, "", f"{len(self.errors)} schema errors:\n" + "\n".join(shown))


class FieldErrors:
    """The schema errors of one file, gathered so that one failed read names all of them.

    ``check(as_int, value, file, field, ...)`` returns the checked value, or None after recording
    the error; `raise_if_any` then raises the single error (as it was) or a `SchemaErrors`.
    """

    def __init__(self, file: Path | str) -> None:
        self.file = str(file)
        self.errors: list[AnnotationError] = []

    def check(self, validate: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        try:
            return validate(*args, **kwargs)
        except AnnotationError as exc:
            self.errors.append(exc)
            return None

    def add(self, field: str, problem: str) -> None:
        self.errors.append(AnnotationError(self.file, field, problem))

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise SchemaErrors(self.file, self.errors)


def listed(values: list, shown: int = MAX_LISTED) -> str:
    """The first ``shown`` values, comma-separated, and how many more there are."""
    more = f" and {len(values) - shown} more" if len(values) > shown else ""
    return ", ".join(str(v) for v in values[:shown]) + more


def as_mapping(value: Any, file: Path | str, field: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise AnnotationError(file, field, f"must be an object, got {_kind(value)}")
    return value


def as_list(value: Any, file: Path | str, field: str, *, non_empty: bool = False) -> list:
    if not isinstance(value, list):
        raise AnnotationError(file, field, f"must be an array, got {_kind(value)}")
    if non_empty and not value:
        raise AnnotationError(file, field, "must not be empty")
    return value


def as_int(value: Any, file: Path | str, field: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (JSON booleans and fractional numbers are not integers) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise AnnotationError(file, field, f"must be an integer, got {_kind(value)} {value!r}")
    _check_range(value, file, field, lo, hi)
    return value


def as_number(
    value: Any, file: Path | str, field: str, *, lo: float | None = None, hi: float | None = None,
    positive: bool = False,
) -> float:
    """A finite number within [lo, hi] (and > 0 when ``positive``), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnnotationError(file, field, f"must be a number, got {_kind(value)} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise AnnotationError(file, field, f"must be finite, got {number}")
    if positive and number <= 0:
        raise AnnotationError(file, field, f"must be > 0, got {number}")
    _check_range(number, file, field, lo, hi)
    return number


def as_str(value: Any, file: Path | str, field: str, *, non_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise AnnotationError(file, field, f"must be a string, got {_kind(value)} {value!r}")
    if non_empty and not value.strip():
        raise AnnotationError(file, field, "must not be empty")
    return value


def parse_number(text: str | None, file: Path | str, field: str, **limits: Any) -> float:
    """A number written as text (XML, list files); a missing or non-numeric text is an error."""
    if text is None:
        raise AnnotationError(file, field, "missing")
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(file, field, f"must be a number, got {text!r}") from None
    return as_number(value, file, field, **limits)


def parse_int(text: str | None, file: Path | str, field: str, **limits: Any) -> int:
    """A whole number written as text; ``"500.0"`` is accepted (some XML writers add the dot)."""
    number = parse_number(text, file, field)
    if number != int(number):
        raise AnnotationError(file, field, f"must be a whole number, got {text!r}")
    return as_int(int(number), file, field, **limits)


def _check_range(value: float, file: Path | str, field: str, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{'-inf' if lo is None else lo}..{'inf' if hi is None else hi}"
        raise AnnotationError(file, field, f"must be in {bounds}, got {value}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )
