"""Finding FAVOR layers in a model, and moving their fixed projections.

A FavorSelfAttention layer's random projection is state, not a weight
(it is not trained). Checkpoints written by trax's Loop hold it (in the
model state), and trax's `init_from_file(..., weights_only=True)` restores
it from there (compat's `init_from_file_projections` calls
`restore_or_mark_missing`); where the file has none, the layers are marked
and refuse to run until one of these sets it:

  transfer_projections(trained, model)   from a model in memory
  load_projections(model, file_name)     from a trax checkpoint file
  redraw_projections(model, rng)         a deliberate fresh draw

and `load_weights(model, file_name)` loads a checkpoint's weights into a
model that has more (new layer options' weights keep their init values).
Both read the file with `trax_favor.safe_pickle` (no code from it runs).
"""

import jax
import numpy as np

from trax_favor import checks
from trax_favor import model_files
from trax_favor.layers import self_attention


def all_layers(layer):
  """`layer` and every layer inside it, depth first, each before its own."""
  yield layer
  for sublayer in layer.sublayers:
    yield from all_layers(sublayer)


def favor_layers(layer):
  """All FavorSelfAttention layers inside `layer`, in a fixed tree order."""
  return [sub for sub in all_layers(layer)
          if isinstance(sub, self_attention.FavorSelfAttention)]


def _projections_in(flat_state, layers):
  """The arrays of a file's flat state shaped like the layers' projections,
  in order: one per layer, or None where the count differs."""
  shapes = {tuple(layer.projection_matrix.shape) for layer in layers}
  found = [np.asarray(s) for s in flat_state if tuple(np.shape(s)) in shapes]
  return found if len(found) == len(layers) else None


def transfer_projections(source, target):
  """Copies each FAVOR layer's fixed projection from `source` to `target`.

  Use it after loading trained weights into a model built in another mode (for
  example a predict-mode decoder), so that both use the same random features.
  Both models must be initialized and have the same FAVOR layers in the same
  order; raises ValueError otherwise.
  """
  src, dst = favor_layers(source), favor_layers(target)
  if len(src) != len(dst):
    raise checks.ConfigError(
        f'source has {len(src)} FAVOR layers, target {len(dst)}.')
  for s_layer, t_layer in zip(src, dst):
    t_layer.set_projection(s_layer.projection_matrix)


def _read(file_name, *more):
  """model_files.read_together of file_name and `more`; one ConfigError
  where file_name is not there."""
  raw = model_files.read_together(file_name, *more)
  if file_name not in raw:
    raise checks.ConfigError(
        f'{file_name} does not exist (a training run keeps its newest '
        'checkpoints only: trax_favor.run.checkpoints.latest(run_dir) names '
        'the newest whole one).')
  return raw


def load_projections(model, file_name):
  """Copies the FAVOR projections saved in a trax checkpoint into `model`.

  `file_name` is a checkpoint written by trax (`model.pkl.gz` of a training
  run, or `Layer.save_to_file` with state). Its state holds, in tree order,
  one (n_random_features, d_qk) projection per FAVOR layer; `model` (any
  mode, initialized) must have as many FAVOR layers, in the same order.

  The file is read by `trax_favor.safe_pickle`, which runs no code from it.

  Raises:
    ValueError: the file does not exist, holds no state, or not one
      projection per layer;
      safe_pickle.UnsafeCheckpoint (a ValueError) where the file names
      anything but arrays, plain values and trax's checkpoint classes.
  """
  flat_state = model_files.read_pickle(
      file_name, _read(file_name)[file_name]).get('flat_state')
  if flat_state is None:
    raise checks.ConfigError(
        f'{file_name} holds no model state (saved weights-only),'
        ' so it has no FAVOR projections.')
  layers = favor_layers(model)
  projections = _projections_in(flat_state, layers)
  if projections is None:
    shapes = {tuple(layer.projection_matrix.shape) for layer in layers}
    found = sum(tuple(np.shape(s)) in shapes for s in flat_state)
    raise checks.ConfigError(
        f'{file_name} holds {found} arrays shaped like a FAVOR '
        f'projection, but the model has {len(layers)} FAVOR layers: was it '
        'saved from a model of this config?')
  for layer, projection in zip(layers, projections):
    layer.set_projection(projection)


def redraw_projections(model, rng):
  """Gives every FAVOR layer of `model` a fresh projection, on purpose.

  The one way to run loaded weights with random features they were not
  trained with: for weights trained without FAVOR (a tl.SelfAttention
  Reformer's, which load unchanged), or to measure how much a model
  depends on its draw. Layer i draws from `jax.random.fold_in(rng, i)`
  (the same rng gives the same projections); it clears the layers'
  "projection missing" mark. `model` must be initialized.
  """
  for i, layer in enumerate(favor_layers(model)):
    layer.set_projection(layer.draw_projection(jax.random.fold_in(rng, i)))


def restore_or_mark_missing(model, flat_state):
  """After trax loaded weights only: sets each FAVOR layer's projection
  from a file's flat state (None where the file has no state) and returns
  True; where the state has not one projection per layer, marks every
  FAVOR layer's projection missing (they refuse to run) and returns False.
  """
  layers = favor_layers(model)
  projections = None if flat_state is None else _projections_in(
      flat_state, layers)
  if projections is None:
    for layer in layers:
      layer.mark_projection_missing()
    return False
  for layer, projection in zip(layers, projections):
    layer.set_projection(projection)
  return True


def load_weights(model, file_name):
  """Loads a trax checkpoint's weights into `model`, which may have weights
  the checkpoint lacks: new FavorSelfAttention options (the relative
  position bias, a learned temperature) keep their initial values, so a
  model trained without them continues with them and starts out equal.

  The model's weights are walked in tree order; each takes the file's next
  weight where the shapes agree, and keeps its own otherwise. Every weight
  of the file must be used.

  Args:
    model: an initialized trax model.
    file_name: `model.pkl.gz` of a checkpoint, or `Layer.save_to_file`'s.

  Raises:
    ValueError: the file does not exist, or some of its weights found no
      place in the model.
  """
  arrays = file_name.replace('.pkl.gz', '.weights.npy.gz')
  raw = _read(file_name, arrays)  # one checkpoint, also while it is pruned
  saved = model_files.read_pickle(file_name, raw[file_name])['flat_weights']
  if isinstance(saved, int):  # trax's Loop keeps them beside the pickle
    saved = model_files.read_arrays(arrays, raw.get(arrays))
  leaves, tree = jax.tree_util.tree_flatten(model.weights)
  taken, merged = 0, []
  for leaf in leaves:
    if taken < len(saved) and np.shape(saved[taken]) == np.shape(leaf):
      merged.append(jax.numpy.asarray(saved[taken], leaf.dtype))
      taken += 1
    else:
      merged.append(leaf)
  if taken != len(saved):
    raise checks.ConfigError(
        f'{file_name}: {len(saved) - taken} of its {len(saved)} weights '
        f'found no place in the model (the first: shape '
        f'{np.shape(saved[taken])}); was it saved from this architecture?')
  model.weights = jax.tree_util.tree_unflatten(tree, merged)
