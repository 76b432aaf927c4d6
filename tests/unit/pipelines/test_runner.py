"""The runner: parallel steps, timeouts that stop a hung step, retries with backoff,
dependents of a failure not started, and what `modelyard pipeline run` shows."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelyard.pipelines.context import RunSettings
from modelyard.pipelines.definition import parse_pipeline
from modelyard.pipelines.runner import PipelineRunResult, StepStatus, run_pipeline

STEPS = "modelyard.pipelines.samples.control_steps"
MODELYARD = str(Path(sys.executable).parent / "modelyard")


def _run(tmp_path: Path, steps: str, header: str = "") -> PipelineRunResult:
    text = f"name: demo\n{header}steps:\n{steps}"
    pipeline = parse_pipeline(text, {"markers": str(tmp_path / "markers")})
    settings = RunSettings.resolve(home=tmp_path / "home", run_date=dt.date(2026, 1, 2))
    return run_pipeline(pipeline, settings)


def _markers(tmp_path: Path) -> set[str]:
    directory = tmp_path / "markers"
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def test_hung_step_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _run(
        tmp_path,
        f"""
  - name: stuck
    function: {STEPS}:hang
    timeout_seconds: 1.5
    parameters: {{marker_dir: "${{markers}}"}}
""",
    )
    elapsed = time.monotonic() - started
    stuck = result.steps["stuck"]
    assert stuck.status is StepStatus.TIMED_OUT
    assert stuck.error == "timed out after 1.5s and was stopped"
    assert not result.succeeded
    assert elapsed < 15, "the runner waited for the hung step instead of stopping it"
    assert _markers(tmp_path) == {"stuck.started.1", "stuck.pid"}


def test_a_result_larger_than_the_pipe_buffer_comes_back(tmp_path: Path) -> None:
    """A child blocks sending a result larger than the pipe's buffer (64 KiB) until the
    parent reads it: waiting for the child's exit first deadlocked until the timeout."""
    result = _run(
        tmp_path,
        f"""
  - name: big
    function: {STEPS}:large_result
    timeout_seconds: 120
    parameters: {{marker_dir: "${{markers}}", items: 20000}}
  - name: big-fanned
    function: {STEPS}:large_result
    timeout_seconds: 120
    fan_out: {{completions: 3, parallelism: 3}}
    parameters: {{marker_dir: "${{markers}}", items: 3000}}
  - name: after
    function: {STEPS}:record
    depends_on: [big, big-fanned]
    parameters: {{marker_dir: "${{markers}}"}}
""",
    )
    assert result.succeeded, {n: s.error for n, s in result.steps.items()}
    assert len(result.steps["big"].result["partitions"]) == 20000
    assert len(result.steps["big-fanned"].result["partitions"]) == 9000
    assert result.steps["big"].attempts == 1


def test_timed_out_step_is_retried_then_fails(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        f"""
  - name: stuck
    function: {STEPS}:hang
    timeout_seconds: 1
    retries: {{attempts: 2, backoff_seconds: 0.1}}
    parameters: {{marker_dir: "${{markers}}"}}
""",
    )
    assert result.steps["stuck"].status is StepStatus.TIMED_OUT
    assert result.steps["stuck"].attempts == 2
    assert _markers(tmp_path) == {"stuck.started.1", "stuck.started.2", "stuck.pid"}


def test_failed_step_is_retried_with_backoff(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        f"""
  - name: flaky
    function: {STEPS}:flaky
    retries: {{attempts: 3, backoff_seconds: 0.5, backoff_factor: 2}}
    parameters: {{marker_dir: "${{markers}}", failures: 2}}
""",
    )
    flaky = result.steps["flaky"]
    assert flaky.status is StepStatus.SUCCEEDED
    assert flaky.attempts == 3
    assert flaky.result == {"succeeded_on_attempt": 3}
    starts = [float((tmp_path / "markers" / f"flaky.started.{n}").read_text()) for n in (1, 2, 3)]
    # Backoff 0.5s then 1.0s between attempts.
    assert starts[1] - starts[0] >= 0.5
    assert starts[2] - starts[1] >= 1.0


