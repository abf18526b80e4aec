"""No run waits forever: an unreachable cluster, a request no node can hold, a stage that stalls.

* :func:`probe_address`: before ``ray.init`` attaches to ``--address`` (or ``$RAY_ADDRESS``), the address
  must accept a TCP connection within :data:`CONNECT_TIMEOUT_S` (Ray itself retries without end).
* :func:`fit_resources`: every Ray request a setting makes (``compute.mapping_cpus``,
  ``compute.cpus_per_actor``, ``compute.gpus_per_actor`` with GPU actors, ``compute.device=cuda``,
  ``compute.actor_resource``) must fit on one node. On a private local cluster (fixed size) a CPU request is
  lowered to the largest node with a warning, and a GPU or custom resource that is absent is an error at
  once. On a cluster the run attached to, the autoscaler is asked for the missing node
  (``request_resources``) and the run waits at most ``compute.resource_wait_s``, then fails naming the
  setting (Ray would only repeat that no node type can fulfil the request).
* :class:`StallReporter`: a stage without progress for ``compute.stall_report_s`` is logged with what
  waits, and the cluster's free resources.
* :func:`deferred_signals`: SIGINT and SIGTERM that arrive while Ray starts are held until it has
  started, so the run's own ``ray.shutdown`` stops every process it started (an interrupted start left
  Ray agents behind).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray

from imc_ray.config import RunConfig

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0
"""How long an ``--address`` may refuse or ignore connections before the run fails."""


class ResourceError(ValueError):
    """The cluster cannot run what a setting asks for (the message names the setting)."""


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port``, ``ray://host:port`` or ``[v6]:port``; None for ``auto``/``local``."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def probe_address(address: str, timeout: float | None = None) -> None:
    """Raise :class:`ConnectionError` (one line, naming the address and the fix) unless ``address`` accepts
    a TCP connection within ``timeout`` seconds (default :data:`CONNECT_TIMEOUT_S`), retrying every second."""
    target = _host_port(address)
    if target is None:
        return
    limit = CONNECT_TIMEOUT_S if timeout is None else timeout
    deadline = time.monotonic() + limit
    while True:
        try:
            with socket.create_connection(target, timeout=max(0.5, min(5.0, deadline - time.monotonic()))):
                return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        if time.monotonic() + 1.0 > deadline:
            raise ConnectionError(
                f"cannot reach the Ray cluster at {address} ({reason}, for {limit:g} s); start it "
                "(ray start --head) or fix --address / $RAY_ADDRESS, or omit both to run on a private local cluster"
            )
        time.sleep(1.0)


@dataclasses.dataclass(frozen=True)
class Request:
    """One node-sized request a setting makes: ``amount`` of ``resource`` on a single node."""

    setting: str
    resource: str
    amount: float


def requests(cfg: RunConfig, use_gpu: bool) -> list[Request]:
    """The requests of a run's tasks and actors, each with the setting that makes it."""
    c = cfg.compute
    out = [Request("compute.mapping_cpus", "CPU", c.mapping_cpus)]
    if use_gpu:
        setting = "compute.device=cuda" if c.device == "cuda" else "compute.gpus_per_actor"
        out += [Request(setting, "GPU", c.gpus_per_actor), Request("compute.cpus_per_actor", "CPU", c.cpus_per_actor)]
    else:
        out.append(Request("compute.cpus_per_actor", "CPU", c.cpus_per_actor))
    if c.actor_resource:
        out.append(Request(f"compute.actor_resource={c.actor_resource}", c.actor_resource, 1.0))
    return out


def largest(resource: str) -> float:
    """The most of ``resource`` any live node has."""
    return max((float(n["Resources"].get(resource, 0.0)) for n in ray.nodes() if n.get("Alive")), default=0.0)


def _clamp(cfg: RunConfig, req: Request, most: float) -> RunConfig:
    """``cfg`` with the CPU request of ``req`` lowered to ``most`` (a fixed-size cluster)."""
    c = cfg.compute
    if req.setting == "compute.mapping_cpus":
        c = dataclasses.replace(c, mapping_cpus=max(1, int(most)))
        value: float = c.mapping_cpus
    else:
        c = dataclasses.replace(c, cpus_per_actor=most)
        value = most
    logger.warning(
        "%s=%g: no node has that many CPUs (the largest has %g); using %g", req.setting, req.amount, most, value
    )
    return dataclasses.replace(cfg, compute=c)


