"""Bidirectional relative-position FAVOR in length blocks (features recomputed).

`rpe.rpe_favor` at full length keeps, for the backward pass, the features of
every key as many times as a window holds it ((c + 2 R) / c, 3x at D = c)
and the (c, c + 2 R) weights of every chunk: 6-7x the memory of plain
FAVOR+. Here a sequence of l tokens is cut into n blocks of B queries (whole
chunks), each computed in the body of a `lax.scan` under `jax.checkpoint`,
so the backward pass recomputes one block's features and weights at a time.
A block's queries see
  its halo     the keys from R = ceil(D / c) c before the block to R after
               it (B + 2 R keys, features recomputed): `rpe.window_sums`'s
               windows and the far sums inside the halo;
  before       every key before the halo: carried by the scan over blocks
               (a (m, v+1) sum and its reference, as `favor.KeySums`);
  after        every key after the halo: a first, reversed scan over key
               blocks stores these sums at each block's end (n of them).
What autodiff stores per block is those sums and the block's outputs, never
a per-key tensor. Every term stays positive and stabilized as in `rpe.py`,
so the result equals the full-length one to float32 rounding.

A key's features are computed up to three times (its own block, the halos
of its neighbours, the sums after), so dropout masks are keyed by position
(`key_features` receives the positions), not by block, and are the same
each time. A non-finite unmasked key makes every output NaN, as at full
length: blocks report them, and the outputs are replaced after the scan.
"""

import functools

import jax
import jax.numpy as jnp

from trax_favor.ops import favor
from trax_favor.ops import rpe


def _relative_sums(k_feat, s, v):
  """(kv1 (..., m, v+1), ref (...,)): sums of cleaned keys, as window_sums'
  prefix and suffix take them."""
  sums = favor.key_sums(k_feat, s, v)
  return jnp.concatenate([sums.kv, sums.z[..., None]], -1), sums.ref


def bidirectional_blocks(q, k, v, key_mask, bias, max_distance, chunk_size,
                         block_size, n_features, query_features, key_features):
  """Bidirectional `rpe.rpe_favor` from queries and keys, in length blocks.

  Args:
    q, k: (..., l, d) queries and keys; v: (..., l, v) values.
    key_mask: optional bool (..., l); False removes a key.
    bias: (..., table) float bias (`rpe.table_size(max_distance, False)`).
    max_distance: D; chunk_size: c; block_size: queries per block (rounded
      up to whole chunks).
    n_features: m, the feature count of `key_features`.
    query_features: x (..., b, d) -> features (..., b, m).
    key_features: (x (..., b, d), positions (b,) int32) -> (features
      (..., b, m), log-scales (..., b) or None); positions are the keys'
      places in the sequence (padding outside [0, l)).

  Returns:
    (..., l, v) outputs in v's dtype.
  """
  *batch, length, _ = q.shape
  axis = len(batch)  # the length axis
  c = chunk_size
  r_keys = -(-max_distance // c) * c  # R
  size = -(-block_size // c) * c  # B
  n = -(-length // size)
  pad = n * size - length
  d_v = v.shape[-1]

  def padded(x, before, after, fill=0):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return jnp.pad(x, widths, constant_values=fill)

  if key_mask is None:
    key_mask = jnp.ones(tuple(batch) + (length,), jnp.bool_)
  ext = (padded(k, r_keys, pad + r_keys), padded(v, r_keys, pad + r_keys),
         padded(key_mask, r_keys, pad + r_keys, False))  # (..., n B + 2 R, .)
  q_blocks = padded(q, 0, pad).reshape(*batch, n, size, q.shape[-1])
  q_blocks = jnp.moveaxis(q_blocks, axis, 0)  # (n, ..., B, d)
  b = bias.astype(jnp.float32)
  empty = (jnp.zeros(tuple(batch) + (n_features, d_v + 1), jnp.float32),
           jnp.full(tuple(batch), favor.NEG, jnp.float32))
  remat = functools.partial(jax.checkpoint, prevent_cse=False)

  def keys(start, count):
    """Cleaned keys [start, start + count) of ext, and their bad rows."""
    k_x, v_x, m_x = (jax.lax.dynamic_slice_in_dim(x, start, count, axis)
                     for x in ext)
    k_feat, s = key_features(k_x, start - r_keys + jnp.arange(count))
    return rpe.clean_keys(k_feat, s, v_x, m_x)

  def add_after(after, i):
    """Reversed scan body: emit the sums after block i's halo, add the keys
    that block i - 1's halo does not reach."""
    k_feat, s, v_x, bad = keys(i * size + 2 * r_keys, size)
    total = favor.add_relative(*after, *_relative_sums(k_feat, s, v_x))
    return total, (after, jnp.any(bad, -1))

  _, (after, bad_after) = jax.lax.scan(remat(add_after), empty, jnp.arange(n),
                                       reverse=True)

  def block(before, xs):
    """Scan body: block i's outputs; the sums before block i + 1's halo."""
    q_x, i, after_i = xs
    k_feat, s, v_x, bad = keys(i * size, size + 2 * r_keys)
    q_feat, bad_q = rpe.clean_queries(query_features(q_x))
    v1 = jnp.concatenate([v_x, jnp.ones_like(v_x[..., :1])], -1)
    num1, q_ref, before = rpe.window_sums(q_feat, k_feat, s, v1, b, before,
                                          after_i, max_distance, False, c)
    out = rpe.normalize(num1, q_ref, bad_q.reshape(*batch, size // c, c),
                        True)  # (..., B / c, c, v)
    return before, (out.reshape(*batch, size, d_v), jnp.any(bad, -1))

  _, (out, bad_blocks) = jax.lax.scan(remat(block), empty,
                                      (q_blocks, jnp.arange(n), after))
  out = jnp.moveaxis(out, 0, axis).reshape(*batch, n * size, d_v)
  any_bad = jnp.any(bad_blocks, 0) | jnp.any(bad_after, 0)  # (...,)
  out = jnp.where(any_bad[..., None, None], jnp.nan, out[..., :length, :])
  return out.astype(v.dtype)