def test_dependents_of_a_failed_step_are_not_started(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        f"""
  - {{name: broken, function: "{STEPS}:fail", parameters: {{marker_dir: "${{markers}}"}}}}
  - name: independent
    function: {STEPS}:record
    parameters: {{marker_dir: "${{markers}}"}}
  - name: child
    function: {STEPS}:record
    depends_on: [broken]
    parameters: {{marker_dir: "${{markers}}"}}
  - name: grandchild
    function: {STEPS}:record
    depends_on: [child, independent]
    parameters: {{marker_dir: "${{markers}}"}}
""",
    )
    statuses = {name: step.status for name, step in result.steps.items()}
    assert statuses == {
        "broken": StepStatus.FAILED,
        "independent": StepStatus.SUCCEEDED,
        "child": StepStatus.SKIPPED,
        "grandchild": StepStatus.SKIPPED,
    }
    assert result.steps["broken"].error == "RuntimeError: this step always fails"
    assert result.steps["child"].error == "not started: broken failed"
    assert result.steps["grandchild"].error == "not started: child skipped"
    assert _markers(tmp_path) == {
        "broken.started.1",
        "independent.started.1",
        "independent.done.1",
    }


def test_independent_steps_run_in_parallel(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        f"""
  - {{name: a, function: "{STEPS}:record", parameters: {{marker_dir: "${{markers}}", seconds: 2}}}}
  - {{name: b, function: "{STEPS}:record", parameters: {{marker_dir: "${{markers}}", seconds: 2}}}}
  - name: after
    function: {STEPS}:record
    depends_on: [a, b]
    parameters: {{marker_dir: "${{markers}}"}}
""",
    )
    assert result.succeeded
    marker = tmp_path / "markers"
    a_started, a_done = (float((marker / f"a.{w}.1").read_text()) for w in ("started", "done"))
    b_started, b_done = (float((marker / f"b.{w}.1").read_text()) for w in ("started", "done"))
    assert b_started < a_done and a_started < b_done, "a and b did not overlap"
    after_started = float((marker / "after.started.1").read_text())
    assert after_started >= max(a_done, b_done)


def test_fan_out_runs_every_partition_index(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        f"""
  - name: shards
    function: {STEPS}:record
    fan_out: {{completions: 4, parallelism: 2}}
    parameters: {{marker_dir: "${{markers}}"}}
""",
    )
    assert result.steps["shards"].status is StepStatus.SUCCEEDED
    assert result.steps["shards"].result["rows_written"] == 4
    assert {m for m in _markers(tmp_path) if ".done." in m} == {
        f"shards-{i}.done.1" for i in range(4)
    }


def test_pipeline_timeout_stops_the_run(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        f"""
  - {{name: slow, function: "{STEPS}:hang", parameters: {{marker_dir: "${{markers}}"}}}}
  - name: next
    function: {STEPS}:record
    depends_on: [slow]
    parameters: {{marker_dir: "${{markers}}"}}
""",
        header="timeout_seconds: 1.5\n",
    )
    assert result.steps["slow"].status is StepStatus.TIMED_OUT
    assert result.steps["next"].status is StepStatus.SKIPPED
    assert result.steps["slow"].error == "the pipeline's timeout (1.5s) passed"


