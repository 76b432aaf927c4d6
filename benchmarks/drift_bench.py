"""Drift check benchmark: modelyard's drift check vs Evidently's DataDriftPreset.

Same generated data for both (20 numerical + 5 categorical columns, drift injected into
three known columns, 200k reference rows); each measurement runs in its own subprocess, so
peak memory (max RSS) belongs to that one run. Both sides read the same Parquet files.

    .venv/bin/python benchmarks/drift_bench.py --rows 100000 1000000 --repeat 5 \
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

NUMERICAL = 20
CATEGORICAL = 5
REFERENCE_ROWS = 200_000
# num_3: mean shift of 0.3 sd; num_11: sd x 1.5; cat_2: one category's share moves.
DRIFTED = ["num_3", "num_11", "cat_2"]
CATEGORIES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]


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


def _cpu_seconds() -> float:
    # CPU time (user + system, all threads) is what a busy machine distorts least.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_ours(reference: str, current: str) -> dict[str, object]:
    from modelyard.pipelines.drift import check_drift, read_table

    start, cpu = time.perf_counter(), _cpu_seconds()
    summary = check_drift(read_table(reference), read_table(current))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu_seconds() - cpu,
        "drifted": sorted(summary.drifted_columns),
    }


def run_evidently(reference: str, current: str) -> dict[str, object]:
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


def _child(side: str, reference: str, current: str) -> None:
    result = run_ours(reference, current) if side == "ours" else run_evidently(reference, current)
    # ru_maxrss is in KiB on Linux.
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps(result) + "\n")


def _measure(side: str, reference: Path, current: Path) -> dict[str, Any]:
    # Other work on the machine slows both sides alike; record it next to the numbers.
    load = os.getloadavg()[0]
    out = subprocess.run(
        [sys.executable, __file__, "--child", side, str(reference), str(current)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = load
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=5, help="runs of our check per size")
    parser.add_argument("--evidently-repeat", type=int, default=1)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "REFERENCE", "CURRENT"))
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    rows_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        reference = Path(tmp) / "reference.parquet"
        generate(REFERENCE_ROWS, seed=1, drift=False).to_parquet(reference, index=False)
        for rows in args.rows:
            current = Path(tmp) / f"current-{rows}.parquet"
            generate(rows, seed=2, drift=True).to_parquet(current, index=False)
            for side, repeat in (("ours", args.repeat), ("evidently", args.evidently_repeat)):
                if repeat == 0:
                    continue
                runs = [_measure(side, reference, current) for _ in range(repeat)]
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
                    }
                )
                print(json.dumps(rows_out[-1]), file=sys.stderr, flush=True)

    if args.markdown:
        print(
            "| current rows | engine | runs | median wall time (s) | median CPU time (s) "
            "| peak RSS (MiB) | drifted columns | load avg |"
        )
        print("|---:|---|---:|---:|---:|---:|---|---:|")
        for r in rows_out:
            drifted = " / ".join(", ".join(json.loads(v)) for v in r["drifted"])
            engine = "modelyard" if r["side"] == "ours" else "Evidently DataDriftPreset"
            print(
                f"| {r['rows']:,} | {engine} | {r['runs']} | {r['median_s']:.2f} "
                f"| {r['median_cpu_s']:.2f} "
                f"| {r['peak_mib']:.0f} | {drifted} | {r['load']:.1f} |"
            )
        print(f"\nexpected drifted columns: {', '.join(sorted(DRIFTED))}")


if __name__ == "__main__":
    main()
