"""File ingestion into the lake: schema checks, quarantine, atomic and idempotent writes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from modelyard.pipelines.context import RunSettings, StepContext
from modelyard.pipelines.ingest import ingest_files
from modelyard.pipelines.lake import Partition, list_partitions, read_partitions
from modelyard.pipelines.schema import ColumnSpec, SchemaMismatchError, SourceSchema, check_schema

SCHEMA = SourceSchema(
    columns=[
        ColumnSpec(name="id", type="integer", nullable=False),
        ColumnSpec(name="day", type="date", nullable=False),
        ColumnSpec(name="value", type="float"),
        ColumnSpec(name="active", type="boolean"),
        ColumnSpec(name="label", type="string"),
    ]
)
RUN_DATE = dt.date(2026, 5, 3)


def _context(tmp_path: Path, index: int | None = None, count: int | None = None) -> StepContext:
    return StepContext(
        pipeline="t",
        step="ingest",
        run_id="r",
        settings=RunSettings.resolve(home=tmp_path, run_date=RUN_DATE),
        partition_index=index,
        partition_count=count,
    )


def _write_sources(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "a.csv").write_text(
        "id,day,value,active,label,extra\n"
        "2,2026-05-01,1.5,true,x,ignored\n"
        "1,2026-05-01,,no,,ignored\n"
        "3,2026-05-02,abc,yes,y,ignored\n"  # value is not a float
        ",2026-05-02,2.0,true,z,ignored\n"  # id missing
    )
    (directory / "b.csv").write_text(
        "id,day,value,active,label,extra\n"
        "4,2026-05-02,4.25,0,w,\n"
        "5,not-a-date,1,1,v,\n"
        "6,2026-05-03,7,maybe,u,\n"
    )


def _files(lake: Path) -> dict[str, bytes]:
    return {str(p.relative_to(lake)): p.read_bytes() for p in sorted(lake.rglob("*.parquet"))}


def test_valid_rows_land_by_date_and_bad_rows_are_quarantined_with_reasons(
    tmp_path: Path,
) -> None:
    _write_sources(tmp_path / "in")
    result = ingest_files(
        _context(tmp_path),
        dataset="things",
        paths=[str(tmp_path / "in" / "*.csv")],
        schema=SCHEMA,
        date_column="day",
    )
    assert result["rows_read"] == 7
    assert result["rows_written"] == 3
    assert result["rows_quarantined"] == 4
    lake = tmp_path / "lake"
    assert [p.date.isoformat() for p in list_partitions(str(lake), "things")] == [
        "2026-05-01",
        "2026-05-02",
    ]
    day1 = pd.read_parquet(lake / "things/date=2026-05-01/part-0.parquet")
    assert day1["id"].tolist() == [1, 2]  # sorted, so reruns write the same bytes
    assert day1.columns.tolist() == ["id", "day", "value", "active", "label"]
    assert day1["value"].isna().tolist() == [True, False]
    quarantine = pd.read_parquet(lake / "_quarantine/things/date=2026-05-03/part-0.parquet")
    assert sorted(quarantine["_quarantine_reason"]) == [
        "active: 'maybe' is not boolean",
        "day: 'not-a-date' is not date",
        "id: null not allowed",
        "value: 'abc' is not float",
    ]
    # Every row is accounted for: landed or quarantined.
    assert result["rows_written"] + result["rows_quarantined"] == result["rows_read"]


def test_rerun_writes_byte_identical_files_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    _write_sources(tmp_path / "in")

    def ingest() -> dict[str, bytes]:
        ingest_files(
            _context(tmp_path),
            dataset="things",
            paths=[str(tmp_path / "in" / "*.csv")],
            schema=SCHEMA,
            date_column="day",
        )
        return _files(tmp_path / "lake")

    first = ingest()
    second = ingest()
    assert first == second
    assert not [p for p in (tmp_path / "lake").rglob("*") if p.name.endswith(".tmp")]


def test_parquet_source_without_date_column_goes_to_the_run_date(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pd.DataFrame(
        {
            "id": [1, 2],
            "day": ["2026-01-01", "2026-01-02"],
            "value": [0.5, None],
            "active": [True, False],
            "label": ["a", None],
        }
    ).to_parquet(source)
    result = ingest_files(
        _context(tmp_path), dataset="p", paths=[str(source)], schema=SCHEMA, format="parquet"
    )
    assert result["partitions"] == [str(tmp_path / "lake/p/date=2026-05-03")]
    frame = read_partitions([Partition(str(tmp_path / "lake"), "p", RUN_DATE)])
    assert frame["id"].tolist() == [1, 2]


def test_fan_out_partitions_split_the_files_and_write_their_own_part(tmp_path: Path) -> None:
    _write_sources(tmp_path / "in")
    results = [
        ingest_files(
            _context(tmp_path, index, 2),
            dataset="things",
            paths=[str(tmp_path / "in" / "*.csv")],
            schema=SCHEMA,
            date_column="day",
        )
        for index in (0, 1)
    ]
    assert [r["files"] for r in results] == [1, 1]
    day2 = tmp_path / "lake/things/date=2026-05-02"
    assert sorted(p.name for p in day2.iterdir()) == ["part-1.parquet"]
    quarantine = tmp_path / "lake/_quarantine/things/date=2026-05-03"
    assert sorted(p.name for p in quarantine.iterdir()) == ["part-0.parquet", "part-1.parquet"]
    everything = read_partitions(list_partitions(str(tmp_path / "lake"), "things"))
    assert sorted(everything["id"]) == [1, 2, 4]


def test_missing_declared_column_fails_the_source() -> None:
    frame = pd.DataFrame({"id": ["1"], "day": ["2026-01-01"]})
    with pytest.raises(SchemaMismatchError, match=r"declared column\(s\) value, active, label"):
        check_schema(frame, SCHEMA)


def test_no_matching_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no files match"):
        ingest_files(
            _context(tmp_path), dataset="x", paths=[str(tmp_path / "*.csv")], schema=SCHEMA
        )


def test_integers_with_fractions_are_quarantined() -> None:
    frame = pd.DataFrame(
        {
            "id": ["1", "2.5", "3.0"],
            "day": ["2026-01-01"] * 3,
            "value": ["1"] * 3,
            "active": ["t"] * 3,
            "label": ["a"] * 3,
        }
    )
    checked = check_schema(frame, SCHEMA)
    assert checked.valid["id"].tolist() == [1, 3]
    assert checked.quarantined["_quarantine_reason"].tolist() == ["id: '2.5' is not integer"]


def test_credentials_stay_on_the_source_host() -> None:
    import httpx

    from modelyard.pipelines.ingest import headers_for

    first = httpx.URL("https://api.example/v1/items")
    headers = {"Authorization": "Bearer t", "Cookie": "s=1", "X-Api-Key": "k", "Accept": "json"}
    assert headers_for(httpx.URL("https://api.example/v1/items?page=2"), first, headers) == headers
    for elsewhere in (
        "https://cdn.example/p2",
        "http://api.example/p2",
        "https://api.example:8443/p",
    ):
        assert headers_for(httpx.URL(elsewhere), first, headers) == {"Accept": "json"}


def _integer_frame(ids: list[object]) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "id": ids,
            "day": ["2026-01-01"] * n,
            "value": ["1"] * n,
            "active": ["t"] * n,
            "label": ["a"] * n,
        }
    )


@pytest.mark.parametrize(
    ("ids", "kept", "bad"),
    [
        # Text, as CSV delivers it: exact integers up to int64, nothing beyond.
        (
            ["1", "inf", "-inf", "1e30", "9007199254740993", "9223372036854775808", "nan", "7"],
            [1, 9007199254740993, 7],
            ["'inf'", "'-inf'", "'1e30'", "'9223372036854775808'", "'nan'"],
        ),
        # Floats, as Parquet or JSON deliver them: beyond 2**53 a float is not exact.
        (
            [1.0, float("inf"), 1e30, 2.0**53 + 2, 2.0**53, -3.0],
            [1, 2**53, -3],
            ["inf", "1e+30", "9007199254740994.0"],
        ),
        # Python integers of any size in an object column.
        (
            [2**63, 5, -(2**63) - 1, 2**63 - 1],
            [5, 2**63 - 1],
            ["9223372036854775808", "-9223372036854775809"],
        ),
    ],
)
def test_integers_out_of_range_are_quarantined_not_raised(
    ids: list[object], kept: list[int], bad: list[str]
) -> None:
    checked = check_schema(_integer_frame(ids), SCHEMA)
    assert checked.valid["id"].tolist() == kept
    assert checked.valid["id"].dtype == "Int64"
    assert checked.quarantined["_quarantine_reason"].tolist() == [
        f"id: {value} is not integer" for value in bad
    ]


def test_an_unsigned_column_beyond_int64_is_quarantined() -> None:
    frame = _integer_frame([1, 2**64 - 1])
    frame["id"] = frame["id"].astype("uint64")
    checked = check_schema(frame, SCHEMA)
    assert checked.valid["id"].tolist() == [1]
    assert checked.quarantined["_quarantine_reason"].tolist() == [
        "id: 18446744073709551615 is not integer"
    ]
