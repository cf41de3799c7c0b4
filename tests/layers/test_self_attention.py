"""FavorSelfAttention as a Trax layer: weights, modes, redraw, dropout, errors."""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trax import layers as tl
from trax import shapes
from trax.layers.research import efficient_attention

from trax_favor import FavorSelfAttention
from trax_favor import ops
from trax_favor.layers.options import FavorOptions

B, L, D = 2, 21, 16


def _x(seed=0, batch=B, length=L, d=D):
  return np.random.default_rng(seed).standard_normal(
      (batch, length, d)).astype(np.float32)


def _init(layer, x, seed=0):
  layer.init(shapes.signature(x), rng=jax.random.PRNGKey(seed))
  return layer


def _tree_shapes(tree):
  return jax.tree.map(lambda a: a.shape, tree)


@pytest.mark.parametrize('share_qk', [False, True], ids=['qkv', 'shared_qk'])
def test_weights_mirror_trax_attention(share_qk):
  x = _x()
  ours = _init(FavorSelfAttention(n_heads=3, d_qk=5, d_v=7, share_qk=share_qk),
               x, seed=4)
  if share_qk:
    theirs = tl.LSHSelfAttention(n_heads=3, d_qk=5, d_v=7, chunk_len=7)
  else:
    theirs = tl.SelfAttention(n_heads=3, d_qk=5, d_v=7)
  _init(theirs, x, seed=4)
  assert _tree_shapes(ours.weights) == _tree_shapes(theirs.weights)
  if not share_qk:  # same rng use per head: identical initial weights
    for a, b in zip(ours.weights, theirs.weights):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_matches_trax_self_attention_and_improves_with_m(causal):
  """Same weights as tl.SelfAttention; the gap falls as m grows."""
  x = 0.5 * _x(1, length=32)
  exact = _init(tl.SelfAttention(n_heads=2, d_qk=8, d_v=8, causal=causal,
                                 mode='eval'), x, seed=1)
  want = exact(x)
  errors = []
  for m in (8, 128, 2048):
    errs = []
    for seed in range(3):
      layer = FavorSelfAttention(n_heads=2, d_qk=8, d_v=8, causal=causal,
                                 mode='eval', n_random_features=m)
      _init(layer, x, seed=seed + 10)
      layer.weights = exact.weights
      errs.append(np.sqrt(np.mean((layer(x) - want) ** 2)))
    errors.append(np.mean(errs))
  scale = np.sqrt(np.mean(want ** 2))
  assert errors[0] > errors[1] > errors[2], errors
  # Measured: about 0.7, 0.3 and 0.08 of the output scale (3 draws each).
  assert errors[2] < 0.15 * scale, (errors, scale)


def _run_predict(layer_fn, x, split=3, seed=0):
  """Eval outputs and predict outputs (first `split` tokens, then one by one)."""
  ev = _init(layer_fn(mode='eval'), x, seed)
  pr = _init(layer_fn(mode='predict'), x[:, :1], seed)
  outs = [pr(x[:, :split])]
  for t in range(split, x.shape[1]):
    outs.append(pr(x[:, t:t + 1]))
  return ev(x), np.concatenate(outs, axis=1)


@pytest.mark.parametrize('feature_map,share_qk', [
    ('softmax', False), ('relu', False), ('softmax', True)],
                         ids=['softmax', 'relu', 'shared_qk'])
def test_eval_equals_predict(feature_map, share_qk):
  x = _x(2)
  layer_fn = lambda mode: FavorSelfAttention(
      n_heads=2, d_qk=8, d_v=6, causal=True, mode=mode, n_random_features=13,
      feature_map=feature_map, chunk_size=8, share_qk=share_qk)
  ev, pr = _run_predict(layer_fn, x)
  np.testing.assert_allclose(pr, ev, rtol=1e-5, atol=1e-5)


def test_masked_eval_equals_predict():
  """Padding mask in predict mode: fed with each call's slice of the mask."""
  x = _x(3)
  mask = np.arange(L)[None, :] < np.array([[L], [13]])  # 2nd example padded
  make = lambda mode: FavorSelfAttention(
      n_heads=2, d_qk=8, d_v=6, causal=True, masked=True, mode=mode,
      n_random_features=13, chunk_size=8)
  ev = _init(make('eval'), (x, mask))
  pr = _init(make('predict'), (x[:, :1], mask[:, :1]))
  outs = [pr((x[:, :5], mask[:, :5]))]
  outs += [pr((x[:, t:t + 1], mask[:, t:t + 1])) for t in range(5, L)]
  np.testing.assert_allclose(np.concatenate(outs, axis=1), ev((x, mask)),
                             rtol=1e-5, atol=1e-5)


