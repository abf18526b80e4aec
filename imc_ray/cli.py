"""Command line: ``imc-ray run | evaluate | view | render | config | fetch-weights``.

Exit codes: 0 success; 1 failure (nothing usable was produced, or bad input such as a missing
folder, an OUTPUT another run holds, a cluster that cannot be reached or cannot hold what a setting
asks for); 2 usage error (unknown option, config key or out-of-range value); 3 partial success (outputs
were written but some images could not be read or some scene failed to map; see ``run.json``); 130 / 143
interrupted by SIGINT / SIGTERM (finished work is kept: run the same command to resume). A URI that no
filesystem handles is a usage error (2); a bucket or folder that cannot be read or written is a failure (1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from imc_ray.config import PRESETS, ConfigError, RunConfig, build_config
from imc_ray.lock import LockError
from imc_ray.storage import UriError, is_uri, redact, resolve, upload_tree

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
INTERRUPTED = "imc-ray: interrupted; run the same command to resume"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the run unwinds (Ray shut down, partial files removed, lock released)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Stopper:
    """Signal handler: the first SIGINT / SIGTERM stops the run cleanly; the second is ignored while it cleans
    up; the third ends the process at once."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 1:
            raise Interrupted(signum)
        if self.count == 2:
            print("imc-ray: stopping (a third signal ends it at once, without cleaning up)", file=sys.stderr)
            return
        os._exit(128 + signum)


def _run_with_signals(args: argparse.Namespace) -> int:
    """``cmd_run`` with SIGINT and SIGTERM turned into a clean stop: exit 130 / 143 and one line that says
    how to resume."""
    stopper = _Stopper()
    previous = {s: signal.signal(s, stopper) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return cmd_run(args)
    except KeyboardInterrupt as exc:
        print(INTERRUPTED, file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="named settings (default: %(default)s)")
    p.add_argument("--config", type=Path, help="JSON file of settings, e.g. a run.json's 'config' section")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set features.max_keypoints=1024 (repeatable)",
    )


def _config(args: argparse.Namespace) -> RunConfig:
    return build_config(args.preset, args.overrides, args.config)


