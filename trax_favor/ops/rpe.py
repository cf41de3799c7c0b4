"""FAVOR attention with a learned relative positional bias, exact and O(L D).

With a bias b over relative distances d = j - i (query i, key j), clipped at
D = max_distance, kernelized attention with a relative bias is

    out_i = sum_j w_ij Q'_i . K'_j V_j / sum_j w_ij Q'_i . K'_j,
    w_ij = exp(b[clip(j - i, -D, D)])       (causal: j <= i, clip(., -D, 0)).

Every key at distance D or more has the same weight. So for the queries of
one chunk of c tokens, the keys split into
  a window   the chunks holding every key closer than D to one of those
             queries (R = ceil(D / c) * c keys before the chunk, the chunk,
             and R after it when bidirectional): an explicit masked
             (c, window) product with weights w_ij, as the intra-chunk term
             of chunked linear attention;
  far keys   the keys before the window (weight of d = -D) and, when
             bidirectional, after it (d = +D): exactly the prefix (suffix)
             sums of plain chunked FAVOR, read out once per query.
Every term is positive (no cancellation at any dynamic range of the bias),
a masked entry is selected out, never rounded away, and nothing reads a
future key. Time O(L (c + 2R) m); the state of a causal sequence is O(D):
the far sums plus a ring of the last D keys, so a sequence can be split
anywhere (predict mode feeds a prompt in one call, then one token at a time).

Stabilization (every exponent <= 0, float32 throughout): each query's
reference is the largest log-weight s_j + b_ij over the keys it sees
(window) and over the far sums (their reference plus b at distance D):
it depends on no future key and includes the bias, so no visible weight
underflows to 0 while a larger one exists, whatever the table or the
feature scales. References are under stop_gradient (they cancel).
Non-finite queries, keys and values are handled as in `favor.causal_favor`:
replaced by zeros, then the outputs that see them set to NaN by selection
(causal: the position and every later one; bidirectional: every output).

Why not an FFT (O(L log L)): docs/relative_positions.md. Length blocks
(features recomputed): `attention.py` (causal) and `rpe_blocks.py`.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from trax_favor import checks
from trax_favor.ops import cpu_speedups
from trax_favor.ops.cpu_speedups import apply_sums
from trax_favor.ops.cpu_speedups import pair_scores
from trax_favor.ops.cpu_speedups import sum_over_keys
from trax_favor.ops import favor

NEG = favor.NEG
DEFAULT_CHUNK_SIZE = 128
_MAX_SLICED_WINDOW = 8  # windows of more chunks are gathered, not sliced


class RelativeState(NamedTuple):
  """A causal sequence so far, for relative-position FAVOR: O(D).

  kv, z, ref: the far sums (as `favor.KeySums`) of every key except the
    last D, which the next query sees at distance D or more.
  ring_k (..., D, m), ring_s (..., D), ring_v (..., D, v): the last D keys'
    features, log-scales (NEG where there was no key) and values, oldest
    first.
  """
  kv: jax.Array
  z: jax.Array
  ref: jax.Array
  ring_k: jax.Array
  ring_s: jax.Array
  ring_v: jax.Array


def empty_state(batch_shape, n_features, d_v, max_distance):
  """The state before any token."""
  batch_shape = tuple(batch_shape)
  far = favor.empty_state(batch_shape, n_features, d_v)
  return RelativeState(
      *far, ring_k=jnp.zeros(batch_shape + (max_distance, n_features),
                             jnp.float32),
      ring_s=jnp.full(batch_shape + (max_distance,), NEG, jnp.float32),
      ring_v=jnp.zeros(batch_shape + (max_distance, d_v), jnp.float32))


def table_size(max_distance, causal):
  """Entries of the bias table: D + 1 causal, 2 D + 1 bidirectional."""
  return max_distance + 1 if causal else 2 * max_distance + 1


def table_index(d, max_distance, causal):
  """Index into the bias table of relative distances d = j - i (ints).

  Causal tables hold d = 0, -1, .., -D at 0 .. D; bidirectional ones
  d = -D .. D at 0 .. 2D. Distances beyond D share the last entry.
  """
  if causal:
    return jnp.minimum(jnp.maximum(-d, 0), max_distance)
  return jnp.clip(d, -max_distance, max_distance) + max_distance


def clipped_distances(length, max_distance, causal):
  """Table index of every d = j - i in [-(l-1), l-1], in that order."""
  return table_index(jnp.arange(-(length - 1), length), max_distance, causal)


def rpe_favor(q_feat, k_feat, k_log_scale, v, bias, max_distance,
              key_mask=None, causal=False, initial_state=None,
              chunk_size=None):
  """FAVOR attention with a relative positional bias, exactly.

  Args:
    q_feat: (..., l, m) query features (their log-scales cancel).
    k_feat: (..., l, m) key features; k_log_scale (..., l), or None when
      every key shares one log-scale (relu, elu).
    v: (..., l, v) values.
    bias: (..., table) log-weights per distance (`table_size`), leading
      axes broadcastable to q's (e.g. (h, table) for (b, h, l, m)).
    max_distance: D, where distances are clipped.
    key_mask: optional bool broadcastable to (..., l); False removes a key.
    causal: a query sees keys j <= i only.
    initial_state: causal only: a `RelativeState` of the tokens before.
    chunk_size: queries per chunk (None: DEFAULT_CHUNK_SIZE).

  Returns:
    Bidirectional: (..., l, v) in v's dtype. Causal: (that, final
    RelativeState).
  """
  check_bias(bias, max_distance, causal, q_feat.shape[:-2])
  chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
  checks.check_positive_int(chunk_size=chunk_size)
  if initial_state is not None and not causal:
    raise checks.ConfigError('initial_state applies to causal attention only.')
  if initial_state is not None:
    initial_state = RelativeState(*initial_state)
    if initial_state.ring_s.shape[-1] != max_distance:
      raise checks.ConfigError(
          f'the state holds {initial_state.ring_s.shape[-1]} recent keys; '
          f'max_distance={max_distance} needs {max_distance}.')
  out, state = _rpe_favor(q_feat, k_feat, k_log_scale, v, bias, key_mask,
                          initial_state, max_distance, causal, chunk_size)
  return (out, state) if causal else out


def check_bias(bias, max_distance, causal, batch_shape):
  """One ConfigError unless max_distance is a positive int and bias a
  (..., table) table of its size whose leading axes broadcast to
  batch_shape (the queries' axes before (l, d))."""
  checks.check_positive_int(max_distance=max_distance)
  shape = tuple(getattr(bias, 'shape', ()))
  expected = table_size(max_distance, causal)
  if not shape or shape[-1] != expected:
    raise checks.ConfigError(
        f'the relative bias table has shape {shape}; max_distance='
        f'{max_distance} needs {expected} entries in its last axis'
        f' ({"causal" if causal else "bidirectional"}).')
  try:
    fits = jnp.broadcast_shapes(shape[:-1], tuple(batch_shape)) == tuple(
        batch_shape)
  except ValueError:
    fits = False
  if not fits:
    raise checks.ConfigError(
        f'the relative bias table has shape {shape}: its leading axes do not '
        f'broadcast to the queries\' {tuple(batch_shape)} (e.g. (heads, '
        f'{expected}) for (batch, heads, l, d)).')


def _windows(x, n, n_win, c):
  """(..., N * c, f) -> (..., n, n_win * c, f): for each query chunk, the
  n_win consecutive chunks of x starting at its own index."""
  if n_win <= _MAX_SLICED_WINDOW:
    chunks = x.reshape(*x.shape[:-2], -1, c, x.shape[-1])  # (..., N, c, f)
    return jnp.concatenate([chunks[..., t:t + n, :, :] for t in range(n_win)],
                           axis=-2)  # (..., n, n_win c, f)
  index = (jnp.arange(n)[:, None] * c
           + jnp.arange(n_win * c)[None, :])  # (n, n_win c)
  return x[..., index, :]  # (..., n, n_win c, f)


def _far_sums(kv1_loc, r_loc, init, reverse=False):
  """States before each chunk (after it, if reverse): (..., k, m, v+1),
  (..., k), and the state after all (before all)."""
  if reverse:
    kv1_loc, r_loc = jnp.flip(kv1_loc, -3), jnp.flip(r_loc, -1)
  kv1, r, final = favor.exclusive_prefixes(kv1_loc, r_loc, init)
  if reverse:
    kv1, r = jnp.flip(kv1, -3), jnp.flip(r, -1)
  return kv1, r, final


@functools.partial(cpu_speedups.jit, static_argnums=(7, 8, 9))
def _rpe_favor(q_feat, k_feat, s, v, bias, key_mask, initial_state,
               max_distance, causal, chunk_size):
  """rpe_favor after argument checks."""
  *batch, length, m = k_feat.shape
  d_v, dist = v.shape[-1], max_distance
  q, bad_q = clean_queries(q_feat)
  k_feat, s, vf, bad_k = clean_keys(k_feat, s, v, key_mask)
  b = bias.astype(jnp.float32)

  c = min(chunk_size, length)
  n = -(-length // c)  # query chunks
  w = -(-dist // c)
  r_keys = w * c  # R: window keys before (and after) a query chunk
  tail = n * c - length
  if causal:
    state = initial_state or empty_state(batch, m, d_v, dist)
    far_kv1 = jnp.concatenate([state.kv, state.z[..., None]], -1)
    ring = (state.ring_k, state.ring_s, state.ring_v)
    bad_init = ~(jnp.all(jnp.isfinite(far_kv1), axis=(-2, -1))
                 & jnp.isfinite(state.ref)
                 & jnp.all(jnp.isfinite(ring[0]), axis=(-2, -1))
                 & jnp.all(jnp.isfinite(ring[1]), axis=-1)
                 & jnp.all(jnp.isfinite(ring[2]), axis=(-2, -1)))  # (...,)
    far_kv1 = jnp.where(jnp.isfinite(far_kv1), far_kv1, 0.0)
    far_ref = jnp.where(jnp.isfinite(state.ref), state.ref, NEG)
    ring = tuple(jnp.where(jnp.isfinite(x), x, fill)
                 for x, fill in zip(ring, (0.0, NEG, 0.0)))
    front, back = r_keys - dist, tail
  else:
    front, back = r_keys, tail + r_keys
    ring = None

  def extend(x, ring_part, fill):
    """[front fill, ring, x, back fill] along the length axis (-2 or -1)."""
    axis = x.ndim - 2 if x.ndim == len(batch) + 2 else x.ndim - 1
    pad = [(0, 0)] * x.ndim
    pad[axis] = (front, back)
    x = jnp.pad(x, pad, constant_values=fill)
    if ring_part is None:
      return x
    head = jax.lax.slice_in_dim(x, 0, front, axis=axis)
    rest = jax.lax.slice_in_dim(x, front, x.shape[axis], axis=axis)
    return jnp.concatenate([head, ring_part.astype(jnp.float32), rest], axis)

  ext_k = extend(k_feat, ring[0] if ring else None, 0.0)  # (..., N c, m)
  ext_s = extend(s, ring[1] if ring else None, NEG)  # (..., N c)
  ext_v = extend(vf, ring[2] if ring else None, 0.0)  # (..., N c, v)
  ext_v1 = jnp.concatenate([ext_v, jnp.ones_like(ext_v[..., :1])], -1)

  far_init = (far_kv1, jax.lax.stop_gradient(far_ref)) if causal else None
  q = jnp.pad(q, [(0, 0)] * len(batch) + [(0, tail), (0, 0)])  # (..., n c, m)
  num1, q_ref, _ = window_sums(q, ext_k, ext_s, ext_v1, b, far_init, None,
                            dist, causal, c)

  if causal:
    seen_bad = bad_init[..., None] | (jnp.cumsum(bad_k, axis=-1) > 0)
  else:
    seen_bad = jnp.broadcast_to(jnp.any(bad_k, -1, keepdims=True),
                                bad_k.shape)
  poison = jnp.pad(seen_bad | bad_q, [(0, 0)] * len(batch) + [(0, tail)])
  poison = poison.reshape(*batch, n, c)  # (..., n, c)
  real = (jnp.arange(n * c) < length).reshape(n, c)
  out = normalize(num1, q_ref, poison, real)  # (..., n, c, v)
  out = out.reshape(*batch, n * c, d_v)[..., :length, :].astype(v.dtype)
  if not causal:
    return out, None

  # The final state: the last D keys as the ring, the others' far sums.
  end = r_keys + length  # extended positions [0, end) hold keys
  split = end - dist  # >= 1
  older = favor.key_sums(ext_k[..., :split, :], ext_s[..., :split],
                         ext_v[..., :split, :])
  far = favor.combine_sums(favor.KeySums(far_kv1[..., :d_v], far_kv1[..., d_v],
                                         far_ref), older)
  spoil = seen_bad[..., -1]  # (...,)
  nan_if = lambda x: jnp.where(
      jnp.reshape(spoil, spoil.shape + (1,) * (x.ndim - spoil.ndim)),
      jnp.nan, x)
  final = RelativeState(
      nan_if(far.kv), nan_if(far.z), far.ref,
      nan_if(ext_k[..., split:end, :]), ext_s[..., split:end],
      nan_if(ext_v[..., split:end, :]))
  return out, final


def clean_queries(q_feat):
  """(float32 query features with non-finite rows zeroed, those rows)."""
  q = q_feat.astype(jnp.float32)
  bad_q = favor.non_finite_rows(q)  # (..., l)
  return jnp.where(bad_q[..., None], 0.0, q), bad_q


def clean_keys(k_feat, s, v, key_mask):
  """Keys ready for `window_sums`: masked keys removed (log-scale NEG), keys
  with a non-finite feature, value or log-scale zeroed (NEG), as float32.

  s may be None (one shared log-scale: it cancels, taken as 0). Returns
  (k_feat, s, v, bad (..., l): the unmasked non-finite keys).
  """
  if s is None:
    s = jnp.zeros(k_feat.shape[:-1], jnp.float32)
  k_feat, s, v = favor.mask_keys(k_feat, s, v, key_mask)  # masked: s NEG
  bad = (favor.non_finite_rows(k_feat) | favor.non_finite_rows(v)
         | ~jnp.isfinite(s))  # (..., l)
  return (jnp.where(bad[..., None], 0.0, k_feat), jnp.where(bad, NEG, s),
          jnp.where(bad[..., None], 0.0, v), bad)


def normalize(num1, q_ref, poison, real):
  """Outputs (..., v) from `window_sums`: 0 for a query without keys or not
  `real`, NaN where `poison` (each broadcastable to q_ref)."""
  out = favor.safe_divide(num1[..., :-1], num1[..., -1],
                          favor.has_keys(q_ref) & real & ~poison)
  return jnp.where(poison[..., None], jnp.nan, out)


def window_sums(q, ext_k, ext_s, ext_v1, b, prefix, suffix, dist, causal, c):
  """Numerators and denominators of whole chunks of queries, unnormalized.

  Args:
    q: (..., n c, m) cleaned query features.
    ext_k (..., N c, m), ext_s (..., N c), ext_v1 (..., N c, v+1): cleaned
      keys (values with a column of ones) from R = ceil(D / c) c positions
      before the first query to R after the last (causal: to the last
      query), padding and masked keys with log-scale NEG.
    b: (..., table) float32 bias.
    prefix, suffix: (kv1 (..., m, v+1), ref (...,)) sums of the keys before
      (after: bidirectional only) ext's; None for none.
    dist: D; causal: as `rpe_favor`; c: the chunk length.

  Returns:
    (num1 (..., n, c, v+1), q_ref (..., n, c)): each query's numerator and
    denominator relative to e^q_ref; and `prefix` plus ext's first n c keys
    (as prefix is given).
  """
  *batch, n_ext_keys, m = ext_k.shape
  d_v = ext_v1.shape[-1] - 1
  n = q.shape[-2] // c
  w = -(-dist // c)
  r_keys = w * c
  n_ext = n_ext_keys // c  # N chunks: n + w causal, n + 2 w bidir
  # Far sums: per-chunk sums relative to the chunk maximum, then prefixes.
  sc = ext_s.reshape(*batch, n_ext, c)  # (..., N, c)
  kc = ext_k.reshape(*batch, n_ext, c, m)  # (..., N, c, m)
  vc1 = ext_v1.reshape(*batch, n_ext, c, d_v + 1)  # (..., N, c, v+1)
  chunk_max = jax.lax.stop_gradient(jnp.max(sc, axis=-1))  # (..., N)
  k_loc = kc * jnp.exp(sc - chunk_max[..., None])[..., None]
  kv1_loc = sum_over_keys(k_loc, vc1)  # (..., N, m, v+1)
  empty = (jnp.zeros_like(kv1_loc[..., 0, :, :]),
           jnp.full(chunk_max.shape[:-1], NEG, jnp.float32))
  init = empty if prefix is None else prefix
  pre_kv1, pre_r, passed = _far_sums(kv1_loc[..., :n, :, :],
                                     chunk_max[..., :n], init)
  far_index = 0 if not causal else dist  # the table entry of d = -D
  pre_log = pre_r + b[..., far_index, None]  # (..., n)
  if causal:
    far_kv1_q, far_log = pre_kv1, pre_log
  else:  # keys after the window: d = +D, the last entry
    suf_kv1, suf_r, _ = _far_sums(kv1_loc[..., 2 * w:, :, :],
                               chunk_max[..., 2 * w:],
                               empty if suffix is None else suffix,
                               reverse=True)  # (..., n, m, v+1), (..., n)
    far_kv1_q, far_log = favor.add_relative(
        pre_kv1, pre_log, suf_kv1, suf_r + b[..., 2 * dist, None])

  # The window: keys [n c, n c + (n_win) c) of the extended sequence for
  # query chunk n, whose queries sit at R + n c + r.
  n_win = (w + 1) if causal else (2 * w + 1)
  kw = _windows(ext_k, n, n_win, c)  # (..., n, W, m)
  vw1 = _windows(ext_v1, n, n_win, c)  # (..., n, W, v+1)
  sw = _windows(ext_s[..., None], n, n_win, c)[..., 0]  # (..., n, W)
  d = (jnp.arange(n_win * c)[None, :] - r_keys
       - jnp.arange(c)[:, None])  # (c, W): j - i
  b_mat = b[..., table_index(d, dist, causal)]  # (..., c, W)
  log_w = sw[..., None, :] + b_mat[..., None, :, :]  # (..., n, c, W)
  if causal:
    log_w = jnp.where(d <= 0, log_w, NEG)
  q_ref = jax.lax.stop_gradient(jnp.maximum(
      jnp.max(log_w, axis=-1), far_log[..., None]))  # (..., n, c)
  qc = q.reshape(*batch, n, c, m)  # (..., n, c, m)
  weights = pair_scores(qc, kw) * jnp.exp(log_w - q_ref[..., None])
  num1 = apply_sums(weights, vw1)  # (..., n, c, v+1)
  carry = jnp.exp(far_log[..., None] - q_ref)  # (..., n, c), <= 1
  num1 = num1 + apply_sums(qc, far_kv1_q) * carry[..., None]
  return num1, q_ref, passed

