"""A run config that a step would refuse is refused when the run starts, before any step runs.

Dagster checks a run config's shape and types at launch, but a value a step refuses reaches the step
first: a pydantic validator or constraint of a ``dg.Config`` class runs when the step builds its
config object, and a stage's dataclass (``TrainConfig``, ``BuildConfig``, ...) validates what
:func:`instructcv_core.presets.resolve` makes of it inside the step. A NaN learning rate or a batch
size of 0 in the training asset's config would so fail the run only after every data stage ran.

:func:`run_config_problems` does, for every step of a run, what the step will do with its config:
it builds the step's config object from the op's config (as Dagster does) and, for the stage configs
in :func:`stage_configs`, resolves it with the run's settings exactly as the asset does (paths that
upstream steps create are left empty: no value check looks at them). The project's executor
(`pipelines.run_recovery.recovering_executor`) runs it before the first step of every run started
through it (`dagster job execute`, `dg launch`, the UI) and fails the run listing every problem as
the YAML path of the field (``ops.<asset>.config.<field>: ...``). ``execute_in_process`` and
``materialize`` use their own in-process executor: there the step refuses the value itself, with the
same message.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dagster as dg
from dagster._core.definitions.dependency import NodeHandle
from dagster._core.system_config.objects import ResolvedRunConfig
from pydantic import ValidationError

from pipelines.resources import InstructCVSettings


class RunConfigRefused(dg.DagsterError):
    """A run config that a step of the run would refuse; the message lists each field and why."""


def stage_configs() -> dict[type, Callable[[Any, InstructCVSettings], Any]]:
    """Per asset config class: the function its asset resolves the stage's config with (a subclass,
    e.g. the sharded evaluation's config, takes its base's)."""
    from assets.datasets import DatasetBuildConfig, build_config
    from assets.evaluate import EvalAssetConfig, eval_config
    from assets.model import BaseModelAssetConfig, base_model_recipe
    from assets.speed_quality import SpeedQualityAssetConfig, speed_quality_config
    from assets.train import STAGE_CONFIG_CLASSES, train_recipe

    return {
        BaseModelAssetConfig: base_model_recipe,
        DatasetBuildConfig: build_config,
        **{cls: functools.partial(train_recipe, stage=stage) for stage, cls in STAGE_CONFIG_CLASSES.items()},
        EvalAssetConfig: eval_config,
        SpeedQualityAssetConfig: speed_quality_config,
    }


def run_config_problems(job: dg.JobDefinition, run_config: Mapping[str, Any],
                        handles: Iterable[NodeHandle] | None = None) -> list[str]:
    """Every value of ``run_config`` that a step of ``job`` (those of ``handles``; default: all) would
    refuse, as ``<YAML path of the field>: <why>``; empty when the run config is fine.

    ``run_config`` must have passed Dagster's own check (`dg.validate_run_config`), as a launched
    run's has.
    """
    resolved = ResolvedRunConfig.build(job, run_config)
    problems: list[str] = []
    settings = None
    if "settings" in resolved.resources:
        try:
            settings = InstructCVSettings(**resolved.resources["settings"].config)
        except ValidationError as exc:
            problems += _pydantic_problems(exc, "resources.settings.config")
    resolvers = None
    seen = set()
    for handle in job.graph.iterate_node_handles() if handles is None else handles:
        if handle in seen:
            continue
        seen.add(handle)
        config_cls = _config_class(job, handle)
        if config_cls is None:
            continue
        where = "ops." + ".ops.".join(handle.path) + ".config"
        op_config = resolved.ops[str(handle)].config if str(handle) in resolved.ops else {}
        # as Dagster builds the step's config object (compute_generator.construct_config_from_context)
        values = dict(config_cls._get_non_default_public_field_values_cls(op_config))  # noqa: SLF001
        try:
            config = config_cls(**values)
        except ValidationError as exc:
            problems += _pydantic_problems(exc, where)
            # the other fields are still checked: without the refused ones (their presets stand in)
            refused = {error["loc"][0] for error in exc.errors() if error["loc"]}
            try:
                config = config_cls(**{k: v for k, v in values.items() if k not in refused})
            except ValidationError:
                continue
        resolvers = stage_configs() if resolvers is None else resolvers
        resolver = next((resolvers[cls] for cls in config_cls.__mro__ if cls in resolvers), None)
        if resolver is not None and settings is not None:
            try:
                resolver(config, settings)
            except (ValueError, TypeError) as exc:
                problems.append(f"{where}: {exc}")
    return problems


def refuse_invalid_run_config(job: dg.JobDefinition, run_config: Mapping[str, Any],
                              handles: Iterable[NodeHandle] | None = None,
                              warn: Callable[[str], None] | None = None) -> None:
    """Raise `RunConfigRefused` listing :func:`run_config_problems`, if there are any.

    With ``warn``, a failure of the check itself (a fault here, not in the run config) is reported
    through it and the run goes on: its steps still check their own config.
    """
    try:
        problems = run_config_problems(job, run_config, handles)
    except Exception as exc:
        if warn is None:
            raise
        warn(f"the run-config check could not run ({type(exc).__name__}: {exc}); each step checks its own config")
        return
    if problems:
        raise RunConfigRefused("the run config is refused before any step runs:\n- " + "\n- ".join(problems))


def _config_class(job: dg.JobDefinition, handle: NodeHandle) -> type[dg.Config] | None:
    """The ``dg.Config`` class the op at ``handle`` takes as ``config`` (None: it takes none)."""
    definition = job.graph.get_node(handle).definition
    compute_fn = getattr(definition, "compute_fn", None)
    has_config_arg = getattr(compute_fn, "has_config_arg", None)
    if has_config_arg is None or not has_config_arg():
        return None
    annotation = compute_fn.get_config_arg().annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, dg.Config) else None


def _pydantic_problems(exc: ValidationError, where: str) -> list[str]:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] != "value_error":  # a constraint (ge=1, ...): say what was given
            message += f" (got {error['input']!r})"
        problems.append(f"{where}.{field}: {message}" if field else f"{where}: {message}")
    return problems
