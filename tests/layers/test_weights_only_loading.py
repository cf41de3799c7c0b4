"""trax's weights-only load (`init_from_file(path, weights_only=True)`) of a
model with FAVOR layers, in every mode: it runs with the trained
projections (taken from the file's state) or refuses with one line; the
three ways to set projections clear the refusal; trax's own test helpers
pass; the full-checkpoint path is unchanged; each compat fix is needed.

Outputs are compared with the saved model's to 1e-5 of their scale
(float32; the same computation, so in practice they are equal)."""

import contextlib
import functools
import gzip
import pickle

import jax
import numpy as np
import pytest
import trax
from trax import layers as tl
from trax import shapes
from trax.layers import base
from trax.layers import test_utils

import trax_favor
from trax_favor import checks
from trax_favor import compat

TOL = 1e-5  # of the reference output's largest magnitude
VOCAB, L = 16, 12
X = np.random.default_rng(0).normal(size=(1, L, 16)).astype(np.float32)
TOKENS = np.random.default_rng(1).integers(0, VOCAB, (1, L)).astype(np.int32)
MISSING = r'without the trained FAVOR projections.*transfer_projections.*'


def _attention(**kwargs):
  return functools.partial(trax_favor.FavorSelfAttention, n_random_features=16,
                           chunk_size=4, **kwargs)


def _layer(mode):
  return _attention()(n_heads=2, d_qk=8, d_v=8, causal=True, mode=mode)


def _reformer(mode):
  return trax.models.ReformerLM(
      vocab_size=VOCAB, d_model=16, d_ff=32, d_attention_key=8,
      d_attention_value=8, n_layers=1, n_heads=2, dropout=0.0, max_len=32,
      ff_chunk_size=8, attention_type=_attention(), mode=mode)


def _performer(mode):
  return trax_favor.PerformerLM(VOCAB, d_model=16, d_ff=32, d_qk=8, d_v=8,
                                n_layers=1, n_heads=2, dropout=0.0, max_len=32,
                                attention_type=_attention(), mode=mode)


BUILDS = {'layer': (_layer, X), 'reformer_lm': (_reformer, TOKENS),
          'performer_lm': (_performer, TOKENS)}


def _run(model, inputs, mode):
  """The model's output on all of `inputs`; a predict-mode LM gets them in
  one call, shifted right as its eval twin shifts them itself."""
  if mode == 'predict' and inputs.dtype == np.int32:
    inputs = np.pad(inputs, ((0, 0), (1, 0)))[:, :-1]
  return np.asarray(model(inputs))


@pytest.fixture(name='saved', scope='module', params=list(BUILDS))
def fixture_saved(request, tmp_path_factory):
  """(build, inputs, reference output, file with state, file without)."""
  build, inputs = BUILDS[request.param]
  model = build('eval')
  model.init(shapes.signature(inputs), rng=jax.random.PRNGKey(3))
  folder = tmp_path_factory.mktemp(request.param)
  with_state, weights_only = (str(folder / f'{name}.pkl.gz')
                              for name in ('model', 'weights'))
  model.save_to_file(with_state, weights_only=False,
                     input_signature=shapes.signature(inputs))
  model.save_to_file(weights_only, weights_only=True,
                     input_signature=shapes.signature(inputs))
  return build, inputs, _run(model, inputs, 'eval'), with_state, weights_only


def _loaded(build, inputs, mode, path):
  model = build(mode)
  signature = shapes.signature(inputs[:, :1] if mode == 'predict' else inputs)
  model.init(signature, rng=jax.random.PRNGKey(11))  # other projections
  model.init_from_file(path, weights_only=True, input_signature=signature)
  return model


def _close(out, ref):
  np.testing.assert_allclose(out, ref, rtol=0, atol=TOL * np.abs(ref).max())


@pytest.mark.parametrize('mode', ['eval', 'train', 'predict'])
def test_weights_only_load_runs_with_the_saved_projections(saved, mode):
  build, inputs, ref, with_state, _ = saved
  _close(_run(_loaded(build, inputs, mode, with_state), inputs, mode), ref)


@pytest.mark.parametrize('mode', ['eval', 'train', 'predict'])
def test_weights_only_load_without_projections_refuses_in_one_line(saved,
                                                                   mode):
  build, inputs, _, _, weights_only = saved
  model = _loaded(build, inputs, mode, weights_only)
  assert all(layer.projection_missing
             for layer in trax_favor.favor_layers(model))
  with pytest.raises(checks.ProjectionMissing, match=MISSING) as refused:
    _run(model, inputs, mode)
  assert '\n' not in str(refused.value)
  assert f"(mode='{mode}')" in str(refused.value)


@pytest.mark.parametrize('how', ['load_projections', 'transfer_projections'])
def test_setting_the_projections_clears_the_refusal(saved, how):
  build, inputs, ref, with_state, weights_only = saved
  model = _loaded(build, inputs, 'eval', weights_only)
  if how == 'load_projections':
    trax_favor.load_projections(model, with_state)
  else:
    trax_favor.transfer_projections(
        _loaded(build, inputs, 'eval', with_state), model)
  assert not any(layer.projection_missing
                 for layer in trax_favor.favor_layers(model))
  _close(_run(model, inputs, 'eval'), ref)


