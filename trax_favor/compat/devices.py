"""`one_trax_device`: trax's Loop and Trainer built for one device on a host
with more (the training's `--sequence_parallel`, run/sequence_parallel.py).

trax's Loop (`init_host_and_devices`), Trainer and the Trainer's
`tl.Accelerate` count the local devices when they are built: the Loop
refuses any other n_devices, the Trainer and Accelerate are built without
one and pmap over (and replicate weights for) all of them. Within this context both see
one device, so their update and eval steps are plain jits; a model that
spreads itself over a mesh (a shard_map inside) then runs on all devices.
"""

import contextlib

from trax_favor.compat import patching


@contextlib.contextmanager
def one_trax_device():
  """Within this context, trax.supervised.training,
  trax.optimizers.trainer and trax.layers.acceleration count one local
  device: their `fastmath` global is a view of trax.fastmath whose
  `local_device_count` returns 1 (trax's fastmath itself, and JAX, are
  unchanged). Build the Loop inside it; it keeps the count it read."""
  # pylint: disable=g-import-not-at-top
  from trax import fastmath
  from trax.layers import acceleration
  from trax.optimizers import trainer
  from trax.supervised import training
  # pylint: enable=g-import-not-at-top
  view = patching.ModuleView(fastmath,
                             local_device_count=lambda *args, **kwargs: 1)
  saved = [(module, module.fastmath)
           for module in (training, trainer, acceleration)]
  for module, _ in saved:
    module.fastmath = view
  try:
    yield
  finally:
    for module, original in saved:
      module.fastmath = original


def commit_to_one_device(trainer):
  """Places a one-device trax Trainer's weights, model state and optimizer
  slots on JAX's default device, committed, as its update step returns them.

  trax's first `one_step` passes them as built (NumPy or uncommitted
  arrays) and every later step passes the step's committed outputs: the
  same trace with other argument shardings, so XLA compiled the update
  step twice (5-12 s of a short run on a 2-core CPU). Committed from the
  start, every step runs the first program. Does nothing to a Trainer over
  several devices (pmap places its own arguments) or to arrays already
  committed elsewhere (a sequence-parallel model's shards).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if getattr(trainer, '_n_devices', None) != 1:
    return
  device = jax.local_devices()[0]  # where trax's jit runs by default

  def commit(tree):
    def place(x):
      if isinstance(x, np.ndarray) or (
          isinstance(x, jax.Array) and not x.committed):
        return jax.device_put(x, device)
      return x
    return jax.tree_util.tree_map(place, tree)

  # pylint: disable=protected-access
  accelerated = trainer._accelerated_model_with_loss
  accelerated.weights = commit(accelerated.weights)
  accelerated.state = commit(accelerated.state)
  trainer._slots = commit(trainer._slots)
  # pylint: enable=protected-access
