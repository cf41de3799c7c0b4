"""The FAVOR fast paths against their naive references.

Tolerances: float32 identities (same math, different summation order) hold to
1e-5 relative / 1e-5 absolute on outputs of order 1; gradients to 1e-4.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_favor import ops
from trax_favor.ops import cpu_speedups
from trax_favor.ops import favor
from trax_favor.ops import reference
from trax_favor.ops import sequence_parallel

RTOL, ATOL = 1e-5, 1e-5
GRAD_TOL = 1e-4


def _normal(seed, shape):
  """Test data from NumPy (eager jax.random compiles per shape: slow)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape),
                     jnp.float32)


def _qkv(seed, batch=(2, 3), length=63, d=12, d_v=10, scale=0.7):
  shape = tuple(batch) + (length, d)
  return (scale * _normal(seed, shape), scale * _normal(seed + 1000, shape),
          _normal(seed + 2000, tuple(batch) + (length, d_v)))


def _features(name, q, k, m, seed=7):
  w = ops.draw_projection(jax.random.PRNGKey(seed), m, q.shape[-1])
  q_feat, _ = ops.feature_map(name, q, w)
  k_feat, k_log_scale = ops.feature_map(name, k, w)
  return q_feat, k_feat, k_log_scale


CAUSAL_CASES = [  # (length, m, chunk): awkward sizes, L not a chunk multiple
    pytest.param(63, 37, 16, id='L63-m37-c16'),
    pytest.param(64, 60, 64, id='L64-m60-c64'),
    pytest.param(1, 5, 128, id='L1-m5'),
    pytest.param(50, 17, 7, id='L50-m17-c7'),
]


