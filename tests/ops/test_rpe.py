"""Relative positions for FAVOR by FFT (ops/rpe.py): against the explicit
O(l^2) form (outputs and gradients), plain FAVOR at bias 0, exact softmax
with the same bias as m grows, causality, masks, large biases, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_favor import ops
from trax_favor.ops import rpe

TOL = 5e-5  # float32 FFT against the explicit sums (outputs)


def _normal(seed, shape, scale=1.0):
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(
      shape), jnp.float32)


def _inputs(seed, length, d=8, d_v=5, m=16, distance=4, causal=False):
  q, k = _normal(seed, (2, length, d), 0.7), _normal(seed + 1, (2, length, d),
                                                     0.7)
  v = _normal(seed + 2, (2, length, d_v))
  w = ops.draw_projection(jax.random.PRNGKey(seed), m, d)
  q_feat, _ = ops.feature_map('softmax', q, w)
  k_feat, k_log_scale = ops.feature_map('softmax', k, w)
  table = distance + 1 if causal else 2 * distance + 1
  bias = _normal(seed + 3, (2, table))
  log_ref = jnp.max(k_log_scale) + 1.0 if causal else None  # any bound
  return q_feat, k_feat, k_log_scale, v, bias, log_ref


CASES = [pytest.param(length, causal, masked,
                      id=f'L{length}-{"causal" if causal else "bidir"}'
                      f'{"-masked" if masked else ""}')
         for length in (1, 7, 33) for causal in (False, True)
         for masked in (False, True)]


def _mask(length):
  return jnp.arange(length) % 3 != 1  # every third key padded


@pytest.mark.parametrize('length,causal,masked', CASES)
def test_fft_matches_the_explicit_sums_with_gradients(length, causal,
                                                      masked):
  q_feat, k_feat, s, v, bias, log_ref = _inputs(0, length, causal=causal)
  mask = _mask(length) if masked else None

  def run(form):
    def f(q_feat, k_feat, v, bias):
      c = rpe.bias_weights(bias, length, 4, causal)
      return form(q_feat, k_feat, s, v, c, key_mask=mask, causal=causal,
                  log_ref=log_ref)
    return f

  fast, naive = run(rpe.rpe_favor), run(rpe.naive_rpe_favor)
  args = (q_feat, k_feat, v, bias)
  np.testing.assert_allclose(fast(*args), naive(*args), rtol=TOL, atol=TOL)
  cot = _normal(9, v.shape)
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cot),
                    argnums=(0, 1, 2, 3))(*args) for f in (fast, naive)]
  for g_fast, g_naive in zip(*grads):  # FFT roundoff: relative to the largest
    scale = float(jnp.max(jnp.abs(g_naive)))
    np.testing.assert_allclose(g_fast, g_naive, rtol=0,
                               atol=max(2e-3 * scale, 1e-6))
  assert float(jnp.max(jnp.abs(grads[0][3]))) > 0  # the bias learns


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_zero_bias_is_plain_favor(causal):
  q, k, v = (_normal(s, (2, 3, 40, 8)) for s in (1, 2, 3))
  w = ops.draw_projection(jax.random.PRNGKey(4), 32, 8)
  q_feat, _ = ops.feature_map('softmax', q, w)
  k_feat, s = ops.feature_map('softmax', k, w)
  c = rpe.bias_weights(jnp.zeros((3, 9)), 40, 4, causal)
  out = rpe.rpe_favor(q_feat, k_feat, s, v, c, causal=causal,
                      log_ref=jnp.max(s) if causal else None)
  plain = ops.favor_attention(q, k, v, w, causal=causal)
  np.testing.assert_allclose(out, plain[0] if causal else plain, rtol=TOL,
                             atol=TOL)


def test_more_features_approach_exact_softmax_with_the_same_bias():
  length, d, distance = 24, 8, 6
  q, k, v = (_normal(s, (length, d), 0.5) for s in (5, 6, 7))
  bias = _normal(8, (2 * distance + 1,))
  c = rpe.bias_weights(bias, length, distance, False)
  i = jnp.arange(length)
  logits = q @ k.T / np.sqrt(d) + jnp.log(c[i[None, :] - i[:, None]
                                            + length - 1])
  exact = jax.nn.softmax(logits, axis=-1) @ v
  errors = []
  for m in (16, 256, 4096):
    w = ops.draw_projection(jax.random.PRNGKey(m), m, d)
    q_feat, _ = ops.feature_map('softmax', q, w)
    k_feat, s = ops.feature_map('softmax', k, w)
    out = rpe.rpe_favor(q_feat, k_feat, s, v, c)
    errors.append(float(jnp.mean(jnp.abs(out - exact))))
  assert errors[0] > 2 * errors[1] > 4 * errors[2], errors


def test_future_tokens_reach_past_outputs_only_through_roundoff():
  """Causal: tokens >= t changed (values x 10, other keys and queries):
  outputs before t move by FFT roundoff only (< 1e-5 relative)."""
  length, t = 48, 17
  q_feat, k_feat, s, v, bias, _ = _inputs(11, length, causal=True)
  c = rpe.bias_weights(bias, length, 4, True)
  ref = jnp.max(s) + 3.0
  run = lambda q, k, s, v: rpe.rpe_favor(q, k, s, v, c, causal=True,
                                         log_ref=ref)
  out = run(q_feat, k_feat, s, v)
  q2, k2, s2, v2, _, _ = _inputs(12, length, causal=True)
  spliced = [jnp.concatenate([a[..., :t, :] if a.ndim == 3 else a[..., :t],
                              b[..., t:, :] if b.ndim == 3 else b[..., t:]],
                             axis=-2 if a.ndim == 3 else -1)
             for a, b in ((q_feat, q2), (k_feat, k2), (s, s2), (v, 10 * v2))]
  out2 = run(*spliced)
  scale = float(jnp.max(jnp.abs(out[..., :t, :])))
  assert float(jnp.max(jnp.abs(out2[..., :t, :] - out[..., :t, :]))) < (
      1e-5 * scale * 10)
  assert not np.allclose(out2[..., t:, :], out[..., t:, :])


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_large_biases_stay_finite_and_masks_select(causal):
  q_feat, k_feat, s, v, _, log_ref = _inputs(13, 30, causal=causal)
  table = [300.0] + [-50.0] * 4 if causal else (
      [-200.0] * 4 + [300.0] + [-50.0] * 4)
  mask = _mask(30)
  v_junk = jnp.where(mask[:, None], v, jnp.nan)  # NaN under the mask
  c = rpe.bias_weights(jnp.asarray([table] * 2), 30, 4, causal)
  out = rpe.rpe_favor(q_feat, k_feat, s, v_junk, c, key_mask=mask,
                      causal=causal, log_ref=log_ref)
  assert np.all(np.isfinite(out))
  # Moderate biases (within float32's reach): as the explicit sums.
  moderate = [0.0, 5.0, -5.0, 2.0, -3.0, 1.0, 0.5, -1.0, 4.0][:len(table)]
  c = rpe.bias_weights(jnp.asarray([moderate] * 2), 30, 4, causal)
  np.testing.assert_allclose(
      rpe.rpe_favor(q_feat, k_feat, s, v_junk, c, key_mask=mask,
                    causal=causal, log_ref=log_ref),
      rpe.naive_rpe_favor(q_feat, k_feat, s, v, c, key_mask=mask,
                          causal=causal, log_ref=log_ref),
      rtol=1e-4, atol=1e-4)


def test_bfloat16_inputs_accumulate_in_float32():
  q_feat, k_feat, s, v, bias, _ = _inputs(14, 40)
  c = rpe.bias_weights(bias, 40, 4, False)
  full = rpe.rpe_favor(q_feat, k_feat, s, v, c)
  half = rpe.rpe_favor(q_feat.astype(jnp.bfloat16),
                       k_feat.astype(jnp.bfloat16), s,
                       v.astype(jnp.bfloat16), c)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(half.astype(jnp.float32), full, atol=3e-2)


def test_causal_without_a_bound_is_refused():
  q_feat, k_feat, s, v, bias, _ = _inputs(15, 8, causal=True)
  with pytest.raises(ValueError, match='log_ref'):
    rpe.rpe_favor(q_feat, k_feat, s, v, rpe.bias_weights(bias, 8, 4, True),
                  causal=True)
