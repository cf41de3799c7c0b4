"""Layers that run with the length split over a mesh axis (sequence
parallelism): the option `sequence_axis` and what it changes.

A layer built with `sequence_axis='seq'` and called inside `jax.shard_map`
over a mesh with an axis 'seq' (`trax_favor.models.sequence_parallel` makes
that call) sees this device's contiguous shard of the length, shards in
axis-index order, and computes there what the unsplit layer computes at
those positions:

  FavorSelfAttention    ops.favor_attention(..., sequence_axis=): one
                        all-gather of the shards' key sums per layer;
                        rotary positions count from the shard's offset.
  ShiftRight            the shard's first token is the previous shard's
                        last one (one ppermute of a (b, 1) column).
  positional encodings  the table is read at the shard's offset
                        (models/performer.py).

Position-wise layers (embedding, layer norm, feed-forward, dense, dropout
shared along the length) need nothing: they run on the shard as it is.

Outside shard_map the axis is unbound and the same layer sees the whole
sequence, so it computes the unsplit result: trax's `init` (which traces
the model on shapes), and an unsplit evaluation, use the model as built.
"""

import jax
import jax.numpy as jnp
from trax.layers import base

from trax_favor import checks


def check_option(sequence_axis, mode, layer_name, relative_position=None):
  """The validated sequence_axis (None or a mesh axis name); one
  ConfigError for an option it cannot go with."""
  if sequence_axis is None:
    return None
  if not isinstance(sequence_axis, str) or not sequence_axis:
    raise checks.ConfigError(
        f'{layer_name}: sequence_axis must be a mesh axis name (a string) '
        f'or None, got {sequence_axis!r}.')
  if mode == 'predict':
    raise checks.ConfigError(
        f'{layer_name}: sequence_axis={sequence_axis!r} splits a whole '
        "sequence over devices, mode='predict' decodes token by token: "
        'build the predict-mode model without sequence_axis.')
  if relative_position:
    raise checks.ConfigError(
        f'{layer_name}: relative_position={relative_position!r} is not '
        f'supported with sequence_axis={sequence_axis!r} (each shard would '
        "need the previous shard's last keys); use rotary=True or "
        'absolute positions.')
  return sequence_axis


def bound(sequence_axis):
  """sequence_axis if a mesh axis of that name is bound here (inside
  shard_map), else None (the layer then sees the whole sequence)."""
  if sequence_axis is None:
    return None
  try:
    jax.lax.axis_index(sequence_axis)
  except NameError:
    return None
  return sequence_axis


def n_shards(sequence_axis):
  """The number of shards of the length (1 when unbound)."""
  axis = bound(sequence_axis)
  return 1 if axis is None else jax.lax.axis_size(axis)


def offset(sequence_axis, local_length):
  """The global position of this shard's first token: axis index x the
  shard's length (shard_map splits the length evenly); 0 when unbound."""
  axis = bound(sequence_axis)
  if axis is None:
    return 0
  return jax.lax.axis_index(axis) * local_length


def shift_right(x, sequence_axis):
  """x (b, l, ...) moved one position to the right along the whole
  sequence, a zero first (as tl.ShiftRight)."""
  axis = bound(sequence_axis)
  if axis is None:
    first = jnp.zeros_like(x[:, :1])  # (b, 1, ...)
  else:  # the previous shard's last token; zeros arrive on shard 0
    n = jax.lax.axis_size(axis)
    first = jax.lax.ppermute(x[:, -1:], axis,
                             [(i, i + 1) for i in range(n - 1)])  # (b, 1, ...)
  return jnp.concatenate([first, x[:, :-1]], axis=1)  # (b, l, ...)


class ShiftRight(base.Layer):
  """tl.ShiftRight(n_positions=1, mode=mode) across shards: with
  sequence_axis bound, the first token of a shard is the last one of the
  shard before it. No weights, no state; predict mode passes tokens on."""

  def __init__(self, sequence_axis=None, mode='train'):
    super().__init__(name='ShiftRight(1)')
    checks.check_mode(mode)
    self._sequence_axis = check_option(sequence_axis, mode, 'ShiftRight')
    self._mode = mode

  @property
  def sequence_axis(self):
    return self._sequence_axis

  def forward(self, x):
    if self._mode == 'predict':
      return x
    return shift_right(x, self._sequence_axis)
