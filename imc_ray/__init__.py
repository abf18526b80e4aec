"""imc-ray: Image Matching Challenge style Structure-from-Motion on Ray.

Stages, in data-flow order (``imc_ray.stages``): catalog -> retrieval -> pairs ->
features -> matching -> mapping -> submission. Each stage module holds pure
per-batch functions; ``imc_ray.distributed`` is the only package that imports
Ray and wires the stages into one streaming pipeline.
"""

__version__ = "0.1.0"
