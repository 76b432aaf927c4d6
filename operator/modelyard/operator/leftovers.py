"""Registry tags a deleted ModelDeployment left behind, and the sweep that removes them.

When the delete handler gives up on the registry (``RegistryTagLeft``), it records what it
could not remove in one ConfigMap in the operator's own namespace
(``MODELYARD_LEFTOVER_TAGS``): one key per ``namespace.name``, a JSON list of records
(registry, tags, the deleted object's uid, when). Every
``MODELYARD_LEFTOVER_SWEEP_INTERVAL`` seconds the sweep goes through that ConfigMap: a
record whose ModelDeployment exists again (another uid) is dropped, since the tag is the
new one's now; the others are tried again and dropped once their tags are gone. Only
what this operator recorded is swept; the registry is never scanned (another cluster may
share it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, ValidationError

from modelyard.core import contracts as c
from modelyard.core.redaction import redact_uri
from modelyard.operator.reconcile import Operator, VersionTag, remove_tags
from modelyard.operator.resolve import RegistryTarget
from modelyard.operator.rest import Rest
from modelyard.operator.scheduler import Periodic

logger = logging.getLogger(__name__)

#: Read-modify-write attempts on the ConfigMap when others write it at the same time,
#: each after a random pause growing with the attempt (seconds, at most).
WRITE_ATTEMPTS = 10
WRITE_BACKOFF = 0.1


class LeftTag(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    key: str


class LeftTags(BaseModel):
    """What one deleted ModelDeployment left in one registry."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    name: str
    uid: str
    tracking_uri: str
    #: "namespace/name" of the Secret with the credentials used with that registry.
    secret: str | None = None
    installation: bool = False
    tags: tuple[LeftTag, ...]
    deleted: str

    @classmethod
    def of(
        cls,
        body: Mapping[str, Any],
        target: RegistryTarget,
        tags: list[VersionTag],
        now: dt.datetime | None = None,
    ) -> LeftTags:
        meta = body["metadata"]
        when = now or dt.datetime.now(dt.UTC)
        return cls(
            namespace=str(meta["namespace"]),
            name=str(meta["name"]),
            uid=str(meta.get("uid") or ""),
            tracking_uri=target.tracking_uri,
            secret="/".join(target.secret) if target.secret else None,
            installation=target.installation,
            tags=tuple(LeftTag(model=t.model, version=t.version, key=t.key) for t in tags),
            deleted=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    @property
    def entry(self) -> str:
        return entry_key(self.namespace, self.name)

    def target(self) -> RegistryTarget:
        secret = None
        if self.secret:
            namespace, _, name = self.secret.partition("/")
            secret = (namespace, name)
        return RegistryTarget(self.tracking_uri, secret, installation=self.installation)

    def version_tags(self) -> list[VersionTag]:
        return [VersionTag(t.model, t.version, t.key) for t in self.tags]

    def describe(self) -> str:
        tags = ", ".join(f"{t.key} on {t.model} version {t.version}" for t in self.tags)
        return f"{tags} in {redact_uri(self.tracking_uri)}"


def entry_key(namespace: str, name: str) -> str:
    """The ConfigMap key of a ModelDeployment's records (a namespace has no dot)."""
    return f"{namespace}.{name}"


def parse_records(value: str) -> list[LeftTags]:
    """One key's records; what does not parse is logged and left out."""
    try:
        items = json.loads(value)
        return [LeftTags.model_validate(item) for item in items]
    except (ValueError, TypeError, ValidationError) as error:
        logger.error("leftover tags: an entry does not parse (%s): %r", error, value[:200])
        return []


def dump_records(records: list[LeftTags]) -> str:
    return json.dumps([r.model_dump() for r in records], sort_keys=True)


def with_record(data: Mapping[str, str], record: LeftTags) -> dict[str, str]:
    """``data`` with ``record`` added to its key's records (an equal one is not doubled)."""
    out = dict(data)
    records = parse_records(out[record.entry]) if record.entry in out else []
    if record not in records:
        records.append(record)
    out[record.entry] = dump_records(records)
    return out


def without_records(data: Mapping[str, str], key: str, done: list[LeftTags]) -> dict[str, str]:
    """``data`` without the records ``done`` (records added since stay); a key with no
    record left goes."""
    out = dict(data)
    if key not in out:
        return out
    left = [r for r in parse_records(out[key]) if r not in done]
    if left:
        out[key] = dump_records(left)
    else:
        del out[key]
    return out


class LeftoverTags:
    """The ConfigMap of records; every write is a read-modify-write, a patch on the
    resourceVersion read, tried again on a conflict."""

    def __init__(self, api_client: client.ApiClient, namespace: str, name: str, timeout: float):
        self.rest = Rest(api_client, timeout)
        self.namespace, self.name, self.timeout = namespace, name, timeout

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _read(self) -> dict[str, Any] | None:
        return self.rest.get("v1", "ConfigMap", self.namespace, self.name)

    def entries(self) -> dict[str, list[LeftTags]]:
        found = self._read()
        data = (found.get("data") or {}) if found is not None else {}
        return {key: parse_records(value) for key, value in sorted(data.items())}

    def update(self, change: Callable[[Mapping[str, str]], dict[str, str]]) -> None:
        for attempt in range(WRITE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, WRITE_BACKOFF * attempt))
            found = self._read()
            before = dict((found.get("data") or {}) if found is not None else {})
            after = change(before)
            if after == before:
                return
            try:
                if found is None:
                    self.rest.create(
                        {
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "metadata": {
                                "name": self.name,
                                "namespace": self.namespace,
                                "labels": {c.LABEL_PART_OF: c.PART_OF},
                            },
                            "data": after,
                        }
                    )
                else:
                    # The resourceVersion read makes the patch fail (409) if it changed.
                    changes = {k: after.get(k) for k in before.keys() | after.keys()}
                    patch = {
                        "metadata": {"resourceVersion": found["metadata"]["resourceVersion"]},
                        "data": {k: v for k, v in changes.items() if before.get(k) != v},
                    }
                    self.rest.merge_patch("v1", "ConfigMap", self.namespace, self.name, patch)
                return
            except ApiException as error:
                if error.status != 409:  # 409: written (or created) since it was read
                    raise
        raise RuntimeError(
            f"ConfigMap {self.ref} kept changing: not written after {WRITE_ATTEMPTS} attempts"
        )

    def record(self, record: LeftTags) -> None:
        self.update(lambda data: with_record(data, record))

    def forget(self, key: str, done: list[LeftTags]) -> None:
        self.update(lambda data: without_records(data, key, done))