def _missing(reqs: list[Request]) -> list[tuple[Request, float]]:
    return [(r, most) for r in reqs if (most := largest(r.resource)) < r.amount]


def fit_resources(cfg: RunConfig, use_gpu: bool, fixed: bool) -> tuple[RunConfig, list[str]]:
    """Check (and on a ``fixed`` cluster, lower) every request against the nodes; return the config to run
    with and what was changed. Raises :class:`ResourceError` naming the setting that cannot be met."""
    changed: list[str] = []
    if fixed:
        for req, most in _missing(requests(cfg, use_gpu)):
            if req.resource != "CPU" or most <= 0:
                raise _unmet(req, most, waited=0.0)
            cfg = _clamp(cfg, req, most)
            changed.append(f"{req.setting}={req.amount:g} -> {most:g} (the largest node's CPUs)")
        return cfg, changed
    _wait_for(requests(cfg, use_gpu), cfg.compute.resource_wait_s)
    return cfg, changed


def _unmet(req: Request, most: float, waited: float) -> ResourceError:
    after = f" after waiting {waited:g} s (compute.resource_wait_s)" if waited else ""
    if req.setting == "compute.device=cuda":
        fix = "set compute.device=auto (or cpu), or add a GPU node"
    elif req.setting.startswith("compute.actor_resource="):
        fix = f"start a node with ray start --resources='{{\"{req.resource}\": 1}}', or clear compute.actor_resource"
    else:
        fix = f"lower {req.setting} (--set {req.setting}=N) or add a node that has it"
    return ResourceError(
        f"{req.setting} asks for {req.amount:g} {req.resource} on one node, but the largest node has {most:g}"
        f"{after}; {fix}"
    )


def _wait_for(reqs: list[Request], wait_s: float) -> None:
    """Wait until every request fits on a node (asking the autoscaler for it), at most ``wait_s`` seconds."""
    missing = _missing(reqs)
    if not missing:
        return
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{r.resource: r.amount} for r, _ in missing])
    t0 = time.monotonic()
    try:
        while missing:
            waited = time.monotonic() - t0
            if waited >= wait_s:
                req, most = missing[0]
                raise _unmet(req, most, waited=wait_s)
            req, most = missing[0]
            logger.warning(
                "waiting for a node with %g %s (%s); %.0f s left",
                req.amount,
                req.resource,
                req.setting,
                wait_s - waited,
            )
            time.sleep(min(10.0, max(0.1, wait_s - waited)))
            missing = _missing(reqs)
    finally:
        request_resources(bundles=[])


class StallReporter:
    """Logs a warning when :meth:`progress` has not been called for ``after_s`` seconds (then again every
    ``after_s``), with ``describe()`` (what waits) and the cluster's free resources."""

    def __init__(self, after_s: float, describe: Callable[[], str]) -> None:
        self.after_s = after_s
        self.describe = describe
        self._last = self._reported = time.monotonic()

    def progress(self) -> None:
        """Something moved on."""
        self._last = time.monotonic()

    def check(self) -> str | None:
        """Log and return the report when the run has stalled; None otherwise."""
        now = time.monotonic()
        if now - self._last < self.after_s or now - self._reported < self.after_s:
            return None
        self._reported = now
        message = f"no progress for {now - self._last:.0f} s: {self.describe()}; cluster free: {free_resources()}"
        logger.warning("%s", message)
        return message


def free_resources() -> dict[str, Any]:
    """Free CPU, GPU and memory (GB) of the cluster, for stall reports."""
    free = ray.available_resources()
    total = ray.cluster_resources()
    out: dict[str, Any] = {k: f"{free.get(k, 0):g}/{total[k]:g}" for k in ("CPU", "GPU") if k in total}
    out["memory_GB"] = round(free.get("memory", 0) / 1e9, 1)
    return out


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM during the block, then deliver the first one that came (main thread only;
    elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in kinds}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])
