"""``modelyard pipeline run|validate|render`` and ``modelyard data generate``."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from modelyard.core.redaction import redact_text, redact_uri

if TYPE_CHECKING:
    from rich.table import Table

    from modelyard.pipelines.context import RunSettings
    from modelyard.pipelines.definition import Pipeline
    from modelyard.pipelines.runner import PipelineRunResult, StepRun

# Rich assumes 80 columns when stdout is not a terminal (CI logs, kubectl logs); the
# summary table is wider than that.
console = Console(width=None if sys.stdout.isatty() else 160)
error_console = Console(stderr=True)

_STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "retrying": "yellow",
    "succeeded": "green",
    "failed": "bold red",
    "timed out": "bold red",
    "skipped": "magenta",
}
# Result values shown in the summary's details column; all of them go to --summary-json.
_DETAIL_KEYS = (
    "dataset",
    "files",
    "pages",
    "duplicates_removed",
    "rows_unmatched",
    "rows_checked",
    "holdout_roc_auc",
    "study",
    "best_trial",
    "best_cv_roc_auc",
    "trials",
    "run_id",
    "version",
    "promoted",
    "reason",
)

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="MODELYARD_HOME",
        help="Working directory for local state (default ./.modelyard).",
    ),
]
LakeOption = Annotated[
    str | None,
    typer.Option(
        "--lake",
        envvar="MODELYARD_LAKE",
        help="Data lake: a path or fsspec URL (default HOME/lake).",
    ),
]
TrackingOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (default sqlite:///HOME/mlflow.db).",
    ),
]
DateOption = Annotated[
    str | None,
    typer.Option(
        "--date",
        envvar="MODELYARD_RUN_DATE",
        help="Run date YYYY-MM-DD (default today, UTC).",
    ),
]


def _parse_date(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f}s"


def _progress_table(steps: dict[str, StepRun], title: str) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("step")
    table.add_column("status")
    table.add_column("attempt", justify="right")
    table.add_column("time", justify="right")
    table.add_column("progress")
    for step in steps.values():
        style = _STATUS_STYLE[step.status.value]
        table.add_row(
            step.name,
            f"[{style}]{step.status.value}[/]",
            str(step.attempts or ""),
            _duration(step.duration),
            step.progress or "",
        )
    return table


def _summary_table(result: PipelineRunResult) -> Table:
    from rich.table import Table

    verdict = "[green]succeeded[/]" if result.succeeded else "[bold red]failed[/]"
    table = Table(
        title=f"pipeline {result.pipeline} {verdict} in {result.duration:.1f}s "
        f"(run {result.run_id})",
        title_justify="left",
    )
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in ("attempts", "time", "rows", "quarantined"):
        table.add_column(column, justify="right")
    table.add_column("details", overflow="fold")
    for step in result.steps.values():
        style = _STATUS_STYLE[step.status.value]
        details = step.error or ", ".join(
            f"{key}={step.result[key]}" for key in _DETAIL_KEYS if key in step.result
        )
        table.add_row(
            step.name,
            f"[{style}]{step.status.value}[/]",
            str(step.attempts),
            _duration(step.duration),
            str(step.result.get("rows_written", "")),
            str(step.result.get("rows_quarantined", "")),
            redact_text(details),
        )
    return table


def _summary_json(result: PipelineRunResult) -> dict[str, Any]:
    return {
        "pipeline": result.pipeline,
        "run_id": result.run_id,
        "succeeded": result.succeeded,
        "duration_seconds": round(result.duration, 3),
        "rows_quarantined": result.rows_quarantined,
        "steps": {
            step.name: {
                "status": step.status.value,
                "attempts": step.attempts,
                "duration_seconds": None if step.duration is None else round(step.duration, 3),
                "error": step.error,
                "result": step.result,
            }
            for step in result.steps.values()
        },
    }


class Executor(enum.StrEnum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"


#: Where Kubernetes reads a container's last words (shown in the pod's status).
_TERMINATION_LOG = Path("/dev/termination-log")


def _termination_message(result: PipelineRunResult) -> None:
    """In a step's pod, leave the step's error where the orchestrator reads it."""
    errors = [f"{s.name}: {s.error}" for s in result.steps.values() if s.error]
    if errors and _TERMINATION_LOG.exists():
        with contextlib.suppress(OSError):
            _TERMINATION_LOG.write_text("\n".join(errors)[-4000:])


def _run(
    executor: Executor,
    pipeline: Pipeline,
    settings: RunSettings,
    title: str,
    *,
    date_given: bool,
    only_steps: list[str] | None,
    partition_index: int | None,
    skip_steps: list[str] | None,
    run_id: str | None,
) -> PipelineRunResult:
    from rich.live import Live

    from modelyard.pipelines.runner import PipelineRunner

    if executor is Executor.KUBERNETES:
        from modelyard.pipelines.cluster import ClusterError, run_in_cluster

        try:
            return run_in_cluster(
                pipeline,
                settings,
                date_given=date_given,
                only_steps=only_steps,
                skip_steps=skip_steps,
            )
        except ClusterError as error:
            error_console.print(f"[bold red]error:[/] {error}")
            raise typer.Exit(2) from None
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        runner = PipelineRunner(
            pipeline,
            settings,
            only_steps,
            partition_index,
            on_update=lambda steps: live.update(_progress_table(steps, title)),
            run_id=run_id,
            skip_steps=skip_steps,
        )
        return runner.run()


def register(app: typer.Typer) -> None:
    """Add the ``pipeline`` and ``data`` command groups to the top-level CLI."""
    pipeline_app = typer.Typer(
        help="Define, run and schedule pipelines (DAGs of steps).", no_args_is_help=True
    )
    data_app = typer.Typer(help="Sample data for trying modelyard out.", no_args_is_help=True)
    app.add_typer(pipeline_app, name="pipeline")
    app.add_typer(data_app, name="data")

    @pipeline_app.command("run")
    def run_command(
        file: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
        home: HomeOption = None,
        lake: LakeOption = None,
        tracking_uri: TrackingOption = None,
        date: DateOption = None,
        step: Annotated[
            list[str] | None,
            typer.Option(
                "--step",
                help="Run only this step (repeatable); its dependencies are taken as done. "
                "A fanned-out step runs only partition $JOB_COMPLETION_INDEX when that is set.",
            ),
        ] = None,
        skip: Annotated[
            list[str] | None,
            typer.Option("--skip", help="Do not run this step (repeatable); taken as done."),
        ] = None,
        summary_json: Annotated[
            Path | None,
            typer.Option("--summary-json", help="Also write the run summary as JSON here."),
        ] = None,
        executor: Annotated[
            Executor,
            typer.Option(
                "--executor",
                envvar="MODELYARD_EXECUTOR",
                help="local: every step a process here. kubernetes (in the pipeline's "
                "CronJob pod): every step a Job of its own, this pod only orchestrates.",
            ),
        ] = Executor.LOCAL,
        run_id: Annotated[
            str | None,
            typer.Option(
                "--run-id",
                envvar="MODELYARD_RUN_ID",
                help="The run this is part of, recorded on MLflow runs (default: a new id).",
            ),
        ] = None,
    ) -> None:
        """Run a pipeline and exit non-zero if any step fails.

        Independent steps run in parallel, each attempt in its own process with the step's
        timeout and retries; with --executor kubernetes each step runs as its own Job.
        Every step stores its result in the lake (LAKE/_runs), where a step run on its
        own (--step) finds what its dependencies returned for the same date.
        """
        import json
        import logging

        from modelyard.pipelines.context import INDEX_ENV, RunSettings
        from modelyard.pipelines.definition import PipelineDefinitionError, load_pipeline

        settings = RunSettings.resolve(home, lake, tracking_uri, _parse_date(date))
        try:
            pipeline = load_pipeline(file, settings.variables)
        except PipelineDefinitionError as error:
            error_console.print(f"[bold red]error:[/] {error}")
            raise typer.Exit(2) from None
        index_text = os.environ.get(INDEX_ENV)
        partition_index = int(index_text) if index_text and step else None
        console.print(
            f"pipeline [bold]{pipeline.name}[/]: {len(pipeline.order)} steps, "
            f"run date {settings.run_date}, lake {redact_uri(str(settings.lake))}, "
            f"tracking {redact_uri(settings.tracking_uri)}"
        )
        title = f"pipeline {pipeline.name}"
        # Stopped from outside (kill, the CronJob's deadline): unwind, so the runner
        # stops the steps' process groups instead of leaving them running.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        # In a pod the log is the progress report (kubectl logs); a terminal gets a table.
        logging.basicConfig(
            level=logging.INFO if executor is Executor.KUBERNETES else logging.WARNING,
            format="%(asctime)s %(levelname)s %(message)s",
        )
        try:
            result = _run(
                executor,
                pipeline,
                settings,
                title,
                date_given=date is not None,
                only_steps=step,
                partition_index=partition_index,
                skip_steps=skip,
                run_id=run_id,
            )
        except PipelineDefinitionError as error:
            error_console.print(f"[bold red]error:[/] {error}")
            raise typer.Exit(2) from None
        console.print(_summary_table(result))
        if result.rows_quarantined:
            console.print(
                f"[yellow]{result.rows_quarantined} row(s) quarantined[/] "
                f"(under {settings.lake}/_quarantine)"
            )
        if summary_json is not None:
            summary_json.write_text(
                redact_text(json.dumps(_summary_json(result), indent=2, default=str))
            )
        if not result.succeeded:
            _termination_message(result)
            raise typer.Exit(1)

    @pipeline_app.command("validate")
    def validate_command(
        file: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    ) -> None:
        """Check a pipeline file and show its steps in run order.

        Checks the YAML, the schedule, the dependencies and each step's parameters.
        """
        from rich.table import Table

        from modelyard.pipelines.context import RunSettings
        from modelyard.pipelines.definition import PipelineDefinitionError, load_pipeline

        try:
            pipeline = load_pipeline(
                file, RunSettings.resolve().variables, strict_placeholders=False
            )
        except PipelineDefinitionError as error:
            error_console.print(f"[bold red]error:[/] {error}")
            raise typer.Exit(2) from None
        table = Table(title=f"pipeline {pipeline.name} (schedule {pipeline.spec.schedule or '-'})")
        for column in ("step", "function", "depends on", "timeout", "attempts", "fan-out"):
            table.add_column(column)
        for name in pipeline.order:
            spec = pipeline.step(name)
            table.add_row(
                name,
                spec.function,
                ", ".join(spec.depends_on),
                f"{spec.timeout_seconds:g}s" if spec.timeout_seconds else "-",
                str(spec.retries.attempts),
                f"{spec.fan_out.completions} x{spec.fan_out.parallelism}"
                if spec.fan_out
                else (f"{spec.parallelism} workers" if spec.parallelism else "-"),
            )
        console.print(table)
        console.print("[green]valid[/]")

    @pipeline_app.command("study-storage")
    def study_storage_command(
        url: Annotated[
            str,
            typer.Option(
                help="Where the studies are kept: an SQLAlchemy URL, e.g. "
                "sqlite:////var/lib/mlflow/studies.db or postgresql+psycopg://HOST:5432/optuna "
                "(user and password from PGUSER/PGPASSWORD).",
                envvar="MODELYARD_STUDY_DATABASE",
            ),
        ],
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
        port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 50051,
    ) -> None:
        """Serve a study storage to the pods of tuning steps (Optuna's gRPC storage proxy).

        One process owns the database; the tuning step's pods use it at
        grpc://HOST:PORT (MODELYARD_STUDY_STORAGE). The chart runs it beside the
        registry, on the registry's volume or database server (docs/pipelines.md). It has
        no authentication of its own: expose it only to the tuning pods (the chart's
        NetworkPolicy admits the pods labelled modelyard.io/study-client).
        """
        import logging

        from modelyard.pipelines.tune import serve_storage

        if "://" not in url or url.startswith("grpc://"):
            error_console.print(
                f"[bold red]error:[/] --url {url!r}: give the database's SQLAlchemy URL "
                "(sqlite:///PATH or postgresql+psycopg://HOST:PORT/DB), not the proxy's"
            )
            raise typer.Exit(2)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        serve_storage(url, host, port)

    @pipeline_app.command("render")
    def render_command(
        file: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
        image: Annotated[
            str | None,
            typer.Option(help="Container image (default modelyard/modelyard:<version>)."),
        ] = None,
        namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
        job: Annotated[
            str | None,
            typer.Option(
                help="Render the Job of this step (an Indexed Job when it fans out or runs "
                "in parallel), as the orchestrator creates it, not the CronJob."
            ),
        ] = None,
        date: Annotated[
            str | None,
            typer.Option("--date", help="Run date for --job (default: today, UTC)."),
        ] = None,
        lake: Annotated[
            str | None, typer.Option(help="Data lake URL the pods use (MODELYARD_LAKE).")
        ] = None,
        lake_pvc: Annotated[
            str | None,
            typer.Option(help="PersistentVolumeClaim to mount as the lake (default lake path)."),
        ] = None,
        tracking_uri: Annotated[
            str | None, typer.Option(help="MLFLOW_TRACKING_URI for the pods.")
        ] = None,
        env_secret: Annotated[
            str | None,
            typer.Option(help="Secret whose keys become environment variables (credentials)."),
        ] = None,
        registry_credentials: Annotated[
            str | None,
            typer.Option(
                help="The installation's registry credentials Secret (Helm: "
                "<release>-modelyard-registry-credentials): the pods log in to MLflow as "
                "modelyard-pipelines. See docs/security.md."
            ),
        ] = None,
        service_account: Annotated[str | None, typer.Option()] = None,
        pipeline_path: Annotated[
            str | None,
            typer.Option(
                help="Path of the pipeline file inside the image; default: render a ConfigMap "
                "with this file, mounted at /etc/modelyard/pipeline.yaml."
            ),
        ] = None,
        skip: Annotated[
            list[str] | None,
            typer.Option("--skip", help="Steps the CronJob leaves out (e.g. run as Jobs)."),
        ] = None,
        suspend: Annotated[bool, typer.Option(help="Render the CronJob suspended.")] = False,
        executor: Annotated[
            Executor,
            typer.Option(
                "--executor",
                help="kubernetes: the CronJob's pod runs each step as a Job (rendered with "
                "its ServiceAccount, Role and RoleBinding). local: the whole run in one pod.",
            ),
        ] = Executor.KUBERNETES,
        steps_on_node: Annotated[
            bool,
            typer.Option(
                help="Run the step pods on the orchestrator's node (a ReadWriteOnce lake)."
            ),
        ] = False,
    ) -> None:
        """Print a pipeline's Kubernetes YAML: ConfigMap, CronJob and the orchestrator's
        ServiceAccount and Role; or, with --job STEP, the Job of one step.

        Pipe the output to `kubectl apply -f -`.
        """
        import yaml

        from modelyard.pipelines.context import RunSettings
        from modelyard.pipelines.definition import PipelineDefinitionError, load_pipeline
        from modelyard.pipelines.manifests import DEFAULT_IMAGE, RenderOptions, build_manifests

        try:
            pipeline = load_pipeline(
                file, RunSettings.resolve().variables, strict_placeholders=False
            )
            if job is not None:
                pipeline.step(job)
            for skipped in skip or []:
                pipeline.step(skipped)
        except PipelineDefinitionError as error:
            error_console.print(f"[bold red]error:[/] {error}")
            raise typer.Exit(2) from None
        run_date = _parse_date(date)
        options = RenderOptions(
            image=image or DEFAULT_IMAGE,
            namespace=namespace,
            pipeline_path_in_image=pipeline_path,
            lake=lake,
            lake_pvc=lake_pvc,
            tracking_uri=tracking_uri,
            env_secret=env_secret,
            registry_credentials=registry_credentials,
            service_account=service_account,
            skip_steps=list(skip or []),
            suspend=suspend,
            executor=executor.value,
            steps_on_node=steps_on_node,
        )
        try:
            objects = build_manifests(pipeline.spec, pipeline.source_text, options, job, run_date)
        except ValueError as error:
            error_console.print(f"[bold red]error:[/] {error}")
            raise typer.Exit(2) from None
        # Plain stdout, not rich: the output is for kubectl and must not be wrapped.
        typer.echo(yaml.safe_dump_all(objects, sort_keys=False, width=1000), nl=False)

    @data_app.command("generate")
    def generate_command(
        out: Annotated[Path, typer.Option("--out", help="Landing directory to write into.")],
        days: Annotated[int, typer.Option(min=1)] = 7,
        customers: Annotated[int, typer.Option(min=10)] = 2000,
        seed: int = 7,
        end_date: Annotated[
            str | None, typer.Option(help="Last day, YYYY-MM-DD (default today, UTC).")
        ] = None,
        drift_column: Annotated[
            list[str] | None,
            typer.Option("--drift-column", help="Column to drift (repeatable)."),
        ] = None,
        drift_strength: float = 0.5,
        drift_start: Annotated[
            str | None,
            typer.Option(help="First drifted day, YYYY-MM-DD (default: the last day)."),
        ] = None,
        bad_rows_per_day: Annotated[int, typer.Option(min=0)] = 3,
    ) -> None:
        """Write the sample churn dataset as CSV files, optionally with drift.

        Daily customer snapshots and usage events for --days days ending on --end-date.
        """
        from modelyard.pipelines.churn_data import DriftSettings, write_churn_day

        last = _parse_date(end_date) or dt.datetime.now(dt.UTC).date()
        drift = (
            DriftSettings(
                columns=drift_column, strength=drift_strength, start_date=_parse_date(drift_start)
            )
            if drift_column
            else None
        )
        all_days = [last - dt.timedelta(days=offset) for offset in range(days - 1, -1, -1)]
        drift_from = (drift.start_date if drift else None) or all_days[-1]
        rows = 0
        for day in all_days:
            rows += write_churn_day(
                str(out.absolute()), day, customers, seed, drift, drift_from, bad_rows_per_day
            )
        console.print(
            f"wrote {days} day(s), {rows} usage event rows, {customers} customers to {out}"
            + (f" (drift in {', '.join(drift.columns)} from {drift_from})" if drift else "")
        )
