"""``instructcv compare``: export the MLflow comparison of FP vs RP (both protocols) as Markdown / CSV, with the
untrained reference and the released weights beside them when they were evaluated."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import click

from instructcv_core.cli._io import CONTEXT_SETTINGS, PROJECT_DIR, write_text

VARIANTS = (("fp", "FP"), ("rp", "RP"), ("untrained", "untrained"), ("released", "released"))
#: Runs shown when they exist (the reference and the authors' released weights), not required.
OPTIONAL_VARIANTS = ("untrained", "released")


def latest_run(client, experiment_id: str, run_name: str):
    """The latest FINISHED run named ``run_name`` in the experiment, or None."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"attributes.run_name = '{run_name}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


#: Suffixes of the keys logged beside a metric: its number of images and 95 % interval.
INTERVAL_SUFFIXES = ("_n", "_ci_low", "_ci_high")


def _is_interval(key: str, values: dict[str, float]) -> bool:
    return any(key.endswith(s) and key[: -len(s)] in values for s in INTERVAL_SUFFIXES)


def comparison_rows(metrics: dict[str, dict[str, float]]) -> tuple[list[str], list[dict]]:
    """(value columns, rows) of the comparison: one row per (benchmark, protocol, metric) of the
    ``eval/<benchmark>/<protocol>/<metric>`` keys (cost keys left out), sorted. A metric's interval
    keys (``_n``, ``_ci_low``, ``_ci_high``) are not rows of their own: they go into the row's
    ``<variant> interval`` field, ``(n, low, high)`` (None when not logged)."""
    columns = [label for _, label in VARIANTS if label in metrics]
    keys: set[tuple[str, str, str]] = set()
    for values in metrics.values():
        for key in values:
            parts = key.split("/", 3)
            if len(parts) == 4 and parts[0] == "eval" and parts[2] != "cost" and not _is_interval(key, values):
                keys.add((parts[1], parts[2], parts[3]))
    rows = []
    for benchmark, protocol, metric in sorted(keys):
        key = f"eval/{benchmark}/{protocol}/{metric}"
        row = {"benchmark": benchmark, "protocol": protocol, "metric": metric}
        for label in columns:
            values = metrics[label]
            row[label] = values.get(key)
            bounds = (values.get(f"{key}_n"), values.get(f"{key}_ci_low"), values.get(f"{key}_ci_high"))
            row[f"{label} interval"] = bounds if bounds[0] is not None else None
        fp, rp = row.get("FP"), row.get("RP")
        row["RP-FP"] = rp - fp if fp is not None and rp is not None else None
        rows.append(row)
    return columns + ["RP-FP"], rows


def comparison_markdown(columns: Sequence[str], rows: Sequence[dict], caption: str = "") -> str:
    """The comparison as a Markdown table; a value with an interval reads ``52.1000 [48.0000, 56.3000] (n=60)``."""
    def fmt(value, signed: bool = False, interval=None) -> str:
        if value is None:
            return "–"
        text = f"{value:+.4f}" if signed else f"{value:.4f}"
        if interval is not None:
            n, low, high = interval
            bounds = f"[{low:.4f}, {high:.4f}] " if low is not None and high is not None else ""
            text += f" {bounds}(n={int(n)})"
        return text

    header = ["benchmark", "protocol", "metric", *columns]
    lines = [caption, ""] if caption else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|"]
    for row in rows:
        cells = [row["benchmark"], row["protocol"], row["metric"]]
        cells += [fmt(row[c], signed=c == "RP-FP", interval=row.get(f"{c} interval")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_csv(columns: Sequence[str], rows: Sequence[dict]) -> str:
    """The comparison as CSV; when intervals were logged, ``<variant> n``, ``<variant> ci_low`` and
    ``<variant> ci_high`` columns follow the values."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_intervals = [c for c in columns if any(row.get(f"{c} interval") for row in rows)]
    writer.writerow(["benchmark", "protocol", "metric", *columns,
                     *(f"{c} {part}" for c in with_intervals for part in ("n", "ci_low", "ci_high"))])
    number = lambda v: "" if v is None else repr(float(v))  # noqa: E731
    for row in rows:
        extra = [number(v) for c in with_intervals for v in (row.get(f"{c} interval") or (None, None, None))]
        writer.writerow([row["benchmark"], row["protocol"], row["metric"], *(number(row[c]) for c in columns), *extra])
    return buffer.getvalue()


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI (default: the project's sqlite store, data/mlruns/mlflow.db).")
@click.option("--experiment", default="instructcv", show_default=True, help="MLflow experiment.")
@click.option("--profile", default="mini", show_default=True, help="Profile of the runs (eval-<fp|rp>-<profile>).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for compare-<profile>.md/.csv (default: print to stdout).")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "both"]), default="both", show_default=True,
              help="Output format(s). Without --out, `both` prints the Markdown.")
def compare(tracking_uri: str | None, experiment: str, profile: str, out: Path | None, fmt: str) -> None:
    """Export the FP vs RP comparison (both protocols) from MLflow.

    Takes the latest finished runs eval-fp-<profile> and eval-rp-<profile> (and
    eval-untrained-<profile> when there is one) and writes one row per (benchmark, protocol,
    metric) with columns FP, RP, untrained and RP-FP.

    \b
    Examples:
      instructcv compare
      instructcv compare --profile paper --out results/ --format both
      instructcv compare --tracking-uri http://127.0.0.1:5000 --format csv > fp_vs_rp.csv
    """
    if tracking_uri is None:
        from instructcv_core.tracking import default_tracking_uri

        tracking_uri = default_tracking_uri(PROJECT_DIR / "data")
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise click.ClickException(f"no MLflow store at {db}; run the evaluation first (instructcv reproduce "
                                       f"--profile {profile}) or pass --tracking-uri")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        found = client.get_experiment_by_name(experiment)
    except Exception as exc:  # unreachable server, bad URI
        raise click.ClickException(f"cannot read the MLflow store {tracking_uri} ({type(exc).__name__}: {exc})") from None
    if found is None:
        raise click.ClickException(f"no experiment {experiment!r} in {tracking_uri}")
    metrics, runs = {}, {}
    for variant, label in VARIANTS:
        name = f"eval-{variant}-{profile}"
        run = latest_run(client, found.experiment_id, name)
        if run is None:
            if variant in OPTIONAL_VARIANTS:
                continue
            raise click.ClickException(
                f"no finished run named {name!r} in experiment {experiment!r} ({tracking_uri}); evaluate the "
                f"{label} checkpoint first (instructcv reproduce --profile {profile})")
        metrics[label], runs[label] = dict(run.data.metrics), run.info.run_id
    columns, rows = comparison_rows(metrics)
    if not rows:
        raise click.ClickException(f"the runs {', '.join(runs.values())} have no eval/<benchmark>/<protocol>/<metric> metrics")
    caption = f"FP vs RP, profile {profile}: " + ", ".join(f"{label} run {run_id}" for label, run_id in runs.items())
    markdown, table_csv = comparison_markdown(columns, rows, caption), comparison_csv(columns, rows)
    if out is None:
        click.echo(table_csv if fmt == "csv" else markdown, nl=False)
        return
    written = []
    if fmt in ("md", "both"):
        written.append(out / f"compare-{profile}.md")
        write_text(written[-1], markdown)
    if fmt in ("csv", "both"):
        written.append(out / f"compare-{profile}.csv")
        write_text(written[-1], table_csv)
    for path in written:
        click.echo(f"wrote {path}")
