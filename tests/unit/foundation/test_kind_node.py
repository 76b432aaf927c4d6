"""The pieces of the kind path that run outside a cluster: the runc wrapper that lets
privileged containers start on hosts with a reduced capability bounding set, and the
local storage both clusters share (hack/node/volumes.sh)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

REPO = Path(__file__).resolve().parents[3]
CAPFIX = REPO / "hack" / "kind" / "runc-capfix"
ALL = ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN"]


def _capfix() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("runc_capfix", str(CAPFIX))
    spec = importlib.util.spec_from_loader("runc_capfix", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _status(tmp_path: Path, bounding: int) -> str:
    path = tmp_path / "status"
    path.write_text(f"Name:\tx\nCapInh:\t0000000000000000\nCapBnd:\t{bounding:016x}\n")
    return str(path)


def test_the_missing_capabilities_are_read_from_the_bounding_set(tmp_path: Path) -> None:
    capfix = _capfix()
    full = (1 << 41) - 1
    assert capfix.missing_caps(_status(tmp_path, full)) == set()
    # These machines: every capability but CAP_SYS_RESOURCE (24).
    assert capfix.missing_caps(_status(tmp_path, full & ~(1 << 24))) == {"CAP_SYS_RESOURCE"}


def test_only_the_missing_capabilities_leave_a_process_spec() -> None:
    capfix = _capfix()
    process = {"capabilities": {kind: list(ALL) for kind in ("bounding", "effective")}}
    assert capfix.strip(process, {"CAP_SYS_RESOURCE"})
    assert process["capabilities"]["bounding"] == ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_ADMIN"]
    assert process["capabilities"]["effective"] == ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_ADMIN"]
    # Nothing to remove: unchanged, and said so (the file is then not rewritten).
    assert not capfix.strip(process, {"CAP_SYS_RESOURCE"})


def _fake_runc(tmp_path: Path) -> Path:
    """A stand-in for runc that records its arguments and the bundle's config."""
    runc = tmp_path / "runc"
    runc.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {tmp_path}/args\n'
        'while [ $# -gt 0 ]; do [ "$1" = --bundle ] && cp "$2/config.json" '
        f"{tmp_path}/seen.json; shift; done\n"
    )
    runc.chmod(0o755)
    return runc


def test_create_runs_the_real_runc_with_a_config_the_host_can_grant(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = {"ociVersion": "1.0.2", "process": {"capabilities": {"bounding": ALL}}}
    (bundle / "config.json").write_text(json.dumps(spec))
    args = ["--root", "/run/x", "create", "--bundle", str(bundle), "--pid-file", "p", "c1"]
    env = {**os.environ, "RUNC_REAL": str(_fake_runc(tmp_path))}
    subprocess.run([sys.executable, str(CAPFIX), *args], env=env, check=True)

    assert (tmp_path / "args").read_text().split() == args
    seen = json.loads((tmp_path / "seen.json").read_text())["process"]["capabilities"]
    # What this very machine lacks is gone; everything else is as asked.
    missing = _capfix().missing_caps()
    assert seen["bounding"] == [c for c in ALL if c not in missing]


def test_volumes_are_one_default_class_and_the_asked_local_volumes() -> None:
    out = subprocess.run(
        [str(REPO / "hack" / "node" / "volumes.sh"), "3", "/data", "kubernetes.io/os=linux"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = list(yaml.safe_load_all(out))
    (sc,) = [d for d in docs if d["kind"] == "StorageClass"]
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    pvs = [d for d in docs if d["kind"] == "PersistentVolume"]
    assert [pv["spec"]["local"]["path"] for pv in pvs] == [
        "/data/local-pv-1",
        "/data/local-pv-2",
        "/data/local-pv-3",
    ]
    term = pvs[0]["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
    ]
