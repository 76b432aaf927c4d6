"""The OpenAPI page at the server's root, as a person sees it in a browser (headless
Chromium from Debian: hack/deps.sh installs it). Its screenshot is kept under
``.artifacts/`` in the repository (the test prints the path)."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.integration.serving.conftest import FEATURES
from tests.support.servers import REPO

if TYPE_CHECKING:
    from tests.integration.serving.conftest import ServerUnderTest

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / ".artifacts"
# Swagger UI's deep link: the /predict operation, expanded as if a person clicked it.
PREDICT_OPERATION = "#/Service%20APIs/modelyard-server__predict"


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed (hack/deps.sh installs it)", pytrace=False)
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",  # tests run as root
            "--disable-gpu",
            "--hide-scrollbars",
            # Only the server under test: the page's trackers and badges go nowhere.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=20000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def visible_text(dom: str) -> str:
    without_scripts = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", without_scripts))


def test_the_openapi_page_documents_each_column_and_its_type(
    modelyard_server: ServerUnderTest,
) -> None:
    page = f"{modelyard_server.url}/{PREDICT_OPERATION}"
    rendered = chromium("--dump-dom", page)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    text = visible_text(rendered.stdout)
    # Rendered by Swagger UI from /docs.json: the operation, its description naming each
    # column with its type, and the request body's example with every column.
    assert "/predict" in text and "/invocations" in text
    assert "Try it out" in text
    columns = ", ".join(f"{name} (double)" for name in FEATURES)
    assert f"Columns: {columns}." in text
    example = re.sub(r"\s+", "", text)
    assert "[{" + ",".join(f'"{name}":0' for name in FEATURES) + "}]" in example

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "openapi-page.png"
    screenshot.unlink(missing_ok=True)
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1280,1600", page)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nscreenshot of the OpenAPI page: {screenshot}")
