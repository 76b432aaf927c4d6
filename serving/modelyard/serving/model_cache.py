"""A copy of each served model version outside the registry, for starts during an outage.

The server downloads its model version from the registry at every start. With a cache
configured (``MODELYARD_MODEL_CACHE``, any fsspec URL: a directory on a mounted volume,
``s3://bucket/prefix``, ...) it also keeps what it downloaded there, and when the registry
cannot be reached it loads the version it was assigned from there instead.

Layout, one entry per downloaded content::

    CACHE/<registry>/<model name>/<version>/<digest>/files/...      the model's files
    CACHE/<registry>/<model name>/<version>/<digest>/manifest.json  written last

``<registry>`` is the tracking server's host, port and path (no credentials): two
registries may both have a ``fraud`` version 3. A version number is immutable in MLflow,
so name and version identify the model; ``<digest>`` (sha256 over the manifest's list of
files with their sizes and sha256) tells apart contents that are not the same anyway
(files rewritten in the artifact store). An entry is complete once its manifest exists:
the manifest is published last (written under a temporary name and moved, one PUT on an
object store), so a server that died while writing leaves files that no reader uses.

Every file is checked against the manifest as it is copied out of the cache, before
anything is deserialized: a corrupt or partial entry is refused (logged, never loaded),
and the next older complete entry of the same version is tried.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from modelyard.core.redaction import redact_uri

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FILES = "files"
MANIFEST_FORMAT = 1
_CHUNK = 1024 * 1024


class CacheMiss(Exception):
    """No complete, intact entry for this model version in the cache."""


class CorruptEntry(Exception):
    """An entry whose files do not match its manifest."""


@dataclass(frozen=True)
class CacheEntry:
    """One complete entry: where it is and what it holds."""

    url: str
    digest: str
    created: str
    files: dict[str, dict[str, Any]]


def registry_key(tracking_uri: str) -> str:
    """The cache folder of a registry: host, port and path, without credentials."""
    parts = urlsplit(redact_uri(tracking_uri))
    where = (parts.hostname or "") + (f"_{parts.port}" if parts.port else "") + parts.path
    where = where.strip("/") or parts.scheme or "local"
    return quote(where.replace("/", "_"), safe="._-")


def _segment(text: str) -> str:
    # A model name may hold any character; one path segment each, readable when plain.
    return quote(text, safe="._-") or "_"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """Each file under ``directory`` (relative POSIX path) with its size and sha256."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        files[relative] = {"size": path.stat().st_size, "sha256": _sha256_file(path)}
    return files