def _local_path(value: str) -> Path:
    """argparse type of the commands that read local files only: a URI is a usage error that says what to do."""
    if is_uri(value):
        raise argparse.ArgumentTypeError(
            f"{redact(value)}: this command reads local files only; copy them first "
            "(e.g. aws s3 sync s3://BUCKET/PREFIX ./local) and pass the local path"
        )
    return Path(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imc-ray", description="Image matching and SfM on Ray: photos in, poses out.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="reconstruct every scene of INPUT into OUTPUT")
    r.add_argument(
        "input", help="<dataset>/<scene>/images/* tree, or one folder of images; a folder or a URI (s3://bucket/prefix)"
    )
    r.add_argument("output", help="output folder (created), or a URI (s3://bucket/prefix)")
    r.add_argument(
        "--work-dir",
        type=Path,
        help="local folder to work in when OUTPUT (or INPUT) is a URI; on a multi-node cluster a filesystem every "
        "node shares (default: OUTPUT if local, else a folder in the system temp dir named after OUTPUT)",
    )
    r.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a private local cluster)")
    r.add_argument(
        "--cluster",
        action="store_true",
        help="IMC-2025 mode: split each scene folder (a pile of images) into clusters and outliers "
        "(same as --set mapping.clusters=true)",
    )
    r.add_argument("--pictures", action="store_true", help="also write PNGs of matches and models (see render)")
    _add_config_args(r)

    v = sub.add_parser("view", help="browse a run's output in a Streamlit app (pip install 'imc-ray[viewer]')")
    v.add_argument("output", type=_local_path)
    v.add_argument("--port", type=int, help="port to serve on (default: Streamlit's)")
    v.add_argument("--address", help="address to serve on (default: Streamlit's)")
    v.add_argument("--input", type=Path, help="the run's INPUT folder, if the photos moved since the run")

    g = sub.add_parser("render", help="write PNGs of the best and worst matched pairs and each model")
    g.add_argument("output", type=_local_path)
    g.add_argument("--dest", type=Path, help="where to write (default: OUTPUT/pictures)")
    g.add_argument("--top", type=int, default=3, help="best and worst pairs per scene (default: %(default)s)")

    x = sub.add_parser("export", help="write a scene's model for splatting and MVS (colmap), NeRF (nerfstudio), ply")
    x.add_argument("output", type=_local_path)
    x.add_argument("--to", required=True, choices=["colmap", "nerfstudio", "ply"], help="see README, 'Outputs'")
    x.add_argument("dest", type=Path, help="a folder (colmap, nerfstudio) or a .ply file (ply)")
    x.add_argument("--scene", help="DATASET/SCENE (needed when OUTPUT holds several scenes with a model)")
    x.add_argument("--input", type=Path, help="the run's INPUT folder, if the photos moved since the run")

    e = sub.add_parser("evaluate", help="score a submission.csv against reference poses")
    e.add_argument("submission", type=_local_path)
    e.add_argument("--truth", type=_local_path, required=True, help="tree with <dataset>/<scene>/labels.csv")
    e.add_argument("--thresholds", type=_local_path, help="CSV dataset,scene,thresholds (';'-joined) for IMC-2024 mAA")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--clusters", action="store_true", help="IMC-2025 score of a clustered submission")

    c = sub.add_parser("config", help="print the resolved config as JSON")
    _add_config_args(c)

    w = sub.add_parser("fetch-weights", help="download the official DINOv2 checkpoint into the torch hub cache")
    _add_config_args(w)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from imc_ray.distributed import pipeline
    from imc_ray.report import summary_table

    if args.cluster:
        args.overrides = ["mapping.clusters=true", *args.overrides]
    cfg = _config(args)
    rep = pipeline.run(args.input, args.output, cfg, address=args.address, work_dir=args.work_dir)
    print(summary_table(rep))
    remote = is_uri(args.output)
    local = Path(rep.work_dir if remote else args.output).resolve()
    where = redact(args.output) if remote else str(local)
    if args.pictures:
        from imc_ray.viewer.render import render

        n = len(render(local))
        if remote:
            upload_tree(local / "pictures", resolve(args.output).child("pictures"))
        print(f"pictures: {n} PNGs in {where.partition('?')[0].rstrip('/')}/pictures")
    print(f"results: {where} (submission.csv, run.json, <dataset>/<scene>/sparse/)")
    failed_scene = any(s.error for s in rep.scenes.values())
    if not any(s.num_registered for s in rep.scenes.values()):
        return EXIT_FAIL
    return EXIT_PARTIAL if rep.errors or failed_scene else EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from imc_ray import evaluate

    if args.clusters:
        result = evaluate.evaluate_clusters(args.submission, args.truth, args.thresholds)
        print(json.dumps(result, indent=1) if args.json else evaluate.format_clusters_table(result))
    else:
        result = evaluate.evaluate(args.submission, args.truth, args.thresholds)
        print(json.dumps(result, indent=1) if args.json else evaluate.format_table(result))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from imc_ray import export

    try:
        dataset, scene = export.export(args.output, args.to, args.dest, args.scene, args.input)
    except export.ExportError as exc:
        print(f"imc-ray export: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"{dataset}/{scene}: {args.to} export in {args.dest}")
    return EXIT_OK


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    import dataclasses

    from imc_ray.stages import retrieval

    cfg = _config(args)
    path = retrieval.resolve_weights(dataclasses.replace(cfg.retrieval, allow_download=True))
    print(path)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command == "run":
            return _run_with_signals(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "fetch-weights":
            return cmd_fetch_weights(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "view":
            from imc_ray.viewer import launch

            return launch(args.output, port=args.port, address=args.address, input_root=args.input)
        if args.command == "render":
            from imc_ray.viewer.render import render

            paths = render(args.output, args.dest, top=args.top)
            print(f"{len(paths)} PNGs written to {args.dest or Path(args.output) / 'pictures'}")
            return EXIT_OK
        print(json.dumps(_config(args).to_dict(), indent=1))
        return EXIT_OK
    except ConfigError as exc:
        print(f"imc-ray: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UriError as exc:
        print(f"imc-ray: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LockError as exc:
        print(f"imc-ray: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except (ValueError, OSError) as exc:
        print(f"imc-ray: error: {exc}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
