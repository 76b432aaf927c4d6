"""Drift check benchmark: modelyard's drift check vs Evidently's DataDriftPreset.

Same generated data for both (20 numerical + 5 categorical columns, drift injected into
three known columns, 200k reference rows); each measurement runs in its own subprocess, so
peak memory (max RSS) belongs to that one run. Both sides read the same Parquet files:
modelyard streams them within ``--memory-budget`` (``open_data``), Evidently reads them
whole into pandas, as it must. Evidently runs only up to ``--evidently-max-rows``.

    .venv/bin/python benchmarks/drift_bench.py --rows 1000000 3000000 10000000 --repeat 3 \
        --evidently-repeat 1 --markdown

``--markdown`` prints the table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

NUMERICAL = 20
CATEGORICAL = 5
REFERENCE_ROWS = 200_000
# num_3: mean shift of 0.3 sd; num_11: sd x 1.5; cat_2: one category's share moves.
DRIFTED = ["num_3", "num_11", "cat_2"]
CATEGORIES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
# Rows generated and written at a time (the benchmark's own memory stays small at 10M rows).
CHUNK_ROWS = 1_000_000


def generate(rows: int, seed: int, drift: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {}
    for i in range(NUMERICAL):
        loc, scale = float(i), 1.0 + i / 10
        if drift and f"num_{i}" == "num_3":
            loc += 0.3 * scale
        if drift and f"num_{i}" == "num_11":
            scale *= 1.5
        data[f"num_{i}"] = rng.normal(loc, scale, rows)
    for i in range(CATEGORICAL):
        shares = np.array([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])
        if drift and f"cat_{i}" == "cat_2":
            shares = np.array([0.15, 0.25, 0.2, 0.12, 0.08, 0.20])
        data[f"cat_{i}"] = np.asarray(CATEGORIES, dtype=object)[
            rng.choice(len(CATEGORIES), rows, p=shares / shares.sum())
        ]
    return pd.DataFrame(data)


def write(path: Path, rows: int, seed: int, drift: bool) -> None:
    """``rows`` generated rows written to one Parquet file, a chunk (row group) at a time."""
    writer: pq.ParquetWriter | None = None
    try:
        for number, start in enumerate(range(0, rows, CHUNK_ROWS)):
            chunk = generate(min(CHUNK_ROWS, rows - start), seed * 1_000 + number, drift)
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _cpu_seconds() -> float:
    # CPU time (user + system, all threads) is what a busy machine distorts least.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_ours(reference: str, current: str, budget: str) -> dict[str, object]:
    from modelyard.core.contracts import parse_memory
    from modelyard.pipelines.drift import Computation, check_drift, open_data

    start, cpu = time.perf_counter(), _cpu_seconds()
    summary = check_drift(
        open_data(reference), open_data(current), memory_budget=parse_memory(budget)
    )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu_seconds() - cpu,
        "drifted": sorted(summary.drifted_columns),
        "on_disk": sum(c.computation is Computation.EXTERNAL_SORT for c in summary.columns),
    }


def run_evidently(reference: str, current: str, budget: str) -> dict[str, object]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    start, cpu = time.perf_counter(), _cpu_seconds()
    ref = pd.read_parquet(reference)
    cur = pd.read_parquet(current)
    snapshot = Report([DataDriftPreset()], include_tests=True).run(cur, ref)
    drifted = sorted(
        t["metric_config"]["params"]["column"]
        for t in snapshot.dict()["tests"]
        if t["id"] == "drift" and t["status"] == "FAIL"
    )
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu, "drifted": drifted}


def _child(side: str, reference: str, current: str, budget: str) -> None:
    run = run_ours if side == "ours" else run_evidently
    result = run(reference, current, budget)
    # This process's high-water resident memory (KiB). Not ru_maxrss: a child's starts from
    # its forking parent's, which here holds generated data.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    result["peak_mib"] = int(status["VmHWM"].split()[0]) / 1024
    sys.stdout.write(json.dumps(result) + "\n")


def _measure(side: str, reference: Path, current: Path, budget: str) -> dict[str, Any]:
    # Other work on the machine slows both sides alike; record it next to the numbers.
    load = os.getloadavg()[0]
    out = subprocess.run(
        [sys.executable, __file__, "--child", side, str(reference), str(current), budget],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = load
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3, help="runs of our check per size")
    parser.add_argument("--evidently-repeat", type=int, default=1)
    parser.add_argument(
        "--evidently-max-rows",
        type=int,
        default=3_000_000,
        help="largest current window Evidently is run on (it holds the data whole, ~5 GB at 3M)",
    )
    parser.add_argument(
        "--memory-budget", default="512Mi", help="modelyard's --memory-budget (its default)"
    )
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("SIDE", "REFERENCE", "CURRENT", "BUDGET"))
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    rows_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        reference = Path(tmp) / "reference.parquet"
        write(reference, REFERENCE_ROWS, seed=1, drift=False)
        for rows in args.rows:
            current = Path(tmp) / f"current-{rows}.parquet"
            write(current, rows, seed=2, drift=True)
            evidently_repeat = args.evidently_repeat if rows <= args.evidently_max_rows else 0
            for side, repeat in (("ours", args.repeat), ("evidently", evidently_repeat)):
                if repeat == 0:
                    continue
                runs = [
                    _measure(side, reference, current, args.memory_budget) for _ in range(repeat)
                ]
                verdicts = {json.dumps(r["drifted"]) for r in runs}
                rows_out.append(
                    {
                        "rows": rows,
                        "side": side,
                        "runs": repeat,
                        "median_s": statistics.median(float(r["seconds"]) for r in runs),
                        "median_cpu_s": statistics.median(float(r["cpu_seconds"]) for r in runs),
                        "peak_mib": max(float(r["peak_mib"]) for r in runs),
                        "drifted": sorted(verdicts),
                        "load": statistics.median(float(r["load"]) for r in runs),
                        "on_disk": max(int(r.get("on_disk", 0)) for r in runs),
                    }
                )
                print(json.dumps(rows_out[-1]), file=sys.stderr, flush=True)

    if args.markdown:
        print_markdown(rows_out, args.memory_budget)


def print_markdown(rows_out: list[dict[str, Any]], budget: str) -> None:
    print(
        "| current rows | engine | runs | median wall time (s) | median CPU time (s) "
        "| peak RSS (MiB) | drifted columns | load avg |"
    )
    print("|---:|---|---:|---:|---:|---:|---|---:|")
    for r in rows_out:
        drifted = " / ".join(", ".join(json.loads(v)) for v in r["drifted"])
        engine = (
            f"modelyard (budget {budget}, {r['on_disk']} columns on disk)"
            if r["side"] == "ours"
            else "Evidently DataDriftPreset"
        )
        print(
            f"| {r['rows']:,} | {engine} | {r['runs']} | {r['median_s']:.2f} "
            f"| {r['median_cpu_s']:.2f} "
            f"| {r['peak_mib']:.0f} | {drifted} | {r['load']:.1f} |"
        )
    print()
    by_size: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows_out:
        by_size.setdefault(r["rows"], {})[r["side"]] = r
    for rows, sides in by_size.items():
        if "evidently" not in sides:
            continue
        ours, theirs = sides["ours"], sides["evidently"]
        same = "identical" if ours["drifted"] == theirs["drifted"] else "DIFFERENT"
        print(
            f"- {rows:,} rows: {theirs['median_s'] / ours['median_s']:.1f}x faster, "
            f"{theirs['median_cpu_s'] / ours['median_cpu_s']:.1f}x less CPU, "
            f"{theirs['peak_mib'] / ours['peak_mib']:.1f}x less peak memory; verdicts {same}"
        )
    print(f"\nexpected drifted columns: {', '.join(sorted(DRIFTED))}")


if __name__ == "__main__":
    main()
