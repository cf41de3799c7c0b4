"""Imported by a gin `import distributed_dumps` line that
tests/test_distributed.py adds to a `python -m trax_favor.train` run (with
tests/ on PYTHONPATH): every training process then saves its weights after
every step, and its training losses at a normal end, into the folder
$TRAX_FAVOR_TEST_DUMPS, as p<process index>_step<step>.npy and
p<process index>_losses.json."""

import json
import os

import jax
import numpy as np
from trax.supervised import callbacks

from trax_favor.run import loop as loop_lib
from trax_favor.run import training

DUMPS = os.environ['TRAX_FAVOR_TEST_DUMPS']
LOSS = 'metrics/WeightedCategoryCrossEntropy'  # the training loss, per eval


class Dump(callbacks.TrainingStepCallback):

  def call_at(self, step):
    return True

  def on_step_begin(self, step):
    pass

  def on_step_end(self, step):
    leaves = jax.tree_util.tree_leaves(self._loop.model.weights)
    np.save(os.path.join(DUMPS, f'p{jax.process_index()}_step{step}.npy'),
            np.concatenate([np.asarray(x).ravel() for x in leaves]))


_build_loop = loop_lib.build_loop
_train = training.train


def _build_loop_with_dumps(output_dir, args, given=(), *more, **kwargs):
  # First: a stop by a signal is raised in the on_step_end of training's
  # progress callback, after the step this one saves.
  return _build_loop(output_dir, args, [Dump, *given], *more, **kwargs)


def _train_with_dumps(*args, **kwargs):
  loop = _train(*args, **kwargs)
  with open(os.path.join(DUMPS, f'p{jax.process_index()}_losses.json'),
            'w') as f:
    json.dump([(int(s), float(v))
               for s, v in loop.history.get('train', LOSS)], f)
  return loop


loop_lib.build_loop = _build_loop_with_dumps  # what training._restore calls
training.train = _train_with_dumps  # what commands.train calls
