"""A run's checkpoints for readers: the newest whole one, and the trained
model restored from it (samplers, evaluators, notebooks).

The checkpoint policy is `RunDir`'s (see `run_dir`): the same newest whole
checkpoint the training loop would resume from, damaged ones passed over;
a reader renames nothing. The module-level functions take a run
directory's path, for callers that hold one.
"""

import os

import gin
import jax
import numpy as np
from trax import shapes

from trax_favor import compat
from trax_favor import safe_pickle
from trax_favor.layers import projections
from trax_favor.model_files import DamagedCheckpoint  # pylint: disable=unused-import
from trax_favor.model_files import read_arrays  # pylint: disable=unused-import
from trax_favor.model_files import read_pickle  # pylint: disable=unused-import
from trax_favor.model_files import write_arrays  # pylint: disable=unused-import
from trax_favor.model_files import write_pickle  # pylint: disable=unused-import
from trax_favor.run import configs
from trax_favor.run import run_dir as run_dir_lib
from trax_favor.run.errors import RunError
from trax_favor.run.run_dir import MANIFEST  # pylint: disable=unused-import
from trax_favor.run.run_dir import step_name  # pylint: disable=unused-import
from trax_favor.run.run_dir import verify  # pylint: disable=unused-import

CHECKPOINT = run_dir_lib.MODEL + '.pkl.gz'  # trax's file, in each checkpoint


def steps(output_dir):
  """[(step, directory)] of output_dir's step checkpoints, newest first."""
  return run_dir_lib.RunDir(output_dir, read_only=True).checkpoint_steps()


def publish(output_dir, name, write, record):
  """Publishes checkpoints/<name> of output_dir as a whole (RunDir.publish)."""
  return run_dir_lib.RunDir(output_dir).publish(name, write, record)


def latest(output_dir):
  """The path of the newest whole checkpoint's model.pkl.gz in a training
  run's directory (checked against its manifest), for `load_projections`,
  `load_weights` or trax's `init_from_file` (which unpickles: inside
  `compat.safe_unpickling()` it runs no code from the file).

  Raises:
    RunError: no checkpoint, or none that is whole (each damaged one named).
  """
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise RunError(f'--output_dir {output_dir} is a file, not a training '
                   'run\'s directory.')
  run = run_dir_lib.RunDir(output_dir, read_only=True)
  path, _ = run.latest_checkpoint()
  if path is not None:
    return run_dir_lib.model_stem(path) + '.pkl.gz'
  if run.passed_over:
    raise RunError('no whole checkpoint in '
                   f'{output_dir}: {"; ".join(run.passed_over)}')
  raise RunError(f'no checkpoint in {output_dir}: train first, or '
                 'point --output_dir at a training run.')


def _shapes(tree):
  """(tree structure, [leaf shapes]) to compare checkpoints with models."""
  leaves, structure = jax.tree_util.tree_flatten(tree)
  return structure, [tuple(np.shape(leaf)) for leaf in leaves]


def _vanished(error):
  """Whether `error`, or an error it was raised from (safe_pickle wraps
  the reader's), says a file is gone (Python's or tf.io.gfile's)."""
  while error is not None:
    if isinstance(error, FileNotFoundError) or (
        type(error).__name__ == 'NotFoundError'
        and type(error).__module__.startswith('tensorflow')):
      return True
    error = error.__cause__
  return False


def _init_from_newest(model, output_dir, path, signature):
  """model.init_from_file(path) through safe_pickle. A training run that
  saves while this reads prunes old checkpoints: if `path` vanishes under
  the reader, it tries once more with the newest whole checkpoint then.
  Returns the path loaded."""
  for attempt in (1, 2):
    try:
      with compat.safe_unpickling():  # trax's reader, through safe_pickle
        model.init_from_file(path, weights_only=False,
                             input_signature=signature)
      return path
    except Exception as e:  # pylint: disable=broad-except
      if not _vanished(e):
        raise
      if attempt == 2:
        raise RunError(
            f'checkpoint {path} was removed while it was read, twice (a '
            f'training run is pruning {output_dir}); try again.') from e
      path = latest(output_dir)
  return path


def restore(output_dir, mode='predict', batch_size=1):
  """The parsed config's model in `mode`, with output_dir's trained weights.

  Weights and the fixed FAVOR projections (model state, see
  FavorSelfAttention) both come from the checkpoint, read by
  `trax_favor.safe_pickle` (no code from the file runs).

  Args:
    output_dir: a training run's directory (its newest whole checkpoint is
      used, see `latest`).
    mode: 'eval' or 'predict'.
    batch_size: predict mode: the batch size of the decoding state.

  Returns:
    The model, ready to call.

  Raises:
    RunError: no whole checkpoint, a config whose model differs from the
      run's config.gin, or a checkpoint that does not fit the model.
    safe_pickle.UnsafeCheckpoint: the newest whole checkpoint's pickle
      names a global outside the allow-list (it is not passed over).
  """
  path = latest(output_dir)
  run_dir_lib.check_config(output_dir, gin.config_str(), allow_changes=True)
  model_fn = configs.configured_model_fn()
  trained = model_fn(mode='eval')
  # Axial positions need whole images.
  image_size = configs.configured_image_size()
  length = 1 if image_size is None else image_size * image_size * 3
  signature = shapes.ShapeDtype((1, length), np.int32)
  mismatch = (f'checkpoint {path} does not fit the model of this config '
              '(was it trained with another config?)')
  trained.init(signature)
  expected = _shapes(trained.weights), _shapes(trained.state)
  try:
    path = _init_from_newest(trained, output_dir, path, signature)
  except safe_pickle.UnsafeCheckpoint:
    raise
  except (ValueError, TypeError, IndexError) as e:
    raise RunError(f'{mismatch}: {e}') from e
  found = _shapes(trained.weights), _shapes(trained.state)
  if found != expected:
    diffs = [f'{a} vs {b}' for a, b in zip(found[0][1] + found[1][1],
                                           expected[0][1] + expected[1][1])
             if a != b]
    raise RunError(f'{mismatch}: checkpoint/config shapes differ, '
                   f'first {diffs[:3]}')
  if mode == 'eval':
    return trained
  model = model_fn(mode=mode)
  model.init(shapes.ShapeDtype((batch_size, 1), np.int32))
  if (jax.tree_util.tree_structure(model.weights)
      != jax.tree_util.tree_structure(trained.weights)):
    raise RunError(f'checkpoint {path} does not fit the {mode}-mode model.')
  model.weights = trained.weights
  projections.transfer_projections(trained, model)
  return model
