"""Restoring a trained model from a training run's directory."""

import os

import jax
import numpy as np
from trax import shapes

from trax_favor import configs
from trax_favor.layers import projections

CHECKPOINT = 'model.pkl.gz'


def _shapes(tree):
  """(tree structure, [leaf shapes]) to compare checkpoints with models."""
  leaves, structure = jax.tree_util.tree_flatten(tree)
  return structure, [tuple(np.shape(leaf)) for leaf in leaves]


def restore(output_dir, mode='predict', batch_size=1):
  """The parsed config's model in `mode`, with output_dir's trained weights.

  Weights and the fixed FAVOR projections (model state, see
  FavorSelfAttention) both come from the checkpoint.

  Args:
    output_dir: a training run's directory (holding model.pkl.gz).
    mode: 'eval' or 'predict'.
    batch_size: predict mode: the batch size of the decoding state.

  Returns:
    The model, ready to call.

  Raises:
    RunError: no checkpoint, or one that does not fit the configured model.
  """
  path = os.path.join(output_dir, CHECKPOINT)
  if not os.path.exists(path):
    raise configs.RunError(f'no checkpoint {path}: train first, or point '
                           '--output_dir at a training run.')
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
    trained.init_from_file(path, weights_only=False, input_signature=signature)
  except (ValueError, TypeError, IndexError) as e:
    raise configs.RunError(f'{mismatch}: {e}') from e
  found = _shapes(trained.weights), _shapes(trained.state)
  if found != expected:
    diffs = [f'{a} vs {b}' for a, b in zip(found[0][1] + found[1][1],
                                           expected[0][1] + expected[1][1])
             if a != b]
    raise configs.RunError(f'{mismatch}: checkpoint/config shapes differ, '
                           f'first {diffs[:3]}')
  if mode == 'eval':
    return trained
  model = model_fn(mode=mode)
  model.init(shapes.ShapeDtype((batch_size, 1), np.int32))
  if (jax.tree_util.tree_structure(model.weights)
      != jax.tree_util.tree_structure(trained.weights)):
    raise configs.RunError(
        f'checkpoint {path} does not fit the {mode}-mode model.')
  model.weights = trained.weights
  projections.transfer_projections(trained, model)
  return model
