"""Ingestion from a real PostgreSQL server and a real HTTP JSON API into the lake."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
import sqlalchemy

from modelyard.pipelines.context import RunSettings, StepContext
from modelyard.pipelines.ingest import Pagination, ingest_http, ingest_sql
from modelyard.pipelines.schema import ColumnSpec, SourceSchema

if TYPE_CHECKING:
    from integration.pipelines.conftest import JsonApi, Postgres

pytestmark = pytest.mark.integration

RUN_DATE = dt.date(2026, 3, 4)
ORDERS_SCHEMA = SourceSchema(
    columns=[
        ColumnSpec(name="order_id", type="integer", nullable=False),
        ColumnSpec(name="customer", type="string", nullable=False),
        ColumnSpec(name="amount", type="float", nullable=False),
        ColumnSpec(name="ordered_at", type="timestamp", nullable=False),
    ]
)


def _context(tmp_path: Path, step: str = "ingest") -> StepContext:
    settings = RunSettings.resolve(home=tmp_path, run_date=RUN_DATE)
    return StepContext(pipeline="test", step=step, run_id="r1", settings=settings)


def _lake_files(lake: Path) -> dict[str, bytes]:
    return {str(p.relative_to(lake)): p.read_bytes() for p in sorted(lake.rglob("*.parquet"))}


@pytest.fixture
def orders_table(postgres: Postgres) -> str:
    engine = sqlalchemy.create_engine(postgres.url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP TABLE IF EXISTS orders"))
        connection.execute(
            sqlalchemy.text(
                "CREATE TABLE orders (order_id integer, customer text, amount text, "
                "ordered_at timestamptz)"
            )
        )
        connection.execute(
            sqlalchemy.text(
                "INSERT INTO orders VALUES "
                "(1, 'C1', '10.5', '2026-03-01 09:00+00'),"
                "(2, 'C2', '20.25', '2026-03-01 10:00+00'),"
                "(3, 'C1', 'n/a', '2026-03-02 11:00+00'),"  # unreadable amount
                "(4, NULL, '7', '2026-03-02 12:00+00'),"  # missing customer
                "(5, 'C3', '99', '2026-03-03 08:30+00')"
            )
        )
    engine.dispose()
    return postgres.url


def test_postgres_rows_land_in_date_partitions_and_bad_rows_are_quarantined(
    orders_table: str, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    result = ingest_sql(
        ctx,
        dataset="orders",
        url=orders_table,
        query="SELECT * FROM orders WHERE ordered_at::date <= :run_date",
        schema=ORDERS_SCHEMA,
        date_column="ordered_at",
    )
    assert (result["rows_read"], result["rows_written"], result["rows_quarantined"]) == (5, 3, 2)
    lake = tmp_path / "lake"
    day1 = pd.read_parquet(lake / "orders/date=2026-03-01/part-0.parquet")
    assert day1["order_id"].tolist() == [1, 2]
    assert day1["amount"].tolist() == [10.5, 20.25]
    assert pd.read_parquet(lake / "orders/date=2026-03-03/part-0.parquet")["order_id"].tolist() == [
        5
    ]
    quarantined = pd.read_parquet(lake / "_quarantine/orders/date=2026-03-04/part-0.parquet")
    reasons = dict(zip(quarantined["order_id"], quarantined["_quarantine_reason"], strict=True))
    assert reasons == {"3": "amount: 'n/a' is not float", "4": "customer: null not allowed"}


def test_postgres_rerun_rewrites_identical_partitions(orders_table: str, tmp_path: Path) -> None:
    def ingest() -> dict[str, bytes]:
        ingest_sql(
            _context(tmp_path),
            dataset="orders",
            url=orders_table,
            # No ORDER BY on purpose: the lake must not depend on the database's row order.
            query="SELECT * FROM orders",
            schema=ORDERS_SCHEMA,
            date_column="ordered_at",
        )
        return _lake_files(tmp_path / "lake")

    first = ingest()
    engine = sqlalchemy.create_engine(orders_table)
    # An UPDATE writes a new row version at the end of the heap: same rows, new order.
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text("UPDATE orders SET customer = customer WHERE order_id = 1")
        )
    engine.dispose()
    second = ingest()
    assert first == second
    # 03-01 and 03-03 (both rows of 03-02 are bad) and the quarantine.
    assert len(first) == 3


def test_sqlite_ingestion_with_bound_parameters(tmp_path: Path) -> None:
    database = tmp_path / "shop.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{database}")
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text("CREATE TABLE orders (order_id, customer, amount, ordered_at)")
        )
        connection.execute(
            sqlalchemy.text(
                "INSERT INTO orders VALUES (1, 'C1', 3.5, '2026-03-01T00:00:00Z'), "
                "(2, 'C2', 'lots', '2026-03-01T01:00:00Z'), (3, 'C3', 4, '2026-03-09T00:00:00Z')"
            )
        )
    engine.dispose()
    result = ingest_sql(
        _context(tmp_path),
        dataset="orders",
        url=f"sqlite:///{database}",
        query="SELECT * FROM orders WHERE ordered_at < :until",
        query_parameters={"until": "2026-03-05"},
        schema=ORDERS_SCHEMA,
        date_column="ordered_at",
    )
    assert (result["rows_written"], result["rows_quarantined"]) == (1, 1)
    assert result["partitions"] == [str(tmp_path / "lake/orders/date=2026-03-01")]


@pytest.mark.parametrize(
    ("path", "records_path", "pagination", "pages"),
    [
        ("/orders", "data.orders", Pagination(style="page", size_param="per_page", size=10), 4),
        ("/orders-cursor", "items", Pagination(style="cursor", param="cursor"), 5),
        ("/orders-linked", "items", Pagination(style="next_url", next_field="links.next"), 5),
    ],
)
def test_http_api_pages_are_all_read(
    json_api: JsonApi,
    tmp_path: Path,
    path: str,
    records_path: str,
    pagination: Pagination,
    pages: int,
) -> None:
    result = ingest_http(
        _context(tmp_path),
        dataset="orders",
        url=json_api.url + path,
        records_path=records_path,
        pagination=pagination,
        schema=ORDERS_SCHEMA,
        date_column="ordered_at",
    )
    assert result["pages"] == pages
    assert (result["rows_read"], result["rows_written"], result["rows_quarantined"]) == (23, 21, 2)
    lake = tmp_path / "lake"
    landed = pd.concat(pd.read_parquet(p) for p in sorted(lake.glob("orders/date=*/*.parquet")))
    assert sorted(landed["order_id"]) == [i for i in range(23) if i not in (7, 15)]
    quarantined = pd.read_parquet(lake / "_quarantine/orders/date=2026-03-04/part-0.parquet")
    assert sorted(quarantined["_quarantine_reason"]) == [
        "amount: 'twelve' is not float",
        "customer: null not allowed",
    ]


def test_http_rerun_is_idempotent_and_clears_stale_quarantine(
    json_api: JsonApi, tmp_path: Path
) -> None:
    def ingest() -> dict[str, bytes]:
        ingest_http(
            _context(tmp_path),
            dataset="orders",
            url=json_api.url + "/orders-cursor",
            records_path="items",
            pagination=Pagination(style="cursor", param="cursor"),
            schema=ORDERS_SCHEMA,
            date_column="ordered_at",
        )
        return _lake_files(tmp_path / "lake")

    first = ingest()
    assert ingest() == first
    # The feed is fixed upstream: the rerun must not keep the old quarantine file.
    json_api.records[7]["amount"] = 12.0
    json_api.records[15]["customer"] = "C0"
    fixed = ingest()
    assert not any(name.startswith("_quarantine") for name in fixed)
    assert sum(len(pd.read_parquet(tmp_path / "lake" / n)) for n in fixed) == 23