def test_a_deliberate_fresh_draw_runs_with_new_features(saved):
  build, inputs, ref, _, weights_only = saved
  outputs = []
  for _ in range(2):
    model = _loaded(build, inputs, 'eval', weights_only)
    trax_favor.redraw_projections(model, jax.random.PRNGKey(5))
    for i, layer in enumerate(trax_favor.favor_layers(model)):
      np.testing.assert_array_equal(layer.projection_matrix,
                                    layer.draw_projection(jax.random.fold_in(
                                        jax.random.PRNGKey(5), i)))
    outputs.append(_run(model, inputs, 'eval'))
  np.testing.assert_array_equal(outputs[0], outputs[1])  # same rng, same draw
  assert np.abs(outputs[0] - ref).max() > 0.01 * np.abs(ref).max()


def test_the_full_checkpoint_path_is_trax_own(saved):
  build, inputs, ref, with_state, _ = saved
  results = []
  for undone in (False, True):
    model = build('eval')
    model.init(shapes.signature(inputs), rng=jax.random.PRNGKey(11))
    with (compat.undone('init_from_file_projections') if undone
          else contextlib.nullcontext()):
      model.init_from_file(with_state, weights_only=False)
    results.append(_run(model, inputs, 'eval'))
    assert not any(layer.projection_missing
                   for layer in trax_favor.favor_layers(model))
  np.testing.assert_array_equal(results[0], results[1])
  _close(results[0], ref)


def test_a_training_checkpoints_model_file_restores_projections(tmp_path):
  """trax's Loop format (our runs' too): model.pkl.gz holds the state and a
  compression level where the weights were; model.weights.npy.gz them."""
  model = _reformer('train')
  model.init(shapes.signature(TOKENS), rng=jax.random.PRNGKey(3))
  flat_weights, flat_state = base.flatten_weights_and_state(model.weights,
                                                            model.state)
  path = str(tmp_path / 'model.pkl.gz')
  base.np_to_file(flat_weights, str(tmp_path / 'model.weights.npy.gz'), 2)
  with gzip.open(path, 'wb') as f:
    pickle.dump({'step': 1, 'flat_weights': 2, 'flat_state': flat_state,
                 'input_signature': shapes.signature(TOKENS)}, f)
  ref = _run(_loaded(_reformer, TOKENS, 'eval', path), TOKENS, 'eval')
  evaluated = _reformer('eval')
  evaluated.init(shapes.signature(TOKENS), rng=jax.random.PRNGKey(3))
  _close(ref, _run(evaluated, TOKENS, 'eval'))


# -- trax's own test helpers ---------------------------------------------------
def _stack(mode):
  """Two FAVOR layers between dense ones: a model without ShiftRight (a
  language model shifts in eval mode, not in predict mode, so trax's
  test_eval_equals_predict cannot take one)."""
  return tl.Serial(tl.Dense(16), _layer(mode), tl.Dense(16), _layer(mode))


@pytest.mark.parametrize('build,inputs', [
    (_layer, X), (_stack, X), (_performer, TOKENS)],
                         ids=['layer', 'stack', 'performer_lm'])
def test_trax_eval_is_deterministic(build, inputs):
  test_utils.test_eval_is_deterministic(inputs, build)


@pytest.mark.parametrize('build', [_layer, _stack], ids=['layer', 'stack'])
def test_trax_eval_equals_predict(build):
  test_utils.test_eval_equals_predict(X, build)


def test_trax_test_helpers_fail_with_the_fix_undone():
  with compat.undone('init_from_file_projections'):
    with pytest.raises(AssertionError, match='Non-deterministic'):
      test_utils.test_eval_is_deterministic(X, _layer)


# -- the compat fixes, undone --------------------------------------------------
def test_without_the_fix_weights_only_loads_run_with_fresh_features(saved):
  build, inputs, ref, with_state, _ = saved
  assert compat.applied()['init_from_file_projections']
  with compat.undone('init_from_file_projections'):
    out = _run(_loaded(build, inputs, 'eval', with_state), inputs, 'eval')
  assert np.abs(out - ref).max() > 0.05 * np.abs(ref).max()


def test_without_the_fix_the_refusal_is_a_long_layer_error(saved):
  build, inputs, _, _, weights_only = saved
  model = _loaded(build, inputs, 'eval', weights_only)
  assert compat.applied()['layer_error_passes_projection_missing']
  with compat.undone('layer_error_passes_projection_missing'):
    with pytest.raises(tl.LayerError, match='ProjectionMissing') as wrapped:
      _run(model, inputs, 'eval')
  if build is not _layer:  # through every enclosing layer's traceback
    assert len(str(wrapped.value).splitlines()) > 20


def test_other_errors_in_a_layer_are_still_trax_layer_errors():
  layer = _layer('eval')
  layer.init(shapes.signature(X))
  with pytest.raises(tl.LayerError, match='d_model=16'):
    layer(X[..., :8])
