"""Every use of a Ray internal, in one place; ``tests/test_ray_internals.py`` fails when one stops working.

* :func:`split_blocks`: Ray Data's streaming repartition runs as 1-CPU tasks and its resources cannot be set
  through the public API. On a machine whose CPUs the model-actor pools hold, the repartition would wait for
  feature extraction to end (a whole-dataset barrier). Splitting rows is bookkeeping, so it is given 0 CPUs
  through its logical operator's ``ray_remote_args``. Public alternatives were tried and do not split: a
  0-CPU ``map_batches`` (identity or a generator yielding small batches) has its output merged back into one
  block by Ray Data's output buffer, so a scene's pairs would still reach a single matcher.
"""

from __future__ import annotations

import logging

import ray.data

logger = logging.getLogger(__name__)


def split_blocks(ds: ray.data.Dataset, rows: int) -> ray.data.Dataset:
    """Cut the stream into blocks of at most ``rows`` rows without holding rows back (so each block goes
    to one matcher call), with the repartition's tasks asking for 0 CPUs. A Ray version without the
    internal gets a warning and the plain repartition (correct, but matching may then wait for feature
    extraction to end).
    """
    ds = ds.repartition(target_num_rows_per_block=rows)
    op = getattr(getattr(ds, "_logical_plan", None), "dag", None)  # the StreamingRepartition operator
    args = getattr(op, "ray_remote_args", None)
    if not isinstance(args, dict):
        logger.warning(
            "ray %s hides the repartition's resources: matching may wait for feature extraction to end "
            "(imc_ray/distributed/ray_internals.py)",
            ray.__version__,
        )
    else:
        args["num_cpus"] = 0
    return ds
