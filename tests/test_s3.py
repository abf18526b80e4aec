"""INPUT and OUTPUT on S3 and other pyarrow/fsspec URIs (``imc_ray/storage.py``).

The S3 tests use a real S3-compatible server, moto's server mode, started here on 127.0.0.1 with a bucket
the test creates; the end-to-end tests run the real CLI (``s3://`` INPUT and OUTPUT) in a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from imc_ray import cli, storage

from .conftest import QUICK_CONFIG, SMALL, assert_same_poses, config_args, read_poses, small_sample

BUCKET = "imc-ray-test"
KEY_ID = "AKIDTESTTESTTESTTEST"
SECRET_ENV = "envSecretKey-0123456789-do-not-leak"
SECRET_URI = "uriSecretKey-9876543210-do-not-leak"


# ----------------------------------------------------------------------------- no server


def test_is_uri() -> None:
    assert storage.is_uri("s3://bucket/in")
    assert storage.is_uri("file:///tmp/x")
    assert not storage.is_uri("/tmp/x")
    assert not storage.is_uri("relative/dir")
    assert not storage.is_uri(Path("s3://bucket/in"))  # a Path is local (and has lost its '//')


def test_redact_drops_credentials_and_keeps_the_rest() -> None:
    uri = "s3://AKID:se/cr+et@bucket/out?endpoint_override=127.0.0.1:9000&scheme=http&secret_key=abc&session_token=t"
    shown = storage.redact(uri)
    assert shown == "s3://bucket/out?endpoint_override=127.0.0.1:9000&scheme=http&secret_key=***&session_token=***"
    assert storage.redact("s3://bucket/a@b/c") == "s3://bucket/a@b/c"  # an '@' in a key is not userinfo
    assert storage.redact("gs://bucket/x") == "gs://bucket/x"


def test_unknown_scheme_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(storage.UriError, match="unknown URI scheme 'nope'"):
        storage.resolve("nope://bucket/in")
    assert cli.main(["run", "nope://u:hidden@bucket/in", str(tmp_path / "out")]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope://bucket/in" in err and "install the fsspec package" in err
    assert "hidden" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_uri(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["evaluate", "s3://bucket/out/submission.csv", "--truth", "examples"])
    assert info.value.code == cli.EXIT_USAGE
    assert "reads local files only" in capsys.readouterr().err


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_upload_and_download_mirror_and_skip_unchanged_files(tmp_path: Path) -> None:
    """file:// is a real pyarrow filesystem: the same code path as S3 without a server."""
    local, remote_dir, back = tmp_path / "local", tmp_path / "remote", tmp_path / "back"
    _tree(local, {"a.txt": b"a", "sub/b.bin": b"bb", ".tmp-x": b"never sent", "sub/.hidden/c": b"c"})
    remote = storage.resolve(f"file://{remote_dir}")
    assert storage.upload_tree(local, remote) == 2
    assert set(storage.list_files(remote)) == {"a.txt", "sub/b.bin"}
    assert storage.upload_tree(local, remote) == 0  # unchanged: nothing sent again

    (local / "a.txt").write_bytes(b"A")  # same size, new content: the mtime tells
    os.utime(local / "a.txt", (time.time() + 5, time.time() + 5))
    (local / "sub" / "b.bin").unlink()
    assert storage.upload_tree(local, remote) == 1
    assert set(storage.list_files(remote)) == {"a.txt"}
    assert (remote_dir / "a.txt").read_bytes() == b"A"

    _tree(back, {"stale.txt": b"s", "shards/x.parquet": b"p"})
    assert storage.download_tree(remote, back, keep=lambda rel: rel.startswith("shards/")) == 1
    assert storage.local_files(back).keys() == {"a.txt", "shards/x.parquet"}
    assert storage.download_tree(remote, back) == 0


