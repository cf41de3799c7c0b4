"""PerformerLM: Trax's reversible parts, FAVOR+ attention, causal or not."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trax
import trax_favor
from trax import layers as tl
from trax import shapes
from trax_favor import decoding
from trax_favor.layers import projections

import reversible_checks

VOCAB, B, L = 16, 2, 24


def _favor(**kwargs):
  kwargs.setdefault('n_random_features', 16)
  kwargs.setdefault('chunk_size', 8)
  return functools.partial(trax_favor.FavorSelfAttention, **kwargs)


def _performer(mode='eval', attention=None, **kwargs):
  settings = dict(d_model=16, d_ff=32, d_qk=8, d_v=8, n_layers=2, n_heads=2,
                  dropout=0.0, max_len=64)
  settings.update(kwargs)
  return trax_favor.PerformerLM(VOCAB, attention_type=attention or _favor(),
                                mode=mode, **settings)


def _tokens(seed, batch=B, length=L):
  return np.random.default_rng(seed).integers(
      0, VOCAB, (batch, length)).astype(np.int32)


def _init(model, x, seed=1):
  model.init(shapes.signature(x), rng=jax.random.PRNGKey(seed))
  return model


def test_causal_performer_lm_is_trax_reformer_lm():
  """Same layers, same weight tree, same init, same outputs as ReformerLM,
  with exact, FAVOR and LSH attention layers."""
  x = _tokens(0)
  attention = [tl.SelfAttention, _favor(),
               functools.partial(tl.LSHSelfAttention, chunk_len=8,
                                 n_buckets=4)]
  ours = _init(_performer(attention=attention, n_layers=3, ff_chunk_size=8),
               x)
  theirs = _init(trax.models.ReformerLM(
      VOCAB, d_model=16, d_ff=32, d_attention_key=8, d_attention_value=8,
      n_layers=3, n_heads=2, dropout=0.0, max_len=64, ff_chunk_size=8,
      attention_type=attention, mode='eval'), x)
  kinds = [type(layer).__name__ for layer in projections.all_layers(ours)
           if 'Attention' in type(layer).__name__]
  assert kinds == ['SelfAttention', 'FavorSelfAttention', 'LSHSelfAttention']
  assert (jax.tree.structure(ours.weights)
          == jax.tree.structure(theirs.weights))
  for a, b in zip(jax.tree.leaves(ours.weights),
                  jax.tree.leaves(theirs.weights)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(_jit_eval(ours, x), _jit_eval(theirs, x),
                             rtol=1e-6, atol=1e-6)


def _jit_eval(model, x):
  """model(x) as one compiled program (LSH attention runs eagerly at
  several seconds a call)."""
  return np.asarray(jax.jit(lambda x, weights, state: model.pure_fn(
      x, weights, state, jax.random.PRNGKey(0))[0])(x, model.weights,
                                                    model.state))


def test_chunked_feed_forward_equals_unchunked():
  x = _tokens(1)
  whole = _init(_performer(ff_chunk_size=0), x)
  chunked = _init(_performer(ff_chunk_size=8), x)
  leaves = jax.tree.leaves(whole.weights)  # chunking only nests the tree
  assert ([np.shape(w) for w in leaves]
          == [np.shape(w) for w in jax.tree.leaves(chunked.weights)])
  chunked.weights = jax.tree.unflatten(jax.tree.structure(chunked.weights),
                                       leaves)
  chunked.state = jax.tree.unflatten(jax.tree.structure(chunked.state),
                                     jax.tree.leaves(whole.state))
  np.testing.assert_allclose(chunked(x), whole(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('causal', [True, False], ids=['causal', 'bidir'])
def test_dependence_on_later_tokens(causal):
  """Causal: outputs before t ignore tokens >= t; bidirectional: they see
  them (through the reversible stack)."""
  x = _tokens(2)
  attention = _favor() if causal else _favor(chunk_size=None)
  model = _init(_performer(causal=causal, attention=attention), x)
  y = x.copy()
  y[:, 15:] = (y[:, 15:] + 1) % VOCAB
  gap = np.abs(np.asarray(model(x)) - np.asarray(model(y)))[:, :15]
  if causal:
    assert gap.max() < 1e-5
  else:
    assert gap.max() > 1e-3


def _relative(**kwargs):
  """FAVOR with a learned relative-position bias and learned q/k norms."""
  return _favor(relative_position='bias', max_relative_distance=6,
                qk_normalization='learned', **kwargs)


def test_bidirectional_reversible_gradients_equal_plain_autodiff(
    monkeypatch):
  """A step-redrawn projection, the layers' dropout and trax's (FF,
  embedding) are recomputed alike by the reversible backward; a
  relative-position layer's bias tables get their gradients through it.
  The reversible gradient also matches the loss's finite differences."""
  x = _tokens(3)
  model = _init(_performer(
      'train', attention=[_favor(redraw='step', chunk_size=None),
                          _relative(chunk_size=None)],
      causal=False, dropout=0.1), x)
  # Off init, where the relative bias is zero.
  weights = jax.tree.map(lambda w: w + 0.01 * jnp.ones_like(w), model.weights)
  cot = np.random.default_rng(4).standard_normal((B, L, VOCAB)).astype(
      np.float32)
  state, rng = model.state, jax.random.PRNGKey(5)

  def loss(w):
    out, _ = model.pure_fn(x, w, state, rng)
    return jnp.sum(out * cot)
  gradients = reversible_checks.gradients(loss, monkeypatch)
  _, g_reversible, g_plain = gradients(weights)
  leaves = jax.tree.leaves(g_reversible)
  assert len(leaves) > 10 and max(float(jnp.abs(g).max()) for g in leaves) > 0
  for a, b in zip(leaves, jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  biases = [g for g in leaves if g.shape == (2, 13)]  # (heads, 2 D + 1)
  assert len(biases) == 1 and float(jnp.max(jnp.abs(biases[0]))) > 0
  reversible_checks.check_finite_differences(lambda w: gradients(w)[0], weights, leaves)


def _decode(model, x):
  """Feeds x (b, l) to a predict-mode LM token by token, through a jit of
  its pure_fn as trax_favor.decoding does: logits (b, l, v)."""
  shifted = np.pad(x, ((0, 0), (1, 0)))[:, :-1]  # predict skips ShiftRight
  step = jax.jit(lambda tokens, weights, state: model.pure_fn(
      tokens, weights, state, jax.random.PRNGKey(0)))
  state, logits = model.state, []
  for t in range(x.shape[1]):
    out, state = step(shifted[:, t:t + 1], model.weights, state)
    logits.append(out)
  return np.concatenate(logits, axis=1)


def test_eval_equals_predict(tmp_path):
  """FAVOR mixed with exact attention and relative-position layers (steep
  bias tables), axial positions (images): in predict mode, token by token,
  the eval model's outputs (a prompt in one call: test_reformer.py, the
  same layers). The predict model gets the eval model's weights and fixed
  features either directly (weights plus transfer_projections) or from its
  file (init_from_file plus load_projections): the same either way."""
  exact = functools.partial(tl.SelfAttention, predict_mem_len=L,
                            predict_drop_len=L)  # its decoding cache
  kwargs = dict(attention=[_favor(), exact, _relative()], n_layers=3,
                pos_type='axial', pos_axial_shape=(2, 4, 3),
                pos_d_axial_embs=(6, 6, 4))  # 2 * 4 * 3 = L
  x = _tokens(6)
  ev = _init(_performer('eval', **kwargs), x)
  ev.weights = reversible_checks.steep(ev.weights)
  want = np.asarray(jax.jit(lambda x, w, s: ev.pure_fn(
      x, w, s, jax.random.PRNGKey(0))[0])(x, ev.weights, ev.state))
  path = str(tmp_path / 'model.pkl.gz')
  ev.save_to_file(path, weights_only=False, input_signature=shapes.signature(x))
  pr = _performer('predict', **kwargs)
  pr.init(shapes.ShapeDtype((B, 1), np.int32), rng=jax.random.PRNGKey(9))
  pr.weights = ev.weights
  trax_favor.transfer_projections(ev, pr)
  reversible_checks.check_weights_only_load(
      _performer('predict', **kwargs), path, B, pr)
  np.testing.assert_allclose(_decode(pr, x), want, rtol=0,
                             atol=1e-5 * np.abs(want).max())


def test_favor_mixed_with_local_attention_layers():
  """A list of attention types cycles over the layers, as in ReformerLM."""
  local = functools.partial(tl.SelfAttention, chunk_len=8, n_chunks_before=1)
  x = _tokens(7)
  model = _init(_performer(attention=[_favor(), local], n_layers=4), x)
  kinds = [type(layer).__name__
           for layer in projections.all_layers(model)
           if 'Attention' in type(layer).__name__]
  assert kinds == ['FavorSelfAttention', 'SelfAttention'] * 2
  y = x.copy()
  y[:, 20:] = (y[:, 20:] + 1) % VOCAB  # causal in every layer
  gap = np.abs(np.asarray(model(x)) - np.asarray(model(y)))
  assert gap[:, :20].max() < 1e-5 < gap[:, 20:].max()


@pytest.mark.parametrize('kwargs, message', [
    (dict(n_layers=3, attention=[_favor(), tl.SelfAttention]),
     'does not divide n_layers'),
    (dict(pos_type='axial', pos_axial_shape=(2, 4, 3),
          pos_d_axial_embs=(6, 6, 6)), 'must sum to d_model'),
    (dict(pos_type='axial', pos_axial_shape=(8, 8, 3),
          pos_d_axial_embs=(6, 6, 4)), 'more than max_len'),
    (dict(pos_type='rotary'), 'pos_type'),
    (dict(d_model=0), 'd_model'),
    (dict(ff_chunk_size=-1), 'ff_chunk_size'),
], ids=['attention_list', 'axial_depths', 'axial_length', 'pos_type',
        'd_model', 'ff_chunk'])
def test_bad_configuration_names_the_argument(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _performer(**kwargs)


def test_an_error_inside_the_attention_constructor_surfaces_as_itself():
  def attention(**kwargs):
    del kwargs
    raise TypeError('a bug inside the attention layer')
  with pytest.raises(TypeError, match='a bug inside the attention layer'):
    _performer(attention=attention)


def test_predict_needs_causal():
  with pytest.raises(ValueError, match='causal=True'):
    _performer('predict', causal=False)


def test_sampling_stops_where_the_axial_position_table_ends():
  # Axial positions, as the ImageNet64 configs use: 2 * 4 * 3 = 24.
  model = _performer('predict', pos_type='axial', pos_axial_shape=(2, 4, 3),
                     pos_d_axial_embs=(6, 6, 4), max_len=24)
  model.init(shapes.ShapeDtype((1, 1), np.int32))
  assert decoding.positions_left(model) == 24
  generated, _ = decoding.sample(model, [1, 2, 3], 21, temperature=0.0)
  assert len(generated) == 21 and decoding.positions_left(model) == 0
  with pytest.raises(ValueError, match='larger max_len'):
    decoding.sample(model, [], 1)
