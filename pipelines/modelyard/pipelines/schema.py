"""Declared source schemas, and the split of incoming rows into valid and quarantined.

Every source declares its columns (name, type, nullability) in the pipeline YAML. A row
whose value cannot be read as the declared type, or is null where nulls are not allowed,
is not dropped: it goes to the quarantine with the reason, and the run summary counts it.
"""

from __future__ import annotations

import decimal
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

ColumnType = Literal["string", "integer", "float", "boolean", "date", "timestamp"]
REASON_COLUMN = "_quarantine_reason"

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Every integer up to this magnitude is exactly a float64; beyond, floats skip integers.
_EXACT_FLOAT = 2**53


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: ColumnType
    nullable: bool = True


class SourceSchema(BaseModel):
    """The columns a source must deliver. Columns not declared are not kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: list[ColumnSpec] = Field(min_length=1)

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]


class SchemaMismatchError(ValueError):
    """The source as a whole does not match (e.g. a declared column is missing)."""


@dataclass(frozen=True)
class SchemaCheck:
    valid: pd.DataFrame
    quarantined: pd.DataFrame


def _is_null(values: pd.Series) -> pd.Series:
    as_text = values.astype("string").str.strip()
    return values.isna() | as_text.eq("").fillna(False)


def _exact_integer(value: object) -> int | None:
    """``value`` as the integer it exactly is, or None: no fraction, no infinity, nothing
    outside int64, and no float beyond 2**53 (such a float may not be the number sent)."""
    number: int | None = None
    if isinstance(value, bool | np.bool_ | int | np.integer):
        number = int(value)
    elif isinstance(value, float | np.floating):
        real = float(value)
        if math.isfinite(real) and real.is_integer() and abs(real) <= _EXACT_FLOAT:
            number = int(real)
    elif isinstance(value, decimal.Decimal):
        if value.is_finite() and value == value.to_integral_value():
            number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if "_" in text:  # int() reads "1_000"; no data format means that
            return None
        try:
            number = int(text)
        except ValueError:
            try:
                return _exact_integer(float(text))  # "3.0", "1e3"
            except ValueError:
                return None
    if number is None or not _INT64_MIN <= number <= _INT64_MAX:
        return None
    return number


def _integers(values: pd.Series, null: pd.Series) -> tuple[pd.Series, pd.Series]:
    """An integer column as Int64; a value that is not exactly an int64 is bad (it used
    to raise for ``inf``, ``1e30`` or an unsigned value beyond int64, failing the step)."""
    present = values.where(~null)
    if pd.api.types.is_integer_dtype(values.dtype) and not pd.api.types.is_unsigned_integer_dtype(
        values.dtype
    ):
        return present.astype("Int64"), pd.Series(False, index=values.index)
    fast = pd.to_numeric(present, errors="coerce")
    if pd.api.types.is_signed_integer_dtype(fast.dtype):  # every value an exact int64
        return fast.astype("Int64"), pd.Series(False, index=values.index)
    parsed = [
        None if missing else _exact_integer(v) for v, missing in zip(values, null, strict=True)
    ]
    numbers = pd.array(parsed, dtype="Int64")
    bad = pd.Series([p is None for p in parsed], index=values.index) & ~null
    return pd.Series(numbers, index=values.index), bad


def _coerce(values: pd.Series, kind: ColumnType) -> tuple[pd.Series, pd.Series]:
    """Convert one column; also return where a non-null value failed to convert."""
    null = _is_null(values)
    if kind == "string":
        converted = values.astype("string").where(~null, pd.NA)
        return converted, pd.Series(False, index=values.index)
    if kind == "integer":
        return _integers(values, null)
    if kind == "float":
        numbers = pd.to_numeric(values.where(~null), errors="coerce")
        return numbers.astype("float64"), numbers.isna() & ~null
    if kind == "boolean":
        text = values.astype("string").str.strip().str.lower()
        mapped = pd.Series(pd.NA, index=values.index, dtype="boolean")
        mapped[text.isin(_TRUE).fillna(False)] = True
        mapped[text.isin(_FALSE).fillna(False)] = False
        return mapped, mapped.isna() & ~null
    timestamps = pd.to_datetime(values.where(~null), errors="coerce", utc=True, format="mixed")
    bad = timestamps.isna() & ~null
    if kind == "date":
        return timestamps.dt.tz_localize(None).dt.normalize().astype("datetime64[ms]"), bad
    return timestamps.astype("datetime64[us, UTC]"), bad


def check_schema(frame: pd.DataFrame, schema: SourceSchema) -> SchemaCheck:
    """Split ``frame`` into rows that match ``schema`` (converted to its types) and
    quarantined rows (raw values as text, plus ``_quarantine_reason``)."""
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise SchemaMismatchError(
            f"declared column(s) {', '.join(missing)} not in the source "
            f"(it has: {', '.join(map(str, frame.columns))})"
        )
    frame = frame.reset_index(drop=True)
    reasons = pd.Series("", index=frame.index, dtype="object")
    converted: dict[str, pd.Series] = {}
    for column in schema.columns:
        raw = frame[column.name]
        values, bad = _coerce(raw, column.type)
        converted[column.name] = values
        reasons = reasons.where(
            ~(bad & reasons.eq("")),
            [f"{column.name}: {value!r} is not {column.type}" for value in raw],
        )
        if not column.nullable:
            null = values.isna() & ~bad
            reasons = reasons.where(~(null & reasons.eq("")), f"{column.name}: null not allowed")
    rejected = reasons.ne("")
    valid = pd.DataFrame(converted)[~rejected].reset_index(drop=True)
    quarantined = frame.loc[rejected, schema.names].astype("string").reset_index(drop=True)
    quarantined[REASON_COLUMN] = reasons[rejected].to_numpy()
    return SchemaCheck(valid=valid, quarantined=quarantined)
