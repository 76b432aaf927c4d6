"""``modelyard shadow compare``: how a shadow version's answers compare with the live one's.

Exit codes (docs/progressive-delivery.md):

- 0: compared;
- 2: bad input: an unreadable log, a version that does not resolve, bad options;
- 4: nothing to compare: no request answered by both versions in the window.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelyard.core.contracts import (
    TRACKING_URI_ENV,
    DriftExit,
    ServerEnv,
    parse_deployment,
    parse_window,
)


def _deployment(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    try:
        return parse_deployment(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--deployment") from None


def _version(tracking_uri: str | None, model: str, version: str, option: str) -> str:
    """A version number, an alias resolved through the registry."""
    if version.isdigit():
        return version
    if not tracking_uri:
        raise typer.BadParameter(
            f"alias {version!r} needs --tracking-uri (or {TRACKING_URI_ENV}) to resolve",
            param_hint=option,
        )
    from modelyard.pipelines.drift._sources import DataSourceError, resolve_version

    try:
        return str(resolve_version(tracking_uri, model, version).version)
    except DataSourceError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _render(console: Console, summary: object) -> None:
    from modelyard.pipelines.shadow import ShadowComparison

    assert isinstance(summary, ShadowComparison)
    table = Table(
        title=f"{summary.model}: v{summary.shadow_version} (shadow) vs "
        f"v{summary.stable_version} (live)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows: list[tuple[str, object]] = [
        ("requests rows compared", summary.compared_rows),
        ("rows logged (live / shadow)", f"{summary.stable_rows} / {summary.shadow_rows}"),
        ("kind", summary.kind or "-"),
        (
            "agreement rate",
            "-" if summary.agreement_rate is None else f"{summary.agreement_rate:.4f}",
        ),
    ]
    if summary.mean_abs_difference is not None:
        rows += [
            ("mean |difference|", f"{summary.mean_abs_difference:.6g}"),
            ("RMSE", f"{summary.rmse:.6g}"),
            ("max |difference|", f"{summary.max_abs_difference:.6g}"),
        ]
    for side in ("stable", "shadow"):
        p50 = getattr(summary, f"{side}_latency_p50_ms")
        p99 = getattr(summary, f"{side}_latency_p99_ms")
        if p99 is not None:
            label = "live" if side == "stable" else "shadow"
            rows.append((f"{label} latency p50 / p99 (ms)", f"{p50:.2f} / {p99:.2f}"))
    for measure, value in rows:
        table.add_row(measure, escape(str(value)))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``shadow`` command group to the top-level CLI."""
    shadow_app = typer.Typer(
        name="shadow",
        help="Compare a shadow version's answers with the live version's, from live traffic.",
        no_args_is_help=True,
    )

    @shadow_app.callback()
    def _shadow() -> None:
        """Compare a shadow version's answers with the live version's, from live traffic."""

    @shadow_app.command("compare")
    def compare_command(
        model: Annotated[str, typer.Option(help="Registered model name.")],
        stable: Annotated[
            str, typer.Option(help="The live version: a number or an alias (champion).")
        ],
        shadow: Annotated[
            str, typer.Option(help="The shadow version: a number or an alias (challenger).")
        ],
        prediction_log: Annotated[
            str,
            typer.Option(envvar=ServerEnv.PREDICTION_LOG, help="Prediction log base URL."),
        ],
        window: Annotated[
            str, typer.Option(help="How far back from --until to compare: 90m, 24h, 7d.")
        ] = "1h",
        until: Annotated[
            str | None,
            typer.Option(help="Window end (exclusive), ISO date/time (UTC). Default: now."),
        ] = None,
        tracking_uri: Annotated[
            str | None, typer.Option(envvar=TRACKING_URI_ENV, help="MLflow tracking URI.")
        ] = None,
        log_to_mlflow: Annotated[
            bool,
            typer.Option(
                help="Log the comparison as an MLflow run (metrics shadow.*) in the shadow "
                "version's experiment."
            ),
        ] = False,
        deployment: Annotated[
            str | None,
            typer.Option(
                help="NAMESPACE/NAME of the ModelDeployment: with --log-to-mlflow, tag the "
                "shadow version with the summary (shown in the ModelDeployment's status)."
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    ) -> None:
        """Join the requests both versions answered (same X-Request-ID) in the window and
        report the agreement rate (classification) or the differences (regression), and
        each version's latency for those requests."""
        from modelyard.pipelines.drift._sources import DataSourceError
        from modelyard.pipelines.shadow import compare, log_comparison

        console = Console(stderr=as_json)
        try:
            length = parse_window(window)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--window") from None
        try:
            end = datetime.fromisoformat(until) if until else datetime.now(UTC)
        except ValueError:
            raise typer.BadParameter(
                f"{until!r} is not an ISO date/time", param_hint="--until"
            ) from None
        end = end.replace(tzinfo=UTC) if end.tzinfo is None else end
        target = _deployment(deployment)
        if target is not None and not log_to_mlflow:
            raise typer.BadParameter(
                "--deployment goes with --log-to-mlflow", param_hint="--deployment"
            )
        if log_to_mlflow and not tracking_uri:
            raise typer.BadParameter(
                f"--log-to-mlflow needs --tracking-uri (or {TRACKING_URI_ENV})",
                param_hint="--tracking-uri",
            )
        stable_number = _version(tracking_uri, model, stable, "--stable")
        shadow_number = _version(tracking_uri, model, shadow, "--shadow")
        try:
            summary = compare(
                prediction_log, model, stable_number, shadow_number, end - length, end
            )
            if log_to_mlflow:
                assert tracking_uri is not None
                # MLflow prints links to stdout; keep stdout for --json.
                with contextlib.redirect_stdout(sys.stderr):
                    logged = log_comparison(summary, tracking_uri=tracking_uri, deployment=target)
                console.print(f"logged to MLflow run {logged.run_id}")
        except DataSourceError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(DriftExit.BAD_INPUT) from None
        if as_json:
            typer.echo(summary.model_dump_json(indent=2))
        else:
            _render(console, summary)
        if summary.status != "compared":
            console.print(
                f"no request answered by both v{stable_number} and v{shadow_number} "
                f"between {summary.window_start:%Y-%m-%d %H:%M} and "
                f"{summary.window_end:%Y-%m-%d %H:%M} UTC"
            )
            raise typer.Exit(DriftExit.NOT_CHECKED)

    app.add_typer(shadow_app, name="shadow")
