"""Look at a run: a Streamlit app over an OUTPUT folder (``imc-ray view``) and PNG pictures (``imc-ray render``).

* :func:`launch` starts the app (``imc_ray/viewer/app.py``) with ``python -m streamlit run``; Streamlit and
  plotly are the optional extra ``pip install 'imc-ray[viewer]'``.
* :func:`imc_ray.viewer.render.render` writes PNGs (matplotlib only; no Streamlit needed).
* :mod:`imc_ray.viewer.data` holds the read-only loaders both use.

The viewer only reads inside OUTPUT (and the run's input images); only ``render`` writes, into its ``dest``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

from imc_ray.viewer.data import ViewerError, check_output

logger = logging.getLogger(__name__)

APP = Path(__file__).resolve().with_name("app.py")
"""The Streamlit script."""
OUTPUT_ENV = "IMC_RAY_VIEW_OUTPUT"
"""Environment variable naming the OUTPUT folder for the app (used when no ``-- OUTPUT`` argument is given)."""
INPUT_ENV = "IMC_RAY_VIEW_INPUT"
"""Optional: the run's INPUT folder, when the photos moved since the run (default: ``run.json``'s ``input``)."""
INSTALL_HINT = "the viewer needs Streamlit and plotly: pip install 'imc-ray[viewer]'"

__all__ = ["APP", "INPUT_ENV", "OUTPUT_ENV", "ViewerError", "launch", "streamlit_command", "viewer_available"]


def viewer_available() -> bool:
    """True when Streamlit and plotly are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("streamlit", "plotly"))


def streamlit_command(
    output: Path, port: int | None = None, headless: bool = True, address: str | None = None
) -> list[str]:
    """The command line that serves the app over ``output`` (what :func:`launch` runs).

    Args:
        output: a run's OUTPUT folder (checked: it must hold ``run.json``).
        port: TCP port (default: Streamlit's, 8501).
        headless: do not open a browser.
        address: interface to listen on (default: Streamlit's; e.g. ``127.0.0.1`` for loopback only).
    """
    out = check_output(output)
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP)]
    if port is not None:
        cmd += ["--server.port", str(int(port))]
    if address is not None:
        cmd += ["--server.address", address]
    cmd += [
        "--server.headless",
        "true" if headless else "false",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--",
        str(out),
    ]
    return cmd


def launch(
    output: Path,
    port: int | None = None,
    headless: bool = True,
    address: str | None = None,
    input_root: Path | None = None,
) -> int:
    """Serve the viewer over ``output`` until interrupted; return Streamlit's exit code.

    Args:
        output: a run's OUTPUT folder; only read.
        port, headless, address: see :func:`streamlit_command`.
        input_root: the run's INPUT folder when its photos moved (default: ``run.json``'s ``input``).

    Raises:
        ViewerError: ``output`` is not a run's output folder, or Streamlit / plotly are not installed.
    """
    if not viewer_available():
        raise ViewerError(INSTALL_HINT)
    cmd = streamlit_command(output, port, headless, address)
    env = dict(os.environ, **{OUTPUT_ENV: cmd[-1]})
    if input_root is not None:
        env[INPUT_ENV] = str(Path(input_root).resolve())
    logger.info("serving the viewer: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl+C reached Streamlit too: let it shut down, then stop it for sure
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            return proc.wait()
