"""Loading a pipeline file: every mistake is reported before anything runs, by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.pipelines.definition import (
    FanOut,
    PipelineDefinitionError,
    load_pipeline,
    parse_pipeline,
)
from modelyard.pipelines.ingest import Pagination
from modelyard.pipelines.schema import SourceSchema

REPO = Path(__file__).resolve().parents[3]
RECORD = "modelyard.pipelines.samples.control_steps:record"


def _pipeline(steps: str, header: str = "name: demo\n") -> str:
    return header + "steps:\n" + steps


def test_cycle_is_named() -> None:
    text = _pipeline(
        f"""
  - {{name: a, function: "{RECORD}", parameters: {{marker_dir: /tmp}}}}
  - {{name: b, function: "{RECORD}", depends_on: [a, d], parameters: {{marker_dir: /tmp}}}}
  - {{name: c, function: "{RECORD}", depends_on: [b], parameters: {{marker_dir: /tmp}}}}
  - {{name: d, function: "{RECORD}", depends_on: [c], parameters: {{marker_dir: /tmp}}}}
"""
    )
    with pytest.raises(
        PipelineDefinitionError,
        match=r"dependency cycle: (b -> c -> d -> b|c -> d -> b -> c|d -> b -> c -> d)",
    ):
        parse_pipeline(text)


def test_self_dependency() -> None:
    text = _pipeline(f'  - {{name: a, function: "{RECORD}", depends_on: [a]}}\n')
    with pytest.raises(PipelineDefinitionError, match="step 'a' depends on itself"):
        parse_pipeline(text)


def test_unknown_dependency() -> None:
    text = _pipeline(
        f'  - {{name: a, function: "{RECORD}", depends_on: [ingest], '
        "parameters: {marker_dir: /tmp}}\n"
    )
    with pytest.raises(PipelineDefinitionError, match="step 'a' depends on unknown step 'ingest'"):
        parse_pipeline(text)


def test_duplicate_step_names() -> None:
    step = f'  - {{name: a, function: "{RECORD}", parameters: {{marker_dir: /tmp}}}}\n'
    with pytest.raises(PipelineDefinitionError, match="duplicate step names: a"):
        parse_pipeline(_pipeline(step + step))


def test_missing_parameter_names_step_and_parameter() -> None:
    text = _pipeline(f'  - {{name: a, function: "{RECORD}"}}\n')
    with pytest.raises(
        PipelineDefinitionError, match="step 'a': missing required parameter.s. marker_dir"
    ):
        parse_pipeline(text)


def test_unknown_parameter_is_a_typo() -> None:
    text = _pipeline(
        f'  - {{name: a, function: "{RECORD}", parameters: {{marker_dir: /tmp, secs: 3}}}}\n'
    )
    with pytest.raises(
        PipelineDefinitionError, match=r"unknown parameter\(s\) secs .*takes: marker_dir, seconds"
    ):
        parse_pipeline(text)


def test_parameter_types_are_checked_at_load_time() -> None:
    text = _pipeline(
        """
  - name: ingest
    function: modelyard.pipelines.ingest:ingest_files
    parameters:
      dataset: orders
      paths: [/tmp/x.csv]
      schema: {columns: [{name: id, type: int64}]}
"""
    )
    with pytest.raises(
        PipelineDefinitionError, match=r"parameter 'schema' is invalid: columns\.0\.type"
    ):
        parse_pipeline(text)


def test_parameters_become_typed_models() -> None:
    text = _pipeline(
        """
  - name: ingest
    function: modelyard.pipelines.ingest:ingest_http
    parameters:
      dataset: orders
      url: http://example.invalid/orders
      pagination: {style: cursor, param: after}
      schema: {columns: [{name: id, type: integer, nullable: false}]}
