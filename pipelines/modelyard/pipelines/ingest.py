"""Ingestion steps: files, SQL databases and paginated HTTP JSON APIs into the lake.

Each step reads its source, checks rows against the declared schema, writes valid rows to
``{lake}/{dataset}/date=D/part-N.parquet`` (N is the fan-out partition index, 0 without
fan-out) and quarantined rows to ``{lake}/_quarantine/{dataset}/date=D/part-N.parquet``.
Rows are sorted by the declared columns before writing, so a rerun over the same source
rows writes byte-identical files whatever order the source returned them in.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any, Literal

import fsspec
import httpx
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from modelyard.pipelines.context import StepContext
from modelyard.pipelines.lake import QUARANTINE, Partition, remove_file, write_parquet_atomic
from modelyard.pipelines.schema import SourceSchema, check_schema

logger = logging.getLogger(__name__)


def write_to_lake(
    ctx: StepContext,
    dataset: str,
    raw: pd.DataFrame,
    schema: SourceSchema,
    date_column: str | None,
) -> dict[str, Any]:
    """Check ``raw`` against ``schema`` and write it to date partitions; return counts.

    With ``date_column`` each row goes to the partition of its date; without, all rows go
    to the run date's partition.
    """
    part = ctx.partition_index or 0
    checked = check_schema(raw, schema)
    valid = checked.valid
    if date_column is not None and date_column not in schema.names:
        raise ValueError(f"date_column {date_column!r} is not a declared column of {dataset}")
    if len(valid):
        valid = valid.sort_values(schema.names, kind="mergesort", na_position="last")
    if date_column is None:
        groups: dict[dt.date, pd.DataFrame] = {ctx.run_date: valid}
    else:
        days = pd.to_datetime(valid[date_column], utc=True).dt.date
        groups = {day: rows for day, rows in valid.groupby(days, sort=True)}
    partitions = []
    for day, rows in sorted(groups.items()):
        partition = Partition(ctx.lake, dataset, day)
        write_parquet_atomic(rows.reset_index(drop=True), partition.part_url(part))
        partitions.append(partition.url)
    quarantine = Partition(ctx.lake, f"{QUARANTINE}/{dataset}", ctx.run_date).part_url(part)
    if len(checked.quarantined):
        write_parquet_atomic(checked.quarantined, quarantine)
        logger.warning(
            "%s: %d row(s) quarantined to %s", dataset, len(checked.quarantined), quarantine
        )
    else:
        # A rerun that finds no bad rows must not leave an older run's quarantine behind.
        remove_file(quarantine)
    return {
        "dataset": dataset,
        "rows_read": len(raw),
        "rows_written": len(valid),
        "rows_quarantined": len(checked.quarantined),
        "partitions": partitions,
        "quarantine": [quarantine] if len(checked.quarantined) else [],
    }


# ------------------------------------------------------------------------------ files
def ingest_files(
    ctx: StepContext,
    dataset: str,
    paths: list[str],
    schema: SourceSchema,
    format: Literal["csv", "parquet"] = "csv",
    date_column: str | None = None,
) -> dict[str, Any]:
    """Ingest CSV or Parquet files (local paths, fsspec URLs, globs).

    With fan-out, partition ``i`` of ``n`` takes every n-th file of the sorted list.
    """
    files: list[str] = []
    for pattern in paths:
        fs, _ = fsspec.core.url_to_fs(pattern)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        for path in sorted(fs.glob(pattern)):
            files.append(path if protocol in {"file", "local"} else f"{protocol}://{path}")
    if not files:
        raise FileNotFoundError(f"no files match {', '.join(paths)}")
    mine = ctx.shard(sorted(files))
    frames = []
    for file in mine:
        with fsspec.open(file, "rb") as handle:
            if format == "csv":
                # Everything as text: the declared schema decides what a value means.
                frames.append(pd.read_csv(handle, dtype=str, keep_default_na=False))
            else:
                frames.append(pd.read_parquet(handle))
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=schema.names)
    result = write_to_lake(ctx, dataset, raw, schema, date_column)
    result["files"] = len(mine)
    return result


# -------------------------------------------------------------------------------- SQL
def ingest_sql(
    ctx: StepContext,
    dataset: str,
    url: str,
    query: str,
    schema: SourceSchema,
    date_column: str | None = None,
    query_parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ingest the result of ``query`` on the SQLAlchemy database ``url``.

    ``query`` may use bound parameters (``:since``); ``query_parameters`` gives them, and
    ``:run_date`` is always bound to the run date.
    """
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            raw = pd.read_sql_query(
                sqlalchemy.text(query),
                connection,
                params={"run_date": ctx.run_date, **(query_parameters or {})},
            )
    finally:
        engine.dispose()
    return write_to_lake(ctx, dataset, raw, schema, date_column)


