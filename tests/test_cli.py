from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imc_ray import cli


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "in", "out", "--bogus"])
    assert info.value.code == cli.EXIT_USAGE


def test_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", str(tmp_path), str(tmp_path / "o"), "--set", "features.maxkp=3"]) == cli.EXIT_USAGE
    assert "unknown config key 'features.maxkp'" in capsys.readouterr().err


def test_missing_input_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", str(tmp_path / "nope"), str(tmp_path / "o")]) == cli.EXIT_FAIL
    err = capsys.readouterr().err
    assert "nope" in err and "is not a folder" in err
    assert not (tmp_path / "o").exists()


def test_config_command_prints_resolved_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "imc_ray", "config", "--preset", "fast", "--set", "matching.min_matches=20"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '"min_matches": 20' in out and '"preset": "fast"' in out
