"""Sequence parallelism: one sequence split along its length across devices.

Inside `jax.shard_map`, each device of a mesh axis holds a contiguous shard
of the length (shards in axis-index order). FAVOR attention needs from the
other shards only their sums over keys (`favor.KeySums`: K'^T V (m, v), K'
(m,) and a reference log-scale, per head), whose size does not depend on the
length. So one all-gather of every shard's sums, (m + 1, v + 1) floats per
head per shard, is all the communication a layer needs:

  bidirectional   every query sees every key: the total of all shards' sums,
                  added in axis-index order (`total`).
  causal          the queries of shard i see the keys of shards 0..i-1
                  through the initial state of its chunked causal pass: the
                  sums of those shards, added in order (`prefix`).

Exactness. The sums are added with `favor.combine_sums`, which rescales
each to the larger reference log-scale, exactly as the unsplit call adds
its blocks and chunks: only the order of float32 additions differs. The
reference of a query in the causal form is the largest key log-scale among
the keys it sees, and a prefix state's reference is the largest over the
earlier shards, so no later shard changes an earlier output.

Non-finite values. The causal state of a shard is computed as the chunked
causal pass computes its final state (`causal_key_sums`): a NaN/Inf key or
value row is replaced by zeros and the whole state set to NaN by selection,
so every later shard's outputs are NaN (as the unsplit call's are) while no
earlier position's output or gradient sees it. A shard's state reaches only
the shards after it: the others receive an empty state in its place,
selected, never multiplied.

Everything here is pure JAX; `ops/attention.py` calls it when
`favor_attention(..., sequence_axis=name)` is given.
"""

import jax
import jax.numpy as jnp

from trax_favor.ops import favor


def shard_index(axis_name):
  """This device's position along the mesh axis (its shard's order)."""
  return jax.lax.axis_index(axis_name)


def varying(tree, axis_name):
  """tree's arrays typed as varying along the axis (shard_map's type check):
  a scan carry that starts equal on every device (an empty state) and is
  updated with this shard's values must be typed varying from the start."""
  def cast(x):
    aval = jax.typeof(x)  # jax 0.10 keeps the axes in manual_axis_type
    axes = getattr(getattr(aval, 'manual_axis_type', None), 'varying',
                   getattr(aval, 'vma', frozenset()))
    if axis_name in axes:
      return x
    return jax.lax.pcast(x, (axis_name,), to='varying')
  return jax.tree_util.tree_map(cast, tree)


def _pack(sums):
  """KeySums -> (..., m + 1, v + 1): [[kv, z], [ref ... ref]] (one array, so
  one all-gather carries all three)."""
  kv1 = jnp.concatenate([sums.kv, sums.z[..., None]], -1)  # (..., m, v+1)
  ref = jnp.broadcast_to(sums.ref[..., None, None],
                         kv1.shape[:-2] + (1, kv1.shape[-1]))  # (..., 1, v+1)
  return jnp.concatenate([kv1, ref], -2)  # (..., m+1, v+1)


def _unpack(packed):
  """(..., m + 1, v + 1) -> KeySums (inverse of `_pack`)."""
  kv1 = packed[..., :-1, :]  # (..., m, v+1)
  ref = jax.lax.stop_gradient(packed[..., -1, 0])  # (...,): cancels
  return favor.KeySums(kv1[..., :-1], kv1[..., -1], ref)


def gather_sums(sums, axis_name):
  """Every shard's KeySums, stacked on a new leading shard axis (n, ...).

  One all-gather of (m + 1) (v + 1) floats per head and shard: independent
  of the length. Its transpose (backward pass) is one reduce-scatter of the
  same size.
  """
  packed = jax.lax.all_gather(_pack(sums), axis_name)  # (n, ..., m+1, v+1)
  return _unpack(packed)


def _empty_like(sums):
  return favor.KeySums(jnp.zeros_like(sums.kv), jnp.zeros_like(sums.z),
                       jnp.full_like(sums.ref, favor.NEG))


def _add_in_order(initial, gathered, keep, axis_name):
  """initial + the gathered shards' sums where keep (n,), in shard order.

  A shard not kept contributes an empty state, selected in its place (its
  values, NaN or not, reach neither the result nor its gradient).
  """
  initial = favor.KeySums(*initial)
  empty = _empty_like(initial)

  def add(acc, xs):
    shard, kept = xs
    shard = jax.tree_util.tree_map(
        lambda x, e: jnp.where(kept, x, e), shard, empty)
    return favor.combine_sums(acc, shard), None

  acc = varying(jax.tree_util.tree_map(lambda x: x.astype(jnp.float32),
                                      initial), axis_name)
  total, _ = jax.lax.scan(add, acc, (gathered, keep))
  return total


def total(gathered, axis_name, initial=None):
  """The sums of all shards (and of `initial`, the tokens before shard 0)."""
  first = jax.tree_util.tree_map(lambda x: x[0], gathered)
  if initial is None:
    initial = _empty_like(first)
  n = gathered.ref.shape[0]
  return _add_in_order(initial, gathered, jnp.ones((n,), jnp.bool_),
                       axis_name)


def prefix(gathered, axis_name, initial=None):
  """The sums of the shards before this device's (and of `initial`): the
  initial state of this shard's causal pass."""
  index = shard_index(axis_name)
  first = jax.tree_util.tree_map(lambda x: x[0], gathered)
  if initial is None:
    initial = _empty_like(first)
  n = gathered.ref.shape[0]
  keep = jnp.arange(n) < index  # (n,), differs between devices
  return _add_in_order(initial, gathered, keep, axis_name)


def causal_key_sums(k_feat, k_log_scale, v, key_mask=None):
  """The sums of a shard's keys as the causal pass's final state holds them.

  Like `favor.key_sums`, except that a non-finite key or value row is
  removed (selected out) and the whole state set to NaN afterwards, by
  selection: the continuation of a sequence that saw one is NaN, and the
  gradient of every other key stays finite (as in `favor.causal_favor`).

  Args:
    k_feat: (..., l, m) key features; k_log_scale: (..., l) or None.
    v: (..., l, v) values.
    key_mask: optional bool (or integer 0/1) broadcastable to (..., l).

  Returns:
    KeySums (kv (..., m, v), z (..., m), ref (...,)).
  """
  bad = favor.non_finite_rows(k_feat) | favor.non_finite_rows(v)  # (..., l)
  if k_log_scale is not None:
    bad = bad | ~jnp.isfinite(k_log_scale)
  if key_mask is not None:  # a masked row is removed, whatever it holds
    key_mask = favor.as_key_mask(key_mask, bad.shape)
    bad = bad & key_mask
  keep = ~bad if key_mask is None else key_mask & ~bad
  sums = favor.key_sums(k_feat, k_log_scale, v, keep)
  spoiled = jnp.any(bad, axis=-1)  # (...,)
  return favor.KeySums(
      jnp.where(spoiled[..., None, None], jnp.nan, sums.kv),
      jnp.where(spoiled[..., None], jnp.nan, sums.z), sums.ref)
