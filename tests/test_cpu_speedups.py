"""The CPU speed-ups' switch: both settings give the same outputs and
gradients, jax.jvp works with it off, and XLA's CPU YNNPACK fusions are
turned off per compiled program, never for the process (trax_favor's own
jits and trax's steps inside our training get the option; a plain jax.jit
of the user's keeps XLA's default)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trax import fastmath
from trax.fastmath import jax as trax_jax

from trax import shapes

from trax_favor import compat
from trax_favor import ops
from trax_favor.layers import FavorSelfAttention
from trax_favor.ops import cpu_speedups
from trax_favor.ops import favor
from trax_favor.ops import rpe


def _product_with_reductions(a, b):
  return jnp.sum(jnp.exp(a @ b) * 2.0, axis=-1)


ARGS = (jnp.ones((64, 64)) * 0.01, jnp.ones((64, 64)))
# The XLA option exists on the CPU backend only (benchmarks/accelerator.sh
# runs this file on a GPU too).
cpu_only = pytest.mark.skipif(jax.default_backend() != 'cpu',
                              reason='XLA CPU option')


@cpu_only
def test_options_on_the_cpu_backend_compile_and_agree():
  assert cpu_speedups.compiler_options() == {cpu_speedups.YNN_OPTION: ''}
  ours = jax.jit(_product_with_reductions,
                 compiler_options=cpu_speedups.compiler_options())
  np.testing.assert_allclose(ours(*ARGS), _product_with_reductions(*ARGS),
                             rtol=1e-6)


@cpu_only
def test_opt_out_keeps_xla_default(monkeypatch):
  monkeypatch.setenv(cpu_speedups.ENV, '0')
  assert cpu_speedups.compiler_options() == {}
  with cpu_speedups.forced(True):  # the context wins over the environment
    assert cpu_speedups.compiler_options() == {cpu_speedups.YNN_OPTION: ''}


@cpu_only
def test_trax_jit_gets_the_options_only_inside_the_context(monkeypatch):
  seen = []
  original = trax_jax.JAX_BACKEND['jit']

  def recording_jit(*args, **kwargs):
    seen.append(kwargs.get('compiler_options'))
    return original(*args, **kwargs)

  monkeypatch.setitem(trax_jax.JAX_BACKEND, 'jit', recording_jit)
  with compat.trax_jit_options():
    inside = fastmath.jit(_product_with_reductions)
  outside = fastmath.jit(_product_with_reductions)
  assert seen == [{cpu_speedups.YNN_OPTION: ''}, None]
  assert trax_jax.JAX_BACKEND['jit'] is recording_jit  # restored
  np.testing.assert_allclose(inside(*ARGS), outside(*ARGS), rtol=1e-6)


def test_our_jit_works_top_level_and_nested_with_equal_results():
  top = cpu_speedups.jit(_product_with_reductions)
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


@cpu_only
@pytest.mark.parametrize('version,expected', [
    ('0.9.2', {}), ('0.10.1', {cpu_speedups.YNN_OPTION: ''})])
def test_a_jaxlib_without_the_option_gets_none(monkeypatch, version,
                                               expected):
  cpu_speedups._option_supported.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setattr(cpu_speedups.metadata, 'version', lambda name: version)
  try:
    found = cpu_speedups.compiler_options()
  finally:
    cpu_speedups._option_supported.cache_clear()  # pylint: disable=protected-access
  assert found == expected


def test_switch_follows_backend_environment_and_context(monkeypatch):
  monkeypatch.delenv(cpu_speedups.ENV, raising=False)
  assert cpu_speedups.enabled() == (jax.default_backend() == 'cpu')
  monkeypatch.setenv(cpu_speedups.ENV, '0')
  assert not cpu_speedups.enabled()
  monkeypatch.setenv(cpu_speedups.ENV, '1')
  assert cpu_speedups.enabled()
  with cpu_speedups.forced(False):
    assert not cpu_speedups.enabled()
    with cpu_speedups.forced(True):
      assert cpu_speedups.enabled()
    assert not cpu_speedups.enabled()


def _qkv(length=40, d=8, d_v=6, seed=0):
  rng = np.random.default_rng(seed)
  q, k = (rng.standard_normal((2, 3, length, d)).astype(np.float32)
          for _ in range(2))
  v = rng.standard_normal((2, 3, length, d_v)).astype(np.float32)
  w = rng.standard_normal((11, d)).astype(np.float32)
  return q, k, v, w


def _attention(causal, feature_map):
  def fn(q, k, v, w):
    out = ops.favor_attention(q, k, v, w, feature_map=feature_map,
                              causal=causal, chunk_size=8, block_size=16)
    return out[0] if causal else out
  return fn


def _relative(causal, feature_map):
  """Relative positions (ops/rpe.py) with a table spanning 20 nats."""
  def fn(q, k, v, w):
    q_feat, _ = ops.feature_map(feature_map, q, w)
    k_feat, s = ops.feature_map(feature_map, k, w)
    bias = jnp.linspace(-10.0, 10.0, rpe.table_size(5, causal))
    out = rpe.rpe_favor(q_feat, k_feat, s, v, bias, 5, causal=causal,
                        chunk_size=4)
    return out[0] if causal else out
  return fn


@pytest.mark.parametrize('causal,feature_map,form', [
    (False, 'softmax', _attention), (True, 'relu', _attention),
    (False, 'relu', _relative), (True, 'softmax', _relative)],
                         ids=['bidir-softmax-plain', 'causal-relu-plain',
                              'bidir-relu-relative', 'causal-softmax-relative'])
def test_both_settings_agree_outputs_and_gradients(causal, feature_map, form):
  """Switch on and off, the same op (length blocks and chunks) to 1e-5:
  outputs, and gradients of a loss with a cotangent that is not all ones.
  Each path (bidirectional, causal; plain, relative) once, each feature map
  (the stabilized softmax, the shared-scale ReLU) on either form and mode.
  The XLA option changes float32 results (XLA's product kernels sum in
  another order than YNNPACK's): measured at 4K tokens, 8 heads of 64,
  m = 256, 1.4e-6 (plain causal) and 5e-7 (relative) of the output scale."""
  q, k, v, w = _qkv()
  fn = form(causal, feature_map)
  weights = np.random.default_rng(9).standard_normal(v.shape).astype(
      np.float32)
  loss = lambda q, k, v: jnp.sum(fn(q, k, v, w) * weights)
  found = {}
  for on in (True, False):
    with cpu_speedups.forced(on):
      found[on] = (fn(q, k, v, w),
                   jax.grad(loss, argnums=(0, 1, 2))(q, k, v))
  np.testing.assert_allclose(found[True][0], found[False][0], rtol=1e-5,
                             atol=1e-6)
  for on_grad, off_grad in zip(found[True][1], found[False][1]):
    np.testing.assert_allclose(on_grad, off_grad, rtol=1e-4, atol=1e-5)


def test_our_jit_keeps_one_program_per_setting():
  """The hand-written gradients are in the program exactly when on, also
  after the other setting was traced first (no stale cache)."""
  q, k, v, w = _qkv(length=12)
  feats = ops.feature_map('softmax', q, w)[0]
  s = jnp.zeros(k.shape[:-1])
  for on in (False, True, False):
    with cpu_speedups.forced(on):
      # A fresh function each time: make_jaxpr caches by the function.
      text = str(jax.make_jaxpr(lambda *a: favor.bidirectional_favor(*a))(
          feats, feats, s, v))
    assert ('custom_vjp_call' in text) == on


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_jvp_works_with_the_switch_off(causal):
  """Forward mode agrees with reverse mode: jvp along t equals grad . t."""
  q, k, v, w = _qkv()
  fn = _attention(causal, 'softmax')
  loss = lambda q: jnp.sum(jnp.sin(fn(q, k, v, w)))
  t = np.random.default_rng(3).standard_normal(q.shape).astype(np.float32)
  with cpu_speedups.forced(False):
    _, forward = jax.jvp(loss, (q,), (t,))
  with cpu_speedups.forced(True):
    reverse = jnp.vdot(jax.grad(loss)(q), t)
    with pytest.raises(TypeError, match='custom_vjp'):
      jax.jvp(loss, (q,), (t,))
  np.testing.assert_allclose(forward, reverse, rtol=1e-4)


def test_jvp_through_the_layer_with_the_switch_off():
  x = np.random.default_rng(1).standard_normal((2, 24, 12)).astype(
      np.float32)
  t = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
  layer = FavorSelfAttention(n_heads=2, d_qk=6, d_v=6, causal=True,
                             n_random_features=8, chunk_size=8, mode='eval')
  layer.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
  rng = jax.random.PRNGKey(1)
  loss = lambda x: jnp.sum(jnp.sin(layer.pure_fn(x, layer.weights,
                                                 layer.state, rng)[0]))
  with cpu_speedups.forced(False):
    _, forward = jax.jvp(loss, (x,), (t,))
    reverse = jnp.vdot(jax.grad(loss)(x), t)
  np.testing.assert_allclose(forward, reverse, rtol=1e-4)
