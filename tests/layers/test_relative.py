"""FavorSelfAttention(relative_position='bias', qk_normalization=...): starts
as plain FAVOR+, loads a plain model's weights, refuses what it cannot do,
keeps a causal model causal, and decodes in predict mode as the eval layer.
In the models (tests/models/): exact gradients through the reversible
stack, causal (test_reformer.py) and bidirectional (test_performer.py),
and decoding as the eval model (both files)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trax_favor
from trax import layers as tl
from trax import shapes

X = np.random.default_rng(0).standard_normal((2, 37, 16)).astype(np.float32)
TOL = 2e-5  # float32 sums in another order than plain FAVOR+'s


def _layer(**kwargs):
  kwargs = dict(dict(n_heads=2, d_qk=8, d_v=8, n_random_features=32,
                     mode='eval'), **kwargs)
  layer = trax_favor.FavorSelfAttention(**kwargs)
  layer.init(shapes.signature(X), rng=jax.random.PRNGKey(0))
  return layer


@pytest.mark.parametrize('causal,norm', [(False, None), (False, 'learned'),
                                         (True, 'fixed'), (True, 'learned')])
def test_at_bias_zero_the_layer_is_plain_favor(causal, norm):
  plain = _layer(causal=causal, qk_normalization=norm)
  relative = _layer(causal=causal, qk_normalization=norm,
                    relative_position='fft', max_relative_distance=8)
  assert len(relative.weights) == len(plain.weights) + 1  # the bias
  bias = relative.weights[4]
  assert bias.shape == (2, 9 if causal else 17) and not np.any(bias)
  np.testing.assert_allclose(relative(X), plain(X), rtol=TOL, atol=TOL)
  relative.weights = relative.weights[:4] + (bias + 0.5 * jnp.arange(
      bias.shape[-1]),) + relative.weights[5:]
  assert not np.allclose(relative(X), plain(X), atol=1e-3)  # bias acts


def test_a_plain_models_weights_load_into_the_relative_model(tmp_path):
  model = lambda **kw: tl.Serial(tl.Dense(16), trax_favor.FavorSelfAttention(
      n_heads=2, d_qk=8, d_v=8, n_random_features=32, mode='eval', **kw))
  plain = model()
  plain.init(shapes.signature(X), rng=jax.random.PRNGKey(1))
  path = str(tmp_path / 'plain.pkl.gz')
  plain.save_to_file(path, weights_only=False,
                     input_signature=shapes.signature(X))
  relative = model(relative_position='fft', max_relative_distance=8)
  relative.init(shapes.signature(X), rng=jax.random.PRNGKey(2))
  with pytest.raises(IndexError):  # trax's loader needs the same weights
    relative.init_from_file(path, weights_only=True)
  trax_favor.load_weights(relative, path)
  trax_favor.load_projections(relative, path)
  assert not np.any(relative.weights[1][4])  # the new bias: 0
  np.testing.assert_allclose(relative(X), plain(X), rtol=TOL, atol=TOL)


@pytest.mark.parametrize('kwargs,message', [
    (dict(relative_position='bias', mode='predict'), 'needs causal=True'),
    (dict(relative_position='t5'), 'relative_position must be one of'),
    (dict(qk_normalization='yes'), 'qk_normalization must be one of'),
    (dict(relative_position='fft', max_relative_distance=0),
     'max_relative_distance must be a positive int'),
    (dict(max_relative_distance=64),
     'max_relative_distance applies to relative_position'),
])
def test_what_cannot_work_is_one_clear_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    trax_favor.FavorSelfAttention(**kwargs)


def _causal_model():
  attention = functools.partial(
      trax_favor.FavorSelfAttention, n_random_features=16,
      relative_position='fft', max_relative_distance=6,
      qk_normalization='learned', chunk_size=8)
  return trax_favor.PerformerLM(16, d_model=16, d_ff=32, d_qk=8, d_v=8,
                                n_layers=2, n_heads=2, max_len=64,
                                causal=True, mode='eval', dropout=0.0,
                                attention_type=attention)


def test_causal_model_outputs_ignore_later_tokens():
  x = np.random.default_rng(6).integers(0, 16, (2, 24)).astype(np.int32)
  model = _causal_model()
  model.init(shapes.signature(x), rng=jax.random.PRNGKey(7))
  y = x.copy()
  y[:, 15:] = (y[:, 15:] + 1) % 16
  gap = np.abs(np.asarray(model(x)) - np.asarray(model(y)))
  assert gap[:, :15].max() == 0 and gap[:, 15:].max() > 1e-3


def _steep(weights):
  """Weights with every relative-bias table (h, 7) set to a random table
  within +-10 nats: what a trained model may hold."""
  rng = np.random.default_rng(8)
  return jax.tree.map(
      lambda w: (jnp.asarray(rng.uniform(-10, 10, w.shape), jnp.float32)
                 if w.shape == (2, 7) else w), weights)


def test_the_layer_decodes_as_it_evaluates():
  """Prompt in one call, then token by token: eval outputs to 1e-5."""
  x = np.random.default_rng(9).standard_normal((2, 40, 16)).astype(
      np.float32)
  make = lambda mode: trax_favor.FavorSelfAttention(
      n_heads=2, d_qk=8, d_v=8, n_random_features=32, causal=True, mode=mode,
      relative_position='bias', max_relative_distance=6, chunk_size=8)
  layer = make('eval')
  layer.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
  layer.weights = _steep(layer.weights)
  decoder = make('predict')
  decoder.init(shapes.signature(x[:, :1]), rng=jax.random.PRNGKey(1))
  decoder.weights = layer.weights
  trax_favor.transfer_projections(layer, decoder)
  pieces = [decoder(x[:, :13])] + [decoder(x[:, i:i + 1])
                                   for i in range(13, 40)]
  full = np.asarray(layer(x))
  np.testing.assert_allclose(np.concatenate(pieces, 1), full, rtol=0,
                             atol=1e-5 * np.abs(full).max())