def test_fsspec_only_scheme(tmp_path: Path) -> None:
    """A scheme pyarrow does not know goes through fsspec (here its in-memory filesystem)."""
    remote = storage.resolve("memory://imc-ray-test/out")
    assert isinstance(remote.fs, pafs.PyFileSystem)
    _tree(tmp_path / "l", {"x/y.txt": b"hello"})
    assert storage.upload_tree(tmp_path / "l", remote) == 1
    assert storage.download_tree(remote, tmp_path / "r") == 1
    assert (tmp_path / "r" / "x" / "y.txt").read_bytes() == b"hello"


@pytest.mark.parametrize(
    ("files", "plan"),
    [
        ({"ds/s1/images/a.jpg": 1, "ds/s1/labels.csv": 1, "ds/s2/images/sub/b.png": 1}, {"ds/s1", "ds/s2"}),
        ({"images/a.jpg": 1, "other/b.jpg": 1}, {""}),
        ({"a.jpg": 1, "sub/b.jpg": 1, "notes.txt": 1}, {""}),
    ],
)
def test_image_plan_follows_the_catalog_layouts(tmp_path: Path, files: dict[str, int], plan: set[str]) -> None:
    _tree(tmp_path, {rel: b"x" for rel in files})
    got = storage.image_plan(storage.resolve(f"file://{tmp_path}"))
    assert set(got) == plan
    rels = {e.rel for entries in got.values() for e in entries}
    assert all(r.endswith((".jpg", ".png")) for r in rels) and "other/b.jpg" not in rels


def test_work_dir_belongs_to_one_output(tmp_path: Path) -> None:
    a, b = storage.resolve(f"file://{tmp_path}/a"), storage.resolve(f"file://{tmp_path}/b")
    assert storage.default_work_dir(a) == storage.default_work_dir(storage.resolve(f"file://{tmp_path}/a"))
    assert storage.default_work_dir(a) != storage.default_work_dir(b)
    work = storage.prepare_work_dir(tmp_path / "w", a)
    assert storage.prepare_work_dir(tmp_path / "w", a) == work
    with pytest.raises(ValueError, match="belongs to the output"):
        storage.prepare_work_dir(tmp_path / "w", b)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not empty"):
        storage.prepare_work_dir(tmp_path / "mine", a)


# ----------------------------------------------------------------------------- a real S3 server on loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, a bucket in it, and dummy credentials in this process's environment;
    yields the endpoint ``127.0.0.1:PORT``."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in _aws_env(f"127.0.0.1:{port}").items():
                mp.setenv(k, v)
            fs = pafs.S3FileSystem(
                endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1", allow_bucket_creation=True
            )
            fs.create_dir(BUCKET)
            yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ENV,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{endpoint}",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask the (unreachable) instance metadata service
    }


def _fs(endpoint: str) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1")


