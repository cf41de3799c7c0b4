"""Two fixes that make trax's own calls safe for FAVOR layers.

Unlike the JAX fixes in `fixes`, these repair no broken API: trax works as
designed, but its design loses a FavorSelfAttention layer's fixed random
projection, which is layer state, not a weight.

  init_from_file_projections
      `Layer.init_from_file(path, weights_only=True)`, trax's documented
      way to reuse trained weights (and what `trax.layers.test_utils`'
      `test_eval_is_deterministic` / `test_eval_equals_predict` call),
      leaves the projection freshly drawn: the model then runs with random
      features its weights were never trained with (outputs off by about
      half their scale). With the fix, a model holding FAVOR layers also
      takes their projections from the file's saved state; a file without
      them (saved weights-only, or from a model without FAVOR) marks the
      layers, which then refuse to run in every mode (see
      trax_favor/layers/projection_state.py). The file is read once, by
      `trax_favor.safe_pickle` (a file that would run code is refused),
      and trax's loader is handed what it read instead of its own
      `pickle.load`; a file saved weights-only, on which trax raises
      KeyError 'flat_state', loads too (and marks the layers). Other
      models, and `weights_only=False`, take trax's path unchanged.
  layer_error_passes_projection_missing
      trax wraps any exception raised inside a layer into a LayerError
      whose message holds the traceback through every enclosing layer and
      JAX frame (109 lines for a 2-layer PerformerLM). The refusal above,
      `checks.ProjectionMissing`, passes through unchanged instead, so
      `str(error)` is its one line and the command lines print just that;
      every other error is wrapped as before.
"""

import contextlib
import inspect
import pickle
import sys

from trax_favor import checks
from trax_favor.compat import fixes
from trax_favor.compat import patching


@contextlib.contextmanager
def _replaced(owner, name, value):
  """owner.name is value for the length of the context (nesting is fine)."""
  saved = getattr(owner, name)
  setattr(owner, name, value)
  try:
    yield
  finally:
    setattr(owner, name, saved)


@patching.fix('init_from_file_projections')
def _fix_init_from_file(patch):
  # Repairs trax.layers.base.Layer.init_from_file(file_name,
  # weights_only=True, input_signature) for models with FavorSelfAttention.
  from trax.layers import base  # pylint: disable=g-import-not-at-top
  original = base.Layer.init_from_file
  if 'weights_only' not in inspect.signature(original).parameters:
    return False  # not trax's loader as we know it

  def init_from_file(self, file_name, weights_only=False,
                     input_signature=None):
    # Without our layer module loaded, no FAVOR layer exists.
    projections = sys.modules.get('trax_favor.layers.projections')
    if not (weights_only and projections and projections.favor_layers(self)):
      return original(self, file_name, weights_only=weights_only,
                      input_signature=input_signature)
    saved = fixes._safe_unpickle_from_file(  # pylint: disable=protected-access
        file_name, gzip=True)
    if not isinstance(saved, dict) or 'flat_weights' not in saved:
      raise checks.ConfigError(f'{file_name} is not a trax model file.')
    saved = dict(saved)
    flat_state = saved.setdefault('flat_state', None)  # weights-only files
    # trax reads the file with base.pickle.load: hand it what safe_pickle
    # read (one read, and trax's pickle.load never sees the file).
    with _replaced(base, 'pickle', patching.ModuleView(
        pickle, load=lambda unused_file: saved)):
      original(self, file_name, weights_only=True,
               input_signature=input_signature)
    projections.restore_or_mark_missing(self, flat_state)
    return (self.weights, self.state)

  init_from_file.__doc__ = original.__doc__
  return patch(base.Layer, 'init_from_file', init_from_file)


@patching.fix('layer_error_passes_projection_missing')
def _fix_layer_error(patch):
  # Repairs the message of trax's `raise LayerError(...) from None` in
  # Layer.init, pure_fn and _forward_abstract (the name is looked up in
  # trax.layers.base when raised) for checks.ProjectionMissing.
  from trax.layers import base  # pylint: disable=g-import-not-at-top

  class LayerError(base.LayerError):
    """trax's LayerError, except that constructing one while a
    ProjectionMissing is being handled gives that error back, so trax's
    `raise LayerError(...)` re-raises it as it is."""

    def __new__(cls, *args, **kwargs):
      del args, kwargs
      pending = sys.exc_info()[1]
      if isinstance(pending, checks.ProjectionMissing):
        return pending
      return super().__new__(cls)

  # Printed as trax's own (its traceback trimming looks for this name).
  LayerError.__module__ = base.LayerError.__module__
  return patch(base, 'LayerError', LayerError)
