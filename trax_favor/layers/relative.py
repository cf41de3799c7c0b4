"""FavorSelfAttention's relative positions and query/key L2 normalization:
the options, their weights and their attention path.

  relative_position='bias' (or its old name 'fft')   a learned bias per head
      over relative distances d = j - i clipped at +-max_relative_distance
      (as T5 clips; the table has 2 D + 1 entries, D + 1 when causal),
      weight (n_heads, table), initialized to 0 so the layer starts as plain
      FAVOR+; attention by `ops.rpe`, exact for every table, in O(L D)
      (docs/relative_positions.md). Causal layers decode in predict mode
      with an O(D) state: the far keys' sums and the last D keys.
  rotary=True   rotary position embeddings (ops/rotary.py) on queries and
      keys after any normalization, on `rotary_fraction` of d_qk, base
      `rotary_base`; positions count from the state's position in predict
      mode. No weights.
  qk_normalization='fixed' | 'learned'   queries and keys scaled to unit L2
      norm, times a temperature t (the softmax logit is t cos(q, k)):
      t = sqrt(d_qk) fixed, or learned per head (weight (n_heads,), as
      log t, initialized to log sqrt(d_qk)).
"""

import jax.numpy as jnp

from trax_favor import checks
from trax_favor.ops import feature_maps
from trax_favor.ops import rotary as rotary_ops
from trax_favor.ops import rpe

RELATIVE_POSITIONS = (None, 'bias', 'fft')  # 'fft': the old name of 'bias'
DEFAULT_MAX_RELATIVE_DISTANCE = 128
QK_NORMALIZATIONS = (None, 'fixed', 'learned')


def check_options(relative_position, qk_normalization, max_relative_distance):
  """One ConfigError for an option, or a combination, that cannot work."""
  if relative_position not in RELATIVE_POSITIONS:
    raise checks.ConfigError(f'relative_position must be one of '
                             f'{RELATIVE_POSITIONS}, got {relative_position!r}.')
  if qk_normalization not in QK_NORMALIZATIONS:
    raise checks.ConfigError(f'qk_normalization must be one of '
                             f'{QK_NORMALIZATIONS}, got {qk_normalization!r}.')
  if relative_position is None:
    if max_relative_distance is not None:
      raise checks.ConfigError(
          'max_relative_distance applies to relative_position=\'bias\' only; '
          f'got max_relative_distance={max_relative_distance!r} without it.')
    return
  if max_relative_distance is not None:
    checks.check_positive_int(max_relative_distance=max_relative_distance)


def check_rotary(rotary, rotary_fraction, rotary_base, d_qk):
  """One ConfigError for rotary options that cannot work; returns the
  (fraction, base) to use."""
  if not isinstance(rotary, bool):
    raise checks.ConfigError(f'rotary must be True or False, got {rotary!r}.')
  if not rotary:
    if rotary_fraction is not None or rotary_base is not None:
      raise checks.ConfigError(
          'rotary_fraction and rotary_base apply to rotary=True only; got '
          f'rotary_fraction={rotary_fraction!r}, rotary_base={rotary_base!r} '
          'without it.')
    return None, None
  fraction = 1.0 if rotary_fraction is None else rotary_fraction
  base = rotary_ops.DEFAULT_BASE if rotary_base is None else rotary_base
  rotary_ops.rotary_dims(d_qk, fraction)
  rotary_ops.check_base(base)
  return fraction, base


def extra_weights(options):
  """The weights a `FavorOptions` adds after the projections: (bias?,
  log_t?), each with a leading head axis."""
  extra = []
  if options.relative_position:
    table = rpe.table_size(options.max_relative_distance, options.causal)
    extra.append(jnp.zeros((options.n_heads, table), jnp.float32))
  if options.qk_normalization == 'learned':
    extra.append(jnp.full((options.n_heads,),
                          0.5 * jnp.log(float(options.d_qk)), jnp.float32))
  return tuple(extra)


def temperature(qk_normalization, log_t, d_qk):
  """t per head (h,) or a scalar."""
  if qk_normalization == 'learned':
    return jnp.exp(log_t)
  return jnp.sqrt(jnp.float32(d_qk))


normalize = feature_maps.normalize  # op code, with the ops


def rotate(q, k, start, fraction, base):
  """q, k (b, h, l, d_qk) rotated at positions start, start + 1, ...;
  start: an int or int32 scalar (predict mode: the tokens before)."""
  positions = start + jnp.arange(q.shape[-2], dtype=jnp.int32)  # (l,)
  return (rotary_ops.apply_rotary(q, positions, fraction, base),
          rotary_ops.apply_rotary(k, positions, fraction, base))
