"""A memory cgroup for one child process: the limit a pod's ``resources.limits.memory`` sets.

``ulimit -v`` limits address space, which pyarrow's allocator and numpy reserve far beyond
what they use; a cgroup limits the memory actually charged, the way the kubelet does, and
the kernel's OOM killer ends the process past it. cgroup v1 (this machine: the memory
controller at /sys/fs/cgroup/memory) and v2 (a unified /sys/fs/cgroup) are both handled.
Creating a cgroup needs root; without it the tests using this fail, they do not skip.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")

# The child joins the cgroup first thing, before importing anything large.
JOIN = "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid()))\n"


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    #: The cgroup's peak charge (anonymous memory and page cache) and its OOM kills.
    peak_bytes: int
    oom_kills: int


@dataclass
class MemoryCgroup:
    path: Path
    limit: int
    v1: bool

    def run(self, code: str, *args: str, timeout: float = 600) -> Finished:
        """``python -c code args...`` inside the cgroup (``sys.argv[1]`` is the cgroup's
        process list; the caller's ``args`` follow)."""
        done = subprocess.run(
            [sys.executable, "-c", JOIN + code, str(self.path / "cgroup.procs"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Finished(done.returncode, done.stdout, done.stderr, self._peak(), self._ooms())

    def _peak(self) -> int:
        name = "memory.max_usage_in_bytes" if self.v1 else "memory.peak"
        return int((self.path / name).read_text())

    def _ooms(self) -> int:
        name = "memory.oom_control" if self.v1 else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def reset_peak(self) -> None:
        if self.v1:
            (self.path / "memory.max_usage_in_bytes").write_text("0")


@contextmanager
def memory_cgroup(limit: int) -> Iterator[MemoryCgroup]:
    """A new memory cgroup limited to ``limit`` bytes (no swap), removed afterwards."""
    v1 = (V1_ROOT / "memory.limit_in_bytes").exists()
    root = V1_ROOT if v1 else V2_ROOT
    path = root / f"modelyard-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
        if v1:
            (path / "memory.limit_in_bytes").write_text(str(limit))
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(limit))
        else:
            (path / "memory.max").write_text(str(limit))
            (path / "memory.swap.max").write_text("0")
    except OSError as exc:
        pytest.fail(f"cannot create a memory cgroup under {root} (needs root): {exc}")
    try:
        yield MemoryCgroup(path, limit, v1)
    finally:
        # Empty once its processes have exited; the page cache it charged moves to the parent.
        path.rmdir()
