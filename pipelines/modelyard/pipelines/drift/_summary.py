"""The drift check's result: what a person, a CronJob or the operator reads."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class CheckStatus(StrEnum):
    """Whether the check could compare the data at all."""

    OK = "ok"
    NO_DATA = "no_data"
    SCHEMA_MISMATCH = "schema_mismatch"


class ColumnType(StrEnum):
    """Evidently's column types (``evidently.legacy.core.ColumnType`` values)."""

    NUMERICAL = "num"
    CATEGORICAL = "cat"
    TEXT = "text"
    DATETIME = "datetime"
    UNKNOWN = "unknown"


class ColumnStatus(StrEnum):
    CHECKED = "checked"
    # Evidently's DataDriftPreset does not test the column either (datetime, text, unknown).
    SKIPPED = "skipped"
    # The reference had values, the current window has none: counted as drifted, since a
    # feature that stopped arriving is a change, not an absence of evidence.
    EMPTY = "empty"


class Computation(StrEnum):
    """How a column's values were held for its test; every way gives the same, exact result."""

    # Category (or discrete value) counts, accumulated batch by batch.
    COUNTS = "counts"
    # The column's values sorted in memory: it fitted the memory budget.
    IN_MEMORY = "in_memory"
    # Sorted in runs on disk and merged while testing: the column did not fit the budget.
    EXTERNAL_SORT = "external_sort"


class ColumnDrift(BaseModel):
    """One column's drift test."""

    column: str
    column_type: ColumnType
    status: ColumnStatus = ColumnStatus.CHECKED
    method: str | None = Field(
        default=None, description="Evidently's stattest name: wasserstein, jensenshannon, ks, ..."
    )
    method_label: str | None = Field(default=None, description="Evidently's display name.")
    score: float | None = Field(
        default=None, description="A distance (drift if >= threshold) or a p-value (drift if <)."
    )
    threshold: float | None = None
    drifted: bool = False
    reference_column: str | None = Field(
        default=None, description="The reference column compared with, when not the same name."
    )
    reference_rows: int = Field(default=0, description="Non-missing reference values.")
    current_rows: int = Field(default=0, description="Non-missing current values.")
    computation: Computation | None = Field(
        default=None,
        description=(
            "How the values were held: counts, in_memory (sorted in memory) or "
            "external_sort (sorted on disk: the column did not fit the memory budget). "
            "The result is the same, exact, either way."
        ),
    )
    reason: str | None = None


class DriftSummary(BaseModel):
    """The verdict of one drift check."""

    status: CheckStatus
    message: str
    dataset_drift: bool | None = Field(
        description=(
            "share_of_drifted_columns >= drift_share over the feature columns; "
            "None when the data could not be checked as a whole (status != ok)."
        )
    )
    drift_share: float
    share_of_drifted_columns: float | None = None
    number_of_columns: int = 0
    number_of_drifted_columns: int = 0
    drifted_columns: list[str] = Field(
        default_factory=list,
        description="Every drifted column of the current data: features, then predictions.",
    )
    prediction_drift: bool | None = Field(
        default=None, description="Whether any prediction column drifted; None if not checked."
    )
    columns: list[ColumnDrift] = Field(default_factory=list, description="Feature columns.")
    predictions: list[ColumnDrift] = Field(default_factory=list)
    missing_columns: list[str] = Field(default_factory=list)
    extra_columns: list[str] = Field(default_factory=list)
    type_mismatches: list[str] = Field(default_factory=list)
    reference_rows: int = 0
    current_rows: int = 0
    memory_budget: int | None = Field(
        default=None,
        description="Bytes the check could hold for data at once (--memory-budget).",
    )
    passes: int = Field(
        default=0,
        description="Groups of columns read one after the other to stay within the budget.",
    )
    warnings: list[str] = Field(default_factory=list)

    @property
    def drift_found(self) -> bool:
        """Dataset drift or prediction drift: what should trigger a retrain."""
        return bool(self.dataset_drift) or bool(self.prediction_drift)
