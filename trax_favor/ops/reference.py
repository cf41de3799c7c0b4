"""Slow, obviously-correct references for the fast paths in `favor.py`.

Used by the tests (and the benchmarks' exact baseline); never by the layers.

* `exact_softmax_attention`: softmax(q k^T / sqrt(d)) v, O(l^2), with causal
  and key-padding masks; what the softmax feature maps approximate.
* `masked_linear_attention`: the O(l^2) form of (causal) FAVOR: the full
  (l, l) matrix of feature products, masked, normalized by its row sums.
* `prefix_sum_favor`: causal FAVOR as a recurrence over tokens (one state
  update per token, a `lax.scan`), with initial and final state: what
  predict-mode decoding computes one token at a time.
* `naive_rpe_favor`: FAVOR with a relative bias (`rpe.py`) as the explicit
  (l, l) matrix of feature products times the bias weights.

Each uses the same stabilization rule as the fast path (a query's reference is
the largest key log-scale among the keys it sees), so they agree with it to
float32 rounding, and they share its conventions for masked rows (output 0)
and for k_log_scale=None (every key's log-scale 0, as bounded maps give).
"""

import functools

import jax
import jax.numpy as jnp

from trax_favor.ops import favor
from trax_favor.ops import rpe


@functools.partial(jax.jit, static_argnums=(3,))
def exact_softmax_attention(q, k, v, causal=False, key_mask=None):
  """softmax(q k^T / sqrt(d)) v for q, k (..., l, d) and v (..., l, v)."""
  length = q.shape[-2]
  logits = jnp.einsum('...id,...jd->...ij', q, k) / jnp.sqrt(
      float(q.shape[-1]))  # (..., l, l)
  keep = jnp.ones((length, length), jnp.bool_)
  if causal:
    keep = jnp.tril(keep)
  if key_mask is not None:
    keep = keep & jnp.expand_dims(key_mask, -2)
  logits = jnp.where(keep, logits, -jnp.inf)
  any_key = jnp.any(keep, axis=-1, keepdims=True)
  probs = jax.nn.softmax(jnp.where(any_key, logits, 0.0), axis=-1)
  probs = jnp.where(keep, probs, 0.0)
  return jnp.einsum('...ij,...jv->...iv', probs, v)


def _key_log_scales(k_feat, k_log_scale, v, key_mask):
  """mask_keys, with None log-scales taken as 0: (features, (..., l),
  values)."""
  if k_log_scale is None:
    k_log_scale = jnp.zeros(k_feat.shape[:-1], jnp.float32)
  return favor.mask_keys(k_feat, k_log_scale, v, key_mask)


@functools.partial(jax.jit, static_argnums=(4,))
def masked_linear_attention(q_feat, k_feat, k_log_scale, v, causal=True,
                            key_mask=None):
  """FAVOR through the explicit (l, l) matrix of kernel estimates."""
  length, dtype = q_feat.shape[-2], v.dtype
  k_feat, s, v = _key_log_scales(k_feat, k_log_scale, v, key_mask)
  keep = jnp.ones((length, length), jnp.bool_)
  if causal:
    keep = jnp.tril(keep)
  s_q = jnp.where(keep, jax.lax.stop_gradient(s)[..., None, :], favor.NEG)
  ref = jnp.max(s_q, axis=-1, keepdims=True)  # (..., l, 1): keys seen
  exponent = jnp.where(keep, s[..., None, :] - ref, favor.NEG)
  a = jnp.einsum('...im,...jm->...ij', q_feat.astype(jnp.float32),
                 k_feat) * jnp.exp(exponent)  # (..., l, l)
  num = jnp.einsum('...ij,...jv->...iv', a, v)
  return favor.safe_divide(num, jnp.sum(a, axis=-1),
                           favor.has_keys(ref[..., 0])).astype(dtype)


@jax.jit
def prefix_sum_favor(q_feat, k_feat, k_log_scale, v, initial_state=None,
                     key_mask=None):
  """Causal FAVOR one token at a time; returns (outputs, final state)."""
  *batch, _, m = k_feat.shape
  if initial_state is None:
    initial_state = favor.empty_state(batch, m, v.shape[-1])
  dtype = v.dtype
  k_feat, s, v = _key_log_scales(k_feat, k_log_scale, v, key_mask)
  axis = len(batch)

  def step(state, token):
    q_t, k_t, s_t, v_t = token  # (..., m), (..., m), (...), (..., v)
    ref = jnp.maximum(state.ref, jax.lax.stop_gradient(s_t))  # (...,)
    decay = jnp.exp(state.ref - ref)
    grow = jnp.exp(s_t - ref)
    kv = (state.kv * decay[..., None, None]
          + jnp.einsum('...m,...v->...mv', k_t * grow[..., None], v_t))
    z = state.z * decay[..., None] + k_t * grow[..., None]
    num = jnp.einsum('...m,...mv->...v', q_t, kv)
    den = jnp.einsum('...m,...m->...', q_t, z)
    out = favor.safe_divide(num, den, favor.has_keys(ref))
    return favor.KeySums(kv, z, ref), out

  tokens = tuple(jnp.moveaxis(x, axis, 0) for x in (
      q_feat.astype(jnp.float32), k_feat, s, v))
  final, outs = jax.lax.scan(step, initial_state, tokens)
  return jnp.moveaxis(outs, 0, axis).astype(dtype), final


def naive_rpe_favor(q_feat, k_feat, k_log_scale, v, bias, max_distance,
                    key_mask=None, causal=False):
  """The explicit (l, l) form, stabilized per query row: a reference.

  Returns (..., l, v) in v's dtype; rows without a visible key are 0.
  """
  length = v.shape[-2]
  i = jnp.arange(length)
  d = i[None, :] - i[:, None]  # (l, l): j - i
  index = rpe.table_index(d, max_distance, causal)
  log_w = bias.astype(jnp.float32)[..., index]
  if k_log_scale is not None:
    log_w = log_w + k_log_scale.astype(jnp.float32)[..., None, :]
  visible = jnp.ones((length, length), jnp.bool_)
  if causal:
    visible = d <= 0
  if key_mask is not None:
    visible = visible & jnp.broadcast_to(key_mask, v.shape[:-1])[..., None, :]
  log_w = jnp.where(visible, log_w, -jnp.inf)  # (..., l, l)
  top = jax.lax.stop_gradient(jnp.max(log_w, -1, keepdims=True))
  seen = jnp.isfinite(top)
  a = jnp.einsum('...im,...jm->...ij', q_feat.astype(jnp.float32),
                 k_feat.astype(jnp.float32))
  a = jnp.where(visible, a * jnp.exp(log_w - jnp.where(seen, top, 0.0)), 0.0)
  num = a @ jnp.where(visible.any(-2)[..., None], v.astype(jnp.float32), 0.0)
  den = jnp.sum(a, -1, keepdims=True)
  return jnp.where(seen, num / jnp.where(seen, den, 1.0), 0.0).astype(v.dtype)
