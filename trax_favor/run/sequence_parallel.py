"""`--sequence_parallel=N`: training and eval with every sequence split over
N devices (docs/sequence_parallel.md).

The local devices, D of them, form a mesh ('data', 'seq') of shape
(D // N, N): the batch is split over 'data', the length over 'seq'; with
P processes the training step's mesh is (P D // N, N), every sequence
split within one process. trax
sees ONE device: its Loop, Trainer and evaluator run plain jits (no pmap),
and inside them the model, wrapped in `models.SequenceParallel`, runs as
one shard_map over the mesh. The loss and metrics stay outside the wrapper
(trax appends them) and run on the global, sharded logits.

  check_flags      the flags alone (before the backend starts)
  Setup            the mesh, the wrapped train and eval models, the
                   checked streams, `place` for trax's Loop (built inside
                   `compat.one_trax_device()`)

The model is built with `sequence_axis='seq'` passed to `train.model` at
the call (no gin binding: the saved config, and so a resume with or
without the flag, is unchanged); its weights are those of the model built
without it, and the wrapper adds no weight, so checkpoints are the same.
"""

import inspect

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trax_favor import models
from trax_favor.run.errors import RunError

AXIS, BATCH_AXIS = 'seq', 'data'


def check_flags(n):
  """One RunError for a --sequence_parallel value out of range (before
  the backend starts)."""
  if n is None:
    return
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise RunError(f'--sequence_parallel must be an int >= 1 (the devices '
                   f'each sequence is split over), got {n!r}.')


class Setup:
  """The meshes and what trax's Loop needs to run a model split over them.

  mesh        ('data', 'seq') over every device of every process, (D P // n,
              n), each row the devices of one process (its sequence never
              leaves the process): the training step's (run/distributed.py
              runs it over all processes).
  local_mesh  the same over this process's D devices, (D // n, n): the eval
              model's (every process evaluates whole batches on its own)
              and, with one process, also the training's.
  """

  def __init__(self, n):
    check_flags(n)
    local = jax.local_devices()
    if len(local) % n:
      raise RunError(
          f'--sequence_parallel={n} does not divide the {len(local)} local '
          f'device(s): use a divisor of {len(local)}.')
    self.n = n
    self.n_data = len(local) // n  # data-parallel groups per process
    self.n_processes = jax.process_count()
    self.local_mesh = jax.sharding.Mesh(
        np.array(local).reshape(self.n_data, n), (BATCH_AXIS, AXIS))
    if self.n_processes == 1:
      self.mesh = self.local_mesh
    else:  # process by process, so each row lies within one process
      devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
      self.mesh = jax.sharding.Mesh(
          np.array(devices).reshape(-1, n), (BATCH_AXIS, AXIS))
    self._replicated = NamedSharding(self.local_mesh, P())
    self._split = NamedSharding(self.local_mesh, P(BATCH_AXIS, AXIS))

  def model(self, build, mode):
    """train.model's `build(mode=mode, sequence_axis='seq')`, wrapped."""
    try:
      takes_axis = 'sequence_axis' in inspect.signature(build).parameters
    except (TypeError, ValueError):
      takes_axis = False
    if not takes_axis:
      name = getattr(build, '__name__', repr(build))
      raise RunError(
          f'--sequence_parallel: train.model ({name}) takes no sequence_axis '
          'parameter; use a model built for it (trax_favor.PerformerLM).')
    model = build(mode=mode, sequence_axis=AXIS)
    mesh = self.mesh if mode == 'train' else self.local_mesh
    return models.SequenceParallel(model, mesh, AXIS, BATCH_AXIS)

  def checked(self, batches, kind):
    """The batches of a stream, each checked (shapes only) to split: one
    RunError before trax sees a batch that would not."""
    groups = self.n_data * (self.n_processes if kind == 'train' else 1)
    for batch in batches:
      for x in jax.tree_util.tree_leaves(batch):
        self._check(np.shape(x), kind, groups)
      yield batch

  def _check(self, shape, kind, groups):
    if len(shape) < 2:
      raise RunError(
          f'--sequence_parallel: the {kind} batches hold an array of shape '
          f'{tuple(shape)}, with no length axis (batch, length, ...).')
    if shape[1] % self.n:
      raise RunError(
          f'--sequence_parallel={self.n}: the {kind} sequence length '
          f'{shape[1]} is not divisible by {self.n}; use a length that is.')
    if shape[0] % groups:
      where = ('' if groups == self.n_data else
               f' of {self.n_processes} processes')
      raise RunError(
          f'--sequence_parallel={self.n}: the {kind} batch size {shape[0]} '
          f'is not divisible by the {groups} data-parallel groups{where} '
          f'(local devices // {self.n}); use a batch size that is.')

  def _put(self, tree, sharding):
    return jax.device_put(tree, sharding)

  def place(self, loop):
    """Places the arguments of loop's update and eval steps on the local
    mesh: weights, slots, state, keys replicated, batches split (batch,
    length) over ('data', 'seq'). trax keeps some on one device (its
    optimizer slots on the CPU), which a jit spanning the mesh would
    refuse. (With several processes run/distributed.py replaces the
    update step by one over `mesh`.) Keeps `mesh` as
    loop.sequence_parallel_mesh."""
    loop.sequence_parallel_mesh = self.mesh
    replicate = lambda tree: self._put(tree, self._replicated)
    split = lambda tree: self._put(tree, self._split)
    for trainer in loop.trainers:
      update = trainer._accelerated_update_fn  # pylint: disable=protected-access

      def placed_update(weights_and_slots, step, opt_params, batch, state,
                        rng, update=update):
        return update(replicate(weights_and_slots), step,
                      replicate(opt_params), split(batch), replicate(state),
                      replicate(rng))
      trainer._accelerated_update_fn = placed_update  # pylint: disable=protected-access
    evaluators = loop._evaluator_per_task  # pylint: disable=protected-access
    loop._evaluator_per_task = tuple(  # pylint: disable=protected-access
        e._replace(metrics_fn=self._placed_metrics(e.metrics_fn))
        for e in evaluators)

  def _placed_metrics(self, metrics_fn):
    def placed(batch, weights, state, rng):
      return metrics_fn(self._put(batch, self._split),
                        self._put(weights, self._replicated),
                        self._put(state, self._replicated),
                        self._put(rng, self._replicated))
    return placed
