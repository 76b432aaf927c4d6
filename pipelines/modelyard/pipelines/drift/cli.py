"""``modelyard drift check``: compare current data with the reference and say what drifted.

Exit codes (documented in docs/drift.md):

- 0: checked, no drift (by ``--fail-on``);
- 2: bad input: a file that cannot be read, a model version without lineage, bad options;
- 3: drift found;
- 4: not checked as a whole: no data in the window, or the schema does not match.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    import pyarrow as pa

    from modelyard.pipelines.drift._data import DataSource
    from modelyard.pipelines.drift._summary import DriftSummary

from modelyard.core.contracts import (
    DRIFT_MEMORY_BUDGET,
    DRIFT_MEMORY_BUDGET_MIN,
    TRACKING_URI_ENV,
    DriftExit,
    ServerEnv,
    parse_deployment,
    parse_memory,
    parse_window,
)

EXIT_OK = DriftExit.OK
EXIT_BAD_INPUT = DriftExit.BAD_INPUT
EXIT_DRIFT = DriftExit.DRIFT
EXIT_NOT_CHECKED = DriftExit.NOT_CHECKED


class FailOn(StrEnum):
    DRIFT = "drift"
    COLUMN = "column"
    NEVER = "never"


def _parse_moment(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{value!r} is not an ISO date or time", param_hint=option
        ) from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _deployment(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    try:
        return parse_deployment(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--deployment") from None


def window_length(value: str) -> timedelta:
    """``90m``, ``24h``, ``7d``: the length of the window a CronJob checks."""
    try:
        return parse_window(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--window") from None


def memory_budget(value: str) -> int:
    """``512Mi``, ``2Gi``, ``1.5G`` or bytes: what the check may hold for data at once."""
    try:
        size = parse_memory(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory-budget") from None
    if size < parse_memory(DRIFT_MEMORY_BUDGET_MIN):
        raise typer.BadParameter(
            f"{value} is below the smallest budget, {DRIFT_MEMORY_BUDGET_MIN}",
            param_hint="--memory-budget",
        )
    return size


def _window_start(since: str | None, window: str | None, until: datetime | None) -> datetime | None:
    if window is None:
        return _parse_moment(since, "--since")
    if since is not None:
        raise typer.BadParameter("give --since or --window, not both", param_hint="--window")
    return (until or datetime.now(UTC)) - window_length(window)


def exit_code(summary: DriftSummary, fail_on: FailOn) -> int:
    from modelyard.pipelines.drift._summary import CheckStatus

    if summary.status is not CheckStatus.OK:
        return EXIT_NOT_CHECKED
    if fail_on is FailOn.DRIFT and summary.drift_found:
        return EXIT_DRIFT
    if fail_on is FailOn.COLUMN and summary.drifted_columns:
        return EXIT_DRIFT
    return EXIT_OK


# How a column's values were held for its test (the summary's ``computation``).
HELD = {"counts": "counts", "in_memory": "memory", "external_sort": "disk"}


def render_summary(console: Console, summary: DriftSummary) -> None:
    table = Table(title=f"Drift check: {summary.status.value}", title_justify="left")
    for header in ("column", "type", "method", "score", "threshold", "held", "drift"):
        table.add_column(header, justify="right" if header in ("score", "threshold") else "left")
    for column in [*summary.columns, *summary.predictions]:
        name = column.column
        if column.reference_column:
            name += f" (vs {column.reference_column})"
        drift = "[bold red]DRIFT[/]" if column.drifted else "ok"
        if column.status.value != "checked":
            drift = f"{drift} ({column.status.value}: {escape(str(column.reason))})"
        table.add_row(
            escape(name),
            column.column_type.name.lower(),
            column.method or "-",
            "-" if column.score is None else f"{column.score:.4g}",
            "-" if column.threshold is None else f"{column.threshold:g}",
            "-" if column.computation is None else HELD[column.computation.value],
            drift,
        )
    console.print(table)
    verdict = {True: "[bold red]yes[/]", False: "no", None: "unknown"}[summary.dataset_drift]
    console.print(f"dataset drift: {verdict}; {escape(summary.message)}", soft_wrap=True)
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``drift`` command group to the top-level CLI."""
    drift_app = typer.Typer(
        name="drift",
        help="Check served data for drift against the model's training data.",
        no_args_is_help=True,
    )

    @drift_app.callback()
    def _drift() -> None:
        """Check served data for drift against the model's training data."""

    @drift_app.command("check")
    def check(
        reference: Annotated[
            str | None,
            typer.Option(
                help="Reference data: Parquet or CSV file, directory of Parquet files, or "
                "fsspec URL. Default with --model: the version's lineage "
                "(its training run's reference/data.parquet).",
            ),
        ] = None,
        current: Annotated[
            str | None,
            typer.Option(
                help="Current data, same formats. Default with --model and "
                "--prediction-log: the version's prediction log for --since/--until.",
            ),
        ] = None,
        as_json: Annotated[
            bool,
            typer.Option("--json", help="Print the summary as JSON (drifted_columns, ...)."),
        ] = False,
        model: Annotated[
            str | None, typer.Option(help="Registered model name (for lineage, log, report).")
        ] = None,
        version: Annotated[
            str | None, typer.Option(help="Model version number or alias, with --model.")
        ] = None,
        tracking_uri: Annotated[
            str | None, typer.Option(envvar=TRACKING_URI_ENV, help="MLflow tracking URI.")
        ] = None,
        prediction_log: Annotated[
            str | None,
            typer.Option(envvar=ServerEnv.PREDICTION_LOG, help="Prediction log base URL."),
        ] = None,
        since: Annotated[
            str | None, typer.Option(help="Window start, ISO date/time (UTC). Default: until-1d.")
        ] = None,
        window: Annotated[
            str | None,
            typer.Option(help="Window length instead of --since: 90m, 24h, 7d (ends at --until)."),
        ] = None,
        until: Annotated[
            str | None, typer.Option(help="Window end (exclusive), ISO date/time. Default: now.")
        ] = None,
        target_column: Annotated[
            str, typer.Option(help="Reference label column predictions fall back to.")
        ] = "target",
        drift_share: Annotated[
            float,
            typer.Option(min=0.0, max=1.0, help="Dataset drift at this share of drifted columns."),
        ] = 0.5,
        fail_on: Annotated[
            FailOn,
            typer.Option(
                help="Exit 3 on: dataset or prediction drift ('drift'), any drifted column "
                "('column'), or 'never'.",
            ),
        ] = FailOn.DRIFT,
        log_to_mlflow: Annotated[
            bool,
            typer.Option(help="Log summary.json and an Evidently HTML report to MLflow."),
        ] = False,
        score_reference: Annotated[
            bool,
            typer.Option(
                help="With the lineage reference: add the model's own predictions on it, "
                "so served predictions are compared like for like.",
            ),
        ] = True,
        html_sample_rows: Annotated[
            int, typer.Option(min=100, help="Rows per side in the Evidently HTML report.")
        ] = 20_000,
        budget: Annotated[
            str,
            typer.Option(
                "--memory-budget",
                help="Memory the check may hold for data at once (512Mi, 2Gi, 1.5G, bytes); "
                "Python and its libraries take about 200Mi more. Parquet is read a few "
                "columns at a time within it; a numerical column too large for it is "
                "sorted on disk (same, exact result, slower; 8 bytes per row in $TMPDIR). "
                "The drift CronJob passes half its memory limit.",
            ),
        ] = DRIFT_MEMORY_BUDGET,
        deployment: Annotated[
            str | None,
            typer.Option(
                help="NAMESPACE/NAME of the ModelDeployment checked for: with "
                "--log-to-mlflow the verdict is tagged for it alone "
                "(modelyard.drift/NAMESPACE/NAME.last_*), so deployments serving one "
                "version keep their own."
            ),
        ] = None,
    ) -> None:
        """Check current data against the reference with Evidently's DataDriftPreset tests.

        Exit 0: no drift; 2: bad input; 3: drift found; 4: no data or schema mismatch.
        """
        console = Console()
        errors = Console(stderr=True)
        budget_bytes = memory_budget(budget)
        target = _deployment(deployment)
        try:
            # Libraries (MLflow's run links) print to stdout; keep it for the result alone.
            with contextlib.redirect_stdout(sys.stderr):
                summary = _run_check(
                    reference=reference,
                    current=current,
                    model=model,
                    version=version,
                    tracking_uri=tracking_uri,
                    prediction_log=prediction_log,
                    since=_window_start(since, window, _parse_moment(until, "--until")),
                    until=_parse_moment(until, "--until"),
                    target_column=target_column,
                    drift_share=drift_share,
                    log_to_mlflow=log_to_mlflow,
                    score_reference=score_reference,
                    html_sample_rows=html_sample_rows,
                    memory_budget=budget_bytes,
                    console=errors,
                    deployment=target,
                )
        except _InputError as exc:
            errors.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        if as_json:
            # Plain stdout: JSON must not be wrapped or highlighted.
            typer.echo(summary.model_dump_json(indent=2))
        else:
            render_summary(console, summary)
        raise typer.Exit(exit_code(summary, fail_on))

    app.add_typer(drift_app, name="drift")


