"""deploy/ray-cluster.yaml: validated by Ray's own cluster-launcher code (no AWS call), plus the properties
deploy/README.md relies on (image versions, no open ports, no keys, GPU worker types, imc-ray setup)."""

from __future__ import annotations

import copy
import re
import socket
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from imc_ray import cli
from imc_ray.config import PRESETS

from .conftest import ROOT

CLUSTER_YAML = ROOT / "deploy" / "ray-cluster.yaml"
# What Ray's validation raises for a bad config: schema errors, and ValueError from its cross-field checks.
INVALID = (jsonschema.ValidationError, ValueError)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation must not reach AWS (or anything else): any attempt to connect fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during config validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def validate_file(path: Path) -> dict[str, Any]:
    """What `ray up` does to a config before it talks to AWS: fill in the AWS defaults, merge the setup
    commands, check docker and the per-type worker limits (prepare_config), then check it against
    ray/autoscaler/ray-schema.json and the launcher's cross-field rules (validate_config)."""
    raw = yaml.safe_load(path.read_text())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_validates_the_cluster_config() -> None:
    cfg = validate_file(CLUSTER_YAML)
    assert cfg["provider"]["type"] == "aws"
    assert cfg["head_node_type"] in cfg["available_node_types"]


def _write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    out = tmp_path / "ray-cluster.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def _unknown_top_level_key(c: dict[str, Any]) -> None:
    c["min_worker"] = 1


def _unknown_node_type_key(c: dict[str, Any]) -> None:
    c["available_node_types"]["gpu_g5"]["max_worker"] = 4


def _node_type_without_node_config(c: dict[str, Any]) -> None:
    del c["available_node_types"]["gpu_g5"]["node_config"]


def _fractional_resource(c: dict[str, Any]) -> None:
    c["available_node_types"]["gpu_g5"]["resources"]["GPU"] = 0.5


def _max_workers_not_an_integer(c: dict[str, Any]) -> None:
    c["max_workers"] = "four"


def _head_type_not_defined(c: dict[str, Any]) -> None:
    c["head_node_type"] = "no_such_type"


def _min_workers_above_max_workers(c: dict[str, Any]) -> None:
    c["max_workers"] = 0


def _unknown_docker_key(c: dict[str, Any]) -> None:
    c["docker"]["imag"] = c["docker"]["image"]


def _unknown_security_group_key(c: dict[str, Any]) -> None:
    c["provider"]["security_group"] = {"GroupName": "x", "Ingress": []}


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (_unknown_top_level_key, "'min_worker' was unexpected"),
        (_unknown_node_type_key, "'max_worker' was unexpected"),
        (_node_type_without_node_config, "'node_config' is a required property"),
        (_fractional_resource, "0.5 is not of type 'integer'"),
        (_max_workers_not_an_integer, "'four' is not of type 'integer'"),
        (_head_type_not_defined, "must be one of `available_node_types`"),
        (_min_workers_above_max_workers, "smaller than the sum of `min_workers`"),
        (_unknown_docker_key, "'imag' was unexpected"),
        (_unknown_security_group_key, "'Ingress' was unexpected"),
    ],
)
def test_ray_rejects_a_broken_copy(raw: dict[str, Any], tmp_path: Path, breakage: Any, reason: str) -> None:
    broken = copy.deepcopy(raw)
    breakage(broken)
    with pytest.raises(INVALID, match=re.escape(reason)):
        validate_file(_write(tmp_path, broken))


def test_ray_rejects_a_broken_copy_of_the_text(tmp_path: Path) -> None:
    """The file itself, not a re-serialised dict: one stray top-level line makes it invalid."""
    broken = tmp_path / "ray-cluster.yaml"
    broken.write_text(CLUSTER_YAML.read_text() + "\nhead_node_typo: head\n")
    with pytest.raises(jsonschema.ValidationError, match="head_node_typo"):
        validate_file(broken)


def test_image_matches_the_ray_and_python_used_here(raw: dict[str, Any]) -> None:
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    # `ray up` and `ray job submit` run the Ray installed here; the cluster must run the same Ray and Python.
    assert raw["docker"]["image"] == f"rayproject/ray:{ray.__version__}-{py}-gpu"
    pins = [c for c in raw["setup_commands"] if "ray[" in c]
    assert pins and all(f"ray[default,data]=={ray.__version__}" in c for c in pins)


def test_dashboard_and_ray_ports_are_not_opened(raw: dict[str, Any]) -> None:
    # Every node type names the user's security group (SSH from one CIDR only), so Ray does not create its
    # default group, whose SSH rule is open to 0.0.0.0/0; and no extra inbound rules are configured.
    assert "security_group" not in raw["provider"]
    for name, node_type in raw["available_node_types"].items():
        sgs = node_type["node_config"].get("SecurityGroupIds")
        assert sgs and all(re.fullmatch(r"sg-[0-9a-f]+", sg) for sg in sgs), name
        assert "NetworkInterfaces" not in node_type["node_config"], name
    assert "0.0.0.0" not in yaml.safe_dump(raw)  # the parsed config, not the comments
    # The dashboard (and job server) binds to loopback: reachable through the `ray dashboard` SSH tunnel only.
    [head_start] = [c for c in raw["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start


def test_no_credentials_in_the_file(raw: dict[str, Any]) -> None:
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"(?i)aws_access_key_id|aws_secret_access_key|aws_session_token|AKIA[0-9A-Z]{16}", text)
    assert "aws_credentials" not in raw["provider"]
    for name, node_type in raw["available_node_types"].items():
        arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", arn), name


def test_gpu_worker_types(raw: dict[str, Any]) -> None:
    head = raw["head_node_type"]
    workers = {k: v for k, v in raw["available_node_types"].items() if k != head}
    assert len(workers) >= 1
    assert "GPU" not in raw["available_node_types"][head]["resources"]
    for name, node_type in workers.items():
        res = node_type["resources"]
        assert res.get("GPU", 0) >= 1 and res.get("gpu_node") == 1, name
        assert re.match(r"g[56]\.", node_type["node_config"]["InstanceType"]), name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= raw["max_workers"], name
        assert node_type["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
    assert sum(w["min_workers"] for w in workers.values()) >= 1  # GPUs present when the first job starts


def test_setup_installs_imc_ray_and_caches_dinov2(raw: dict[str, Any]) -> None:
    setup = raw["setup_commands"]
    assert any("pip install" in c and "imc_ray-" in c for c in setup)
    [fetch] = [c for c in setup if "fetch-weights" in c]
    argv = fetch.split()
    assert argv[:2] == ["imc-ray", "fetch-weights"]
    args = cli.parser().parse_args(argv[1:])  # the command line is one that imc-ray accepts
    assert args.preset == "ec2" and "ec2" in PRESETS
    assert any("boto3" in c for c in raw["head_setup_commands"])  # the autoscaler on the head needs it


def test_file_mounts_do_not_ship_the_repository(raw: dict[str, Any]) -> None:
    """`ray up` reads every file under a file_mounts source to hash it, ignoring rsync filters: the
    repository root (with its multi-GB .venv) must not be one."""
    for remote, local in raw["file_mounts"].items():
        src = (ROOT / local).resolve()
        assert src != ROOT and src not in ROOT.parents and ".venv" not in src.parts, remote


def test_worker_and_head_start_commands_use_the_same_auth_mode(raw: dict[str, Any]) -> None:
    starts = [c for c in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"] if "ray start" in c]
    modes = {m for c in starts for m in re.findall(r"RAY_AUTH_MODE=(\w+)", c)}
    assert len(starts) == 2 and len(modes) == 1
