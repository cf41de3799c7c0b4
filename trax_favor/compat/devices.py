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
