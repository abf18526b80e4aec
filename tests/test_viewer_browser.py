"""The viewer in a real browser: the Streamlit server on a free loopback port, headless Chromium via Playwright.

Needs the Debian package ``chromium`` (``/usr/bin/chromium``) and the Python packages of ``imc-ray[viewer]``
plus ``playwright`` (its own browser download is not used). Skipped when any of them is missing.

The screenshots are saved under pytest's tmp dir and, when ``$IMC_RAY_ARTIFACTS`` names a folder, copied there
as ``viewer-screenshot.png`` (the 3D scene view) and ``viewer-screenshot-pairs.png`` (the pair browser).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imc_ray.viewer import OUTPUT_ENV, streamlit_command
from imc_ray.viewer.draw import INLIER_RGB

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS_ENV = "IMC_RAY_ARTIFACTS"
SERVER_START_S = 120
PAGE_TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason=f"needs headless Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]

Run = tuple[Path, dict[str, Any]]


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server: Ctrl+C (Streamlit shuts down cleanly), then terminate, then kill."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def server(sample_run: Run, tmp_path: Path) -> Iterator[str]:
    """The viewer served over the sample run on a free loopback port; its URL. Always stopped afterwards."""
    pytest.importorskip("streamlit")
    pytest.importorskip("plotly")
    out, _ = sample_run
    port = free_port()
    cmd = streamlit_command(out, port=port, address="127.0.0.1")
    log = (tmp_path / "streamlit.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **{OUTPUT_ENV: cmd[-1]}))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{(tmp_path / 'streamlit.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer within {SERVER_START_S} s")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)
        log.close()


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder`` -> (size, mtime in ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def save_artifact(shot: Path, name: str) -> None:
    """Copy a screenshot to ``$IMC_RAY_ARTIFACTS/name`` when that variable names a folder."""
    folder = os.environ.get(ARTIFACTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / name)


def test_viewer_in_chromium(server: str, sample_run: Run, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    out, _ = sample_run
    before = files(out)
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader"],
            timeout=PAGE_TIMEOUT_MS,
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(server)

            # overview: the run's counts
            page.get_by_text("Images registered").wait_for()
            page.get_by_text("Stage timings").wait_for()

            # the 3D view of the lego scene: plotly's WebGL canvas, drawn
            sidebar = page.locator("[data-testid=stSidebar]")
            sidebar.get_by_text("Scene 3D", exact=True).click()
            page.get_by_role("heading", name="Scene nerf_synthetic/lego").wait_for()
            chart = page.locator("[data-testid=stPlotlyChart]").first
            chart.locator(".gl-container canvas").first.wait_for()
            page.wait_for_function(
                "() => { const c = document.querySelector('[data-testid=stPlotlyChart] .gl-container canvas');"
                " return c && c.width > 100 && c.height > 100; }"
            )
            page.wait_for_timeout(1500)  # let WebGL finish its first frame
            plot = np.asarray(Image.open(io.BytesIO(chart.screenshot())).convert("RGB"))
            assert plot.std() > 5, "the 3D view is blank"
            assert (np.abs(plot.astype(int) - [255, 0, 0]).max(axis=2) < 60).mean() > 1e-4, "no camera frusta drawn"
            shot = tmp_path / "viewer-screenshot.png"
            page.screenshot(path=str(shot), full_page=True)

            # the pair browser: the best pair with its match lines
            sidebar.get_by_text("Pairs", exact=True).click()
            page.get_by_role("heading", name="Pairs of nerf_synthetic/lego").wait_for()
            img = page.locator("[data-testid=stImage] img").first
            img.wait_for()
            page.wait_for_function(
                "() => { const i = document.querySelector('[data-testid=stImage] img');"
                " return i && i.complete && i.naturalWidth > 0; }"
            )
            match = np.asarray(Image.open(io.BytesIO(img.screenshot())).convert("RGB"))
            green = (np.abs(match.astype(int) - np.asarray(INLIER_RGB)).max(axis=2) < 40).mean()
            assert match.std() > 10 and green > 1e-3, "the match image shows no inlier lines"
            pairs_shot = tmp_path / "viewer-screenshot-pairs.png"
            page.screenshot(path=str(pairs_shot), full_page=True)
        finally:
            browser.close()
    save_artifact(shot, "viewer-screenshot.png")
    save_artifact(pairs_shot, "viewer-screenshot-pairs.png")
    assert shot.stat().st_size > 20_000 and pairs_shot.stat().st_size > 20_000
    assert not problems, "browser console errors:\n" + "\n".join(problems)
    assert files(out) == before, "the viewer wrote into OUTPUT"
