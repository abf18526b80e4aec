"""`ray job submit --working-dir DIR -- python -m imc_ray run ...` against a real `ray start --head` cluster.

The slow test starts its own cluster (free ports, its own --temp-dir, RAY_AUTH_MODE=disabled as in
deploy/ray-cluster.yaml), submits the bundled sample with the Ray jobs CLI, checks the outputs, and stops
only that cluster: it SIGTERMs the `ray start --block` process it owns and then checks that none of that
cluster's processes is left. It never runs a bare `ray stop`, which would stop every Ray cluster on the
machine, other tests' included.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

from .conftest import QUICK_CONFIG, ROOT, SMALL, config_args, small_sample

VENV_BIN = Path(sys.executable).parent  # the environment running the tests, hence imc-ray's
RAY = str(VENV_BIN / "ray")
MARKER_VAR = "IMC_RAY_TEST_CLUSTER"

# The whole slow test stays within TEST_BUDGET_S: the pipeline job gets what cluster start-up and the probe
# job left, less STOP_RESERVE_S for stopping the cluster. The fast preset on six sample views takes about
# a minute on 2 idle cores, and several on a machine shared with other heavy work; raise the budget with
# IMC_RAY_JOB_SUBMIT_BUDGET_S.
TEST_BUDGET_S = float(os.environ.get("IMC_RAY_JOB_SUBMIT_BUDGET_S", "600"))
START_TIMEOUT_S = 60
PROBE_TIMEOUT_S = 60
STOP_TIMEOUT_S = 45
STOP_RESERVE_S = 20

# Unix socket paths (<temp-dir>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store) must stay under
# 107 bytes; the session part takes about 65.
MAX_TEMP_DIR_LEN = 40


def test_repository_upload_leaves_out_the_venv(tmp_path: Path) -> None:
    """`ray job submit --working-dir .` at the repository root (deploy/README.md) zips what Ray's packaging
    code keeps: Ray 2.60 honours .gitignore for working_dir uploads (unless RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1),
    so the multi-GB .venv is not uploaded."""
    from ray._private.runtime_env.packaging import create_package

    assert ".venv/" in (ROOT / ".gitignore").read_text().split()
    pkg = tmp_path / "working_dir.zip"
    create_package(str(ROOT), pkg, include_gitignore=True)
    names = zipfile.ZipFile(pkg).namelist()
    assert "imc_ray/cli.py" in names and "pyproject.toml" in names
    assert not [n for n in names if n.startswith((".venv/", "out/", "dist/", "build/"))]
    assert pkg.stat().st_size < 100 * 2**20, f"working_dir upload of the repository is {pkg.stat().st_size} bytes"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _cluster_processes(root_pid: int, marker: str, temp_dir: str) -> dict[int, tuple[str, str]]:
    """pid -> (start time, command line) of every live process of this cluster: the descendants of
    `ray start`, and any process whose environment carries the cluster's marker or whose command line
    names its temp dir (this also catches re-parented processes)."""
    info: dict[int, tuple[str, str]] = {}
    children: dict[int, list[int]] = {}
    matched: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            continue
        pid = int(entry.name)
        info[pid] = (fields[19], cmdline)
        children.setdefault(int(fields[1]), []).append(pid)
        if f"{MARKER_VAR}={marker}".encode() in environ or temp_dir in cmdline:
            matched.add(pid)
    todo = list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        matched.add(pid)
        todo.extend(children.get(pid, []))
    return {pid: info[pid] for pid in matched if pid in info}


@dataclass
class OwnCluster:
    address: str  # the job server (dashboard) URL
    temp_dir: Path
    env: dict[str, str]  # for CLI clients: the venv first on PATH, no RAY_ADDRESS / RAY_AUTH_MODE
    processes_seen: int = 0
    stop_seconds: float = 0.0
    strays: list[str] = field(default_factory=list)


def _client_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    for var in ("NO_PROXY", "no_proxy"):  # the job server is on loopback: never through an HTTP proxy
        env[var] = ",".join(x for x in ("127.0.0.1", "localhost", env.get(var, "")) if x)
    return env


@contextmanager
def own_ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnCluster]:
    """`ray start --head --block` with its own ports and temp dir, started from the venv (the venv's bin
    first on PATH, as after `source .venv/bin/activate`), so job entrypoints run the venv's `python`."""
    temp_dir = tmp_path_factory.mktemp("ray")
    own_temp = len(str(temp_dir)) > MAX_TEMP_DIR_LEN
    if own_temp:
        temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    gcs, dash, agent, agent_grpc, metrics, node_mgr, obj_mgr, rt_env, client = _free_ports(9)
    marker = uuid.uuid4().hex
    env = _client_env()
    env.update({"RAY_AUTH_MODE": "disabled", "VIRTUAL_ENV": str(VENV_BIN.parent), MARKER_VAR: marker})
    # On SIGTERM, Ray 2.60's `ray start --block` first drains the node for up to 30 s, waiting for every
    # worker lease to be returned (Ray Data's long-lived actors keep one); a test cluster has nothing to drain.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    cmd = [
        RAY, "start", "--head", "--block", "--disable-usage-stats",
        f"--temp-dir={temp_dir}", "--num-cpus=2", "--object-store-memory=1000000000",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--port={gcs}", f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
        f"--runtime-env-agent-port={rt_env}", f"--ray-client-server-port={client}",
        "--min-worker-port=0", "--max-worker-port=0",
    ]  # fmt: skip
    log_path = temp_dir / "ray-start.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = OwnCluster(address=f"http://127.0.0.1:{dash}", temp_dir=temp_dir, env=_client_env())
    try:
        _wait_for_job_server(cluster.address, proc, log_path)
        yield cluster
    finally:
        _stop(proc, marker, str(temp_dir), cluster)
        if own_temp:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_job_server(address: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`ray start` exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with no_proxy.open(f"{address}/api/jobs/", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"job server at {address} not up after {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen[bytes], marker: str, temp_dir: str, cluster: OwnCluster) -> None:
    """SIGTERM the `ray start --block` we own (it stops its GCS, raylet, dashboard, ... and they their
    workers), then wait until every process seen for this cluster is gone. Leftovers are recorded in
    ``cluster.strays`` and killed: they are this cluster's (matched by pid and start time)."""
    t0 = time.monotonic()
    seen = _cluster_processes(proc.pid, marker, temp_dir)
    cluster.processes_seen = len(seen)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        cluster.strays.append(f"{proc.pid} ray start --block (no exit {STOP_TIMEOUT_S} s after SIGTERM)")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while True:
        alive = {pid: v for pid, v in seen.items() if _start_time(pid) == v[0]}
        alive.update(_cluster_processes(proc.pid, marker, temp_dir))
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    cluster.stop_seconds = time.monotonic() - t0
    for pid, (_, cmdline) in alive.items():
        cluster.strays.append(f"{pid} {cmdline[:200]}")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ray_cli(cluster: OwnCluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RAY, *args], env=cluster.env, capture_output=True, text=True, timeout=timeout, check=False)


def _submit(cluster: OwnCluster, working_dir: Path, entrypoint: list[str], timeout: float) -> tuple[str, str]:
    """`ray job submit` (blocking: it tails the job's logs until the job ends); returns (status, logs)."""
    job_id = f"imc-ray-test-{uuid.uuid4().hex[:8]}"
    submit = [RAY, "job", "submit", "--address", cluster.address, "--working-dir", str(working_dir)]
    submit += ["--submission-id", job_id, "--", *entrypoint]
    try:
        run = subprocess.run(submit, env=cluster.env, capture_output=True, text=True, timeout=timeout, check=False)
        client_out = run.stdout + run.stderr
    except subprocess.TimeoutExpired as exc:
        partial = [o.decode(errors="replace") if isinstance(o, bytes) else (o or "") for o in (exc.stdout, exc.stderr)]
        client_out = f"`ray job submit` timed out after {timeout:.0f} s\n" + "".join(partial)
        _ray_cli(cluster, "job", "stop", "--address", cluster.address, job_id)
    state = str(JobSubmissionClient(cluster.address).get_job_status(job_id).value)
    logs_run = _ray_cli(cluster, "job", "logs", "--address", cluster.address, job_id)
    logs = logs_run.stdout + logs_run.stderr
    if state != "SUCCEEDED":
        print(f"--- ray job submit ---\n{client_out[-6000:]}\n--- job {job_id}: {state} ---")
        print(f"--- ray job logs {job_id} ---\n{logs[-20000:]}")
    return state, logs


@pytest.mark.slow
def test_ray_job_submit_runs_the_pipeline(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    t0 = time.monotonic()
    working_dir = tmp_path / "job"  # small on purpose: what the cluster needs is installed in the venv
    working_dir.mkdir()
    (working_dir / "README.txt").write_text("working_dir of tests/test_job_submit.py\n")
    out = tmp_path / "out"
    small = small_sample(tmp_path / "input")

    with own_ray_cluster(tmp_path_factory) as cluster:
        print(f"[{time.monotonic() - t0:.0f} s] cluster up, job server at {cluster.address}")
        # The entrypoint's `python` is the venv's: the cluster was started with the venv first on PATH.
        probe = "import sys, imc_ray; print('EXECUTABLE=' + sys.executable)"
        state, logs = _submit(cluster, working_dir, ["python", "-c", probe], PROBE_TIMEOUT_S)
        assert state == "SUCCEEDED"
        assert f"EXECUTABLE={VENV_BIN / 'python'}" in logs
        print(f"[{time.monotonic() - t0:.0f} s] probe job done")

        entrypoint = ["python", "-m", "imc_ray", "run", str(small), str(out), *config_args(QUICK_CONFIG)]
        job_timeout = TEST_BUDGET_S - STOP_RESERVE_S - (time.monotonic() - t0)
        state, logs = _submit(cluster, working_dir, entrypoint, job_timeout)
        assert state == "SUCCEEDED"
        print(f"[{time.monotonic() - t0:.0f} s] pipeline job done")

    assert cluster.processes_seen >= 5  # gcs, raylet, dashboard, agents, ...: the scan did see the cluster
    assert cluster.strays == [], "processes of the test's Ray cluster outlived it"

    images = sorted(SMALL)
    with open(out / "submission.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["image"] for r in rows) == images
    assert {(r["dataset"], r["scene"]) for r in rows} == {("nerf_synthetic", "lego")}
    registered = [r for r in rows if "nan" not in r["rotation_matrix"]]
    assert len(registered) >= 5
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["preset"] == "fast"
    assert run["scenes"]["nerf_synthetic/lego"]["num_registered"] >= 5
    print(
        f"job submit test: {time.monotonic() - t0:.0f} s in all, pipeline {run['seconds_total']:.0f} s, "
        f"{len(registered)}/{len(images)} registered; {cluster.processes_seen} cluster processes stopped in "
        f"{cluster.stop_seconds:.1f} s"
    )
