"""FAVOR attention with a relative positional bias, by FFT: O(L log L).

With a bias b over relative positions d = j - i (query i, key j), kernelized
attention with relative positional encoding (Luo et al., NeurIPS 2021) is

    out_i = sum_j c_{j-i} Q'_i . K'_j V_j / sum_j c_{j-i} Q'_i . K'_j,
    c_d = exp(b_d),

and both sums are Q'_i . T_i with T_i = sum_j c_{j-i} (K'_j [V_j, 1]): for
every feature and value channel a Toeplitz matrix times a vector over the
length axis, i.e. one convolution, computed for all i at once by FFT. The
causal form sets c_d = 0 for d > 0 (a lower-triangular Toeplitz product).

Memory and time: the convolved tensor K' [V, 1] is (l, m, v + 1) per head,
m / 2 times the size of the plain FAVOR state per token; its FFT is
O(l log l) per channel.

Stabilization (every exponent <= 0, float32 throughout):
  bias   c_d = exp(b_d - max b): the common factor cancels;
  keys   K'_j = features_j exp(s_j - ref): bidirectional, ref is the largest
         key log-scale (stop_gradient); causal, ref must not depend on
         future keys, so the caller passes a bound that holds for every key
         (`log_ref`; with L2-normalized queries and keys the layer derives
         one from the projection, see layers/self_attention.py).
Masked keys are selected out (`jnp.where`). In float32 the FFT spreads a
roundoff of about 1e-7 of the largest term over all positions: causal
outputs are exact in arithmetic, and a future value reaches a past output
only through that roundoff (measured in tests/ops/test_rpe.py).

`naive_rpe_favor` is the explicit O(l^2) form beside it, for tests.
"""

import jax
import jax.numpy as jnp

from trax_favor import checks
from trax_favor.ops import favor


# Weights below exp(LOG_FLOOR) of the largest are raised to it, and a
# denominator below DEN_FLOOR of the sequence's largest to that: float32 FFT
# sums carry a roundoff of ~1e-7 of their largest term, so smaller ones are
# noise, and a query whose visible weights all underflowed would divide
# noise by noise (or by 0). Such extreme biases give finite outputs, not
# accurate ones.
LOG_FLOOR = -30.0
DEN_FLOOR = 1e-6


def _read_out(q_feat, t, d_v, has_key):
  """Q' T (..., l, v+1) -> num / den, den floored (see DEN_FLOOR)."""
  num_den = jnp.einsum('...lm,...lmv->...lv', q_feat.astype(jnp.float32), t)
  den = num_den[..., d_v]
  top = jax.lax.stop_gradient(jnp.max(jnp.abs(den), axis=-1, keepdims=True))
  den = jnp.maximum(den, DEN_FLOOR * top)
  return favor.safe_divide(num_den[..., :d_v], den, has_key)


def clipped_distances(length, max_distance, causal):
  """Index into the bias table of each relative distance d = j - i in
  [-(l-1), l-1] (in that order), distances clipped at +-max_distance.

  The table has 2 * max_distance + 1 entries (bidirectional: index
  d + max_distance) or max_distance + 1 (causal: index -d, d <= 0; the
  entries for d > 0 are never used).
  """
  d = jnp.arange(-(length - 1), length)  # (2l-1,)
  d = jnp.clip(d, -max_distance, max_distance)
  return jnp.maximum(-d, 0) if causal else d + max_distance


def bias_weights(bias, length, max_distance, causal):
  """c_d = exp(b_d - max b) (..., 2l-1) for d = -(l-1) .. l-1; 0 for d > 0
  when causal. bias: (..., table size) per head."""
  bias = bias.astype(jnp.float32)
  top = jax.lax.stop_gradient(jnp.max(bias, axis=-1, keepdims=True))
  c = jnp.exp(jnp.maximum(bias - top, LOG_FLOOR))[
      ..., clipped_distances(length, max_distance, causal)]
  if causal:
    c = jnp.where(jnp.arange(-(length - 1), length) > 0, 0.0, c)
  return c  # (..., 2l-1)


