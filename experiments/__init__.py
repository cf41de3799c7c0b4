"""Experiments behind trax_favor's results (not installed; run from the
repository root, e.g. `python -m experiments.ladder --preset cpu`).

approximation     FAVOR error against exact softmax, as m grows
ladder            Performer vs its Reformer twin at 6/12/24 layers
transfer          exact-attention weights in FAVOR+ models
backward_compat   the transfer, then fine-tuning with FAVOR+
"""

from trax_favor.run import cli

cli.quiet_start()  # command lines: trax imported quietly, with the fixes
