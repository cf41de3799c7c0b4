"""Relative positions for FAVOR (ops/rpe.py) against an explicit O(l^2) form
in float64 that shares no code with it (outputs and gradients), with bias
tables spanning 20 nats; plain FAVOR at bias 0 at the PG-19 configs' sizes;
causality at 4K (future changes, NaN, prefixes); state continuation; bf16."""

import jax
from jax import numpy as jnp
import numpy as np
import pytest

from trax_favor import ops
from trax_favor.ops import feature_maps
from trax_favor.ops import reference
from trax_favor.ops import rpe

# Outputs: the float32 result against float64, relative to the outputs'
# largest entry. Every term of both sums is positive and every exponent is
# relative to the query's own largest weight, so only float32 rounding of
# sums over <= l terms remains (measured <= 1e-6 at l = 4096).
TOL = 1e-5
# Gradients (relative to their largest entry): the same, through the
# backward products, which sum over l keys or l queries.
GRAD_TOL = 1e-4
D = 16


def _normal(rng, shape, scale=1.0):
  return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)


def _tables(causal, rng):
  """Three heads: a bias rising 20 nats with distance, falling 20, random
  within +-10."""
  size = rpe.table_size(D, causal)
  dist = np.abs(np.arange(size) - (0 if causal else D)) / D
  return jnp.asarray(np.stack([20 * dist, -20 * dist,
                               rng.uniform(-10, 10, size)]), jnp.float32)


def _inputs(length, causal, seed=0, m=16, d=8, d_v=4):
  rng = np.random.default_rng(seed)
  q, k = (_normal(rng, (3, length, d), 0.7) for _ in range(2))
  v = _normal(rng, (3, length, d_v))
  w = ops.draw_projection(jax.random.PRNGKey(seed), m, d)
  q_feat, _ = ops.feature_map('softmax', q, w)
  k_feat, s = ops.feature_map('softmax', k, w)
  return q_feat, k_feat, s, v, _tables(causal, rng)


def _explicit(q_feat, k_feat, s, v, bias, causal, mask, rows=None):
  """out_i = sum_j w_ij phi_i.phi_j v_j / sum_j w_ij phi_i.phi_j in the
  working precision, from its definition (rows stabilized by their max),
  for the queries i in `rows` (all if None)."""
  length = v.shape[-2]
  i = jnp.arange(length) if rows is None else rows
  q_feat = q_feat[:, i]
  d = jnp.arange(length)[None, :] - i[:, None]  # (rows, l): j - i
  index = (jnp.clip(-d, 0, D) if causal else jnp.clip(d, -D, D) + D)
  log_w = bias[:, index] + s[:, None, :]  # (h, rows, l)
  visible = (d <= 0) if causal else jnp.ones_like(d, bool)
  if mask is not None:
    visible = visible & mask[None, :]
  log_w = jnp.where(visible, log_w, -jnp.inf)
  log_w = log_w - jax.lax.stop_gradient(jnp.max(log_w, -1, keepdims=True))
  a = (q_feat @ jnp.swapaxes(k_feat, -1, -2)) * jnp.exp(log_w)  # (h, rows, l)
  v = jnp.where(mask[:, None], v, 0.0) if mask is not None else v
  return (a @ v) / jnp.sum(a, -1, keepdims=True)


def _fast(q_feat, k_feat, s, v, bias, causal, mask, rows=None):
  out = rpe.rpe_favor(q_feat, k_feat, s, v, bias, D, key_mask=mask,
                      causal=causal, chunk_size=32)
  out = out[0] if causal else out
  return out if rows is None else out[:, rows]


CASES = [pytest.param(length, causal, masked,
                      id=f'L{length}-{"causal" if causal else "bidir"}'
                      f'{"-masked" if masked else ""}')
         for length in (7, 257, 4096) for causal in (False, True)
         for masked in (False, True)]


