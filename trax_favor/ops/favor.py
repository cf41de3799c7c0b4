"""FAVOR attention from kernel features: bidirectional and causal (chunked).

Notation (Performer paper): with query features Q' = phi(Q), key features
K' = phi(K) and values V, attention is

    numerator   Q' ((K')^T V)          (l, v)
    denominator Q' ((K')^T 1_L)        (l,)
    output      numerator / denominator

and its causal form replaces the sums over all keys by prefix sums. Axis letters:
b.. any leading batch axes (written `...`), l length, m features, v value depth,
n chunks, c chunk length.

Stabilization. Features arrive factored as `features * exp(log_scale)` (see
`feature_maps.py`). A query's factor is the same for every key, so it cancels
and is dropped. Key factors differ per key; each sum over keys is kept relative
to a *reference* log-scale r (the sum is `stored * exp(r)`), where r is the
largest key log-scale the sum contains. In causal mode the reference used by
query t is the maximum over keys <= t only, so no future key ever changes how
past outputs round or underflow (a global maximum would leak the future).
Every exponent formed is <= 0, so nothing overflows; all references are under
stop_gradient (they cancel mathematically), all accumulation is float32.

Feature maps whose log-scale is one constant for every key (ReLU, elu+1:
bounded activations) pass k_log_scale=None: none of the above is computed,
and the sums are plain (reference 0).

Sums over keys. `KeySums(kv, z, ref)` holds sums over a set of keys of
K'^T V (m, v) and K' (m,) relative to `ref`, with ref = NEG while the set
has no (unmasked) key: O(1) in the sequence length. Bidirectional FAVOR
reads queries out of the sums of all keys; causal FAVOR carries the sums of
the keys so far as its state: `causal_favor` takes an initial state and
returns the final one, so a sequence can be split anywhere (predict-mode
decoding feeds a prompt in one call, then one token at a time).

Rows without keys. A query that sees no unmasked key (every key padded, or
none yet) gets output 0. That is decided from the reference (NEG: no key),
never from a zero denominator, so a denominator that underflows with keys
present shows as Inf/NaN instead of passing for an empty row.

Non-finite values stay where they belong. Masks select (`jnp.where`), never
multiply (NaN x 0 is NaN): a masked or padded key's features, log-scale and
value are replaced, whatever they hold. In causal FAVOR a non-finite query,
key or value is replaced by zeros before any product, and the outputs of the
positions that see it (it and every later one) are set to NaN afterwards, by
selection; the final state of a sequence that saw one is NaN, and a NaN
state makes every output of the call that continues it NaN. So a NaN or Inf
at a future or padded position reaches no other position's output, nor the
gradients of the others (every replacement is a selection, whose gradient
is 0 where it replaced). Bidirectionally every query sees every unmasked key,
so such a key makes every output NaN, as exact attention would; a
non-finite query is isolated as in causal FAVOR.

Building blocks. `key_sums` gives the sums of a set of keys as a state
(`relative_key_sums`, of keys already scaled to a reference),
`combine_sums` adds two states, `read_out` gives queries' outputs from a
state: `ops/attention.py` assembles bidirectional FAVOR over length blocks
from them.

Chunked parallel form. The sequence is cut into chunks of c tokens. Within a
chunk, queries see keys through a masked (c, c) product of features; across
chunks, through the prefix state at the chunk start. The per-chunk sums are
computed in parallel; a `lax.scan` over chunks (n small (m, v) additions; it
compiles in constant time, unlike `associative_scan`, whose compile time grew
to 12 s at 128 chunks) turns them into prefix states. Autodiff stores one (m, v)
state per chunk, not per token.

Products: `sum_over_keys`, `apply_sums`, `pair_scores` (`cpu_speedups`:
plain einsums, with hand-written gradients where the CPU switch is on).
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


# Reference log-scale of an empty sum and log-scale of a masked key: finite, so
# that differences of two of them are 0 and never NaN; exp(NEG - x) == 0.
NEG = -1e30


class KeySums(NamedTuple):
  """Sums over a set of keys, relative to a reference log-scale.

  The state of causal FAVOR (the keys so far) and the total that
  bidirectional FAVOR reads out (all keys).

  kv: (..., m, v) float32, sum over the keys of K'_j^T V_j * exp(s_j - ref).
  z: (..., m) float32, sum over the keys of K'_j * exp(s_j - ref).
  ref: (...,) float32, the reference log-scale: NEG while the set has no
    key, the largest key log-scale otherwise (0 for shared-scale maps).
  """
  kv: jax.Array
  z: jax.Array
  ref: jax.Array


def empty_state(batch_shape, n_features, d_v):
  """The state before any token: zero sums, reference NEG."""
  batch_shape = tuple(batch_shape)
  return KeySums(
      kv=jnp.zeros(batch_shape + (n_features, d_v), jnp.float32),
      z=jnp.zeros(batch_shape + (n_features,), jnp.float32),
      ref=jnp.full(batch_shape, NEG, jnp.float32))


def has_keys(ref):
  """Whether sums with reference `ref` hold at least one key (ref > NEG)."""
  return ref > 0.5 * NEG


def safe_divide(num, den, has_key):
  """num / den where has_key, 0 where a row saw no key.

  num (..., v), den (...,), has_key (...,) bool. Rows with keys are divided
  as they are: a zero denominator there gives Inf/NaN, not a silent 0.
  """
  safe_den = jnp.where(has_key, den, 1.0)
  return jnp.where(has_key[..., None], num / safe_den[..., None], 0.0)


def check_shared_scale_state(initial_state):
  """Refuses a carried state that a shared-scale map cannot continue.

  Sums of keys with one shared log-scale (relu, elu) have reference 0 (or
  NEG while empty); a reference above 0 comes from a stabilized map
  (softmax, exp), whose sums these keys cannot be added to. Checked where
  the state is a concrete value (not while tracing under jit).
  """
  if initial_state is None:
    return
  ref = initial_state[2]
  if not isinstance(ref, jax.core.Tracer) and bool(jnp.any(ref > 0.0)):
    raise checks.ConfigError(
        'initial_state has a reference log-scale above 0, so it holds sums '
        'of a stabilized feature map (softmax, exp); keys of a shared-scale '
        'map (relu, elu) cannot continue it.')


def non_finite_rows(x):
  """(..., l) True where a row of x (..., l, f) holds a NaN or Inf."""
  return ~jnp.all(jnp.isfinite(x), axis=-1)


def _zero_rows(x, rows):
  """x (..., l, f) with the selected rows (..., l) replaced by zeros."""
  return jnp.where(rows[..., None], 0.0, x)


def as_key_mask(key_mask, shape):
  """key_mask as a bool array of `shape` (..., l): bool, or integers 0/1
  (1 keeps a key); another dtype or a shape that does not broadcast is one
  ConfigError (an integer mask used as it is would invert under `~`)."""
  dtype = jnp.result_type(key_mask)
  if not (jnp.issubdtype(dtype, jnp.bool_) or
          jnp.issubdtype(dtype, jnp.integer)):
    raise checks.ConfigError(
        f'key_mask must be bool (True keeps a key) or integer 0/1; got '
        f'dtype {dtype}.')
  try:
    return jnp.broadcast_to(key_mask, shape).astype(jnp.bool_)
  except ValueError:
    raise checks.ConfigError(
        f'key_mask of shape {jnp.shape(key_mask)} does not broadcast to '
        f'(..., l) = {tuple(shape)}.') from None


def mask_keys(k_feat, k_log_scale, v, key_mask):
  """Masked keys' features and values replaced by 0, log-scales by NEG (as
  float32; selected, not multiplied, so a NaN under the mask stays there)."""
  k_feat = k_feat.astype(jnp.float32)
  v = v.astype(jnp.float32)
  if k_log_scale is not None:
    k_log_scale = k_log_scale.astype(jnp.float32)
  if key_mask is None:
    return k_feat, k_log_scale, v
  key_mask = as_key_mask(key_mask, k_feat.shape[:-1])
  k_feat, v = _zero_rows(k_feat, ~key_mask), _zero_rows(v, ~key_mask)
  if k_log_scale is None:
    return k_feat, None, v
  return k_feat, jnp.where(key_mask, k_log_scale, NEG), v


def key_sums(k_feat, k_log_scale, v, key_mask=None):
  """Sums over all keys of K'^T V and K', as a state relative to their max.

  Args:
    k_feat: (..., l, m) key features; k_log_scale: (..., l), or None when
      every key has the same log-scale (taken as 0).
    v: (..., l, v) values.
    key_mask: optional bool broadcastable to (..., l); False removes a key.

  Returns:
    KeySums (kv (..., m, v), z (..., m), ref (...,)): the sums of every
    key, the form `combine_sums` adds up and `read_out` reads.
  """
  k_feat, s, v = mask_keys(k_feat, k_log_scale, v, key_mask)
  if s is None:  # every key's log-scale is 0: ref 0, or NEG without keys
    if key_mask is None:
      ref = jnp.zeros(k_feat.shape[:-2], jnp.float32)
    else:
      any_key = jnp.any(as_key_mask(key_mask, k_feat.shape[:-1]), -1)
      ref = jnp.where(any_key, 0.0, NEG)
    k_scaled = k_feat
  else:
    ref = jax.lax.stop_gradient(jnp.max(s, axis=-1))  # (...,)
    k_scaled = k_feat * jnp.exp(s - ref[..., None])[..., None]  # (..., l, m)
  kv = sum_over_keys(k_scaled, v)  # (..., m, v)
  return KeySums(kv, jnp.sum(k_scaled, axis=-2), ref)


def relative_key_sums(k_feat, ref, v, key_mask=None):
  """`key_sums` of key features already relative to `ref` (...,): phi(k_j)
  = k_feat_j * exp(ref) for every unmasked key, as
  `feature_maps.relative_features` gives them. No rescaling pass over
  (l, m). Where key_mask leaves no key, the sums are empty (reference NEG,
  outputs 0), whatever ref says."""
  sums = key_sums(k_feat, None, v, key_mask)  # ref: 0, or NEG without keys
  return sums._replace(ref=jnp.where(has_keys(sums.ref), ref, NEG))


def combine_sums(a, b):
  """The sum of two KeySumss (each relative to its own reference)."""
  return KeySums(*_combine(a, b))


def read_out(q_feat, sums, dtype):
  """Outputs Q'((K')^T V) / Q'((K')^T 1) (..., l, v) from key sums; NaN
  for a non-finite query row, which no other output or gradient sees."""
  q_feat = q_feat.astype(jnp.float32)
  bad_q = non_finite_rows(q_feat)  # (..., l)
  q_feat = _zero_rows(q_feat, bad_q)
  num = apply_sums(q_feat, sums.kv)  # (..., l, v)
  den = jnp.einsum('...lm,...m->...l', q_feat, sums.z)  # (..., l)
  has_key = jnp.broadcast_to(has_keys(sums.ref)[..., None], den.shape)
  # num times 1 / den, not num / den: XLA's CPU plan for the backward pass
  # then holds two (l, d_v) arrays fewer (relu features, 8 heads of 64 at
  # 4K: 59.5 MB instead of 75.9); in the causal form division plans less.
  inverse = safe_divide(jnp.ones_like(den)[..., None], den,
                        has_key & ~bad_q)[..., 0]  # (..., l)
  out = num * inverse[..., None]
  return jnp.where(bad_q[..., None], jnp.nan, out).astype(dtype)


@cpu_speedups.jit
def bidirectional_favor(q_feat, k_feat, k_log_scale, v, key_mask=None):
  """Non-causal FAVOR attention.

  Args:
    q_feat: (..., l, m) query features (their log-scales cancel: not needed).
    k_feat: (..., l, m) key features.
    k_log_scale: (..., l) key log-scales, or None when all keys share one.
    v: (..., l, v) values.
    key_mask: optional bool array broadcastable to (..., l); False marks a
      padded key, which is removed from numerator and denominator.

  Returns:
    (..., l, v) outputs in v's dtype.
  """
  return read_out(q_feat, key_sums(k_feat, k_log_scale, v, key_mask), v.dtype)


def add_relative(x_a, r_a, x_b, r_b):
  """x_a e^r_a + x_b e^r_b as (sum relative to r, r), r = max(r_a, r_b).

  x_a, x_b: (..., *trailing) sums; r_a, r_b: (...,) their references.
  """
  r = jnp.maximum(r_a, r_b)
  expand = (slice(None),) * r.ndim + (None,) * (x_a.ndim - r.ndim)
  return x_a * jnp.exp(r_a - r)[expand] + x_b * jnp.exp(r_b - r)[expand], r


def _combine(a, b):
  """Sum of two (kv, z, ref) partial sums, earlier one first."""
  kv, r = add_relative(a[0], a[2], b[0], b[2])
  z, _ = add_relative(a[1], a[2], b[1], b[2])
  return kv, z, r


def causal_favor(q_feat, k_feat, k_log_scale, v, initial_state=None,
                 key_mask=None, chunk_size=128):
  """Causal FAVOR attention in chunked parallel form, with carried state.

  Args:
    q_feat: (..., l, m) query features.
    k_feat: (..., l, m) key features.
    k_log_scale: (..., l) key log-scales, or None when all keys share one
      (bounded feature maps): then no stabilizer is computed and states are
      relative to reference 0.
    v: (..., l, v) values.
    initial_state: a KeySums for the tokens before this call, or None for
      the start of the sequence.
    key_mask: optional bool, broadcastable to (..., l); False removes a key.
    chunk_size: c, tokens per chunk (any l works: the last chunk is padded).

  Returns:
    (outputs (..., l, v) in v's dtype, final KeySums).
  """
  checks.check_positive_int(chunk_size=chunk_size)
  if k_log_scale is None:
    check_shared_scale_state(initial_state)
  return _causal_favor(q_feat, k_feat, k_log_scale, v, initial_state, key_mask,
                       chunk_size)


@functools.partial(cpu_speedups.jit, static_argnums=(6,))
def _causal_favor(q_feat, k_feat, k_log_scale, v, initial_state, key_mask,
                  chunk_size):
  """causal_favor after argument checks (jitted: eager dispatch is slow)."""
  *batch, length, m = k_feat.shape
  d_v = v.shape[-1]
  if initial_state is None:
    initial_state = empty_state(batch, m, d_v)
  k_feat, s, vf = mask_keys(k_feat, k_log_scale, v, key_mask)
  q_feat = q_feat.astype(jnp.float32)
  # Non-finite rows are replaced by zeros; `seen_bad` marks the outputs that
  # see one (NaN at the end), so none reaches an earlier position.
  bad_q = non_finite_rows(q_feat)  # (..., l)
  bad_k = non_finite_rows(k_feat) | non_finite_rows(vf)  # (..., l)
  if s is not None:
    bad_k = bad_k | ~jnp.isfinite(s)
    s = jnp.where(bad_k, NEG, s)
  q_feat = _zero_rows(q_feat, bad_q)
  k_feat, vf = _zero_rows(k_feat, bad_k), _zero_rows(vf, bad_k)
  init_kv1 = jnp.concatenate([initial_state.kv, initial_state.z[..., None]],
                             -1)  # (..., m, v+1)
  init_ref = initial_state.ref.astype(jnp.float32)  # (...,)
  bad_init = (~jnp.all(jnp.isfinite(init_kv1), axis=(-2, -1))
              | ~jnp.isfinite(init_ref))  # (...,)
  init_kv1 = jnp.where(jnp.isfinite(init_kv1), init_kv1, 0.0)
  init_ref = jnp.where(jnp.isfinite(init_ref), init_ref, NEG)
  seen_bad = bad_init[..., None] | (jax.lax.cummax(
      bad_k.astype(jnp.int8), axis=bad_k.ndim - 1) > 0)  # (..., l)

  c = min(chunk_size, length)
  n = -(-length // c)
  pad = n * c - length
  if pad:
    pad_width = [(0, 0)] * len(batch) + [(0, pad)]
    q_feat = jnp.pad(q_feat, pad_width + [(0, 0)])
    k_feat = jnp.pad(k_feat, pad_width + [(0, 0)])  # padded keys: no features
    vf = jnp.pad(vf, pad_width + [(0, 0)])
    if s is not None:
      s = jnp.pad(s, pad_width, constant_values=NEG)
  qc = q_feat.reshape(*batch, n, c, m)  # (..., n, c, m)
  kc = k_feat.reshape(*batch, n, c, m)  # (..., n, c, m)
  vc = vf.reshape(*batch, n, c, d_v)  # (..., n, c, v)
  # Values with a column of ones: one product gives numerator (first d_v
  # columns) and denominator (last column); the state's kv and z travel
  # together as kv1 = [kv, z].
  vc1 = jnp.concatenate([vc, jnp.ones_like(vc[..., :1])], axis=-1)
  # (..., n, c, v+1)
  init = (init_kv1, jax.lax.stop_gradient(init_ref))
  if s is None:  # shared log-scale 0: NEG marks masked, padded and bad keys
    if key_mask is None:
      s = jnp.zeros((*batch, length), jnp.float32)
    else:
      s = jnp.where(as_key_mask(key_mask, (*batch, length)), 0.0, NEG)
    s = jnp.where(bad_k, NEG, s)
    if pad:
      s = jnp.pad(s, [(0, 0)] * len(batch) + [(0, pad)], constant_values=NEG)
    num1, q_ref, final = _chunks_shared_scale(qc, kc, vc1,
                                              s.reshape(*batch, n, c), init)
  else:
    num1, q_ref, final = _chunks_stabilized(qc, kc, vc1,
                                            s.reshape(*batch, n, c), init)
  poison = seen_bad | bad_q  # (..., l)
  if pad:
    poison = jnp.pad(poison, [(0, 0)] * len(batch) + [(0, pad)])
  poison = poison.reshape(*batch, n, c)  # (..., n, c)
  real = (jnp.arange(n * c) < length).reshape(n, c)  # padded queries: out 0
  out = safe_divide(num1[..., :d_v], num1[..., d_v],
                    has_keys(q_ref) & real & ~poison)  # (..., n, c, v)
  out = jnp.where(poison[..., None], jnp.nan, out)
  out = out.reshape(*batch, n * c, d_v)  # (..., l+pad, v)
  kv1_final, r_final = final
  kv1_final = jnp.where(seen_bad[..., -1, None, None], jnp.nan, kv1_final)
  return out[..., :length, :].astype(v.dtype), KeySums(
      kv1_final[..., :d_v], kv1_final[..., d_v], r_final)


def exclusive_prefixes(kv1_loc, r_loc, init):
  """States before each chunk from per-chunk sums (chunk axis -3 / -1)."""
  axis = r_loc.ndim - 1  # the chunk axis
  local = (jnp.moveaxis(kv1_loc, axis, 0),
           jnp.moveaxis(r_loc, axis, 0))  # chunk axis first, for the scan

  def add_chunk(prefix, chunk):  # emit the state before the chunk
    return add_relative(*prefix, *chunk), prefix

  final, before = jax.lax.scan(add_chunk, init, local)
  kv1_pre, r_pre = (jnp.moveaxis(x, 0, axis) for x in before)
  return kv1_pre, r_pre, final  # (..., n, m, v+1), (..., n), final state


def _chunks_stabilized(qc, kc, vc1, sc, init):
  """Chunked causal sums with per-key log-scales sc (..., n, c)."""
  c = sc.shape[-1]
  s_ref = jax.lax.stop_gradient(sc)
  run_max = jax.lax.cummax(s_ref, axis=s_ref.ndim - 1)  # (..., n, c)
  chunk_max = run_max[..., -1]  # (..., n)

  # Per-chunk sums relative to the chunk maximum, then exclusive prefixes.
  k_loc = kc * jnp.exp(sc - chunk_max[..., None])[..., None]  # (..., n, c, m)
  kv1_loc = sum_over_keys(k_loc, vc1)  # (..., n, m, v+1)
  kv1_pre, r_pre, final = exclusive_prefixes(kv1_loc, chunk_max, init)

  # Reference of query t: the largest key log-scale at positions <= t.
  q_ref = jnp.maximum(run_max, r_pre[..., None])  # (..., n, c)

  # Inside each chunk: masked (c, c) product, keys rescaled to the query's ref.
  causal_mask = jnp.tril(jnp.ones((c, c), jnp.bool_))
  exponent = jnp.where(causal_mask, sc[..., None, :] - q_ref[..., :, None],
                       NEG)  # (..., n, c_q, c_k), <= 0 where kept
  weights = pair_scores(qc, kc) * jnp.exp(exponent)
  num1 = apply_sums(weights, vc1)  # (..., n, c, v+1)

  # Across chunks: the prefix state, rescaled from its ref to the query's ref.
  carry = jnp.exp(r_pre[..., None] - q_ref)  # (..., n, c), <= 1
  num1 = num1 + apply_sums(qc, kv1_pre) * carry[..., None]
  return num1, q_ref, final


def _chunks_shared_scale(qc, kc, vc1, sc, init):
  """Chunked causal sums when every key has log-scale 0 (no stabilizer).

  sc (..., n, c) is 0 for a key and NEG for a masked or padded one; it only
  tracks whether a query has seen a key (its reference is 0 or NEG), so no
  (c, c) exponential is formed. The carried state is brought to reference 0
  (`causal_favor` refuses one above 0): from an empty state's NEG, or a
  state of earlier calls of this kind.
  """
  c = qc.shape[-2]
  init_ref = jnp.minimum(init[1], 0.0)
  kv1_init = init[0] * jnp.exp(init_ref)[..., None, None]
  run_max = jax.lax.cummax(sc, axis=sc.ndim - 1)  # (..., n, c): 0 or NEG
  kv1_loc = sum_over_keys(kc, vc1)  # (..., n, m, v+1)
  kv1_pre, r_pre, final = exclusive_prefixes(kv1_loc, run_max[..., -1],
                                              (kv1_init, init_ref))
  causal_mask = jnp.tril(jnp.ones((c, c), jnp.bool_))
  weights = jnp.where(causal_mask, pair_scores(qc, kc),
                      0.0)  # (..., n, c_q, c_k)
  num1 = apply_sums(weights, vc1) + apply_sums(qc, kv1_pre)  # (..., n, c, v+1)
  return num1, jnp.maximum(run_max, r_pre[..., None]), final