class Sweeper(Periodic):
    """Every ``interval`` seconds: the recorded tags of ModelDeployments that do not exist
    again are removed, and their records dropped once they are gone."""

    name = "leftover-sweep"

    def __init__(self, op: Operator, records: LeftoverTags, *, interval: float) -> None:
        super().__init__(interval)
        self.op = op
        self.records = records

    def sweep(self, record: LeftTags) -> bool:
        """Is ``record`` done with (its tags removed, or the tags another's now)?"""
        current = self.op.read(record.namespace, record.name)
        if current is not None:
            if str(current["metadata"].get("uid")) == record.uid:
                return False  # still being deleted: its own handler is at it
            logger.info(
                "leftover tags of %s/%s: a ModelDeployment of that name exists again and "
                "holds the tag now; record dropped (%s)",
                record.namespace,
                record.name,
                record.describe(),
            )
            return True
        try:
            remove_tags(self.op, record.target(), record.version_tags())
        except Exception as error:
            logger.warning(
                "leftover tags of deleted %s/%s (since %s) still not removed, kept for the "
                "next sweep: %s",
                record.namespace,
                record.name,
                record.deleted,
                error,
            )
            return False
        logger.info(
            "leftover tags of deleted %s/%s removed: %s",
            record.namespace,
            record.name,
            record.describe(),
        )
        return True

    def tick(self) -> int:
        """One pass; returns how many records were dropped."""
        dropped = 0
        for key, records in self.records.entries().items():
            done = [r for r in records if self.sweep(r)]
            if done:
                self.records.forget(key, done)
                dropped += len(done)
        self.ticks += 1
        return dropped
