"""Each scene's CPU tasks, started as soon as its pairs are matched: second round of pairs and orientation
check (one task), then mapping, then (with an OUTPUT URI) the upload of the scene's folder. The stream goes
on with the other scenes meanwhile."""

from __future__ import annotations

import dataclasses
import logging

import ray

from imc_ray import storage
from imc_ray.config import RunConfig
from imc_ray.distributed import guard
from imc_ray.distributed.gate import map_scene, prepare_scene
from imc_ray.distributed.progress import mapping_progress
from imc_ray.formats import SceneLayout
from imc_ray.stages import cameras, mapping, pairs
from imc_ray.stages.catalog import Scene

logger = logging.getLogger(__name__)

SceneKey = tuple[str, str]


def _upload_scene(result: mapping.SceneResult, scene: SceneLayout, uri: str, rel: str) -> mapping.SceneResult:
    """Task chained after a scene's mapping: upload its folder to ``rel`` inside the OUTPUT ``uri``
    (``scene.json`` last); a failed upload becomes the scene's error."""
    try:
        storage.upload_tree(scene.root, storage.resolve(uri).child(rel), last=(scene.scene_json.name,))
    except (storage.StorageError, storage.UriError) as exc:
        logger.error("scene %s: %s", rel, exc)
        result.error = f"{result.error}; {exc}" if result.error else str(exc)
    return result


class SceneScheduler:
    """Starts each scene's tasks once (:meth:`submit`) and collects their results (:meth:`results`).

    ``upload_to``: the OUTPUT URI, or None for a local OUTPUT."""

    def __init__(
        self,
        scenes: dict[SceneKey, tuple[Scene, SceneLayout]],
        cfg: RunConfig,
        known: tuple[cameras.KnownCamera, ...],
        upload_to: str | None,
    ) -> None:
        self.scenes = scenes
        self.cfg = cfg
        self.known = known
        self.upload_to = upload_to
        self.map_cfg = cfg.mapping
        if self.map_cfg.num_threads == -1:  # pycolmap's -1 means every core of the machine, not the task's share
            self.map_cfg = dataclasses.replace(self.map_cfg, num_threads=cfg.compute.mapping_cpus)
        cpus = cfg.compute.mapping_cpus
        self._prepare = ray.remote(num_cpus=cpus)(prepare_scene)
        self._map = ray.remote(num_cpus=cpus)(map_scene)
        self._upload = ray.remote(num_cpus=0.25)(_upload_scene)
        self._futures: list[ray.ObjectRef] = []
        self.submitted: set[SceneKey] = set()

    def submit(self, key: SceneKey, num_pairs: int) -> None:
        """Start the scene's second round of pairs and orientation check (when it has pairs and either applies),
        its mapping and its upload."""
        self.submitted.add(key)
        scene, layout = self.scenes[key]
        second = pairs.has_second_round(len(scene.images), self.cfg.retrieval)
        rotated: ray.ObjectRef | None = None  # the check's {image: degrees}, when it runs
        if num_pairs and (second or self.cfg.matching.rotation_check):  # mapping waits (an ObjectRef argument)
            rotated = self._prepare.remote(layout, scene.image_dir, self.cfg)
        inputs = mapping.SceneInputs(layout, scene.image_dir, scene.dataset, scene.name, len(scene.images))
        result = self._map.remote(inputs, self.cfg, self.map_cfg, rotated, self.known)
        if self.upload_to is not None:
            result = self._upload.remote(result, layout, self.upload_to, f"{key[0]}/{key[1]}")
        self._futures.append(result)

    def missing(self) -> list[SceneKey]:
        """Scenes never submitted (the stream ended early)."""
        return sorted(set(self.scenes) - self.submitted)

    def results(self) -> list[mapping.SceneResult]:
        """Wait for every submitted scene, with a progress bar and stall reports; sorted by scene."""
        stall_s = self.cfg.compute.stall_report_s
        results: list[mapping.SceneResult] = []
        pending = list(self._futures)
        with mapping_progress(len(pending)) as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=stall_s)
                if not ready:  # a stall report: what waits, and for what
                    logger.warning(
                        "mapping: %d scenes not finished after %g s more; each mapping task needs "
                        "compute.mapping_cpus=%d CPUs; cluster free: %s",
                        len(pending),
                        stall_s,
                        self.cfg.compute.mapping_cpus,
                        guard.free_resources(),
                    )
                    continue
                results.append(ray.get(ready[0]))
                bar.update(1)
        return sorted(results, key=lambda r: (r.dataset, r.scene))
