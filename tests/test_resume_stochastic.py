"""Exact resume where training draws random numbers every step: dropout,
and FAVOR projections redrawn every step (redraw='step'). A run killed
after its checkpoint and resumed follows the uninterrupted run's eval
trajectory: the random key and data positions come back from the
manifest, so every later draw is the same."""

import os

import numpy as np
import pytest
from trax.supervised import callbacks

from trax_favor.run import configs
from trax_favor.run import training

STEPS = 6
SHRINK = [
    'D_MODEL=32', 'SEQUENCE_LENGTH=64', 'N_LAYERS=1', 'BATCH_SIZE=4',
    'N_RANDOM_FEATURES=16', f'STEPS={STEPS}', 'train.eval_frequency=1',
    'train.eval_steps=1', 'train.checkpoints_at=[3]',
    'trax_favor.PerformerLM.d_ff=64', 'trax_favor.PerformerLM.n_heads=2',
    'trax_favor.FavorSelfAttention.chunk_size=16',
]
CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'gin',
                      'offline_default.gin')


class Killed(BaseException):
  """Stands for kill -9 after a step: nothing more reaches the disk."""


class KillAfterStep4(callbacks.TrainingStepCallback):

  def call_at(self, n):
    return n == 4

  def on_step_begin(self, n):
    pass

  def on_step_end(self, n):
    raise Killed()


def _losses(output_dir, bindings, callbacks_=()):
  configs.parse_config([CONFIG], SHRINK + bindings)
  try:
    training.train(str(output_dir), log_every=STEPS, callbacks=callbacks_)
  except Killed:
    return None
  return training.read_eval_history(str(output_dir))['loss']


@pytest.fixture(name='plain', scope='module')
def fixture_plain(tmp_path_factory):
  """The same run with no draws in its steps."""
  return _losses(tmp_path_factory.mktemp('plain'), [])


@pytest.mark.slow  # three short trainings
@pytest.mark.parametrize('bindings', [
    ['trax_favor.PerformerLM.dropout=0.2'],
    ["trax_favor.FavorSelfAttention.redraw='step'"],
], ids=['dropout', 'redraw_step'])
def test_a_killed_stochastic_run_resumes_on_the_same_trajectory(
    tmp_path, bindings, plain):
  reference = _losses(tmp_path / 'whole', bindings)
  assert _losses(tmp_path / 'killed', bindings, [KillAfterStep4]) is None
  resumed = _losses(tmp_path / 'killed', bindings)
  assert [s for s, _ in resumed] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([v for _, v in resumed],
                             [v for _, v in reference], rtol=1e-6)
  # The draws matter (a resume that drew them anew would leave the
  # trajectory): without them the losses after the first step differ.
  assert not np.allclose([v for _, v in plain][1:],
                         [v for _, v in reference][1:], rtol=1e-4)