def test_cli_run_shows_summary_and_exits_non_zero_on_failure(tmp_path: Path) -> None:
    file = tmp_path / "pipeline.yaml"
    markers = tmp_path / "markers"
    file.write_text(
        f"""
name: demo
steps:
  - {{name: first, function: "{STEPS}:record", parameters: {{marker_dir: "{markers}"}}}}
  - name: flaky
    function: {STEPS}:flaky
    depends_on: [first]
    retries: {{attempts: 2, backoff_seconds: 0}}
    parameters: {{marker_dir: "{markers}"}}
  - name: stuck
    function: {STEPS}:hang
    timeout_seconds: 1
    parameters: {{marker_dir: "{markers}"}}
  - name: after-stuck
    function: {STEPS}:record
    depends_on: [stuck]
    parameters: {{marker_dir: "{markers}"}}
"""
    )
    summary = tmp_path / "summary.json"
    completed = subprocess.run(
        [
            MODELYARD,
            "pipeline",
            "run",
            str(file),
            "--home",
            str(tmp_path / "home"),
            "--summary-json",
            str(summary),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(Path(sys.executable).parent), "COLUMNS": "200"},
        check=False,
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    out = completed.stdout
    assert "pipeline demo failed" in out
    for line in ("first", "flaky", "stuck", "after-stuck"):
        assert line in out
    assert "timed out after 1s and was stopped" in out
    assert "not started: stuck timed out" in out
    report = json.loads(summary.read_text())
    assert report["succeeded"] is False
    assert report["steps"]["flaky"] == {
        "status": "succeeded",
        "attempts": 2,
        "duration_seconds": report["steps"]["flaky"]["duration_seconds"],
        "error": None,
        "result": {"succeeded_on_attempt": 2},
    }
    assert report["steps"]["after-stuck"]["status"] == "skipped"


def test_cli_reports_a_definition_error_with_exit_code_2(tmp_path: Path) -> None:
    file = tmp_path / "cyclic.yaml"
    file.write_text(
        f"""
name: demo
steps:
  - {{name: a, function: "{STEPS}:record", depends_on: [b], parameters: {{marker_dir: /tmp}}}}
  - {{name: b, function: "{STEPS}:record", depends_on: [a], parameters: {{marker_dir: /tmp}}}}
"""
    )
    completed = subprocess.run(
        [MODELYARD, "pipeline", "validate", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(Path(sys.executable).parent), "COLUMNS": "200"},
        check=False,
    )
    assert completed.returncode == 2
    assert "cyclic.yaml: dependency cycle: " in completed.stderr
    assert not (tmp_path / "markers").exists()


@pytest.mark.parametrize("attempt", [2, 3, 4])
def test_backoff_grows_and_is_capped(attempt: int) -> None:
    from modelyard.pipelines.definition import RetryPolicy

    policy = RetryPolicy(attempts=5, backoff_seconds=2, backoff_factor=3, max_backoff_seconds=10)
    assert policy.delay_before(attempt) == {2: 2.0, 3: 6.0, 4: 10.0}[attempt]


def test_cli_step_runs_one_partition_as_an_indexed_job_pod_would(tmp_path: Path) -> None:
    file = tmp_path / "pipeline.yaml"
    markers = tmp_path / "markers"
    file.write_text(
        f"""
name: demo
steps:
  - {{name: first, function: "{STEPS}:record", parameters: {{marker_dir: "{markers}"}}}}
  - name: shards
    function: {STEPS}:record
    depends_on: [first]
    fan_out: {{completions: 3, parallelism: 3}}
    parameters: {{marker_dir: "{markers}"}}
"""
    )
    completed = subprocess.run(
        [MODELYARD, "pipeline", "run", str(file), "--step", "shards", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(Path(sys.executable).parent), "JOB_COMPLETION_INDEX": "1"},
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert _markers(tmp_path) == {"shards-1.started.1", "shards-1.done.1"}


def test_stopping_the_runner_stops_its_running_steps(tmp_path: Path) -> None:
    file = tmp_path / "pipeline.yaml"
    markers = tmp_path / "markers"
    file.write_text(
        f"""
name: demo
steps:
  - {{name: stuck, function: "{STEPS}:hang", parameters: {{marker_dir: "{markers}"}}}}
"""
    )
    runner = subprocess.Popen(
        [MODELYARD, "pipeline", "run", str(file), "--home", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": str(Path(sys.executable).parent)},
    )
    try:
        pid_file = markers / "stuck.pid"
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the step never started"
            time.sleep(0.1)
        step_pid = int(pid_file.read_text())
        runner.terminate()
        assert runner.wait(timeout=30) != 0
    finally:
        runner.kill()
    deadline = time.monotonic() + 10
    while _alive(step_pid):
        assert time.monotonic() < deadline, f"step process {step_pid} outlived the runner"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent (the forkserver) has yet to reap it.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"
