"""FAVOR attention from queries, keys and values, in length blocks.

`favor_attention` is the entry point the layers call: it applies a feature map
(`feature_maps.py`) to per-head queries and keys and runs bidirectional or
causal FAVOR (`favor.py`) on the features.

Blocks. Materialized at full length, the features are the largest tensors of
the computation ((..., l, m), 4x the queries when m = 4 d), and autodiff keeps
them, and the exponentials of the stabilizer, until the backward pass. So a
sequence longer than `block_size` tokens is processed in blocks, in a
`lax.scan` whose body is under `jax.checkpoint`: each block computes its
features, uses them, and drops them; the backward pass recomputes one block's
features at a time. What is stored per block is only the carried state (an
(m, v) sum, `favor.KeySums`), never a per-token one.

  causal          one scan over blocks; the body is the chunked causal form
                  (`favor.causal_favor`) started from the carried prefix state.
  bidirectional   a scan over key blocks adds their sums (`favor.combine_sums`
                  of each block's `favor.relative_key_sums`, or `key_sums`
                  for relu/elu), then a scan over query blocks reads the
                  total out (`favor.read_out`); with a relative bias,
                  `rpe_blocks.py`.

Bidirectional keys of a stabilized map (softmax, exp), in blocks or at full
length, are made already scaled to their block's largest log-scale
(`feature_maps.relative_features`): one pass over (l, m) where the
factored form takes three.

Block and chunk are different things: a chunk (`chunk_size`, causal only) is
the unit of the within-chunk masked product; a block is the unit of feature
memory, a whole number of chunks. In the attention benchmark (2-core CPU,
l = 16384, 8 heads, m = 256, forward and backward) blocks of 512 cut the
layer's XLA-planned memory from 971 to 409 MiB (bidirectional, also 1.2x
faster) and from 1612 to 444 MiB (causal, 1.1x slower): README, Results.
On a GPU the scan costs more than it saves: `block_size='auto'` blocks on
a CPU only (`default_block_size`).

Sequence parallelism. With `sequence_axis` (a mesh axis name, inside
`jax.shard_map`), q, k and v are this device's contiguous shard of the
length; the shards' key sums travel in one all-gather whose size does not
depend on the length (`sequence_parallel.py`, docs/sequence_parallel.md).
"""

import functools

import jax
import jax.numpy as jnp

from trax_favor import checks
from trax_favor.ops import cpu_speedups
from trax_favor.ops import favor
from trax_favor.ops import feature_maps
from trax_favor.ops import rpe
from trax_favor.ops import rpe_blocks
from trax_favor.ops import sequence_parallel


def default_chunk_size(feature_map):
  """Causal chunk length used when none is given (measured on CPU at l=4096).

  Stabilized maps pay a (c, c) exponential per chunk and run best at 128;
  maps with a shared log-scale (no stabilizer) at 64.
  """
  return 64 if feature_maps.get_feature_map(feature_map).shared_log_scale else (
      128)


def default_block_size():
  """Length blocks by default (`block_size='auto'`): 512 tokens on a CPU,
  none elsewhere. On an H200 GPU (benchmarks/block_sizes.py,
  results/block_sizes_gpu.json, fwd+bwd, 8 heads of 64, m = 256) features
  at full length ran 2.0-3.7x faster than blocks of 512 at 4K-64K tokens
  (a scan over blocks runs them one after another), for 2.2-5x the
  attention's memory; on a CPU blocks of 512 save memory and time."""
  return 512 if jax.default_backend() == 'cpu' else None


