"""XLA's CPU YNNPACK fusions are turned off per compiled program, never for
the process: trax_favor's own jits and trax's steps inside our training get
the option; a plain jax.jit of the user's keeps XLA's default."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trax import fastmath
from trax.fastmath import jax as trax_jax

from trax_favor import xla_cpu
from trax_favor.ops import favor


def _product_with_reductions(a, b):
  return jnp.sum(jnp.exp(a @ b) * 2.0, axis=-1)


ARGS = (jnp.ones((64, 64)) * 0.01, jnp.ones((64, 64)))


def test_options_on_the_cpu_backend_compile_and_agree():
  assert xla_cpu.compiler_options() == {xla_cpu.YNN_OPTION: ''}
  ours = jax.jit(_product_with_reductions,
                 compiler_options=xla_cpu.compiler_options())
  np.testing.assert_allclose(ours(*ARGS), _product_with_reductions(*ARGS),
                             rtol=1e-6)


def test_opt_out_keeps_xla_default(monkeypatch):
  monkeypatch.setenv('TRAX_FAVOR_XLA_CPU_DEFAULTS', '0')
  assert xla_cpu.compiler_options() == {}


def test_trax_jit_gets_the_options_only_inside_the_context(monkeypatch):
  seen = []
  original = trax_jax.JAX_BACKEND['jit']

  def recording_jit(*args, **kwargs):
    seen.append(kwargs.get('compiler_options'))
    return original(*args, **kwargs)

  monkeypatch.setitem(trax_jax.JAX_BACKEND, 'jit', recording_jit)
  with xla_cpu.trax_jit_options():
    inside = fastmath.jit(_product_with_reductions)
  outside = fastmath.jit(_product_with_reductions)
  assert seen == [{xla_cpu.YNN_OPTION: ''}, None]
  assert trax_jax.JAX_BACKEND['jit'] is recording_jit  # restored
  np.testing.assert_allclose(inside(*ARGS), outside(*ARGS), rtol=1e-6)


def test_our_jit_works_top_level_and_nested_with_equal_results():
  top = xla_cpu.jit(_product_with_reductions)
  expected = _product_with_reductions(*ARGS)
  np.testing.assert_allclose(top(*ARGS), expected, rtol=1e-6)
  # Under an outer jit and grad JAX refuses compiler options on a nested
  # jit; ours runs as a plain nested jit there.
  nested = jax.jit(lambda a, b: top(a, b) * 1.0)(*ARGS)
  np.testing.assert_allclose(nested, expected, rtol=1e-6)
  grad = jax.grad(lambda a: top(a, ARGS[1]).sum())(ARGS[0])
  auto = jax.grad(lambda a: _product_with_reductions(a, ARGS[1]).sum())(
      ARGS[0])
  np.testing.assert_allclose(grad, auto, rtol=1e-5)


def test_ops_called_eagerly_and_under_a_users_jit_agree():
  rng = np.random.default_rng(0)
  q, k = rng.random((2, 1, 40, 8)).astype(np.float32)
  v = rng.standard_normal((1, 40, 4)).astype(np.float32)
  s = np.zeros((1, 40), np.float32)
  eager, _ = favor.causal_favor(q, k, s, v, chunk_size=16)
  jitted, _ = jax.jit(lambda *a: favor.causal_favor(*a, chunk_size=16))(
      q, k, s, v)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('version,expected', [
    ('0.9.2', {}), ('0.10.1', {xla_cpu.YNN_OPTION: ''})])
def test_a_jaxlib_without_the_option_gets_none(monkeypatch, version,
                                               expected):
  xla_cpu._default_options.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setattr(xla_cpu.metadata, 'version', lambda name: version)
  try:
    found = xla_cpu.compiler_options()
  finally:
    xla_cpu._default_options.cache_clear()  # pylint: disable=protected-access
  assert found == expected
