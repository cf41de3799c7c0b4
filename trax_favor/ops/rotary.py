"""Rotary position embeddings (RoPE, Su et al. 2021) for FAVOR attention.

Queries and keys are rotated by their positions before the feature map:
each pair of channels (x_2i, x_2i+1) among the first r = fraction * d is
turned by the angle p * theta_i, theta_i = base^(-2i / r), at position p;
the other d - r channels pass unchanged (performer-pytorch rotates part of
each head the same way). A rotation keeps |q| and |k|, so FAVOR+'s
stabilizer and its estimator's variance do not change, and

    (R_i q) . (R_j k) = q . R_(j-i) k

depends on the positions through j - i only: FAVOR+ on rotated queries and
keys estimates softmax attention with RoPE without bias, in the causal
O(L) form and in predict mode (the position is all the state it adds).
Angles are float32 products of int32 positions and the frequencies.
"""

import jax.numpy as jnp

from trax_favor import checks

DEFAULT_BASE = 10000.0


def rotary_dims(depth, fraction):
  """The number of rotated channels: fraction * depth, rounded down to even.

  Raises ConfigError where that is 0 or fraction is outside (0, 1].
  """
  if not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
    raise checks.ConfigError(
        f'rotary_fraction must be in (0, 1], got {fraction!r}.')
  dims = int(depth * fraction) // 2 * 2
  if dims == 0:
    raise checks.ConfigError(
        f'rotary_fraction={fraction} of d_qk={depth} rotates no channel pair;'
        ' raise it (at least 2 channels).')
  return dims


def check_base(base):
  """ConfigError unless base is a number above 1."""
  if not isinstance(base, (int, float)) or not base > 1.0:
    raise checks.ConfigError(f'rotary_base must be a number above 1, got '
                             f'{base!r}.')


def apply_rotary(x, positions, fraction=1.0, base=DEFAULT_BASE):
  """x (..., l, d) with channel pairs of its first r channels rotated.

  Args:
    x: (..., l, d) queries or keys.
    positions: int array broadcastable to (..., l): each row's position.
    fraction: share of the d channels rotated (rounded down to pairs).
    base: the wavelength base (10000 in the RoFormer paper).

  Returns:
    (..., l, d) in x's dtype (the rotation itself in float32).
  """
  depth = x.shape[-1]
  dims = rotary_dims(depth, fraction)
  check_base(base)
  theta = float(base) ** (-jnp.arange(0, dims, 2, dtype=jnp.float32)
                          / dims)  # (r/2,)
  angle = jnp.asarray(positions, jnp.int32).astype(
      jnp.float32)[..., None] * theta  # (..., l, r/2)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rot = x[..., :dims].astype(jnp.float32)
  pairs = rot.reshape(*rot.shape[:-1], dims // 2, 2)  # (..., l, r/2, 2)
  even, odd = pairs[..., 0], pairs[..., 1]
  turned = jnp.stack([even * cos - odd * sin, even * sin + odd * cos],
                     axis=-1)  # (..., l, r/2, 2)
  turned = turned.reshape(rot.shape).astype(x.dtype)  # (..., l, r)
  return jnp.concatenate([turned, x[..., dims:]], axis=-1)
