"""``python -m imc_ray`` is ``imc-ray``."""

import sys

from imc_ray.cli import main

sys.exit(main())
