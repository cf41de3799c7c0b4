"""The trax half of the CPU speed-ups (`trax_favor.ops.cpu_speedups`): trax's
own jit compiles with their compiler options."""

import contextlib

from trax_favor.compat import fixes


@contextlib.contextmanager
def trax_jit_options():
  """Within this context, trax's `fastmath.jit` (its training and eval
  steps) compiles with `cpu_speedups.compiler_options()`; nothing changes
  where there are none (the switch off, or not the CPU backend)."""
  # Imported here: `import trax_favor` imports compat, and must not import
  # JAX (trax_favor.ops does).
  from trax_favor.ops import cpu_speedups  # pylint: disable=g-import-not-at-top
  options = cpu_speedups.compiler_options()
  if not options:
    yield
    return
  with fixes.jit_with_options(options):
    yield
