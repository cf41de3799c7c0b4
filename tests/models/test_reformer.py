"""FavorSelfAttention inside trax.models.ReformerLM (reversible, chunked FF):
plain and relative-position layers train with exact gradients and decode
as they evaluate."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trax
import trax_favor
from trax import layers as tl
from trax import shapes
from trax.supervised import training

import reversible_checks

VOCAB, B, L = 16, 2, 24


def _favor(**kwargs):
  kwargs.setdefault('n_random_features', 16)
  kwargs.setdefault('chunk_size', 8)
  return functools.partial(trax_favor.FavorSelfAttention, **kwargs)


def _reformer(mode, attention=None, dropout=0.0, n_layers=2):
  return trax.models.ReformerLM(
      vocab_size=VOCAB, d_model=16, d_ff=32, d_attention_key=8,
      d_attention_value=8, n_layers=n_layers, n_heads=2, dropout=dropout,
      max_len=64, ff_chunk_size=8, attention_type=attention or _favor(),
      mode=mode)


def _counting_batches(seed=0, batch=B, length=L):
  """Learnable toy LM data: each row counts up from a random start (mod V)."""
  rng = np.random.default_rng(seed)
  while True:
    start = rng.integers(0, VOCAB, (batch, 1))
    seq = ((start + np.arange(length)) % VOCAB).astype(np.int32)
    yield seq, seq, np.ones_like(seq, np.float32)


def _cross_entropy(model, seq):
  logits = model(seq)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -float(np.mean(np.take_along_axis(logp, seq[..., None], -1)))


@pytest.mark.slow
def test_reformer_with_favor_trains_in_a_loop(tmp_path):
  model = _reformer('train', dropout=0.05)
  task = training.TrainTask(
      labeled_data=_counting_batches(),
      loss_layer=tl.WeightedCategoryCrossEntropy(),
      optimizer=trax.optimizers.Adam(0.01), n_steps_per_checkpoint=20)
  loop = training.Loop(model, [task], output_dir=str(tmp_path))
  seq = next(_counting_batches(seed=99, batch=4))[0]
  ev = _reformer('eval')
  ev.init(shapes.signature(seq))
  ev.weights, ev.state = model.weights, model.state
  before = _cross_entropy(ev, seq)
  loop.run(40)
  ev.weights, ev.state = loop.model.weights, loop.model.state
  after = _cross_entropy(ev, seq)
  assert before > 2.0  # about ln(16) = 2.77 at init
  assert after < 0.5 * before, (before, after)


def _relative(**kwargs):
  """FAVOR with a learned relative-position bias and learned q/k norms."""
  return _favor(relative_position='bias', max_relative_distance=6,
                qk_normalization='learned', **kwargs)


def _with_dropout(rate, **kwargs):
  """FAVOR with attention and output dropout at `rate` whatever the model
  passes: the layer's dropout without trax's other dropout layers."""
  def attention(**given):
    return _favor(**kwargs)(**{**given, 'attention_dropout': rate,
                                'output_dropout': rate})
  return attention


def test_reversible_gradients_equal_plain_autodiff_and_finite_differences(
    monkeypatch):
  """Trax's reversible backward recomputes attention from the same rng, so a
  step-redrawn projection and dropout masks must match the forward pass; a
  relative-position layer's bias tables get their gradients through it
  too. The reversible gradient also matches the loss's finite differences.
  (Trax's own dropout layers: the bidirectional PerformerLM's test.)"""
  model = _reformer('train', attention=[
      _with_dropout(0.1, redraw='step'), _relative()])
  x = next(_counting_batches(seed=3))[0]
  model.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
  # Off init, where the relative bias is zero.
  weights = jax.tree.map(lambda w: w + 0.01 * jnp.ones_like(w), model.weights)
  cot = np.random.default_rng(1).standard_normal((B, L, VOCAB)).astype(
      np.float32)
  state, rng = model.state, jax.random.PRNGKey(7)

  def loss(w):
    out, _ = model.pure_fn(x, w, state, rng)
    return jnp.sum(out * cot)
  gradients = reversible_checks.gradients(loss, monkeypatch)
  _, g_reversible, g_plain = gradients(weights)
  leaves_r, leaves_p = jax.tree.leaves(g_reversible), jax.tree.leaves(g_plain)
  assert len(leaves_r) == len(leaves_p) > 10
  for a, b in zip(leaves_r, leaves_p):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  biases = [g for g in leaves_p if g.shape == (2, 7)]  # (heads, D + 1)
  assert len(biases) == 1 and float(jnp.max(jnp.abs(biases[0]))) > 0
  reversible_checks.check_finite_differences(lambda w: gradients(w)[0], weights, leaves_r)


def _decode(model, x, prompt):
  """Feeds x (b, l) to a predict-mode LM, its first `prompt` tokens in one
  call, then token by token, through a jit of its pure_fn as
  trax_favor.decoding does: logits (b, l, v)."""
  shifted = np.pad(x, ((0, 0), (1, 0)))[:, :-1]  # predict skips ShiftRight
  step = jax.jit(lambda tokens, weights, state: model.pure_fn(
      tokens, weights, state, jax.random.PRNGKey(0)))
  state, logits = model.state, []
  for piece in [shifted[:, :prompt]] + [shifted[:, t:t + 1]
                                        for t in range(prompt, x.shape[1])]:
    out, state = step(piece, model.weights, state)
    logits.append(out)
  return np.concatenate(logits, axis=1)


def test_reformer_decodes_as_it_evaluates(tmp_path):
  """Softmax, relu and relative-position FAVOR layers (steep bias tables)
  in predict mode, the prompt in one call and then token by token, give
  the eval model's outputs; the predict model gets the eval model's weights
  and fixed features either directly (the weights-only path trax's
  decoding uses, plus transfer_projections) or from its file
  (init_from_file plus load_projections): the same either way."""
  attention = [_favor(), _favor(feature_map='relu'), _relative()]
  seq = next(_counting_batches(seed=5, length=L))[0]
  ev = _reformer('eval', attention, n_layers=3)
  ev.init(shapes.signature(seq), rng=jax.random.PRNGKey(1))
  ev.weights = reversible_checks.steep(ev.weights)
  want = np.asarray(jax.jit(lambda x, w, s: ev.pure_fn(
      x, w, s, jax.random.PRNGKey(0))[0])(seq, ev.weights, ev.state))
  path = str(tmp_path / 'model.pkl.gz')
  ev.save_to_file(path, weights_only=False,
                  input_signature=shapes.signature(seq))
  pr = _reformer('predict', attention, n_layers=3)
  pr.init(shapes.ShapeDtype((B, 1), np.int32), rng=jax.random.PRNGKey(2))
  pr.weights = ev.weights
  trax_favor.transfer_projections(ev, pr)
  reversible_checks.check_weights_only_load(
      _reformer('predict', attention, n_layers=3), path, B, pr)
  np.testing.assert_allclose(_decode(pr, seq, prompt=9), want, rtol=0,
                             atol=1e-5 * np.abs(want).max())


@pytest.mark.slow
def test_autoregressive_sample_decodes_like_the_full_model():
  """trax.supervised.decoding with temperature 0 == greedy on the eval model."""
  from trax.supervised import decoding  # pylint: disable=g-import-not-at-top
  ev = _reformer('eval')
  seq = next(_counting_batches(seed=6, length=8))[0]
  ev.init(shapes.signature(seq), rng=jax.random.PRNGKey(3))
  pr = _reformer('predict')
  pr.init(shapes.ShapeDtype((B, 1), np.int32), rng=jax.random.PRNGKey(4))
  pr.weights = ev.weights
  trax_favor.transfer_projections(ev, pr)
  sampled = decoding.autoregressive_sample(pr, batch_size=B, temperature=0.0,
                                           max_length=6, start_id=0)
  greedy = np.zeros((B, 0), np.int32)
  for _ in range(6):  # full re-run of the eval model for every token
    logits = ev(np.pad(greedy, ((0, 0), (0, 1))))
    greedy = np.concatenate(
        [greedy, np.argmax(logits[:, -1:], -1).astype(np.int32)], axis=1)
  np.testing.assert_array_equal(sampled, greedy)
