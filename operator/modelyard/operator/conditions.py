"""Status conditions in the metav1.Condition shape."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
MODEL_RESOLVED = "ModelResolved"
#: Whether the version the reference resolves to may go live (the approval gate).
APPROVED = "Approved"
DATA_DRIFT = "DataDrift"
ALL_TYPES = (READY, PROGRESSING, DEGRADED, MODEL_RESOLVED, APPROVED, DATA_DRIFT)


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 time as Kubernetes and the status write it; None when absent or not
    a time. A time without a zone is UTC."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status_word(value: bool | None) -> str:
    return "Unknown" if value is None else ("True" if value else "False")


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``type_`` set; lastTransitionTime moves only when the
    status does, so it says since when the condition holds."""
    word = _status_word(status)
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != word
        out.append(
            {
                "type": type_,
                "status": word,
                "reason": reason,
                "message": message,
                "observedGeneration": generation or 0,
                "lastTransitionTime": (now or now_rfc3339())
                if changed
                else cond.get("lastTransitionTime") or now or now_rfc3339(),
            }
        )
    if not found:
        out.append(
            {
                "type": type_,
                "status": word,
                "reason": reason,
                "message": message,
                "observedGeneration": generation or 0,
                "lastTransitionTime": now or now_rfc3339(),
            }
        )
    order = {t: i for i, t in enumerate(ALL_TYPES)}
    return sorted(out, key=lambda c: order.get(str(c.get("type")), len(order)))


def get_condition(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