@pytest.mark.parametrize('length,causal,masked', CASES)
def test_matches_the_explicit_float64_form_with_gradients(length, causal,
                                                          masked):
  args = _inputs(length, causal)
  mask = (jnp.arange(length) % 3 != 1) if masked else None
  # At 4K the loss reads the first and last 256 queries (their gradients
  # still reach every key), so the float64 form stays (h, 512, l).
  rows = (None if length < 1024 else
          jnp.concatenate([jnp.arange(256), jnp.arange(length - 256, length)]))
  n_rows = length if rows is None else 512
  cot = _normal(np.random.default_rng(9), (3, n_rows, args[3].shape[-1]))

  def value_and_grads(form, dtype):
    def loss(*a):
      return jnp.sum(form(*a, causal, mask, rows) * cot.astype(dtype))
    a = [x.astype(dtype) for x in args]
    out = form(*a, causal, mask, rows)
    return out, jax.grad(loss, argnums=(0, 1, 2, 3, 4))(*a)

  out, grads = value_and_grads(_fast, jnp.float32)
  with jax.enable_x64(True):
    ref, ref_grads = value_and_grads(_explicit, jnp.float64)
    ref, ref_grads = np.asarray(ref), [np.asarray(g) for g in ref_grads]
  assert out.dtype == jnp.float32
  scale = np.max(np.abs(ref))
  np.testing.assert_allclose(out, ref, rtol=0, atol=TOL * scale)
  for name, g, g_ref in zip(('q', 'k', 's', 'v', 'bias'), grads, ref_grads):
    np.testing.assert_allclose(g, g_ref, rtol=0,
                               atol=GRAD_TOL * np.max(np.abs(g_ref)),
                               err_msg=name)
  assert np.all(np.abs(ref_grads[4]).max(-1) > 0)  # every table learns


@pytest.mark.parametrize('temperature', [8.0, 16.0, 64.0])
@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_zero_bias_is_plain_favor_at_the_configs_sizes(causal, temperature):
  """d_qk 64, m 256, l 1024, queries and keys at the layer's normalization."""
  rng = np.random.default_rng(int(temperature))
  q, k, v = (_normal(rng, (2, 1024, 64)) for _ in range(3))
  q, k = feature_maps.normalize(q, temperature), feature_maps.normalize(k, temperature)
  w = ops.draw_projection(jax.random.PRNGKey(1), 256, 64)
  q_feat, _ = ops.feature_map('softmax', q, w)
  k_feat, s = ops.feature_map('softmax', k, w)
  bias = jnp.zeros((rpe.table_size(128, causal),))
  out = rpe.rpe_favor(q_feat, k_feat, s, v, bias, 128, causal=causal)
  plain = ops.favor_attention(q, k, v, w, causal=causal)
  out, plain = (out[0], plain[0]) if causal else (out, plain)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, plain, rtol=0,
                             atol=1e-5 * float(jnp.max(jnp.abs(plain))))


def _causal_layer_inputs(length, seed):
  """A 'fixed'-normalized causal head (t = 8) with a table rising 20 nats
  over D = 64: the case that leaked the future in the FFT form."""
  rng = np.random.default_rng(seed)
  q, k, v = (_normal(rng, (2, length, 64)) for _ in range(3))
  return q, k, v


def _causal_run(q, k, v, key_mask=None):
  t = 8.0
  w = ops.draw_projection(jax.random.PRNGKey(2), 64, 64)
  bias = jnp.linspace(0.0, 20.0, 65)
  q_feat, _ = ops.feature_map('softmax', feature_maps.normalize(q, t), w)
  k_feat, s = ops.feature_map('softmax', feature_maps.normalize(k, t), w)
  return rpe.rpe_favor(q_feat, k_feat, s, v, bias, 64, key_mask=key_mask,
                       causal=True)


def test_causal_at_4k_ignores_the_future_exactly():
  q, k, v = _causal_layer_inputs(4096, 3)
  out, _ = _causal_run(q, k, v)
  scale = float(jnp.max(jnp.abs(out)))
  p = 1500
  q2, k2, v2 = _causal_layer_inputs(4096, 4)
  splice = lambda a, b: jnp.concatenate([a[:, :p], b[:, p:]], axis=1)
  out2, _ = _causal_run(splice(q, q2), splice(k, k2), splice(v, 10 * v2))
  assert float(jnp.max(jnp.abs(out2[:, :p] - out[:, :p]))) <= 1e-6 * scale
  assert float(jnp.max(jnp.abs(out2[:, p:] - out[:, p:]))) > 1e-2 * scale
  # The first 256 outputs are those of a run on 256 tokens.
  short, _ = _causal_run(q[:, :256], k[:, :256], v[:, :256])
  np.testing.assert_allclose(short, out[:, :256], rtol=0, atol=1e-6 * scale)
  # NaN at a future position reaches no earlier output; masked, none at all.
  bad = 3000
  nan_v = v.at[:, bad].set(jnp.nan)
  nan_k = k.at[:, bad].set(jnp.inf)
  out3, state = _causal_run(q, nan_k, nan_v)
  assert np.all(np.isfinite(out3[:, :bad])) and np.all(np.isnan(out3[:, bad:]))
  np.testing.assert_allclose(out3[:, :bad], out[:, :bad], rtol=0,
                             atol=1e-6 * scale)
  assert np.all(np.isnan(state.kv))
  mask = jnp.arange(4096) != bad
  out4, _ = _causal_run(q, nan_k, nan_v, key_mask=mask)
  assert np.all(np.isfinite(out4))