@pytest.mark.parametrize('feature_map', ['softmax', 'relu', 'exp'])
@pytest.mark.parametrize('length,m,chunk', CAUSAL_CASES)
def test_causal_chunked_matches_naive_forms(feature_map, length, m, chunk):
  q, k, v = _qkv(0, length=length)
  qf, kf, ls = _features(feature_map, q, k, m)
  fast, fast_state = favor.causal_favor(qf, kf, ls, v, chunk_size=chunk)
  masked = reference.masked_linear_attention(qf, kf, ls, v, causal=True)
  scanned, scan_state = reference.prefix_sum_favor(qf, kf, ls, v)
  np.testing.assert_allclose(fast, masked, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(fast, scanned, rtol=RTOL, atol=ATOL)
  # Final states agree once expressed on a common reference.
  for a, b in ((fast_state.kv, scan_state.kv), (fast_state.z, scan_state.z)):
    extra = (1,) * (a.ndim - fast_state.ref.ndim)
    np.testing.assert_allclose(
        a * jnp.exp(fast_state.ref - scan_state.ref).reshape(
            fast_state.ref.shape + extra), b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('length,m,chunk', CAUSAL_CASES[:2] + CAUSAL_CASES[3:])
def test_causal_chunked_gradients_match_masked_form(length, m, chunk):
  q, k, v = _qkv(1, length=length)
  qf, kf, ls = _features('softmax', q, k, m)
  cot = _normal(5, v.shape)

  def loss(fn):
    return lambda *args: jnp.sum(fn(*args) * cot)

  fast = loss(lambda *a: favor.causal_favor(*a, chunk_size=chunk)[0])
  slow = loss(lambda *a: reference.masked_linear_attention(*a, causal=True))
  g_fast = jax.grad(fast, argnums=(0, 1, 2, 3))(qf, kf, ls, v)
  g_slow = jax.grad(slow, argnums=(0, 1, 2, 3))(qf, kf, ls, v)
  for name, a, b in zip(('q_feat', 'k_feat', 'k_log_scale', 'v'), g_fast,
                        g_slow):
    np.testing.assert_allclose(a, b, rtol=GRAD_TOL, atol=GRAD_TOL,
                               err_msg=name)


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
@pytest.mark.parametrize('feature_map', ['softmax', 'exp', 'softmax_trig'])
def test_gradients_through_feature_maps_match_reference(feature_map, causal):
  """End-to-end grads w.r.t. q, k, v (features and stabilizers included).

  softmax_trig (signed features, refused by the layer) is kept in ops for
  comparisons, so its gradients are checked too; small inputs keep its
  denominators away from 0.
  """
  q, k, v = _qkv(2, length=45, d=8, d_v=6, scale=0.3)
  w = ops.draw_projection(jax.random.PRNGKey(3), 21, 8)

  def fast(q, k, v):
    out = ops.favor_attention(q, k, v, w, feature_map=feature_map,
                              causal=causal, chunk_size=8)
    return jnp.sum(jnp.sin(out[0] if causal else out))

  def slow(q, k, v):
    qf, _ = ops.feature_map(feature_map, q, w)
    kf, ls = ops.feature_map(feature_map, k, w)
    return jnp.sum(jnp.sin(reference.masked_linear_attention(
        qf, kf, ls, v, causal=causal)))

  for a, b in zip(jax.grad(fast, (0, 1, 2))(q, k, v),
                  jax.grad(slow, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, rtol=GRAD_TOL, atol=GRAD_TOL)


@pytest.mark.parametrize('split', [1, 20, 31, 62])
def test_state_chaining_equals_one_run(split):
  q, k, v = _qkv(3, length=63)
  qf, kf, ls = _features('softmax', q, k, 19)
  whole, whole_state = favor.causal_favor(qf, kf, ls, v, chunk_size=16)
  first, state = favor.causal_favor(qf[..., :split, :], kf[..., :split, :],
                                    ls[..., :split], v[..., :split, :],
                                    chunk_size=16)
  second, final = favor.causal_favor(
      qf[..., split:, :], kf[..., split:, :], ls[..., split:],
      v[..., split:, :], initial_state=state, chunk_size=16)
  np.testing.assert_allclose(jnp.concatenate([first, second], axis=-2), whole,
                             rtol=RTOL, atol=ATOL)
  for a, b in zip(final, whole_state):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def test_gradient_flows_through_carried_state():
  q, k, v = _qkv(4, length=40)
  qf, kf, ls = _features('softmax', q, k, 11)

  def chained(v_first):
    _, state = favor.causal_favor(qf[..., :25, :], kf[..., :25, :],
                                  ls[..., :25], v_first, chunk_size=8)
    out, _ = favor.causal_favor(qf[..., 25:, :], kf[..., 25:, :],
                                ls[..., 25:], v[..., 25:, :],
                                initial_state=state, chunk_size=8)
    return jnp.sum(out ** 2)

  def whole(v_first):
    full = jnp.concatenate([v_first, v[..., 25:, :]], axis=-2)
    return jnp.sum(reference.masked_linear_attention(qf, kf, ls, full)[
        ..., 25:, :] ** 2)

  np.testing.assert_allclose(jax.grad(chained)(v[..., :25, :]),
                             jax.grad(whole)(v[..., :25, :]),
                             rtol=GRAD_TOL, atol=GRAD_TOL)


@pytest.mark.parametrize('block_size', [None, 32], ids=['whole', 'blocks'])
@pytest.mark.parametrize('t', [0, 17, 40])
def test_future_tokens_never_change_past_outputs(t, block_size):
  """Even huge future logits (which would underflow a global stabilizer)."""
  q, k, v = _qkv(5, length=48, d=16)
  w = ops.draw_projection(jax.random.PRNGKey(6), 32, 16)
  run = lambda *a: ops.favor_attention(*a, w, causal=True, chunk_size=16,
                                       block_size=block_size)
  out, _ = run(q, k, v)
  k2 = k.at[..., t:, :].set(30.0 * _normal(9, k[..., t:, :].shape))
  q2 = q.at[..., t:, :].multiply(-3.0)
  v2 = v.at[..., t:, :].set(1e3)
  out2, _ = run(q2, k2, v2)
  np.testing.assert_allclose(out2[..., :t, :], out[..., :t, :], rtol=1e-6,
                             atol=1e-7)
  assert not np.allclose(out2[..., t:, :], out[..., t:, :])


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_padded_keys_change_nothing(causal):
  q, k, v = _qkv(6, length=40)
  w = ops.draw_projection(jax.random.PRNGKey(1), 24, 12)
  valid = jnp.arange(40) < 29  # last 11 positions are padding
  out = ops.favor_attention(q, k, v, w, causal=causal, key_mask=valid)
  # Garbage (huge) keys and values at padded positions must not matter.
  k_junk = jnp.where(valid[:, None], k, 50.0)
  v_junk = jnp.where(valid[:, None], v, -1e4)
  out_junk = ops.favor_attention(q, k_junk, v_junk, w, causal=causal,
                                 key_mask=valid)
  trimmed = ops.favor_attention(q[..., :29, :], k[..., :29, :],
                                v[..., :29, :], w, causal=causal)
  if causal:
    out, out_junk, trimmed = out[0], out_junk[0], trimmed[0]
  np.testing.assert_allclose(out_junk, out, rtol=RTOL, atol=ATOL)
  # Queries at real positions see exactly the unpadded sequence.
  np.testing.assert_allclose(out[..., :29, :], trimmed, rtol=RTOL, atol=ATOL)


NON_FINITE = [  # (what is spoiled, value): one row of q, k or v, or all
    pytest.param('q', np.nan, id='nan-q'),
    pytest.param('k', np.nan, id='nan-k'),
    pytest.param('v', np.nan, id='nan-v'),
    pytest.param('qkv', np.inf, id='inf-all'),
]


def _spoil(q, k, v, t, which, value):
  """q, k, v with row t of the named ones set to a non-finite value."""
  return tuple(x.at[..., t, :].set(value) if name in which else x
               for name, x in zip('qkv', (q, k, v)))


def _loss_before(run, t):
  """Sum of the outputs before position t: a loss that sees only them."""
  return lambda q, k, v: jnp.sum(run(q, k, v)[..., :t, :])


@pytest.mark.parametrize('which,value', NON_FINITE)
@pytest.mark.parametrize('block_size', [None, 16], ids=['whole', 'blocks'])
def test_non_finite_future_token_reaches_no_past_output_or_gradient(
    which, value, block_size):
  """A NaN/Inf at t = 13 (inside the chunk 8..15) leaves tokens < 13, and
  the gradients of a loss on them, as without it (the spoiled row's own
  gradient aside); tokens >= 13 become NaN."""
  t = 13
  q, k, v = _qkv(21, length=40, d=16)
  w = ops.draw_projection(jax.random.PRNGKey(2), 24, 16)
  run = lambda *a: ops.favor_attention(*a, w, causal=True, chunk_size=8,
                                       block_size=block_size)[0]
  spoiled = _spoil(q, k, v, t, which, value)
  out, out_spoiled = run(q, k, v), run(*spoiled)
  np.testing.assert_array_equal(out_spoiled[..., :t, :], out[..., :t, :])
  if which != 'q':  # a query spoils its own output only
    assert np.all(np.isnan(out_spoiled[..., t:, :]))
  assert np.all(np.isnan(out_spoiled[..., t, :]))
  grads = jax.grad(_loss_before(run, t), argnums=(0, 1, 2))
  others = np.arange(40) != t
  for g, g_spoiled in zip(grads(q, k, v), grads(*spoiled)):
    assert np.all(np.isfinite(g_spoiled[..., others, :]))
    np.testing.assert_allclose(g_spoiled[..., :t, :], g[..., :t, :],
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('which,value', NON_FINITE)
@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_non_finite_padded_token_reaches_no_valid_output_or_gradient(
    which, value, causal):
  """Padding selected out, not multiplied by 0: a NaN/Inf in a padded
  position (q, k and v of it) changes no valid output nor gradient."""
  q, k, v = _qkv(22, length=30)
  w = ops.draw_projection(jax.random.PRNGKey(3), 24, 12)
  valid = jnp.arange(30) != 11  # position 11 is padding

  def run(q, k, v):
    out = ops.favor_attention(q, k, v, w, causal=causal, key_mask=valid,
                              chunk_size=8)
    return out[0] if causal else out

  def loss(q, k, v):
    return jnp.sum(jnp.where(valid[:, None], run(q, k, v), 0.0))

  spoiled = _spoil(q, k, v, 11, which, value)
  np.testing.assert_allclose(run(*spoiled)[..., valid, :],
                             run(q, k, v)[..., valid, :], rtol=1e-6, atol=1e-7)
  grads = jax.grad(loss, argnums=(0, 1, 2))
  for g, g_spoiled in zip(grads(q, k, v), grads(*spoiled)):
    assert np.all(np.isfinite(g_spoiled[..., valid, :]))
    np.testing.assert_allclose(g_spoiled[..., valid, :], g[..., valid, :],
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('value', [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize('block_size', [None, 8])
def test_an_unmasked_non_finite_key_makes_every_bidirectional_output_nan(
    value, block_size):
  """Bidirectionally every query sees every key: one unmasked key with a
  NaN or Inf makes every output NaN (never a finite 0: its log-scale spoils
  the shared reference, and a row that "saw no key" must not be read off
  it)."""
  q, k, v = _qkv(23, length=30)
  w = ops.draw_projection(jax.random.PRNGKey(3), 24, 12)
  k = k.at[..., 11, 0].set(value)
  out = ops.favor_attention(q, k, v, w, block_size=block_size)
  assert np.isnan(out).all()


@pytest.mark.parametrize('feature_map', ['softmax', 'exp', 'relu'])
def test_bidirectional_attention_is_the_factored_core(feature_map):
  """favor_attention sums stabilized keys already rescaled (one pass,
  `relative_features`); it computes what bidirectional_favor computes from
  the factored features, with the same dropout mask (fold_in(rng, 0) over
  the full-length features), outputs and gradients, on keys whose norms
  span 0.1x-4x with masked NaN keys."""
  q, k, v = _qkv(24, length=40, d=8, d_v=5)
  k = k * jnp.geomspace(0.1, 4.0, 40)[:, None]
  valid = jnp.arange(40) % 7 != 3
  k = jnp.where(valid[:, None], k, jnp.nan)
  w = ops.draw_projection(jax.random.PRNGKey(5), 24, 8)
  rng = jax.random.PRNGKey(6)

  def fast(q, k, v):
    return ops.favor_attention(q, k, v, w, feature_map=feature_map,
                               key_mask=valid, block_size=None,
                               attention_dropout=0.25, rng=rng)

  def factored(q, k, v):
    q_feat, _ = ops.feature_map(feature_map, q, w)
    k_feat, k_log_scale = ops.feature_map(feature_map, k, w)
    keep = jax.random.bernoulli(jax.random.fold_in(rng, 0), 0.75,
                                k_feat.shape)
    k_feat = jnp.where(keep, k_feat / 0.75, 0.0)
    if ops.FEATURE_MAPS[feature_map].shared_log_scale:
      k_log_scale = None
    return ops.bidirectional_favor(q_feat, k_feat, k_log_scale, v, valid)

  np.testing.assert_allclose(fast(q, k, v), factored(q, k, v), rtol=RTOL,
                             atol=ATOL)
  cot = _normal(25, v.shape)
  grads = [jax.grad(lambda *a: jnp.sum(f(*a) * cot), (0, 1, 2))(q, k, v)
           for f in (fast, factored)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a[..., valid, :], b[..., valid, :],
                               rtol=GRAD_TOL, atol=GRAD_TOL)
    assert np.all(np.isfinite(a[..., valid, :]))


def test_a_non_finite_state_spoils_the_continuation_as_one_call_would():
  """Split after the NaN token: the carried state is NaN, so the next call's
  outputs are NaN, as the same tokens in one call."""
  q, k, v = _qkv(23, length=24, d=16)
  w = ops.draw_projection(jax.random.PRNGKey(4), 24, 16)
  k = k.at[..., 5, :].set(np.nan)
  whole, _ = ops.favor_attention(q, k, v, w, causal=True, chunk_size=8)
  first, state = ops.favor_attention(q[..., :10, :], k[..., :10, :],
                                     v[..., :10, :], w, causal=True)
  second, _ = ops.favor_attention(q[..., 10:, :], k[..., 10:, :],
                                  v[..., 10:, :], w, causal=True,
                                  initial_state=state)
  np.testing.assert_allclose(jnp.concatenate([first, second], -2), whole,
                             rtol=RTOL, atol=ATOL)  # NaN where NaN
  assert np.all(np.isnan(second)) and np.all(np.isfinite(whole[..., :5, :]))


def test_padding_mask_in_middle_matches_masked_reference():
  q, k, v = _qkv(7, length=33)
  qf, kf, ls = _features('softmax', q, k, 13)
  mask = jnp.asarray(np.random.default_rng(2).random((2, 1, 33)) < 0.7)
  for causal in (False, True):
    ref = reference.masked_linear_attention(qf, kf, ls, v, causal, mask)
    if causal:
      fast, _ = favor.causal_favor(qf, kf, ls, v, key_mask=mask, chunk_size=8)
    else:
      fast = favor.bidirectional_favor(qf, kf, ls, v, key_mask=mask)
    np.testing.assert_allclose(fast, ref, rtol=RTOL, atol=ATOL)


def test_bidirectional_matches_masked_reference():
  q, k, v = _qkv(8, length=50)
  for name in ('softmax', 'softmax_trig', 'relu', 'elu', 'exp'):
    qf, kf, ls = _features(name, q, k, 30)
    np.testing.assert_allclose(
        favor.bidirectional_favor(qf, kf, ls, v),
        reference.masked_linear_attention(qf, kf, ls, v, causal=False),
        rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize('block_size', [None, 16], ids=['whole', 'blocks'])
@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_large_logits_stay_finite_and_convex(causal, block_size):
  q, k, v = _qkv(9, length=64, d=16, scale=60.0)  # logits in the thousands
  w = ops.draw_projection(jax.random.PRNGKey(4), 64, 16)
  out = ops.favor_attention(q, k, v, w, causal=causal, chunk_size=16,
                            block_size=block_size)
  out = out[0] if causal else out
  assert np.all(np.isfinite(out))
  # Outputs are convex combinations of values (positive features).
  assert np.all(out <= v.max(axis=-2, keepdims=True) + 1e-4)
  assert np.all(out >= v.min(axis=-2, keepdims=True) - 1e-4)
  def loss(q):
    out = ops.favor_attention(q, k, v, w, causal=causal, chunk_size=16,
                              block_size=block_size)
    return jnp.sum(out[0] if causal else out)
  assert np.all(np.isfinite(jax.grad(loss)(q)))


@pytest.mark.parametrize('block_size', [None, 64], ids=['whole', 'blocks'])
@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_bfloat16_inputs_accumulate_in_float32(causal, block_size):
  q, k, v = _qkv(10, length=256, d=16, d_v=16)
  w = ops.draw_projection(jax.random.PRNGKey(4), 64, 16)
  run = lambda *a: ops.favor_attention(*a, w, causal=causal, chunk_size=32,
                                       block_size=block_size)
  half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  out16 = run(*half)
  q32, k32, v32 = (x.astype(jnp.float32) for x in half)  # rounded inputs
  qf, _ = ops.feature_map('softmax', q32, w)
  kf, s = ops.feature_map('softmax', k32, w)
  out32 = reference.masked_linear_attention(qf, kf, s, v32, causal=causal)
  out16 = out16[0] if causal else out16
  assert out16.dtype == jnp.bfloat16
  # Only input and output rounding: bf16 inputs give the float32 result of
  # the rounded inputs (the naive form's), rounded to bf16. Float32 sums in
  # another order move a rounding boundary in a few entries at most (< 1%);
  # a state rounded to bf16 at every chunk boundary moves about 10%.
  differ = np.asarray(out16) != np.asarray(out32.astype(jnp.bfloat16))
  assert np.mean(differ) < 0.01


def test_underflowed_denominator_is_not_a_silent_zero():
  """Keys present but every feature product 0 (ReLU features of zero keys,
  no stabilizer): the output shows it (NaN), unlike a row with no keys."""
  q, _, v = _qkv(12, length=10)
  k = jnp.zeros_like(q)  # relu(w . 0) = 0: all key features vanish
  w = ops.draw_projection(jax.random.PRNGKey(4), 8, 12)
  for causal in (False, True):
    out = ops.favor_attention(q, k, v, w, feature_map='relu', causal=causal,
                              numerical_stabilizer=0.0)
    out = out[0] if causal else out
    assert np.all(np.isnan(out)), causal


def test_a_stabilized_state_is_refused_by_shared_scale_keys():
  q, k, v = _qkv(13, batch=(2,), length=10)
  w = ops.draw_projection(jax.random.PRNGKey(4), 8, 12)
  qf, kf, _ = _features('relu', q, k, 8)
  _, state = favor.causal_favor(qf, kf, None, v)
  assert np.all(state.ref == 0.0)  # shared scale: reference 0
  above = favor.KeySums(state.kv, state.z, state.ref + 2.0)
  with pytest.raises(ValueError, match='reference log-scale above 0'):
    favor.causal_favor(qf, kf, None, v, initial_state=above)
  with pytest.raises(ValueError, match='reference log-scale above 0'):
    ops.favor_attention(q, k, v, w, feature_map='relu', causal=True,
                        initial_state=above)
  # A state below 0 is a rescaling of the same sums: continued exactly.
  below = favor.KeySums(state.kv * np.exp(3.0), state.z * np.exp(3.0),
                        state.ref - 3.0)
  np.testing.assert_allclose(
      favor.causal_favor(qf, kf, None, v, initial_state=below)[0],
      favor.causal_favor(qf, kf, None, v, initial_state=state)[0],
      rtol=1e-5, atol=1e-6)


def test_all_keys_masked_gives_zeros_not_nan():
  q, k, v = _qkv(11, length=10)
  w = ops.draw_projection(jax.random.PRNGKey(4), 8, 12)
  none = jnp.zeros((10,), jnp.bool_)
  out = ops.favor_attention(q, k, v, w, key_mask=none)
  causal, _ = ops.favor_attention(q, k, v, w, causal=True, key_mask=none)
  np.testing.assert_array_equal(out, 0.0)
  np.testing.assert_array_equal(causal, 0.0)


def test_bad_arguments_raise_clear_errors():
  q, k, v = _qkv(12, length=8)
  w = ops.draw_projection(jax.random.PRNGKey(4), 8, 12)
  with pytest.raises(ValueError, match='chunk_size'):
    ops.favor_attention(q, k, v, w, causal=True, chunk_size=0)
  with pytest.raises(ValueError, match='feature_map'):
    ops.favor_attention(q, k, v, w, feature_map='gaussian')
  with pytest.raises(ValueError, match='projection depth'):
    ops.favor_attention(q, k, v, w[:, :5])
  with pytest.raises(ValueError, match='initial_state'):
    ops.favor_attention(q, k, v, w, initial_state=ops.empty_state((2, 3), 8,
                                                                  10))
  with pytest.raises(ValueError, match='key_mask of shape'):
    ops.favor_attention(q, k, v, w, key_mask=jnp.ones((5,), jnp.bool_))
  with pytest.raises(ValueError, match='block_size'):
    ops.favor_attention(q, k, v, w, block_size=0)
  with pytest.raises(ValueError, match='v the shape'):
    ops.favor_attention(q, k, v[..., :5, :], w)
  with pytest.raises(ValueError, match='key_mask must be bool'):
    ops.favor_attention(q, k, v, w, key_mask=jnp.ones((8,), jnp.float32))
  with pytest.raises(ValueError, match='key_mask must be bool'):
    ops.key_sums(k, None, v, key_mask=jnp.ones((8,), jnp.float32))


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_an_integer_mask_keeps_its_ones(causal):
  """A 0/1 integer key_mask is the bool mask it reads as (used as it was,
  `~1` is -2, truthy: every output was NaN), in favor_attention and in the
  building blocks; a float mask is one ConfigError."""
  q, k, v = _qkv(13, length=20)
  w = ops.draw_projection(jax.random.PRNGKey(4), 8, 12)
  keep = np.arange(20) % 3 != 1
  run = lambda mask: ops.favor_attention(q, k, v, w, causal=causal,
                                         key_mask=mask, block_size=8)
  as_bool, as_int = run(jnp.asarray(keep)), run(jnp.asarray(keep, jnp.int32))
  if causal:
    as_bool, as_int = as_bool[0], as_int[0]
  assert np.all(np.isfinite(as_bool))
  np.testing.assert_array_equal(as_int, as_bool)
  bidir_int = ops.bidirectional_favor(*_features('softmax', q, k, 8), v,
                                      jnp.asarray(keep, jnp.int32))
  np.testing.assert_array_equal(
      bidir_int, ops.bidirectional_favor(*_features('softmax', q, k, 8), v,
                                         jnp.asarray(keep)))
  _, k_feat, k_log_scale = _features('softmax', q, k, 8)
  shard_sums = [sequence_parallel.causal_key_sums(k_feat, k_log_scale, v,
                                                  mask)
                for mask in (jnp.asarray(keep, jnp.int32), jnp.asarray(keep))]
  for a, b in zip(*shard_sums):
    assert np.all(np.isfinite(b))
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='key_mask must be bool'):
    sequence_parallel.causal_key_sums(k_feat, k_log_scale, v,
                                      jnp.asarray(keep, jnp.float32))


@pytest.mark.parametrize('feature_map', ['relu', 'elu'])
def test_shared_log_scale_path_matches_masked_reference(feature_map):
  """Maps with one log-scale for all keys skip the stabilizer (None)."""
  q, k, v = _qkv(19, length=45)
  qf, kf, ls = _features(feature_map, q, k, 17)
  np.testing.assert_array_equal(ls, ls.reshape(-1)[0])  # one constant
  assert ops.FEATURE_MAPS[feature_map].shared_log_scale
  mask = jnp.asarray(np.random.default_rng(4).random((2, 1, 45)) < 0.8)
  cot = _normal(20, v.shape)
  for causal in (False, True):
    def fast(qf, kf, v, causal=causal):
      if causal:
        first, state = favor.causal_favor(qf[..., :29, :], kf[..., :29, :],
                                          None, v[..., :29, :],
                                          key_mask=mask[..., :29],
                                          chunk_size=8)
        second, _ = favor.causal_favor(qf[..., 29:, :], kf[..., 29:, :], None,
                                       v[..., 29:, :], initial_state=state,
                                       key_mask=mask[..., 29:], chunk_size=8)
        return jnp.concatenate([first, second], axis=-2)
      return favor.bidirectional_favor(qf, kf, None, v, mask)

    slow = lambda qf, kf, v, causal=causal: reference.masked_linear_attention(
        qf, kf, None, v, causal, mask)  # None: as the fast path is given
    np.testing.assert_allclose(fast(qf, kf, v), slow(qf, kf, v), rtol=RTOL,
                               atol=ATOL)
    # The references take None as the constant log-scale it stands for.
    np.testing.assert_allclose(
        slow(qf, kf, v), reference.masked_linear_attention(qf, kf, ls, v,
                                                           causal, mask),
        rtol=RTOL, atol=ATOL)
    if causal:
      scanned, scan_state = reference.prefix_sum_favor(qf, kf, None, v,
                                                       key_mask=mask)
      _, fast_state = favor.causal_favor(qf, kf, None, v, key_mask=mask,
                                         chunk_size=8)
      np.testing.assert_allclose(scanned, slow(qf, kf, v), rtol=RTOL,
                                 atol=ATOL)
      for a, b in zip(scan_state, fast_state):  # both relative to 0
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    grad = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a) * cot),
                               (0, 1, 2))(qf, kf, v)
    for a, b in zip(grad(fast), grad(slow)):
      np.testing.assert_allclose(a, b, rtol=GRAD_TOL, atol=GRAD_TOL)


# -- length blocks (ops/attention.py): same numbers as features at full length

BLOCK_CASES = [  # (length, block, chunk, feature map): blocks not dividing
    # l and odd chunks; the shared-scale ReLU on that awkward case only
    pytest.param(77, 16, 7, 'softmax', id='L77-b16-c7-softmax'),
    pytest.param(77, 16, 7, 'relu', id='L77-b16-c7-relu'),
    pytest.param(64, 32, 16, 'softmax', id='L64-b32-c16-softmax'),
    pytest.param(40, 512, 16, 'softmax', id='one-block-softmax'),
]


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
@pytest.mark.parametrize('length,block,chunk,feature_map', BLOCK_CASES)
def test_blocks_match_full_length_features(length, block, chunk, causal,
                                           feature_map):
  """Outputs, gradients w.r.t. q, k, v and final state, with a key mask."""
  q, k, v = _qkv(13, length=length)
  w = ops.draw_projection(jax.random.PRNGKey(5), 19, 12)
  mask = jnp.asarray(np.random.default_rng(3).random((2, 1, length)) < 0.8)
  cot = _normal(14, v.shape)

  def run(q, k, v, block_size):
    out = ops.favor_attention(q, k, v, w, feature_map=feature_map,
                              causal=causal, key_mask=mask, chunk_size=chunk,
                              block_size=block_size)
    return out if causal else (out, None)

  def loss(block_size):
    return lambda q, k, v: jnp.sum(run(q, k, v, block_size)[0] * cot)

  (out_b, state_b), (out_f, state_f) = run(q, k, v, block), run(q, k, v, None)
  np.testing.assert_allclose(out_b, out_f, rtol=RTOL, atol=ATOL)
  if causal:
    for a, b in zip(state_b, state_f):
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
  for name, a, b in zip('qkv', jax.grad(loss(block), (0, 1, 2))(q, k, v),
                        jax.grad(loss(None), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, rtol=GRAD_TOL, atol=GRAD_TOL,
                               err_msg=name)


@pytest.mark.parametrize('backend,blocks', [('cpu', 512), ('gpu', None),
                                             ('tpu', None)])
def test_auto_block_size_follows_the_backend(monkeypatch, backend, blocks):
  """block_size='auto' (the default) is 512 on a CPU, full length
  elsewhere (docs/results.md, measured on a GPU): the same program as
  that explicit setting."""
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  assert ops.default_block_size() == blocks
  q, k, v = _qkv(16, length=600)
  w = ops.draw_projection(jax.random.PRNGKey(7), 19, 12)
  for causal in (False, True):
    program = lambda size: str(jax.make_jaxpr(
        lambda q: ops.favor_attention(q, k, v, w, causal=causal,
                                      block_size=size))(q))
    assert program('auto') == program(blocks)
    assert program(512) != program(None)


def test_blocks_chain_state_across_calls():
  q, k, v = _qkv(15, length=70)
  w = ops.draw_projection(jax.random.PRNGKey(6), 21, 12)
  run = functools.partial(ops.favor_attention, projection=w, causal=True,
                          chunk_size=8, block_size=16)
  whole, whole_state = run(q, k, v)
  first, state = run(q[..., :37, :], k[..., :37, :], v[..., :37, :])
  second, final = run(q[..., 37:, :], k[..., 37:, :], v[..., 37:, :],
                      initial_state=state)
  np.testing.assert_allclose(jnp.concatenate([first, second], axis=-2), whole,
                             rtol=RTOL, atol=ATOL)
  for a, b in zip(final, whole_state):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_blocked_dropout_gradient_matches_finite_differences(causal):
  """The backward pass recomputes each block's dropout mask identically.

  A mask redrawn differently in the recompute would give a gradient of some
  other function; a central difference (float32, step 1e-2) of the function
  itself checks it, to 2% of the directional derivative.
  """
  q, k, v = _qkv(16, batch=(1, 2), length=50, d=8, d_v=4)
  w = ops.draw_projection(jax.random.PRNGKey(7), 16, 8)
  rng = jax.random.PRNGKey(8)
  cot = _normal(17, v.shape)

  def loss(k):
    out = ops.favor_attention(q, k, v, w, causal=causal, chunk_size=8,
                              block_size=16, attention_dropout=0.3, rng=rng)
    return jnp.sum((out[0] if causal else out) * cot)

  direction = _normal(18, k.shape)
  analytic = jnp.sum(jax.grad(loss)(k) * direction)
  step = 1e-2
  numeric = (loss(k + step * direction) - loss(k - step * direction)) / (
      2 * step)
  np.testing.assert_allclose(analytic, numeric, rtol=2e-2)
  ones = ops.favor_attention(q, k, jnp.ones_like(v), w, causal=causal,
                             chunk_size=8, block_size=16,
                             attention_dropout=0.3, rng=rng)
  ones = ones[0] if causal else ones
  np.testing.assert_allclose(ones, 1.0, rtol=1e-5)  # rows stay averages


PRODUCTS = [  # (product, plain einsum, shapes of a, b): batch axes, odd sizes
    (cpu_speedups.sum_over_keys, '...lm,...lv->...mv', (2, 3, 11, 7), (2, 3, 11, 5)),
    (cpu_speedups.apply_sums, '...lm,...mv->...lv', (2, 3, 11, 7), (2, 3, 7, 5)),
    (cpu_speedups.pair_scores, '...lm,...km->...lk', (2, 3, 11, 7), (2, 3, 9, 7)),
]


@pytest.mark.parametrize('product,spec,shape_a,shape_b', PRODUCTS)
def test_products_hand_written_gradients_match_autodiff(product, spec,
                                                        shape_a, shape_b):
  with cpu_speedups.forced(True):  # the hand-written gradients
    _check_product(product, spec, shape_a, shape_b)


def _check_product(product, spec, shape_a, shape_b):
  a, b = _normal(30, shape_a), _normal(31, shape_b)
  out = product(a, b)
  np.testing.assert_allclose(out, jnp.einsum(spec, a, b), rtol=RTOL, atol=ATOL)
  weights = _normal(32, out.shape)  # a loss whose cotangent is not all ones

  def loss(f):
    return lambda a, b: jnp.sum(f(a, b) * weights)

  got = jax.grad(loss(product), argnums=(0, 1))(a, b)
  want = jax.grad(loss(lambda a, b: jnp.einsum(spec, a, b)),
                  argnums=(0, 1))(a, b)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=GRAD_TOL, atol=GRAD_TOL)
  # Second order: the backward pass is made of the products, so it differs too.
  hvp_got = jax.grad(lambda a: jnp.sum(jax.grad(loss(product))(a, b) ** 2))(a)
  hvp_want = jax.grad(lambda a: jnp.sum(jax.grad(loss(
      lambda a, b: jnp.einsum(spec, a, b)))(a, b) ** 2))(a)
  np.testing.assert_allclose(hvp_got, hvp_want, rtol=GRAD_TOL, atol=GRAD_TOL)