class _InputError(Exception):
    pass


def _run_check(
    *,
    reference: str | None,
    current: str | None,
    model: str | None,
    version: str | None,
    tracking_uri: str | None,
    prediction_log: str | None,
    since: datetime | None,
    until: datetime | None,
    target_column: str,
    drift_share: float,
    log_to_mlflow: bool,
    score_reference: bool,
    html_sample_rows: int,
    memory_budget: int,
    console: Console,
    deployment: tuple[str, str] | None = None,
) -> DriftSummary:
    import pyarrow as pa

    from modelyard.pipelines.drift import check_drift
    from modelyard.pipelines.drift._data import TableSource
    from modelyard.pipelines.drift._report import log_drift_report, render_evidently_html
    from modelyard.pipelines.drift._sources import (
        DataSourceError,
        load_reference,
        open_data,
        open_prediction_log,
    )

    if (model is None) != (version is None):
        raise _InputError("--model and --version go together")
    needs_registry = reference is None or log_to_mlflow
    if needs_registry and model is None:
        raise _InputError("give --reference, or --model and --version to use the lineage")
    if needs_registry and not tracking_uri:
        raise _InputError("--tracking-uri (or MLFLOW_TRACKING_URI) is needed with --model")
    if current is None and (model is None or not prediction_log):
        raise _InputError("give --current, or --model, --version and --prediction-log")

    try:
        if model is not None and version is not None and not version.isdigit():
            # The prediction log and models:/ URIs name the version number, not the alias.
            if not tracking_uri:
                raise _InputError(f"--tracking-uri is needed to resolve alias {version!r}")
            version = _version_number(tracking_uri, model, version)
            console.print(f"{model}: alias resolved to version {version}")
        window = None
        if current is not None:
            current_data: DataSource = open_data(current)
        else:
            end = until or datetime.now(UTC)
            start = since or end - timedelta(days=1)
            window = f"{start.isoformat()}/{end.isoformat()}"
            assert model is not None and version is not None and prediction_log is not None
            current_data = open_prediction_log(prediction_log, model, version, start, end)
        if reference is not None:
            reference_data: DataSource = open_data(reference)
        else:
            assert model is not None and version is not None and tracking_uri is not None
            # The lineage reference is a sample of at most REFERENCE_MAX_ROWS rows.
            lineage = load_reference(tracking_uri, model, version)
            console.print(f"reference: {lineage.source}")
            table = lineage.table
            if score_reference and "prediction" not in table.column_names:
                table = _scored(table, tracking_uri, model, version, console)
            reference_data = TableSource(table)
        summary = check_drift(
            reference_data,
            current_data,
            target_column=target_column,
            drift_share=drift_share,
            memory_budget=memory_budget,
        )
    except DataSourceError as exc:
        raise _InputError(str(exc)) from exc
    except FileNotFoundError as exc:
        raise _InputError(f"{exc.filename or exc}: no such file or directory") from exc
    except (pa.ArrowException, OSError) as exc:
        # The Parquet files are read while checking: a corrupt file shows up here, as does
        # a full $TMPDIR when a column is sorted on disk.
        raise _InputError(f"cannot read the data or sort it on disk: {exc}") from exc

    if log_to_mlflow:
        assert model is not None and version is not None and tracking_uri is not None
        html = render_evidently_html(
            reference_data, current_data, summary, sample_rows=html_sample_rows
        )
        logged = log_drift_report(
            summary,
            tracking_uri=tracking_uri,
            model_name=model,
            model_version=version,
            html=html,
            window=window,
            deployment=deployment,
        )
        console.print(f"logged to MLflow run {logged.run_id} ({logged.artifact_uri})")
    return summary


def _scored(
    reference: pa.Table, tracking_uri: str, model: str, version: str, console: Console
) -> pa.Table:
    from modelyard.pipelines.drift._sources import score_reference

    try:
        return score_reference(reference, tracking_uri, model, version)
    except Exception as exc:  # any model-loading failure: check the features anyway
        console.print(
            f"[yellow]warning:[/] could not score the reference with {escape(model)} "
            f"v{escape(version)} ({escape(str(exc))}); predictions fall back to the target",
            soft_wrap=True,
        )
        return reference


def _version_number(tracking_uri: str, model: str, alias: str) -> str:
    from modelyard.pipelines.drift._sources import resolve_version

    return str(resolve_version(tracking_uri, model, alias).version)