def test_nan_never_reaches_another_positions_gradient():
  q, k, v = _causal_layer_inputs(300, 5)
  v = v.at[:, 200].set(jnp.nan)
  g = jax.grad(lambda q, k: jnp.sum(_causal_run(q, k, v)[0][:, :200]),
               argnums=(0, 1))(q, k)
  assert all(np.all(np.isfinite(x)) for x in g)
  assert np.all(g[1][:, 200:] == 0)


@pytest.mark.parametrize('split', [1, 20, 64, 100])
def test_a_sequence_continues_from_its_state(split):
  """Prefill split anywhere, then token by token: as one call."""
  q_feat, k_feat, s, v, bias = _inputs(150, True, seed=6)
  mask = jnp.arange(150) % 7 != 3
  full, final = rpe.rpe_favor(q_feat, k_feat, s, v, bias, D, key_mask=mask,
                              causal=True, chunk_size=32)
  pieces, state = [], None
  bounds = [0, split] + list(range(split + 1, 150, 37)) + [150]
  for a, b in zip(bounds[:-1], bounds[1:]):
    out, state = rpe.rpe_favor(q_feat[:, a:b], k_feat[:, a:b], s[:, a:b],
                               v[:, a:b], bias, D, key_mask=mask[a:b],
                               causal=True, initial_state=state,
                               chunk_size=32)
    pieces.append(out)
  scale = float(jnp.max(jnp.abs(full)))
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, rtol=0,
                             atol=1e-6 * scale)
  for a, b in zip(state, final):  # sums in another order: float32 rounding
    np.testing.assert_allclose(a, b, rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_shared_scale_maps_match_the_explicit_form():
  rng = np.random.default_rng(7)
  q, k, v = (_normal(rng, (3, 90, 8)) for _ in range(3))
  w = ops.draw_projection(jax.random.PRNGKey(7), 16, 8)
  q_feat, _ = ops.feature_map('relu', q, w)
  k_feat, _ = ops.feature_map('relu', k, w)
  bias = _tables(True, rng)
  out, _ = rpe.rpe_favor(q_feat, k_feat, None, v, bias, D, causal=True,
                         chunk_size=16)
  ref = _explicit(q_feat, k_feat, jnp.zeros((3, 90)), v, bias, True, None)
  naive = reference.naive_rpe_favor(q_feat, k_feat, None, v, bias, D, causal=True)
  for form in (out, naive):
    np.testing.assert_allclose(form, ref, rtol=0,
                               atol=TOL * float(jnp.max(jnp.abs(ref))))


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_bfloat16_rounds_only_inputs_and_outputs(causal):
  """bf16 inputs give the float32 result of the rounded inputs (the explicit
  form's), rounded to bf16: float32 sums in another order move a rounding
  boundary in a few entries at most (< 1%); sums kept in bf16 move more."""
  q_feat, k_feat, s, v, bias = _inputs(300, causal, seed=8)
  half = [x.astype(jnp.bfloat16) for x in (q_feat, k_feat, v)]
  out = _fast(half[0], half[1], s, half[2], bias, causal, None)
  assert out.dtype == jnp.bfloat16
  ref = _explicit(*(x.astype(jnp.float32) for x in half[:2]), s,
                  half[2].astype(jnp.float32), bias, causal, None)
  differ = np.asarray(out) != np.asarray(ref.astype(jnp.bfloat16))
  assert np.mean(differ) < 0.01


@pytest.mark.parametrize('kwargs,message', [
    (dict(bias=jnp.zeros(5)), r'table has shape \(5,\)'),
    (dict(bias=jnp.zeros(())), r'table has shape \(\)'),
    (dict(bias=jnp.zeros((2, 17))), 'do not broadcast'),
    (dict(max_distance=0), 'max_distance must be a positive int'),
    (dict(chunk_size=0), 'chunk_size must be a positive int'),
])
def test_bad_arguments_are_one_clear_error(kwargs, message):
  q_feat, k_feat, s, v, bias = _inputs(8, True)
  args = dict(bias=bias, max_distance=D, causal=True)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    rpe.rpe_favor(q_feat, k_feat, s, v, **args)


@pytest.mark.parametrize('block_size', [None, 16])
@pytest.mark.parametrize('bias_shape,distance,message', [
    ((20,), 10, 'needs 21 entries'),  # bidirectional wants 2 D + 1
    ((11,), 10, 'needs 21 entries'),  # a causal table
    ((1,), 0, 'max_distance must be a positive int'),
    ((5,), 2.0, 'max_distance must be a positive int'),
    ((3, 21), 10, 'do not broadcast'),
])
def test_favor_attention_checks_the_table_on_every_path(
    block_size, bias_shape, distance, message):
  """The same one line at full length and in length blocks (the blocked
  path never reaches rpe_favor's own checks)."""
  q = _normal(np.random.default_rng(4), (2, 40, 8))
  w = ops.draw_projection(jax.random.PRNGKey(4), 16, 8)
  with pytest.raises(ValueError, match=message):
    ops.favor_attention(q, q, q, w, block_size=block_size,
                        relative_bias=jnp.zeros(bias_shape),
                        max_relative_distance=distance)


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_length_blocks_change_nothing(causal):
  """favor_attention(relative_bias=...) in length blocks (features
  recomputed; causal: the state carried; bidirectional: the sums before
  and after each block's halo) equals one block, outputs and gradients,
  with a key mask; bidirectional also with dropout (masks keyed by
  position, so the same in every block size and every recomputation)."""
  rng = np.random.default_rng(11)
  q, k, v = (_normal(rng, (3, 200, 8)) for _ in range(3))
  w = ops.draw_projection(jax.random.PRNGKey(11), 16, 8)
  bias = _tables(causal, rng)
  mask = jnp.arange(200) % 5 != 2

  def loss(block_size, rate=0.0 if causal else 0.3):
    def fn(q, k, v, bias):
      out = ops.favor_attention(
          q, k, v, w, causal=causal, key_mask=mask, chunk_size=16,
          block_size=block_size, relative_bias=bias, max_relative_distance=D,
          attention_dropout=rate, rng=jax.random.PRNGKey(3))
      out = out[0] if causal else out
      return jnp.sum(out * v), out
    return jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True)(
        q, k, v, bias)

  (_, whole), g_whole = loss(None)
  scale = float(jnp.max(jnp.abs(whole)))
  for block_size in (48, 80):
    (_, blocks), g_blocks = loss(block_size)
    np.testing.assert_allclose(blocks, whole, rtol=0, atol=1e-6 * scale)
    for a, b in zip(g_blocks, g_whole):
      np.testing.assert_allclose(a, b, rtol=0,
                                 atol=1e-5 * float(jnp.max(jnp.abs(b))))
  if not causal:  # the dropout is there: without it, outputs move
    (_, undropped), _ = loss(None, 0.0)
    assert float(jnp.max(jnp.abs(undropped - whole))) > 0.05 * scale


def test_bidirectional_blocks_spread_nan_from_any_key_only():
  """In bidirectional blocks a non-finite unmasked key (in any block, its
  own halo or another's) makes every output NaN, as at full length; a
  masked one changes nothing."""
  rng = np.random.default_rng(12)
  q, k, v = (_normal(rng, (3, 200, 8)) for _ in range(3))
  w = ops.draw_projection(jax.random.PRNGKey(12), 16, 8)
  bias = _tables(False, rng)

  def run(k, v, mask=None):
    return ops.favor_attention(q, k, v, w, key_mask=mask, chunk_size=16,
                               block_size=48, relative_bias=bias,
                               max_relative_distance=D)

  clean = run(k, v)
  for bad in (0, 47, 48, 199):
    assert np.all(np.isnan(run(k.at[:, bad].set(jnp.inf), v)))
    assert np.all(np.isnan(run(k, v.at[:, bad].set(jnp.nan))))
    mask = jnp.arange(200) != bad
    masked = run(k.at[:, bad].set(jnp.nan), v.at[:, bad].set(jnp.nan), mask)
    np.testing.assert_allclose(masked, run(k, v, mask), rtol=0, atol=1e-6)
    assert not np.allclose(masked, clean)