# ------------------------------------------------------------------------------- HTTP
class Pagination(BaseModel):
    """How to get the next page of a JSON API.

    - ``page``: a page-number query parameter, from ``start``, until a page has no records;
    - ``cursor``: the response's ``cursor_field`` is sent back as ``param`` until it is null;
    - ``next_url``: the response's ``next_field`` is the next page's URL until it is null;
    - ``none``: one request.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    style: Literal["page", "cursor", "next_url", "none"] = "none"
    param: str = "page"
    start: int = 1
    size_param: str | None = None
    size: int = Field(default=100, ge=1)
    cursor_field: str = "next_cursor"
    next_field: str = "next"
    max_pages: int = Field(default=10_000, ge=1)


def _dig(document: Any, dotted: str) -> Any:
    for key in filter(None, dotted.split(".")):
        document = document.get(key) if isinstance(document, dict) else None
    return document


#: Headers that carry credentials: sent only to the source's own host.
_CREDENTIAL_HEADERS = re.compile(
    r"^(authorization|proxy-authorization|cookie)$|(api[-_]?key|token|secret|auth)", re.IGNORECASE
)


def headers_for(target: httpx.URL, first: httpx.URL, headers: dict[str, str]) -> dict[str, str]:
    """The headers a request to ``target`` carries: all of them on the source's own origin
    (scheme, host and port of the first URL); without credentials anywhere else, so a
    ``next`` link naming another host never receives them (as `requests` does on
    redirects)."""
    if (target.scheme, target.host, target.port) == (first.scheme, first.host, first.port):
        return dict(headers)
    return {k: v for k, v in headers.items() if not _CREDENTIAL_HEADERS.search(k)}


def fetch_json_records(
    url: str,
    records_path: str,
    pagination: Pagination,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout_seconds: float = 30.0,
) -> tuple[list[dict[str, Any]], int]:
    """All records of a paginated JSON API, and the number of pages read."""
    records: list[dict[str, Any]] = []
    query: dict[str, Any] = dict(params or {})
    if pagination.style == "page":
        query[pagination.param] = pagination.start
    if pagination.size_param:
        query[pagination.size_param] = pagination.size
    next_url: str | None = url
    pages = 0
    first = httpx.URL(url)
    transport = httpx.HTTPTransport(retries=3)
    with httpx.Client(transport=transport, timeout=timeout_seconds) as client:
        while next_url is not None:
            if pages >= pagination.max_pages:
                raise RuntimeError(f"{url}: more than {pagination.max_pages} pages; stopping")
            target = httpx.URL(next_url)
            if next_url == url and query:
                # Added to the source URL's own query (an API key in it stays).
                target = target.copy_merge_params(query)
            response = client.get(target, headers=headers_for(target, first, headers or {}))
            response.raise_for_status()
            document = response.json()
            page_records = document if records_path == "" else _dig(document, records_path)
            if not isinstance(page_records, list):
                raise ValueError(
                    f"{response.url}: {records_path or 'the body'} is not a list of records"
                )
            records.extend(page_records)
            pages += 1
            next_url = None
            if pagination.style == "page" and page_records:
                query[pagination.param] += 1
                next_url = url
            elif pagination.style == "cursor":
                cursor = _dig(document, pagination.cursor_field)
                if cursor:
                    query[pagination.param] = cursor
                    next_url = url
            elif pagination.style == "next_url":
                following = _dig(document, pagination.next_field)
                if following:
                    next_url = str(response.url.join(str(following)))
    return records, pages


def ingest_http(
    ctx: StepContext,
    dataset: str,
    url: str,
    schema: SourceSchema,
    records_path: str = "items",
    pagination: Pagination | None = None,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    date_column: str | None = None,
    timeout_seconds: float = 30.0,
) -> dict[str, Any]:
    """Ingest the records of a (paginated) HTTP JSON API."""
    records, pages = fetch_json_records(
        url, records_path, pagination or Pagination(), params, headers, timeout_seconds
    )
    raw = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=schema.names)
    for name in schema.names:
        # A key absent from a record is a null, checked like any other null.
        if name not in raw.columns and records:
            raw[name] = None
    result = write_to_lake(ctx, dataset, raw, schema, date_column)
    result["pages"] = pages
    return result
