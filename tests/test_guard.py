"""No run waits forever (issue 16): an unreachable --address fails in bounded time, a request no node can
hold fails fast naming the setting (or is lowered on a fixed-size cluster), and a stall is reported."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from imc_ray import cli
from imc_ray.config import build_config
from imc_ray.distributed import guard


def _closed_port() -> int:
    """A local port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_address_fails_in_bounded_time() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        guard.probe_address(address, timeout=2.0)
    assert time.monotonic() - t0 < 5
    assert f"cannot reach the Ray cluster at {address}" in str(info.value) and "ray start --head" in str(info.value)
    with socket.socket() as server:  # a listening address passes at once
        server.bind(("127.0.0.1", 0))
        server.listen()
        guard.probe_address(f"ray://127.0.0.1:{server.getsockname()[1]}", timeout=2.0)
    guard.probe_address("local")  # nothing to probe
    guard.probe_address("auto")


def test_cli_address_pointing_at_nothing_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "CONNECT_TIMEOUT_S", 2.0)
    images = tmp_path / "in"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    address = f"127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    assert cli.main(["run", str(images), str(tmp_path / "out"), "--address", address]) == cli.EXIT_FAIL
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert f"cannot reach the Ray cluster at {address}" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / ".imc-ray.lock").exists()  # the lock was released


def test_unsatisfiable_requests_fail_fast_or_are_lowered(ray_local: None, caplog: pytest.LogCaptureFixture) -> None:
    """On the 2-CPU test cluster: the ec2 preset's 4 mapping CPUs."""
    cfg = build_config("ec2", ["compute.device=auto"])
    assert cfg.compute.mapping_cpus == 4
    fitted, lowered = guard.fit_resources(cfg, use_gpu=False, fixed=True)  # a private local cluster: lowered
    assert fitted.compute.mapping_cpus == 2 and lowered == ["compute.mapping_cpus=4 -> 2 (the largest node's CPUs)"]
    assert "compute.mapping_cpus=4: no node has that many CPUs" in caplog.text

    t0 = time.monotonic()  # an attached cluster: waits compute.resource_wait_s, then names the setting
    slow = build_config("ec2", ["compute.device=auto", "compute.resource_wait_s=1"])
    with pytest.raises(guard.ResourceError, match=r"compute.mapping_cpus asks for 4 CPU on one node, but the largest"):
        guard.fit_resources(slow, use_gpu=False, fixed=False)
    assert time.monotonic() - t0 < 20

    with pytest.raises(guard.ResourceError, match=r"compute.device=cuda asks for 1 GPU .* set compute.device=auto"):
        guard.fit_resources(build_config("ec2"), use_gpu=True, fixed=True)
    with pytest.raises(guard.ResourceError, match=r"ray start --resources='\{\"gpu_node\": 1\}'"):
        guard.fit_resources(build_config("default", ["compute.actor_resource=gpu_node"]), use_gpu=False, fixed=True)
    same, lowered = guard.fit_resources(build_config("fast"), use_gpu=False, fixed=False)
    assert same == build_config("fast") and lowered == []


def test_stall_is_reported_with_what_waits(ray_local: None, caplog: pytest.LogCaptureFixture) -> None:
    stall = guard.StallReporter(0.2, lambda: "features 3/10 images")
    assert stall.check() is None
    time.sleep(0.3)
    with caplog.at_level(logging.WARNING):
        message = stall.check()
    assert message is not None and "no progress for 0 s: features 3/10 images; cluster free: {'CPU': '" in message
    assert stall.check() is None  # not again before another after_s
    stall.progress()
    assert stall.check() is None
