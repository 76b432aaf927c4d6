"""The base image's Debian packages are pinned: a build that gets other versions fails."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
STATUS = """\
Package: python3.11
Status: install ok installed
Version: 3.11.2-6+deb12u8

Package: removed-one
Status: deinstall ok config-files
Version: 1.0

Package: zlib1g
Status: install ok installed
Version: 1:1.2.13.dfsg-1
"""


def _rootfs(tmp_path: Path) -> Path:
    tar = tmp_path / "rootfs.tar"
    with tarfile.open(tar, "w") as archive:
        data = STATUS.encode()
        info = tarfile.TarInfo("./var/lib/dpkg/status")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return tar


def _check(tmp_path: Path, lock: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pins.lock").write_text(lock)
    script = (
        f'source "{REPO}/hack/images.sh"; pins="{tmp_path}/pins.lock";'
        f' check_pins "{_rootfs(tmp_path)}"'
    )
    return subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MODELYARD_CACHE": str(tmp_path / "cache")},
        check=False,
    )


def test_the_recorded_versions_pass(tmp_path: Path) -> None:
    result = _check(tmp_path, "# pins\npython3.11=3.11.2-6+deb12u8\nzlib1g=1:1.2.13.dfsg-1\n")
    assert result.returncode == 0, result.stderr


def test_a_version_the_archive_no_longer_serves_fails_naming_the_package(
    tmp_path: Path,
) -> None:
    result = _check(
        tmp_path,
        "python3.11=3.11.2-6+deb12u6\nzlib1g=1:1.2.13.dfsg-1\nlibgone1=2.0\n",
    )
    assert result.returncode == 1
    assert "python3.11: recorded 3.11.2-6+deb12u6, the archive served 3.11.2-6+deb12u8" in (
        result.stderr
    )
    assert "libgone1: recorded 2.0, the archive served nothing (package gone)" in result.stderr
    assert "hack/images.sh pin" in result.stderr


def test_the_lock_records_every_package_of_the_base_image() -> None:
    lines = (REPO / "hack/base-packages.lock").read_text().splitlines()
    pins = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert {"python3.11", "python3-venv", "ca-certificates", "libc6"} <= set(pins)
    assert all(version for version in pins.values())