def toeplitz_apply(c, x):
  """y_i = sum_j c_{j-i} x_j for every channel, by FFT.

  Args:
    c: (..., 2l-1) weights of d = j - i = -(l-1) .. l-1.
    x: (..., l, channels).

  Returns:
    (..., l, channels) float32.
  """
  length = x.shape[-2]
  n = 1 << (2 * length - 1).bit_length()  # >= 2l - 1: no wrap-around
  # y_i = sum_n h_n x_{i-n} with h_n = c_{-n}: a convolution. h_n sits at
  # index n mod N; n = i - j runs over -(l-1) .. l-1.
  h = jnp.flip(c, axis=-1)  # (..., 2l-1): h_n for n = -(l-1) .. l-1
  h = jnp.concatenate([h[..., length - 1:],  # n = 0 .. l-1
                       jnp.zeros(h.shape[:-1] + (n - 2 * length + 1,),
                                 jnp.float32),
                       h[..., :length - 1]], axis=-1)  # (..., N)
  spectrum = jnp.fft.rfft(x, n=n, axis=-2) * jnp.fft.rfft(h, n=n)[..., None]
  return jnp.fft.irfft(spectrum, n=n, axis=-2)[..., :length, :]


def _weighted_keys(k_feat, k_log_scale, v, key_mask, causal, log_ref):
  """K'_j [V_j, 1] (..., l, m, v+1) relative to ref, masked keys zeroed."""
  k_feat, s, v = favor.mask_keys(k_feat, k_log_scale, v, key_mask)
  if s is not None:
    if log_ref is None:
      if causal:
        raise checks.ConfigError(
            'causal rpe_favor needs log_ref, a bound on every key log-scale: '
            'a reference taken from the keys would depend on future ones.')
      log_ref = jnp.max(s, axis=-1, keepdims=True)  # (..., 1)
    log_ref = jax.lax.stop_gradient(jnp.asarray(log_ref, jnp.float32))
    k_feat = k_feat * jnp.exp(s - log_ref)[..., None]  # (..., l, m)
  v1 = jnp.concatenate([v, jnp.ones_like(v[..., :1])], axis=-1)
  return k_feat[..., :, None] * v1[..., None, :]  # (..., l, m, v+1)


def _has_key(key_mask, shape, causal):
  """(..., l): whether query i sees any unmasked key."""
  if key_mask is None:
    return jnp.ones(shape, jnp.bool_)
  mask = jnp.broadcast_to(key_mask, shape)
  if causal:
    return jnp.cumsum(mask, axis=-1) > 0
  return jnp.broadcast_to(jnp.any(mask, axis=-1, keepdims=True), shape)


def rpe_favor(q_feat, k_feat, k_log_scale, v, c, key_mask=None,
              causal=False, log_ref=None):
  """FAVOR attention with relative-position weights c, by FFT.

  Args:
    q_feat: (..., l, m) query features.
    k_feat: (..., l, m) key features; k_log_scale (..., l) or None (shared).
    v: (..., l, v) values.
    c: (..., 2l-1) positive weights of d = j - i (see `bias_weights`).
    key_mask: optional bool broadcastable to (..., l); False removes a key.
    causal: whether c is lower-triangular (a query sees j <= i only).
    log_ref: (..., 1) or scalar bound on the key log-scales; needed when
      causal with per-key log-scales.

  Returns:
    (..., l, v) in v's dtype.
  """
  d_v = v.shape[-1]
  x = _weighted_keys(k_feat, k_log_scale, v.astype(jnp.float32), key_mask,
                     causal, log_ref)  # (..., l, m, v+1)
  m = x.shape[-2]
  t = toeplitz_apply(c, x.reshape(*x.shape[:-2], m * (d_v + 1)))
  t = t.reshape(*t.shape[:-1], m, d_v + 1)  # (..., l, m, v+1)
  has_key = _has_key(key_mask, t.shape[:-2], causal)
  return _read_out(q_feat, t, d_v, has_key).astype(v.dtype)


def naive_rpe_favor(q_feat, k_feat, k_log_scale, v, c, key_mask=None,
                    causal=False, log_ref=None):
  """rpe_favor through the explicit (l, l) matrix: the reference form."""
  length, d_v = v.shape[-2], v.shape[-1]
  x = _weighted_keys(k_feat, k_log_scale, v.astype(jnp.float32), key_mask,
                     causal, log_ref)  # (..., l, m, v+1)
  i = jnp.arange(length)
  weights = c[..., (i[None, :] - i[:, None]) + length - 1]  # (..., l, l)
  t = jnp.einsum('...ij,...jmv->...imv', weights, x)  # (..., l, m, v+1)
  has_key = _has_key(key_mask, t.shape[:-2], causal)
  return _read_out(q_feat, t, d_v, has_key).astype(v.dtype)
