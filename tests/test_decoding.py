"""Decoding: trax's documented recipe (predict-mode model + weights-only
load) either decodes as the trained model or stops with one clear error;
sampling feeds the prompt in one call and matches the eval model."""

import functools

import jax
import numpy as np
import pytest
from trax import shapes

import trax_favor
from trax_favor import decoding

VOCAB, L = 16, 20


def _model(mode):
  attention = functools.partial(trax_favor.FavorSelfAttention,
                                n_random_features=16, chunk_size=8)
  return trax_favor.PerformerLM(VOCAB, d_model=16, d_ff=32, d_qk=8, d_v=8,
                                n_layers=2, n_heads=2, dropout=0.0,
                                max_len=64, attention_type=attention,
                                mode=mode)


@pytest.fixture(name='trained', scope='module')
def fixture_trained(tmp_path_factory):
  """An eval-mode model (random weights stand in for trained ones) and a
  checkpoint of it with state, as trax's Loop writes."""
  tokens = np.random.default_rng(0).integers(0, VOCAB, (1, L)).astype(
      np.int32)
  model = _model('eval')
  model.init(shapes.signature(tokens), rng=jax.random.PRNGKey(3))
  path = str(tmp_path_factory.mktemp('ckpt') / 'model.pkl.gz')
  model.save_to_file(path, weights_only=False,
                     input_signature=shapes.signature(tokens))
  return model, path, tokens


def _predict_model():
  model = _model('predict')
  model.init(shapes.ShapeDtype((1, 1), np.int32), rng=jax.random.PRNGKey(11))
  return model


def _predict_logits(model, tokens):
  shifted = np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]  # predict skips the shift
  return model(shifted)  # all tokens in one predict-mode call


def test_weights_only_recipe_decodes_as_the_trained_model(trained):
  """The file has the model state: init_from_file takes the projections
  from it (compat's init_from_file_projections)."""
  ev, path, tokens = trained
  model = _model('predict')
  model.init_from_file(path, weights_only=True,
                       input_signature=shapes.ShapeDtype((1, 1), np.int32))
  np.testing.assert_allclose(_predict_logits(model, tokens), ev(tokens),
                             rtol=1e-4, atol=1e-4)


def test_weights_only_recipe_refuses_to_decode_with_fresh_features(
    trained, tmp_path):
  ev, _, tokens = trained
  path = str(tmp_path / 'weights.pkl.gz')
  ev.save_to_file(path, weights_only=True,
                  input_signature=shapes.signature(tokens))
  model = _model('predict')
  model.init_from_file(path, weights_only=True,
                       input_signature=shapes.ShapeDtype((1, 1), np.int32))
  # One line, not trax's LayerError (see compat/projection_fixes.py).
  with pytest.raises(ValueError,
                     match=r'transfer_projections.*load_projections'):
    _predict_logits(model, tokens)
  with pytest.raises(ValueError, match='load_projections') as refused:
    decoding.sample(model, [1, 2], 3)
  assert '\n' not in str(refused.value)


def test_loaded_weights_without_projections_refuse_to_decode(trained):
  """Weights set by hand in predict mode, projections not: refused too."""
  ev, _, tokens = trained
  model = _predict_model()
  model.weights = ev.weights
  with pytest.raises(ValueError, match='transfer_projections'):
    _predict_logits(model, tokens)


def test_recipe_with_load_projections_decodes_as_the_trained_model(trained):
  ev, path, tokens = trained
  model = _model('predict')
  model.init_from_file(path, weights_only=True,
                       input_signature=shapes.ShapeDtype((1, 1), np.int32))
  trax_favor.load_projections(model, path)
  np.testing.assert_allclose(_predict_logits(model, tokens), ev(tokens),
                             rtol=1e-4, atol=1e-4)


def test_transfer_after_loaded_weights_decodes_as_the_trained_model(trained):
  ev, _, tokens = trained
  model = _predict_model()
  model.weights = ev.weights
  trax_favor.transfer_projections(ev, model)
  np.testing.assert_allclose(_predict_logits(model, tokens), ev(tokens),
                             rtol=1e-4, atol=1e-4)


def test_a_fresh_predict_model_decodes_with_its_own_features():
  """No weights loaded: its own projection is consistent, nothing refused."""
  tokens = np.arange(6, dtype=np.int32)[None]
  ev = _model('eval')
  ev.init(shapes.signature(tokens), rng=jax.random.PRNGKey(11))
  model = _predict_model()  # same init rng: same weights and projections
  np.testing.assert_allclose(_predict_logits(model, tokens), ev(tokens),
                             rtol=1e-4, atol=1e-4)


def test_load_projections_refuses_a_weights_only_file(trained, tmp_path):
  ev, _, tokens = trained
  path = str(tmp_path / 'weights.pkl.gz')
  ev.save_to_file(path, weights_only=True,
                  input_signature=shapes.signature(tokens))
  with pytest.raises(ValueError, match='holds no model state'):
    trax_favor.load_projections(_predict_model(), path)


def test_sample_feeds_the_prompt_in_one_call_and_matches_eval(trained,
                                                              monkeypatch):
  ev, _, _ = trained
  model = _predict_model()
  model.weights = ev.weights
  trax_favor.transfer_projections(ev, model)
  calls = []
  step = decoding._step_fn(model)  # pylint: disable=protected-access
  monkeypatch.setattr(decoding, '_step_fn', lambda m: lambda *args: (
      calls.append(args[0].shape), step(*args))[1])
  prompt = [3, 1, 4, 1, 5, 9, 2]
  generated, log_probs = decoding.sample(model, prompt, 5, temperature=1.0,
                                         seed=2)
  assert calls == [(1, 8)] + [(1, 1)] * 4  # start + prompt, then 1 a call
  tokens = np.array([prompt + list(generated)], np.int32)
  want = jax.nn.log_softmax(ev(tokens)[0])
  np.testing.assert_allclose(log_probs, want, rtol=1e-4, atol=1e-4)