"""
    )
    pipeline = parse_pipeline(text)
    arguments = pipeline.arguments["ingest"]
    assert isinstance(arguments["schema"], SourceSchema)
    assert arguments["pagination"] == Pagination(style="cursor", param="after")


@pytest.mark.parametrize(
    ("schedule", "accepted"),
    [
        ("30 2 * * *", True),
        ("*/15 * * * 1-5", True),
        ("@daily", True),
        ("61 * * * *", False),
        ("0 0 * * * *", False),  # seconds field: croniter takes it, Kubernetes does not
        ("every day", False),
    ],
)
def test_schedule(schedule: str, accepted: bool) -> None:
    text = _pipeline(
        f'  - {{name: a, function: "{RECORD}", parameters: {{marker_dir: /tmp}}}}\n',
        header=f'name: demo\nschedule: "{schedule}"\n',
    )
    if accepted:
        assert parse_pipeline(text).spec.schedule == schedule
    else:
        with pytest.raises(
            PipelineDefinitionError, match="schedule: .*is not a valid cron expression"
        ):
            parse_pipeline(text)


def test_unknown_function() -> None:
    text = _pipeline("  - {name: a, function: 'modelyard.pipelines.ingest:ingest_ftp'}\n")
    with pytest.raises(PipelineDefinitionError, match="has no callable 'ingest_ftp'"):
        parse_pipeline(text)


def test_unknown_field_is_reported_with_its_location() -> None:
    text = _pipeline(
        f'  - {{name: a, function: "{RECORD}", timeout: 5, parameters: {{marker_dir: /tmp}}}}\n'
    )
    with pytest.raises(
        PipelineDefinitionError, match=r"steps\.0\.timeout: Extra inputs are not permitted"
    ):
        parse_pipeline(text)


def test_pipeline_name_must_fit_a_cronjob() -> None:
    text = _pipeline(
        f'  - {{name: a, function: "{RECORD}", parameters: {{marker_dir: /tmp}}}}\n',
        header="name: Churn_Model\n",
    )
    with pytest.raises(PipelineDefinitionError, match="must be a DNS label"):
        parse_pipeline(text)


def test_placeholders_from_run_variables_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKERS", "/srv/markers")
    text = _pipeline(
        f"""
  - {{name: a, function: "{RECORD}", parameters: {{marker_dir: "${{MARKERS}}/${{date}}"}}}}
  - {{name: b, function: "{RECORD}", parameters: {{marker_dir: "${{UNSET_VAR:-/tmp/x}}"}}}}
"""
    )
    pipeline = parse_pipeline(text, {"date": "2026-01-02"})
    assert pipeline.arguments["a"]["marker_dir"] == "/srv/markers/2026-01-02"
    assert pipeline.arguments["b"]["marker_dir"] == "/tmp/x"
    with pytest.raises(PipelineDefinitionError, match=r"\$\{NOPE\} is neither a run variable"):
        parse_pipeline(
            _pipeline(
                f'  - {{name: a, function: "{RECORD}", parameters: {{marker_dir: "${{NOPE}}"}}}}\n'
            )
        )


def test_error_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "broken.yaml"
    file.write_text("name: demo\nsteps: []\n")
    with pytest.raises(
        PipelineDefinitionError, match=r"broken\.yaml: invalid pipeline:\n  steps: "
    ):
        load_pipeline(file)


def test_sample_pipelines_load() -> None:
    for sample in sorted((REPO / "pipelines" / "samples").glob("*.yaml")):
        pipeline = load_pipeline(sample, {"lake": "/l", "home": "/h", "date": "2026-01-01"})
        assert pipeline.order[0] == "generate"
        assert pipeline.order[-1] == "promote"


def test_a_step_has_fan_out_or_parallelism_not_both(tmp_path: Path) -> None:
    text = """
name: p
steps:
  - name: a
    function: modelyard.pipelines.samples.control_steps:record
    parallelism: 2
    fan_out: {completions: 2}
    parameters: {marker_dir: /tmp/x}
"""
    with pytest.raises(PipelineDefinitionError, match="either fan_out .* or parallelism"):
        parse_pipeline(text)
    workers = parse_pipeline(text.replace("    fan_out: {completions: 2}\n", ""))
    assert workers.step("a").indexes == FanOut(completions=2, parallelism=2)
