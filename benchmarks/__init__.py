"""Speed and memory benchmarks of trax_favor (not installed; run from the
repository root, e.g. `python -m benchmarks.attention`).

These are command lines: importing the package imports trax quietly, with
trax_favor's fixes (`trax_favor.run.cli.quiet_start`), before any script's own
imports.
"""

from trax_favor.run import cli

cli.quiet_start()
