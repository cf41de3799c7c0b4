"""FavorSelfAttention(rotary=True): the layer is projections, rotation,
plain FAVOR+; the weights are a plain layer's; predict mode (position in
the state) equals eval for the layer and for PerformerLM without absolute
positions, also with relative positions and query/key normalization."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trax import shapes

import trax_favor
from trax_favor import ops
from trax_favor.ops import rotary

X = np.random.default_rng(0).standard_normal((2, 30, 16)).astype(np.float32)


def _layer(mode='eval', x=X, seed=0, **kwargs):
  kwargs = dict(dict(n_heads=2, d_qk=8, d_v=8, n_random_features=32,
                     causal=True, rotary=True), **kwargs)
  layer = trax_favor.FavorSelfAttention(mode=mode, **kwargs)
  layer.init(shapes.signature(x), rng=jax.random.PRNGKey(seed))
  return layer


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_the_layer_rotates_then_attends(causal):
  layer = _layer(causal=causal, rotary_fraction=0.5, rotary_base=100.0)
  plain = _layer(causal=causal, rotary=False)
  assert len(layer.weights) == len(plain.weights)  # no new weights
  w_q, w_k, w_v, w_o = layer.weights
  q, k, v = (jnp.einsum('bld,hdk->bhlk', X, w) for w in (w_q, w_k, w_v))
  pos = np.arange(30)
  q, k = (rotary.apply_rotary(a, pos, 0.5, 100.0) for a in (q, k))
  o = ops.favor_attention(q, k, v, layer.projection_matrix, causal=causal)
  o = o[0] if causal else o
  expected = jnp.einsum('bhlv,hvd->bld', o, w_o)
  np.testing.assert_allclose(layer(X), expected, rtol=1e-5, atol=1e-5)
  plain.weights, plain.state = layer.weights, layer.state
  assert not np.allclose(plain(X), expected, atol=1e-3)  # rotation acts


@pytest.mark.parametrize('kwargs', [
    {}, dict(qk_normalization='learned', rotary_fraction=0.5),
    dict(relative_position='bias', max_relative_distance=5)],
                         ids=['rope', 'qk-norm', 'relative'])
def test_the_layer_decodes_as_it_evaluates(kwargs):
  layer = _layer(**kwargs)
  decoder = _layer('predict', X[:, :1], seed=1, **kwargs)
  decoder.weights = layer.weights
  trax_favor.transfer_projections(layer, decoder)
  pieces = [decoder(X[:, :11])] + [decoder(X[:, i:i + 1])
                                   for i in range(11, 30)]
  assert int(decoder.state[1][-1]) == 30  # the position travels in state
  full = np.asarray(layer(X))
  np.testing.assert_allclose(np.concatenate(pieces, 1), full, rtol=0,
                             atol=1e-5 * np.abs(full).max())


def _lm(mode):
  attention = functools.partial(trax_favor.FavorSelfAttention,
                                n_random_features=16, chunk_size=8,
                                rotary=True)
  return trax_favor.PerformerLM(16, d_model=16, d_ff=32, d_qk=8, d_v=8,
                                n_layers=2, n_heads=2, dropout=0.0,
                                max_len=64, attention_type=attention,
                                pos_type='none', mode=mode)


def test_a_rope_lm_without_absolute_positions_decodes_as_it_evaluates(
    tmp_path):
  tokens = np.random.default_rng(1).integers(0, 16, (1, 25)).astype(np.int32)
  model = _lm('eval')
  model.init(shapes.signature(tokens), rng=jax.random.PRNGKey(2))
  path = str(tmp_path / 'model.pkl.gz')
  model.save_to_file(path, weights_only=False,
                     input_signature=shapes.signature(tokens))
  decoder = _lm('predict')
  decoder.init_from_file(path, weights_only=True,
                         input_signature=shapes.ShapeDtype((1, 1), np.int32))
  trax_favor.load_projections(decoder, path)
  shifted = np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]  # predict: no shift
  logits = [decoder(shifted[:, :7])] + [decoder(shifted[:, i:i + 1])
                                        for i in range(7, 25)]
  full = np.asarray(model(tokens))
  np.testing.assert_allclose(np.concatenate(logits, 1), full, rtol=0,
                             atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize('kwargs,message', [
    (dict(rotary=False, rotary_fraction=0.5), 'apply to rotary=True only'),
    (dict(rotary=True, rotary_fraction=0.1), 'rotates no channel pair'),
    (dict(rotary=True, rotary_base=0.5),
     'rotary_base must be a number above 1'),
    (dict(rotary='yes'), 'rotary must be True or False'),
])
def test_what_cannot_work_is_one_clear_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    trax_favor.FavorSelfAttention(d_qk=8, **kwargs)


def test_absolute_positions_off_takes_no_axial_options():
  with pytest.raises(ValueError, match="pos_type='none' takes no"):
    trax_favor.PerformerLM(16, pos_type='none', pos_axial_shape=(4, 4))
