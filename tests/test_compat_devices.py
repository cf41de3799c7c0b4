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
