"""Speed and memory benchmarks of trax_favor (not installed; run from the
repository root, e.g. `python -m benchmarks.attention`).

These are command lines: importing the package imports trax quietly, with
trax_favor's fixes (`trax_favor.run.cli.quiet_start`), before any script's own
imports. Where trax is not installed (an accelerator image with only JAX,
NumPy and PyTorch: `benchmarks/accelerator.sh --image-only`), the scripts
that need no trax (`peers` with its trax-free contenders, `rpe`) run
without it.
"""

from trax_favor.run import cli

try:
  cli.quiet_start()
except ModuleNotFoundError as error:
  if (error.name or '').split('.')[0] != 'trax':
    raise
