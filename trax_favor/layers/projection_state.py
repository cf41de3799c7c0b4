"""A FAVOR layer's fixed projection as state, and whether it is missing.

FavorSelfAttention's random projection (n_random_features, d_qk) is layer
state, not a weight: the optimizer never sees it, and trax's
`save_to_file` / Loop checkpoints keep it in the file's `flat_state`.
Weights loaded without it would run with random features the weights were
never trained with (outputs off by about half their scale), so a layer
knows, on the Python side, whether its projection is missing:

- `mark_projection_missing()`: set by trax's `init_from_file(...,
  weights_only=True)` where the file holds no projections (the compat fix
  `init_from_file_projections`, see trax_favor/compat/projection_fixes.py);
- in predict mode, also where concrete weights set from outside differ
  from the ones init drew while the projection was never set from outside
  (`decoder.weights = trained.weights` without `transfer_projections`).

`set_projection` (what `load_projections`, `transfer_projections` and
`redraw_projections` call) clears it, and a concrete `init` starts afresh.
`check_projection()` raises `checks.ProjectionMissing`, one line, in every
mode; the compat fix `layer_error_passes_projection_missing` lets it
through trax's LayerError wrapping unchanged.

The mark is a plain attribute, read while `forward` is traced: jit sees a
Python `if`, never a traced value, so the refusal happens at trace time,
before anything runs. A function traced before the mark was set keeps its
program; the refusal comes with the next trace (a new jit, new shapes).
"""

import jax
import numpy as np
from trax.layers import base

from trax_favor import checks

LOAD_PROJECTIONS_HINT = (
    'copy them with trax_favor.transfer_projections(trained_model, model) '
    'or trax_favor.load_projections(model, checkpoint_file), or draw new '
    'ones on purpose with trax_favor.redraw_projections(model, rng)')


def _differ(tree, drawn):
  """Whether a tree of concrete arrays differs from `drawn` in value (the
  same leaves, as objects, are equal without a look at their values)."""
  leaves, drawn_leaves = (jax.tree_util.tree_leaves(t) for t in (tree, drawn))
  if len(leaves) != len(drawn_leaves):
    return True
  return any(a is not b and not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(leaves, drawn_leaves))


def is_concrete(tree):
  """Whether no leaf of tree is a tracer (a value set outside jit)."""
  return not any(isinstance(leaf, jax.core.Tracer)
                 for leaf in jax.tree_util.tree_leaves(tree))


class ProjectionStateLayer(base.Layer):
  """A trax layer whose state is a fixed projection (train and eval) or
  (projection, decoding state) (predict), and which refuses to run once
  its weights were loaded without that projection.

  Subclasses set `self._mode`, call `remember_drawn` at the end of a
  concrete `init_weights_and_state`, and `check_projection` in `forward`.
  """

  _projection_missing = False  # set by mark_projection_missing
  _drawn = None  # [weights, projection] as init drew them
  _loaded = (False, False)  # weights, projection set from outside (predict)

  def remember_drawn(self, projection):
    """Records what a concrete init drew (a traced init, trax's abstract
    evaluation of shapes, changes nothing kept here) and clears the mark:
    weights and projection are both fresh and belong together."""
    if is_concrete((self.weights, projection)):
      self._drawn = [self.weights, projection]
      self._loaded = [False, False]
      self._projection_missing = False

  @property
  def projection_matrix(self):
    """The fixed (n_random_features, d_qk) projection held in state."""
    return self.state[0] if self._mode == 'predict' else self.state

  @property
  def projection_missing(self):
    """Whether the weights were loaded without this layer's projection."""
    return self._projection_missing or (self._loaded[0]
                                        and not self._loaded[1])

  def mark_projection_missing(self):
    """Marks the projection missing: the layer refuses to run until
    `set_projection` (see trax_favor.layers.projections)."""
    self._projection_missing = True

  def set_projection(self, projection):
    """Puts `projection` (n_random_features, d_qk) in state; clears the
    mark. Raises ConfigError on another shape."""
    expected = tuple(self.projection_matrix.shape)
    if tuple(projection.shape) != expected:
      raise checks.ConfigError(
          f'projection shapes differ: {tuple(projection.shape)} '
          f'vs {expected}.')
    if self._mode == 'predict':  # (projection, decoding state)
      self.state = (projection, self.state[1])
    else:
      self.state = projection
    self._projection_missing = False
    if self._drawn is not None:
      self._loaded = [self._loaded[0], True]

  def check_projection(self):
    """Raises checks.ProjectionMissing (one line) if the projection is
    missing, instead of running with fresh random features."""
    if self.projection_missing:
      raise checks.ProjectionMissing(
          f'{self.name}(mode={self._mode!r}): weights were loaded without '
          'the trained FAVOR projections (for example by init_from_file(..., '
          'weights_only=True) of a file without model state), so it would '
          f'run with fresh random features; {LOAD_PROJECTIONS_HINT}.')

  # -- the predict-mode check: weights loaded, projection not -----------------

  @property
  def weights(self):
    return self._weights

  @weights.setter
  def weights(self, weights):
    base.Layer.weights.fset(self, weights)
    self._note_loaded(0, weights)

  @property
  def state(self):
    return self._state

  @state.setter
  def state(self, state):
    base.Layer.state.fset(self, state)
    if isinstance(state, tuple) and state:  # predict: (projection, sums)
      self._note_loaded(1, state[0])

  def _note_loaded(self, index, value):
    """Marks weights (index 0) or the projection (1) as loaded where a
    concrete value set from outside differs from what init drew."""
    drawn = self._drawn
    if (drawn is None or self._mode != 'predict' or self._loaded[index]
        or isinstance(value, dict) or not is_concrete(value)):
      return
    if _differ(value, drawn[index]):
      self._loaded[index] = True
    else:  # the same values (trax re-packs them): compare by identity next
      drawn[index] = value
