"""Run a Trax model with its length split over a mesh axis (sequence
parallelism).

    model = trax_favor.PerformerLM(256, ..., sequence_axis='seq')
    model.init(shapes.signature(tokens))   # outside shard_map: as unsplit
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ('seq',))
    apply = trax_favor.models.sequence_parallel(model, mesh)
    logits, state = jax.jit(apply)(tokens, model.weights, model.state, rng)

`apply` has the signature of `model.pure_fn`: it runs it inside
`jax.shard_map`, every input split along its length (axis 1) into
contiguous shards in axis-index order, weights, state and rng replicated.
Each device runs the whole model on its shard: position-wise layers as
they are, the layers built with `sequence_axis` (attention, shift,
positional encodings; layers/sequence_axis.py) with the little they need
from the other shards. The outputs come back as one global array with the
length sharded, equal to the unsplit model's (float32 rounding aside): a
loss computed on them is the unsplit loss, and its gradient with respect
to the replicated weights is summed over the shards by shard_map's
transpose (one all-reduce of the weight gradients per step, as in data
parallelism).

Reversible blocks need nothing special: trax's reverse-and-grad recomputes
each block on the shard, and the attention's recompute gathers the same
key sums again.

A model that would silently compute something else when split, one with a
length-mixing layer not built for this axis (trax's ShiftRight, positional
encodings or attention; FavorSelfAttention without sequence_axis), is
refused by `check_model` with one line naming the layer.

`SequenceParallel(model, mesh)` is the same as a Trax layer, for trax's
training Loop (run/sequence_parallel.py): its only sublayer is the model,
so its weights, state and checkpoints are the model's.
"""

import jax
from jax.sharding import PartitionSpec as P
import trax.layers as tl
from trax.layers.research import position_encodings

from trax_favor import checks

_POSITION_TABLES = (tl.PositionalEncoding,
                    position_encodings.AxialPositionalEncoding)


def _layers(layer):
  """layer and all its sublayers, depth first."""
  yield layer
  for sublayer in layer.sublayers or ():
    yield from _layers(sublayer)


def _mixes_positions(layer):
  """Whether a layer (that knows no sequence axis) mixes positions: trax's
  shift, position tables and attention layers, by type or name."""
  kind = type(layer).__name__
  return (isinstance(layer, _POSITION_TABLES) or
          layer.name.startswith('ShiftRight') or
          'Attention' in kind or 'Favor' in kind)


def check_model(model, axis):
  """One ConfigError if a layer of model would not compute the unsplit
  result on a shard of the length split over `axis`."""
  for layer in _layers(model):
    built_for = getattr(layer, 'sequence_axis', None)
    if built_for == axis:
      continue
    if hasattr(layer, 'sequence_axis') or _mixes_positions(layer):
      raise checks.ConfigError(
          f'sequence_parallel: layer {layer.name} ({type(layer).__name__}) '
          f'is not built for sequence_axis={axis!r} (it has '
          f'{built_for!r}); build the model with sequence_axis={axis!r} '
          '(PerformerLM and FavorSelfAttention take it; trax.models.'
          'ReformerLM: use PerformerLM, the same model and weights).')


def _check_shapes(x, n, n_batch):
  """One ConfigError unless every input has a length (axis 1) that the n
  shards divide, and a batch (axis 0) that the n_batch shards divide."""
  for leaf in jax.tree_util.tree_leaves(x):
    if leaf.ndim < 2:
      raise checks.ConfigError(
          f'sequence_parallel: inputs need a length axis (batch, length, '
          f'...); got shape {tuple(leaf.shape)}.')
    if leaf.shape[1] % n:
      raise checks.ConfigError(
          f'sequence_parallel: length {leaf.shape[1]} is not divisible by '
          f'the {n} shards of the mesh axis; pad the sequences to a '
          f'multiple of {n}.')
    if leaf.shape[0] % n_batch:
      raise checks.ConfigError(
          f'sequence_parallel: batch size {leaf.shape[0]} is not divisible '
          f'by the {n_batch} shards of the batch axis.')


def sequence_parallel(model, mesh, axis='seq', batch_axis=None):
  """model.pure_fn with the length of its inputs split over a mesh axis.

  Args:
    model: a Trax layer or model built with `sequence_axis=axis` (e.g.
      PerformerLM, FavorSelfAttention), initialized (its weights are the
      unsplit model's: build and init as usual).
    mesh: a jax.sharding.Mesh with an axis named `axis`; axes other than
      `axis` and `batch_axis` replicate the computation.
    axis: the mesh axis the length is split over.
    batch_axis: None, or a mesh axis the batch is split over as well (data
      and sequence parallelism on one mesh, e.g. axes ('data', 'seq')).

  Returns:
    apply(x, weights, state, rng) -> (outputs, state), like
    `model.pure_fn`: x (batch, length, ...) or a tuple of such arrays (the
    length divisible by the axis size), outputs (batch, length, ...) global
    arrays sharded along the length (and batch), the unsplit model's. Jit
    it to run.
  """
  for name in (axis,) if batch_axis is None else (axis, batch_axis):
    if name not in mesh.axis_names:
      raise checks.ConfigError(
          f'sequence_parallel: the mesh has axes {mesh.axis_names}, none '
          f'named {name!r}.')
  if batch_axis == axis:
    raise checks.ConfigError(
        f'sequence_parallel: batch_axis and axis are both {axis!r}.')
  check_model(model, axis)
  n = mesh.shape[axis]
  n_batch = 1 if batch_axis is None else mesh.shape[batch_axis]
  split = P(batch_axis, axis)  # (b, l, ...): the length split (and batch)

  def local(x, weights, state, rng):
    return model.pure_fn(x, weights, state, rng)

  run = jax.shard_map(local, mesh=mesh, in_specs=(split, P(), P(), P()),
                      out_specs=(split, P()))

  tables = [layer for layer in _layers(model)
            if hasattr(layer, 'check_sequence_length')]

  def apply(x, weights, state, rng):
    _check_shapes(x, n, n_batch)
    for table in tables:  # before tracing: trax would wrap the error
      table.check_sequence_length(jax.tree_util.tree_leaves(x)[0].shape[1])
    return run(x, weights, state, rng)

  return apply


class SequenceParallel(tl.Layer):
  """`sequence_parallel(model, mesh, axis, batch_axis)` as a Trax layer.

  The model is the only sublayer: weights and state are `(model.weights,)`
  and `(model.state,)`, so `tl.flatten_weights_and_state` gives the
  model's own lists (a checkpoint is the same with or without the
  wrapper). The model receives the wrapper's random key unchanged, at init
  and in forward, so it draws what it draws unwrapped. Put it inside a
  jit (trax's step on one device): its forward is one shard_map over the
  mesh's devices.
  """

  def __init__(self, model, mesh, axis='seq', batch_axis=None):
    super().__init__(n_in=model.n_in, n_out=model.n_out,
                     name=f'SequenceParallel_{axis}')
    self._sublayers = (model,)
    self._apply = sequence_parallel(model, mesh, axis, batch_axis)

  @property
  def rng(self):
    return tl.Layer.rng.fget(self)

  @rng.setter
  def rng(self, rng):  # the same key, not a split: as unwrapped
    self._rng = rng
    self.sublayers[0].rng = rng

  def init_weights_and_state(self, input_signature):
    weights, state = self.sublayers[0].init(input_signature, use_cache=True)
    self.state = (state,)
    self.weights = (weights,)

  def forward(self, x):
    outputs, state = self._apply(x, self.weights[0], self.state[0], self.rng)
    self.state = (state,)
    return outputs
