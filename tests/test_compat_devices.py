"""compat.one_trax_device: inside it trax's Loop, Trainer and Accelerate
count one device; after it, even after an error inside, trax's modules see
trax.fastmath itself again (the undo-test of this fix)."""

import pytest
from trax import fastmath
from trax.layers import acceleration
from trax.optimizers import trainer
from trax.supervised import training

from trax_favor import compat

MODULES = (training, trainer, acceleration)


def test_one_device_inside_and_trax_restored_after_an_error():
  assert all(module.fastmath is fastmath for module in MODULES)
  with pytest.raises(KeyError):
    with compat.one_trax_device():
      for module in MODULES:
        assert module.fastmath.local_device_count() == 1
        assert module.fastmath.jit is fastmath.jit  # the rest is trax's
      raise KeyError('inside')
  assert all(module.fastmath is fastmath for module in MODULES)
  assert fastmath.local_device_count() >= 1  # trax's own count untouched


def _tiny_trainer():
  """A trax Trainer of one Dense layer under an L2 loss, on one device."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import trax  # pylint: disable=g-import-not-at-top
  from trax import shapes  # pylint: disable=g-import-not-at-top
  import trax.layers as tl  # pylint: disable=g-import-not-at-top
  batch = (np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32),
           np.ones((2, 3), np.float32))
  with_loss = tl.Serial(tl.Dense(3), tl.L2Loss())
  with_loss.init(shapes.signature(batch))
  optimizer = trax.optimizers.Adam(0.01)
  optimizer.tree_init(with_loss.weights)
  return trainer.Trainer(with_loss, optimizer, n_devices=1), batch


@pytest.mark.parametrize('committed', [False, True])
def test_committed_arrays_compile_the_update_step_once(caplog, committed):
  """trax's first step gets uncommitted weights, the next its own committed
  outputs: two compiles of one trace. commit_to_one_device leaves one (and
  without it the test sees two, so it can fail)."""
  import jax  # pylint: disable=g-import-not-at-top
  tiny, batch = _tiny_trainer()
  if committed:
    compat.commit_to_one_device(tiny)
  with jax.log_compiles(True), caplog.at_level('WARNING'):
    for step in range(3):
      tiny.one_step(batch, jax.random.PRNGKey(step), step=step)
  compiles = [r for r in caplog.records
              if 'Compiling jit(single_device_update_fn' in r.getMessage()]
  assert len(compiles) == (1 if committed else 2)
  weights = jax.tree_util.tree_leaves(tiny.accelerated_model_with_loss.weights)
  assert all(w.committed for w in weights)