def _by_hand(layer, weights, x, mask):
  """The layer's definition: projections -> trax_favor.ops -> output."""
  if layer.options.share_qk:
    w_q, w_v, w_o = weights
    q = jnp.einsum('bld,hdk->bhlk', x, w_q)  # (b, h, l, d_qk)
    k = efficient_attention.length_normalized(q)
  else:
    w_q, w_k, w_v, w_o = weights
    q = jnp.einsum('bld,hdk->bhlk', x, w_q)
    k = jnp.einsum('bld,hdk->bhlk', x, w_k)
  v = jnp.einsum('bld,hdv->bhlv', x, w_v)  # (b, h, l, d_v)
  key_mask = None if mask is None else mask[:, None, :]  # (b, 1, l)
  o = ops.favor_attention(q, k, v, layer.projection_matrix,
                          causal=layer.options.causal, chunk_size=8,
                          key_mask=key_mask, block_size=16)
  o = o[0] if layer.options.causal else o
  return jnp.einsum('bhlv,hvd->bld', o, w_o)  # (b, l, d_model)


@pytest.mark.parametrize('share_qk,causal,masked', [
    (False, False, False), (False, True, True), (True, False, True),
    (True, True, False)], ids=['qkv-bidir', 'qkv-causal-masked',
                               'shared_qk-bidir-masked', 'shared_qk-causal'])
def test_layer_is_projections_then_ops_then_output(share_qk, causal, masked):
  """Outputs and gradients (weights and inputs) to 1e-5."""
  x = _x(4, length=40)
  mask = (np.arange(40)[None, :] < np.array([[40], [29]])) if masked else None
  layer = FavorSelfAttention(n_heads=2, d_qk=8, d_v=6, share_qk=share_qk,
                             causal=causal, masked=masked, mode='eval',
                             n_random_features=11,
                             chunk_size=8 if causal else None, block_size=16)
  inputs = (x, mask) if masked else x
  _init(layer, inputs)
  rng = jax.random.PRNGKey(0)

  def through_layer(weights, x):
    out, _ = layer.pure_fn((x, mask) if masked else x, weights, layer.state,
                           rng)
    return out

  np.testing.assert_allclose(through_layer(layer.weights, x),
                             _by_hand(layer, layer.weights, x, mask),
                             rtol=1e-5, atol=1e-5)
  loss = lambda fn: lambda w, x: jnp.sum(jnp.sin(fn(w, x)))
  got = jax.grad(loss(through_layer), (0, 1))(layer.weights, x)
  want = jax.grad(loss(lambda w, x: _by_hand(layer, w, x, mask)), (0, 1))(
      layer.weights, x)
  for a, b in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_predict_state_is_constant_size():
  layer = _init(FavorSelfAttention(n_heads=2, d_qk=8, d_v=6, causal=True,
                                   mode='predict', n_random_features=13),
                _x(length=1))
  before = _tree_shapes(layer.state)
  for t in range(5):
    layer(_x(t, length=1 + 3 * t))
  assert _tree_shapes(layer.state) == before


def test_redraw_policies():
  x = _x(3)
  make = lambda redraw: _init(FavorSelfAttention(
      n_heads=2, d_qk=8, d_v=8, causal=True, n_random_features=16,
      redraw=redraw), x)
  fixed, step = make('fixed'), make('step')
  r1, r2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  np.testing.assert_array_equal(fixed(x, rng=r1), fixed(x, rng=r2))
  assert not np.allclose(step(x, rng=r1), step(x, rng=r2))
  np.testing.assert_array_equal(step(x, rng=r1), step(x, rng=r1))
  # Each layer draws its own fixed matrix.
  other = _init(FavorSelfAttention(n_heads=2, d_qk=8, d_v=8,
                                   n_random_features=16), x, seed=5)
  assert not np.allclose(other.projection_matrix, fixed.projection_matrix)
  # Eval always uses the fixed matrix, whatever the rng.
  ev = _init(FavorSelfAttention(n_heads=2, d_qk=8, d_v=8, redraw='step',
                                mode='eval'), x)
  np.testing.assert_array_equal(ev(x, rng=r1), ev(x, rng=r2))


def test_output_dropout_masks_whole_features_along_length():
  x = _x(4)
  layer = _init(FavorSelfAttention(n_heads=2, d_qk=8, d_v=8,
                                   output_dropout=0.5), x)
  out = layer(x, rng=jax.random.PRNGKey(3))
  clean = _init(FavorSelfAttention(n_heads=2, d_qk=8, d_v=8), x)(x)
  dropped = np.all(out == 0.0, axis=1)  # (b, d_model): whole columns
  assert dropped.any() and not dropped.all()
  kept = ~dropped
  np.testing.assert_allclose(out.transpose(0, 2, 1)[kept],
                             2.0 * clean.transpose(0, 2, 1)[kept], rtol=1e-5,
                             atol=1e-6)


