"""XLA compiler options that make FAVOR+ faster on the CPU, per executable.

jaxlib 0.10's CPU backend hands matrix products, with the elementwise work
and reductions around them, to YNNPACK fusions; on this project's CPU a
product fused with two reductions (the key features' backward pass) ran
about 10x below the same product alone (docs/cpu.md). The option
`xla_cpu_experimental_ynn_fusion_type=''` turns those fusions off, so XLA
runs products with its own (Eigen) kernels and fuses the rest itself.

It is passed per compiled program, never through XLA_FLAGS, so no other
computation of the process changes:

  `jit(fn, ...)`          jax.jit with the options where it is the top-level
                          program (our decoding step, the benchmarks, the
                          ops called outside a jit of yours)
  `compiler_options()`    the dict, for a jit of your own:
                          jax.jit(f, compiler_options=trax_favor.compiler_options())
  `trax_jit_options()`    a context in which trax's jit (its training and
                          eval steps) compiles with them; our training uses it

The options are empty (nothing changes) off the CPU backend, for jaxlib
older than 0.10.1 (XLA refuses an option it does not know), and where the
environment sets TRAX_FAVOR_XLA_CPU_DEFAULTS=0. Asking for them starts the
JAX backend, so they are computed on first use, never at import.
"""

import contextlib
import functools
from importlib import metadata
import os
import re

import jax

YNN_OPTION = 'xla_cpu_experimental_ynn_fusion_type'


@functools.lru_cache(maxsize=None)
def _default_options():
  try:
    found = re.match(r'(\d+)\.(\d+)\.(\d+)', metadata.version('jaxlib'))
  except metadata.PackageNotFoundError:
    return ()
  if not found or tuple(map(int, found.groups())) < (0, 10, 1):
    return ()
  if jax.default_backend() != 'cpu':
    return ()
  return ((YNN_OPTION, ''),)


def compiler_options():
  """{option: value} for jax.jit's compiler_options; {} where none apply."""
  if os.environ.get('TRAX_FAVOR_XLA_CPU_DEFAULTS') == '0':
    return {}
  return dict(_default_options())


def jit(fn, **jit_kwargs):
  """jax.jit(fn, **jit_kwargs), compiled with `compiler_options()` when it
  is the top-level program.

  JAX takes compiler options only on a top-level jit: called while tracing
  (inside another jit, grad or scan), the function runs as a plain nested
  jit, and the outer program's options apply. The options are looked up at
  the first top-level call (not at decoration, which may happen at import,
  before the backend may start).
  """
  nested = jax.jit(fn, **jit_kwargs)
  top = []

  @functools.wraps(fn)
  def call(*args, **kwargs):
    leaves = jax.tree_util.tree_leaves((args, kwargs))
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
      return nested(*args, **kwargs)
    if not top:
      options = compiler_options()
      top.append(jax.jit(fn, compiler_options=options, **jit_kwargs)
                 if options else nested)
    return top[0](*args, **kwargs)
  return call


@contextlib.contextmanager
def trax_jit_options():
  """Within this context, trax's `fastmath.jit` compiles with the options."""
  options = compiler_options()
  if not options:
    yield
    return
  from trax_favor import compat  # pylint: disable=g-import-not-at-top
  with compat.jit_with_options(options):
    yield
