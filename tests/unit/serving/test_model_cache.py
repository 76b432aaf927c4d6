"""The model cache on a real filesystem through fsspec (the integration tests run it with
real servers and a real registry)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.serving.model_cache import (
    MANIFEST,
    CacheMiss,
    ModelCache,
    content_digest,
    local_manifest,
    registry_key,
)


def model_dir(root: Path, payload: bytes = b"weights") -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "sub" / "model.skops").write_bytes(payload)
    return root


def test_registry_key_has_no_credentials() -> None:
    assert registry_key("http://user:secret@mlflow.ml.svc:5000/") == "mlflow.ml.svc_5000"
    assert "secret" not in registry_key("https://u:secret@host/prefix/x")


def test_publish_then_restore_round_trips_and_is_idempotent(tmp_path: Path) -> None:
    source = model_dir(tmp_path / "model")
    cache = ModelCache(f"file://{tmp_path / 'cache'}")
    first = cache.publish("reg", "fraud model", "3", source)
    again = cache.publish("reg", "fraud model", "3", source)
    assert again.digest == first.digest == content_digest(local_manifest(source))
    [manifest] = list((tmp_path / "cache").rglob(MANIFEST))
    assert manifest.parent.name == first.digest
    assert not [p for p in manifest.parent.iterdir() if p.name.startswith(".")]
    restored = cache.restore("reg", "fraud model", "3", tmp_path / "out")
    assert (Path(restored.url) / "sub" / "model.skops").read_bytes() == b"weights"
    with pytest.raises(CacheMiss, match="model fraud model version 4"):
        cache.restore("reg", "fraud model", "4", tmp_path / "out")


def test_newest_intact_entry_wins_and_a_corrupt_one_is_refused(tmp_path: Path) -> None:
    cache = ModelCache(str(tmp_path / "cache"))
    old = cache.publish("reg", "m", "1", model_dir(tmp_path / "a", b"old"))
    new = cache.publish("reg", "m", "1", model_dir(tmp_path / "b", b"new"))
    assert Path(cache.restore("reg", "m", "1", tmp_path / "o1").url).name == new.digest
    # Corrupt the newest: the older intact one is loaded instead.
    (Path(new.url) / "files" / "sub" / "model.skops").write_bytes(b"evil")
    assert Path(cache.restore("reg", "m", "1", tmp_path / "o2").url).name == old.digest
    # An entry whose manifest is gone is incomplete and never read.
    (Path(old.url) / MANIFEST).unlink()
    with pytest.raises(CacheMiss, match="1 corrupt or incomplete entries refused"):
        cache.restore("reg", "m", "1", tmp_path / "o3")


def test_a_manifest_that_lies_about_its_digest_is_refused(tmp_path: Path) -> None:
    cache = ModelCache(str(tmp_path / "cache"))
    entry = cache.publish("reg", "m", "1", model_dir(tmp_path / "a"))
    manifest = Path(entry.url) / MANIFEST
    data = json.loads(manifest.read_text())
    data["files"]["sub/model.skops"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(CacheMiss):
        cache.restore("reg", "m", "1", tmp_path / "out")