def test_attention_dropout_only_in_train_and_rows_stay_normalized():
  x = _x(5)
  make = lambda mode: _init(FavorSelfAttention(
      n_heads=1, d_qk=8, d_v=8, attention_dropout=0.3, mode=mode), x)
  train, ev = make('train'), make('eval')
  r1, r2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  assert not np.allclose(train(x, rng=r1), train(x, rng=r2))
  np.testing.assert_array_equal(ev(x, rng=r1), ev(x, rng=r2))
  # Values all equal to 1 => a normalized average is exactly 1, dropped or not.
  w_q, w_k, w_v, w_o = train.weights
  ones_v = np.zeros_like(w_v)
  ones_v[..., 0] = 1.0
  train.weights = (w_q, w_k, ones_v, np.ones_like(w_o))
  const = np.ones_like(x)
  const[..., 1:] = 0.0  # v = (1, 0, ..., 0) at every position
  out = train(const + 0.0 * x, rng=r1)
  np.testing.assert_allclose(out, np.ones_like(out), rtol=1e-5)  # 1 * sum(w_o)


def test_masked_inputs_ignore_padding():
  x = _x(6)
  mask = np.arange(L)[None, :] < np.array([[L], [13]])  # 2nd example padded
  layer = _init(FavorSelfAttention(n_heads=2, d_qk=8, d_v=8, masked=True),
                (x, mask))
  out = layer((x, mask))
  junk = x.copy()
  junk[1, 13:] = 40.0
  np.testing.assert_allclose(layer((junk, mask))[1, :13], out[1, :13],
                             rtol=1e-5, atol=1e-5)
  short = layer((x[1:, :13], np.ones((1, 13), bool)))
  np.testing.assert_allclose(out[1, :13], short[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(feature_map='gaussian'), 'feature_map'),
    (dict(n_random_features=0), 'n_random_features'),
    (dict(n_random_features=2.5), 'n_random_features'),
    (dict(mode='predict', causal=False), 'causal'),
    (dict(mode='decode'), 'mode'),
    (dict(projection='hadamard'), 'projection'),
    (dict(projection_scaling='unit'), 'projection_scaling'),
    (dict(redraw='epoch'), 'redraw'),
    (dict(attention_dropout=1.0), 'attention_dropout'),
    (dict(output_dropout=-0.1), 'output_dropout'),
    (dict(d_qk=0), 'd_qk'),
    (dict(chunk_size=0, causal=True), 'chunk_size'),
    (dict(chunk_size=64, causal=False), 'chunk_size'),
    (dict(block_size=0), 'block_size'),
    (dict(numerical_stabilizer=-1.0), 'numerical_stabilizer'),
    (dict(numerical_stabilizer=float('nan')), 'numerical_stabilizer'),
    (dict(numerical_stabilizer=float('inf')), 'numerical_stabilizer'),
    (dict(numerical_stabilizer=True), 'numerical_stabilizer'),
    (dict(feature_map=['softmax']), 'feature_map'),
    (dict(feature_map='softmax_trig'), 'signed features'),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_configuration_raises_value_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    FavorSelfAttention(**kwargs)


def test_options_record_follows_the_constructor():
  """Every keyword of the constructor is a FavorOptions field with the same
  default (gin binds the keywords, the layer reads the record), and the
  record holds the options in effect."""
  signature = inspect.signature(FavorSelfAttention.__init__).parameters
  fields = {f.name: f.default for f in dataclasses.fields(FavorOptions)}
  assert {name: p.default for name, p in signature.items()
          if name != 'self'} == fields
  train = FavorSelfAttention(causal=True, attention_dropout=0.1,
                             output_dropout=0.2, redraw='step',
                             relative_position='bias').options
  assert (train.numerical_stabilizer, train.max_relative_distance,
          train.attention_dropout, train.redraw) == (1e-6, 128, 0.1, 'step')
  assert (train.rotary_fraction, train.rotary_base) == (None, None)
  decode = FavorSelfAttention(causal=True, attention_dropout=0.1,
                              output_dropout=0.2, redraw='step',
                              mode='predict', rotary=True).options
  assert (decode.attention_dropout, decode.output_dropout,
          decode.redraw) == (0.0, 0.0, 'fixed')
  assert (decode.rotary_fraction, decode.rotary_base) == (1.0, 10000)
  with pytest.raises(dataclasses.FrozenInstanceError):
    decode.causal = False


def test_bad_inputs_raise_clear_errors():
  layer = _init(FavorSelfAttention(n_heads=2, d_qk=8, d_v=8), _x())
  with pytest.raises(tl.LayerError, match='d_model=16'):
    layer(_x(d=12))
  pr = _init(FavorSelfAttention(n_heads=2, d_qk=8, d_v=8, causal=True,
                                mode='predict'), _x(length=1))
  with pytest.raises(tl.LayerError, match='batch size 2.*batch size 3'):
    pr(_x(batch=3, length=1))
  with pytest.raises(tl.LayerError, match='batch, length, d_model'):
    FavorSelfAttention().init(shapes.ShapeDtype((4, 16)))
