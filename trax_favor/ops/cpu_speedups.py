"""The CPU-only speed-ups of trax_favor, behind one switch.

Three things make FAVOR+ faster on XLA's CPU backend and nowhere else:

  product gradients   FAVOR's three matrix products (`sum_over_keys` A^T B,
                      `apply_sums` A B, `pair_scores` A B^T) carry hand-written
                      gradients, each again one of the three, so every
                      backward product has its result in row-major order.
                      Left to autodiff, the CPU backend computed two of them
                      as transposed results (then copied them back) at about
                      half the product rate.
  row maximum         `row_max` takes max(x, axis=-1) as elementwise maxima
                      of 32-wide slices, then a reduce of 32: the backend
                      rewrites wider reductions into a reduce-window that ran
                      well below memory speed on the (l, m) logits.
  XLA option          `xla_cpu_experimental_ynn_fusion_type=''` per compiled
                      program (jaxlib >= 0.10.1): products run with XLA's own
                      kernels instead of YNNPACK fusions, one of which ran
                      about 10x below the product alone (docs/cpu.md).

With the switch off the products are plain `jnp.einsum`, the maximum is
`jnp.max` and programs compile with XLA's defaults: what a GPU or TPU gets,
and what `jax.jvp` / `jax.jacfwd` need (the hand-written gradients are
reverse-mode only). Both settings give the same outputs and gradients up to
float32 rounding (tests/test_cpu_speedups.py).

The switch, first that applies:
  `forced(True/False)`           a context, for tests and benchmarks
  TRAX_FAVOR_CPU_SPEEDUPS=1/0    the environment
  otherwise                      on exactly when JAX's default backend is CPU

It is read when a function is traced. `jit` below keeps one compiled
program per setting, so trax_favor's ops follow a change at once; a jit of
your own (or trax's training step) keeps what it traced: set the switch
before building and compiling a model. Nothing is read at import, so
importing trax_favor starts no JAX backend.

  `jit(fn, ...)`          jax.jit that follows the switch and, as a top-level
                          program, compiles with `compiler_options()`
  `compiler_options()`    the dict, for a jit of your own:
                          jax.jit(f, compiler_options=trax_favor.compiler_options())

trax's jit (its training and eval steps) gets the options inside
`trax_favor.compat.trax_jit_options()`; our training uses it. This module
is pure JAX: it knows nothing of trax.
"""

import contextlib
import functools
from importlib import metadata
import os
import re

import jax
import jax.numpy as jnp

ENV = 'TRAX_FAVOR_CPU_SPEEDUPS'
YNN_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
_forced = []  # the innermost `forced` setting last


def enabled():
  """Whether the CPU speed-ups apply now (see the module docstring)."""
  if _forced:
    return _forced[-1]
  setting = os.environ.get(ENV)
  if setting in ('0', '1'):
    return setting == '1'
  return jax.default_backend() == 'cpu'


@contextlib.contextmanager
def forced(on):
  """Within this context the switch is `on` (True or False)."""
  _forced.append(bool(on))
  try:
    yield
  finally:
    _forced.pop()


@functools.lru_cache(maxsize=None)
def _option_supported():
  """XLA knows the option: CPU backend, jaxlib 0.10.1 or later."""
  try:
    found = re.match(r'(\d+)\.(\d+)\.(\d+)', metadata.version('jaxlib'))
  except metadata.PackageNotFoundError:
    return False
  if not found or tuple(map(int, found.groups())) < (0, 10, 1):
    return False
  return jax.default_backend() == 'cpu'


def compiler_options():
  """{option: value} for jax.jit's compiler_options; {} where none apply."""
  if not enabled() or not _option_supported():
    return {}
  return {YNN_OPTION: ''}


def jit(fn, **jit_kwargs):
  """jax.jit(fn, **jit_kwargs) with one program per switch setting, compiled
  with `compiler_options()` when it is the top-level program.

  JAX takes compiler options only on a top-level jit: called while tracing
  (inside another jit, grad or scan), the function runs as a plain nested
  jit, and the outer program's options apply. Everything is looked up at
  the call (not at decoration, which may happen at import).
  """
  programs = {}

  @functools.wraps(fn)
  def call(*args, **kwargs):
    leaves = jax.tree_util.tree_leaves((args, kwargs))
    top = not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)
    key = (enabled(), top)
    if key not in programs:
      # A function object of its own per setting: JAX caches traces by the
      # function, not by the jax.jit wrapping it.
      traced = functools.wraps(fn)(lambda *a, **k: fn(*a, **k))
      options = compiler_options() if top else {}
      programs[key] = (jax.jit(traced, compiler_options=options, **jit_kwargs)
                       if options else jax.jit(traced, **jit_kwargs))
    return programs[key](*args, **kwargs)
  return call


# Widest reduction XLA's CPU backend leaves alone (`TreeReductionRewriter`).
_REDUCE_WIDTH = 32


def row_max(x):
  """max(x, axis=-1); with the switch on, in 32-wide slices (see above)."""
  width = x.shape[-1]
  if not enabled() or width <= _REDUCE_WIDTH:
    return jnp.max(x, axis=-1)
  whole = width // _REDUCE_WIDTH * _REDUCE_WIDTH
  acc = x[..., :_REDUCE_WIDTH]  # (..., 32)
  for start in range(_REDUCE_WIDTH, whole, _REDUCE_WIDTH):
    acc = jnp.maximum(acc, x[..., start:start + _REDUCE_WIDTH])
  if whole < width:  # a narrower last slice, reduced on its own
    return jnp.maximum(jnp.max(acc, axis=-1), jnp.max(x[..., whole:], axis=-1))
  return jnp.max(acc, axis=-1)


def _product(spec, doc, gradients):
  """einsum(spec, a, b): with the switch on, its backward pass is
  `gradients(a, b, g)`; off, autodiff's."""

  @jax.custom_vjp
  def hand_written(a, b):
    return jnp.einsum(spec, a, b)

  hand_written.defvjp(lambda a, b: (hand_written(a, b), (a, b)),
                      lambda res, g: gradients(*res, g))

  def product(a, b):
    return hand_written(a, b) if enabled() else jnp.einsum(spec, a, b)
  product.__doc__ = doc
  return product


# Each gradient is again one of the three products (names resolved when the
# backward pass is traced, so the order of definition does not matter).
sum_over_keys = _product(
    '...lm,...lv->...mv',
    'A^T B over the key axis: (..., l, m), (..., l, v) -> (..., m, v).',
    lambda a, b, g: (pair_scores(b, g), apply_sums(a, g)))  # g: (..., m, v)
apply_sums = _product(
    '...lm,...mv->...lv', 'A B: (..., l, m), (..., m, v) -> (..., l, v).',
    lambda a, b, g: (pair_scores(g, b), sum_over_keys(a, g)))  # g: (..., l, v)
pair_scores = _product(
    '...lm,...km->...lk', 'A B^T: (..., l, m), (..., k, m) -> (..., l, k).',
    lambda a, b, g: (apply_sums(g, b), sum_over_keys(g, a)))  # g: (..., l, k)