def content_digest(files: dict[str, dict[str, Any]]) -> str:
    """sha256 over the sorted list of files, sizes and hashes: the entry's name."""
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ModelCache:
    """The cache at an fsspec URL; ``storage_options`` go to fsspec (s3fs reads its
    credentials from the environment, ``AWS_ACCESS_KEY_ID`` and so on, by default)."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url.rstrip("/")
        self.display_url = redact_uri(self.url)
        self._storage_options = storage_options

    @functools.cached_property
    def _opened(self) -> tuple[Any, str]:
        # Opened on first use: a filesystem whose package is missing from the image
        # (s3fs) fails the cache, not a start with the registry up.
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(self.url, **self._storage_options)
        return fs, str(root).rstrip("/")

    @property
    def fs(self) -> Any:
        return self._opened[0]

    @property
    def root(self) -> str:
        return self._opened[1]

    def version_dir(self, registry: str, name: str, version: str) -> str:
        return "/".join((self.root, registry, _segment(name), _segment(version)))

    # ----------------------------------------------------------------------- writing
    def publish(self, registry: str, name: str, version: str, source: Path) -> CacheEntry:
        """Keep the model files under ``source`` as an entry, unless the same content is
        already there; the manifest is written last."""
        files = local_manifest(source)
        digest = content_digest(files)
        entry = f"{self.version_dir(registry, name, version)}/{digest}"
        existing = self._read_manifest(entry)
        if existing is not None:
            logger.info("model cache: %s version %s (%s) is already cached", name, version, digest)
            return existing
        # On a mounted filesystem each file is written under a temporary name and renamed,
        # so two servers (or workers) writing the same entry never truncate each other's
        # finished file; an object store's PUT is atomic already.
        local = "file" in (
            (self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol
        )
        for relative in files:
            target = f"{entry}/{FILES}/{relative}"
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            if local:
                partial = f"{target}.{uuid.uuid4().hex}.partial"
                self.fs.put_file(str(source / relative), partial)
                self.fs.mv(partial, target)
            else:
                self.fs.put_file(str(source / relative), target)
        created = dt.datetime.now(dt.UTC).isoformat()
        manifest = {
            "format": MANIFEST_FORMAT,
            "model": name,
            "version": version,
            "digest": digest,
            "created": created,
            "files": files,
        }
        temporary = f"{entry}/.{MANIFEST}.{uuid.uuid4().hex}"
        with self.fs.open(temporary, "w", encoding="utf-8") as out:
            json.dump(manifest, out, indent=1, sort_keys=True)
        self.fs.mv(temporary, f"{entry}/{MANIFEST}")
        logger.info(
            "model cache: stored %s version %s (%d files, digest %s) in %s",
            name,
            version,
            len(files),
            digest,
            self.display_url,
        )
        return CacheEntry(f"{entry}", digest, created, files)

    # ----------------------------------------------------------------------- reading
    def _read_manifest(self, entry: str) -> CacheEntry | None:
        path = f"{entry}/{MANIFEST}"
        try:
            with self.fs.open(path, "r", encoding="utf-8") as source:
                manifest = json.load(source)
        except FileNotFoundError:
            return None
        files = manifest.get("files")
        digest = entry.rsplit("/", 1)[-1]
        if not isinstance(files, dict) or content_digest(files) != digest:
            raise CorruptEntry(f"{path}: the manifest does not match the entry's digest")
        return CacheEntry(entry, digest, str(manifest.get("created", "")), files)

    def entries(self, registry: str, name: str, version: str) -> Iterator[CacheEntry]:
        """Complete entries of this version, newest first; unreadable ones are logged."""
        folder = self.version_dir(registry, name, version)
        try:
            listed = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return
        found: list[CacheEntry] = []
        for path in listed:
            entry = str(path).rstrip("/")
            if entry.rsplit("/", 1)[-1].startswith("."):
                continue
            try:
                manifest = self._read_manifest(entry)
            except (CorruptEntry, ValueError) as error:
                logger.error("model cache: refusing %s: %s", entry, error)
                continue
            if manifest is None:
                logger.warning("model cache: %s has no manifest (incomplete), skipped", entry)
                continue
            found.append(manifest)
        yield from sorted(found, key=lambda e: e.created, reverse=True)

    def fetch(self, entry: CacheEntry, target: Path) -> None:
        """Copy an entry's files to ``target``, checking each against the manifest."""
        expected = set(entry.files)
        present = {
            str(p)[len(f"{entry.url}/{FILES}/") :]
            for p in self.fs.find(f"{entry.url}/{FILES}")
            if str(p).startswith(f"{entry.url}/{FILES}/")
        }
        if missing := sorted(expected - present):
            raise CorruptEntry(f"{len(missing)} file(s) missing, e.g. {missing[0]}")
        for relative, facts in sorted(entry.files.items()):
            local = target / relative
            if ".." in Path(relative).parts or Path(relative).is_absolute():
                raise CorruptEntry(f"the manifest names a path outside the entry: {relative}")
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{entry.url}/{FILES}/{relative}", str(local))
            size = local.stat().st_size
            if size != facts.get("size"):
                raise CorruptEntry(
                    f"{relative} does not match the manifest: {size} bytes, "
                    f"expected {facts.get('size')}"
                )
            if _sha256_file(local) != facts.get("sha256"):
                raise CorruptEntry(f"{relative} does not match the manifest: its sha256 differs")

    def restore(self, registry: str, name: str, version: str, target: Path) -> CacheEntry:
        """The newest intact entry of this version, copied to ``target`` and verified;
        :class:`CacheMiss` if there is none."""
        refused = 0
        for entry in self.entries(registry, name, version):
            attempt = target / entry.digest
            try:
                self.fetch(entry, attempt)
            except (CorruptEntry, OSError) as error:
                refused += 1
                logger.error(
                    "model cache: refusing the cached %s version %s at %s: %s; it is not loaded",
                    name,
                    version,
                    entry.url,
                    error,
                )
                continue
            return CacheEntry(str(attempt), entry.digest, entry.created, entry.files)
        where = f"{self.display_url}/{registry}/{_segment(name)}/{_segment(version)}"
        note = f" ({refused} corrupt or incomplete entries refused)" if refused else ""
        raise CacheMiss(
            f"no intact cached copy of model {name} version {version} under {where}{note}"
        )