def favor_attention(q, k, v, projection, feature_map='softmax', causal=False,
                    key_mask=None, initial_state=None, chunk_size=None,
                    block_size='auto', numerical_stabilizer=1e-6,
                    attention_dropout=0.0, rng=None, relative_bias=None,
                    max_relative_distance=None, sequence_axis=None):
  """FAVOR attention from per-head queries, keys and values.

  Args:
    q, k: (..., l, d) queries and keys (one head per leading index).
    v: (..., l, v) values.
    projection: (m, d) random projection (see `random_features`). It is a
      constant of the computation: no gradient flows to it.
    feature_map: a name registered in `feature_maps.FEATURE_MAPS`.
    causal: prefix attention (chunked, with state) instead of bidirectional.
    key_mask: optional bool broadcastable to (..., l); False removes a key.
    initial_state: causal only: KeySums of the preceding tokens.
    chunk_size: causal only: tokens per chunk (None: `default_chunk_size`).
    block_size: sequences longer than this are processed in blocks of this
      many tokens (rounded up to whole chunks when causal), recomputing each
      block's features in the backward pass (see the module docstring); None
      computes the features at full length; 'auto': `default_block_size()`
      (512 on a CPU, None elsewhere). Outputs do not depend on it beyond
      float32 rounding.
    numerical_stabilizer: positive floor added to non-negative features.
    attention_dropout: rate at which entries of the key features phi(K) are
      dropped (survivors scaled by 1/(1-rate)). The same phi(K) feeds
      numerator and denominator, so rows stay normalized averages of values,
      and phi(q).phi(k) stays unbiased over the dropout masks.
    rng: PRNG key for attention_dropout.
    relative_bias: optional (..., table) learned bias over relative
      distances clipped at max_relative_distance (ops/rpe.py); causal
      blocks carry an `rpe.RelativeState`, bidirectional ones the sums
      before and after each block's halo (ops/rpe_blocks.py).
    max_relative_distance: D, with relative_bias.
    sequence_axis: optional mesh axis name: called inside `jax.shard_map`,
      q, k, v (and key_mask) are this device's contiguous shard of the
      length, shards in axis-index order; outputs are this shard's, and
      equal the unsplit call's (float32 rounding aside). initial_state then
      holds the tokens before the first shard; the final state returned is
      the whole sequence's, the same on every device (typed varying under
      shard_map's check_vma: return it stacked). Dropout: block j of
      shard i draws its mask from fold_in(rng, i * n + j), n blocks per
      shard; that is the unsplit call's mask with block_size = the shard's
      block length whenever the shard length is a whole number of blocks.

  Returns:
    Outputs (..., l, v); with causal=True, (outputs, final KeySums, or
    RelativeState with relative_bias).
  """
  feature_maps.get_feature_map(feature_map)
  if (relative_bias is None) != (max_relative_distance is None):
    raise checks.ConfigError('relative_bias and max_relative_distance go '
                             'together: give both or neither.')
  if sequence_axis is not None and relative_bias is not None:
    raise checks.ConfigError('relative_bias is not supported with '
                             'sequence_axis yet; pass one or the other.')
  if relative_bias is not None:  # before either path (blocks or not)
    rpe.check_bias(relative_bias, max_relative_distance, causal,
                   jnp.shape(q)[:-2])
  if sequence_axis is not None:
    try:
      sequence_parallel.shard_index(sequence_axis)
    except NameError:
      raise checks.ConfigError(
          f'sequence_axis={sequence_axis!r} names no mesh axis here: call '
          'favor_attention inside jax.shard_map over a mesh with that '
          'axis.') from None
  if chunk_size is None:
    chunk_size = (default_chunk_size(feature_map) if relative_bias is None
                  else rpe.DEFAULT_CHUNK_SIZE)
  checks.check_positive_int(chunk_size=chunk_size)
  if block_size == 'auto':
    block_size = default_block_size()
  if block_size is not None:
    checks.check_positive_int(block_size=block_size)
  if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
    raise checks.ConfigError(
        f'q and k must have one shape (..., l, d) and v the shape '
        f'(..., l, d_v); got q {q.shape}, k {k.shape}, '
        f'v {v.shape}.')
  if q.shape[-1] != projection.shape[-1]:
    raise checks.ConfigError(
        f'projection depth {projection.shape[-1]} does not match '
        f'the query/key depth {q.shape[-1]}.')
  if attention_dropout and rng is None:
    raise checks.ConfigError('attention_dropout > 0 needs an rng.')
  if not causal and initial_state is not None:
    raise checks.ConfigError(
        'initial_state is only meaningful with causal=True.')
  if feature_maps.get_feature_map(feature_map).shared_log_scale:
    favor.check_shared_scale_state(initial_state)
  if key_mask is not None:
    key_mask = favor.as_key_mask(key_mask, k.shape[:-1])
  if causal and block_size is not None:
    block_size = -(-block_size // chunk_size) * chunk_size  # whole chunks
  if block_size is None or q.shape[-2] <= block_size:
    block_size = None
  projection = jax.lax.stop_gradient(projection)
  return _favor_attention(q, k, v, projection, key_mask, initial_state, rng,
                          relative_bias, feature_map, causal, chunk_size,
                          block_size, float(numerical_stabilizer),
                          float(attention_dropout), max_relative_distance,
                          sequence_axis)


@functools.partial(cpu_speedups.jit, static_argnums=tuple(range(8, 16)))
def _favor_attention(q, k, v, projection, key_mask, initial_state, rng, bias,
                     feature_map, causal, chunk_size, block_size, eps, rate,
                     max_distance, axis):
  """favor_attention after argument checks (jitted: eager dispatch is slow)."""
  *batch, length, _ = q.shape
  n = 1 if block_size is None else -(-length // block_size)  # blocks
  # Dropout masks are keyed by the block's place in the whole sequence.
  first_block = 0 if axis is None else sequence_parallel.shard_index(axis) * n

  def across_shards(local_sums, initial):
    """(sums this shard's queries see before its own keys, the whole
    sequence's sums) from this shard's key sums: one all-gather."""
    gathered = sequence_parallel.gather_sums(local_sums, axis)
    if not causal:
      return None, sequence_parallel.total(gathered, axis)
    return (sequence_parallel.prefix(gathered, axis, initial),
            sequence_parallel.total(gathered, axis, initial))

  def attend(q_feat, k_feat, k_log_scale, v, state, mask):
    """One block (or the whole sequence), causal or relative; bidirectional
    attention without a bias reads out `block_key_sums` below."""
    if bias is not None:
      return rpe.rpe_favor(q_feat, k_feat, k_log_scale, v, bias, max_distance,
                           key_mask=mask, causal=causal, initial_state=state,
                           chunk_size=chunk_size)
    return favor.causal_favor(q_feat, k_feat, k_log_scale, v, state, mask,
                              chunk_size)

  def query_features(x):
    return feature_maps.feature_map(feature_map, x, projection, eps)[0]

  fmap = feature_maps.get_feature_map(feature_map)

  def dropout(k_feat, block_index, positions):
    """Key features with dropout: one mask per block, or one per key at
    `positions`, redrawn alike when recomputed."""
    if not rate:
      return k_feat
    if positions is None:
      keep = jax.random.bernoulli(jax.random.fold_in(rng,
                                                     first_block + block_index),
                                  1.0 - rate, k_feat.shape)
    else:
      draw = lambda p: jax.random.bernoulli(
          jax.random.fold_in(rng, p), 1.0 - rate,
          k_feat.shape[:-2] + k_feat.shape[-1:])
      keep = jnp.moveaxis(jax.vmap(draw)(positions), 0, -2)  # (..., b, m)
    return jnp.where(keep, k_feat / (1.0 - rate), 0.0)

  def key_features(x, block_index, positions=None):
    """Key features and log-scales (None when shared), with dropout."""
    k_feat, k_log_scale = feature_maps.feature_map(feature_map, x, projection,
                                                   eps)
    if fmap.shared_log_scale:  # one constant for all keys: no stabilizer needed
      k_log_scale = None
    return dropout(k_feat, block_index, positions), k_log_scale

  def block_key_sums(x, v_blk, mask, block_index):
    """Bidirectional sums of a block's keys (or all): stabilized maps scale
    their features to the block's reference in the same pass."""
    if fmap.logits_fn is None:
      return favor.key_sums(*key_features(x, block_index), v_blk, mask)
    k_feat, ref = feature_maps.relative_features(feature_map, x, projection,
                                                 eps, mask)
    return favor.relative_key_sums(dropout(k_feat, block_index, None), ref,
                                   v_blk, mask)

  if block_size is None and bias is None and not causal:
    sums = block_key_sums(k, v, key_mask, 0)
    if axis is not None:
      _, sums = across_shards(sums, None)
    return favor.read_out(query_features(q), sums, v.dtype)
  if block_size is None:  # causal or relative, features at full length
    k_feat, k_log_scale = key_features(  # dropout by position, as in blocks
        k, 0, jnp.arange(length) if bias is not None and not causal else None)
    if axis is None:
      return attend(query_features(q), k_feat, k_log_scale, v, initial_state,
                    key_mask)
    before, final = across_shards(sequence_parallel.causal_key_sums(
        k_feat, k_log_scale, v, key_mask), initial_state)
    out, _ = attend(query_features(q), k_feat, k_log_scale, v, before,
                    key_mask)
    return out, final

  m_out = projection.shape[0] * fmap.features_per_row
  if bias is not None and not causal:
    return rpe_blocks.bidirectional_blocks(
        q, k, v, key_mask, bias, max_distance, chunk_size, block_size, m_out,
        query_features, lambda x, positions: key_features(x, 0, positions))
  pad = n * block_size - length
  if pad:  # padded tokens: zero inputs, removed as keys, outputs cut off
    widths = [(0, 0)] * len(batch) + [(0, pad), (0, 0)]
    q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
    if key_mask is None:
      key_mask = jnp.ones(tuple(batch) + (length,), jnp.bool_)
    key_mask = jnp.pad(key_mask, widths[:-1], constant_values=False)

  def blocks(x):  # (..., n * block, f) -> (n, ..., block, f)
    x = x.reshape(*x.shape[:-2], n, block_size, x.shape[-1])
    return jnp.moveaxis(x, -3, 0)

  qb, kb, vb = blocks(q), blocks(k), blocks(v)
  mb = None if key_mask is None else blocks(key_mask[..., None])[..., 0]
  index = jnp.arange(n)
  empty = favor.empty_state(batch, m_out, v.shape[-1])
  if axis is not None:  # scan carries hold this shard's sums
    empty = sequence_parallel.varying(empty, axis)
  remat = functools.partial(jax.checkpoint, prevent_cse=False)

  def add_key_block(sum_keys):
    """Scan body adding one key block's sums (features recomputed)."""
    def add(sums, xs):
      k_blk, v_blk, m_blk, i = xs
      return favor.combine_sums(sums, sum_keys(k_blk, v_blk, m_blk, i)), None
    return remat(add)

  if causal:
    def causal_block(state, xs):
      q_blk, k_blk, v_blk, m_blk, i = xs
      k_feat, k_log_scale = key_features(k_blk, i)
      out, state = attend(query_features(q_blk), k_feat, k_log_scale, v_blk,
                          state, m_blk)
      return state, out

    state_type = favor.KeySums
    if bias is not None:
      state_type = rpe.RelativeState
      empty = rpe.empty_state(batch, m_out, v.shape[-1], max_distance)
    init = empty if initial_state is None else state_type(
        *(jnp.asarray(x, jnp.float32) for x in initial_state))
    if axis is not None:  # this shard's keys first: a key-only pass
      def causal_sums(x, v_blk, m_blk, i):
        return sequence_parallel.causal_key_sums(*key_features(x, i), v_blk,
                                                 m_blk)
      local, _ = jax.lax.scan(add_key_block(causal_sums),
                              empty, (kb, vb, mb, index))
      init, whole = across_shards(local, init)
    final, out = jax.lax.scan(remat(causal_block), init,
                              (qb, kb, vb, mb, index))
    if axis is not None:
      final = whole
  else:
    def read_block(sums, q_blk):
      return sums, favor.read_out(query_features(q_blk), sums, v.dtype)

    sums, _ = jax.lax.scan(add_key_block(block_key_sums), empty,
                           (kb, vb, mb, index))
    if axis is not None:
      _, sums = across_shards(sums, None)
    _, out = jax.lax.scan(remat(read_block), sums, qb)
  out = jnp.moveaxis(out, 0, -3).reshape(*batch, n * block_size, -1)
  out = out[..., :length, :]  # (..., l, v)
  return (out, final) if causal else out