def test_missing_bucket_is_named_with_the_fix(s3: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(storage.StorageError, match="bucket does not exist: create it"):
        storage.check_writable(storage.resolve("s3://no-such-bucket/out"))
    code = cli.main(["run", f"s3://{KEY_ID}:{SECRET_URI}@no-such-bucket/in", str(tmp_path / "out")])
    assert code == cli.EXIT_FAIL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bucket 'no-such-bucket' does not exist" in err and "s3://no-such-bucket/in" in err
    assert SECRET_URI not in err and "Traceback" not in err


def test_unreachable_endpoint_is_named_with_the_fix(s3: str) -> None:
    dead = f"127.0.0.1:{_free_port()}"  # nothing listens there
    remote = storage.resolve(f"s3://{BUCKET}/out?endpoint_override={dead}&scheme=http&region=us-east-1")
    with pytest.raises(storage.StorageError, match="endpoint cannot be reached") as info:
        storage.check_writable(remote)
    assert f"s3://{BUCKET}/out" in str(info.value) and "\n" not in str(info.value)


def _cli(work: Path) -> list[str]:
    inp = f"s3://{KEY_ID}:{SECRET_URI}@{BUCKET}/in"  # credentials in the URI must be redacted too
    out = f"s3://{BUCKET}/out"
    return [sys.executable, "-m", "imc_ray", "run", inp, out, *config_args(QUICK_CONFIG), "--work-dir", str(work)]


def _run(endpoint: str, work: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **_aws_env(endpoint)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(_cli(work), env=env, capture_output=True, text=True, timeout=1800)


def _keys(fs: pafs.FileSystem, prefix: str) -> dict[str, int]:
    infos = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return {i.path[len(BUCKET) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}


@pytest.fixture(scope="module")
def s3_run(s3: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Six bundled views uploaded to ``s3://BUCKET/in``, then ``imc-ray run s3://.../in s3://.../out``."""
    fs = _fs(s3)
    small = str(small_sample(tmp_path_factory.mktemp("small")))
    pafs.copy_files(small, f"{BUCKET}/in", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    before = _keys(fs, "in")
    work = tmp_path_factory.mktemp("work1")
    proc = _run(s3, work)
    assert proc.returncode == cli.EXIT_OK, proc.stderr[-4000:]
    return {"fs": fs, "input_keys": before, "proc": proc, "work": work}


def _download(fs: pafs.FileSystem, key: str, dest: Path) -> Path:
    pafs.copy_files(f"{BUCKET}/{key}", str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return dest


@pytest.mark.slow
def test_run_reads_and_writes_s3(s3_run: dict[str, Any], tmp_path: Path) -> None:
    fs: pafs.FileSystem = s3_run["fs"]
    keys = _keys(fs, "")
    assert _keys(fs, "in") == s3_run["input_keys"]  # INPUT untouched
    assert all(k.startswith(("in/", "out/")) for k in keys)  # nothing written outside OUTPUT
    assert not [k for k in keys if any(p.startswith(".") for p in k.split("/"))]  # no temporary or check files
    scene = "out/nerf_synthetic/lego"
    for name in ("features.h5", "matches.h5", "pairs.txt", "database.db", "scene.json", "sparse/0/images.bin"):
        assert f"{scene}/{name}" in keys, name
    assert any(k.startswith(f"{scene}/shards/features-") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith(f"{scene}/shards/matches-") and k.endswith(".parquet") for k in keys)

    with open(_download(fs, "out/submission.csv", tmp_path / "submission.csv")) as f:
        rows = [r for r in csv.DictReader(f) if (r["dataset"], r["scene"]) == ("nerf_synthetic", "lego")]
    assert len(rows) == len(SMALL)
    assert sum("nan" not in r["rotation_matrix"] for r in rows) >= 5

    text = _download(fs, "out/run.json", tmp_path / "run.json").read_text()
    rep = json.loads(text)
    assert rep["input"] == f"s3://{BUCKET}/in" and rep["output"] == f"s3://{BUCKET}/out"
    assert rep["stages"]["input"]["images"] == len(SMALL) and rep["stages"]["input"]["copied"] == len(SMALL)
    assert rep["scenes"]["nerf_synthetic/lego"]["num_registered"] >= 5
    proc: subprocess.CompletedProcess[str] = s3_run["proc"]
    for secret in (SECRET_ENV, SECRET_URI):
        assert secret not in text and secret not in proc.stdout and secret not in proc.stderr
    assert f"results: s3://{BUCKET}/out" in proc.stdout


@pytest.mark.slow
def test_rerun_resumes_from_the_bucket_with_an_empty_work_dir(s3: str, s3_run: dict[str, Any], tmp_path: Path) -> None:
    fs: pafs.FileSystem = s3_run["fs"]
    first = read_poses(_download(fs, "out/submission.csv", tmp_path / "first.csv"))
    proc = _run(s3, tmp_path / "fresh-work")
    assert proc.returncode == cli.EXIT_OK, proc.stderr[-4000:]
    rep = json.loads(_download(fs, "out/run.json", tmp_path / "run.json").read_text())
    st = rep["stages"]
    assert st["features"]["images"] == 0 and st["features"]["reused"] == len(SMALL)
    assert st["matching"]["pairs"] == 0 and st["matching"]["reused"] == 15
    assert st["mapping"]["reused"] == 1
    assert rep["work_dir"] == str((tmp_path / "fresh-work").resolve())
    assert_same_poses(read_poses(_download(fs, "out/submission.csv", tmp_path / "again.csv")), first)
