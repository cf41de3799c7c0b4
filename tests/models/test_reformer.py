"""FavorSelfAttention inside trax.models.ReformerLM (reversible, chunked FF)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trax
import trax_favor
from trax import layers as tl
from trax import shapes
from trax.layers import reversible
from trax.supervised import training

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


def _loss_fn(model, x, cot, state, rng):
  def loss(weights):
    out, _ = model.pure_fn(x, weights, state, rng)
    return jnp.sum(out * cot)
  return loss


@pytest.fixture(name='rev_setup')
def fixture_rev_setup():
  model = _reformer('train', attention=_favor(redraw='step',
                                              attention_dropout=0.1),
                    dropout=0.1)
  x = next(_counting_batches(seed=3))[0]
  model.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
  cot = np.random.default_rng(1).standard_normal((B, L, VOCAB)).astype(
      np.float32)
  loss = _loss_fn(model, x, cot, model.state, jax.random.PRNGKey(7))
  return model, loss


def test_reversible_gradients_equal_plain_autodiff(rev_setup, monkeypatch):
  """Trax's reversible backward recomputes attention from the same rng, so a
  step-redrawn projection and dropout masks must match the forward pass."""
  model, loss = rev_setup
  g_reversible = jax.jit(jax.grad(loss))(model.weights)
  monkeypatch.setattr(reversible.ReversibleLayer, 'has_backward',
                      property(lambda self: False))
  g_plain = jax.jit(jax.grad(loss))(model.weights)
  leaves_r, leaves_p = jax.tree.leaves(g_reversible), jax.tree.leaves(g_plain)
  assert len(leaves_r) == len(leaves_p) > 10
  for a, b in zip(leaves_r, leaves_p):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_reversible_gradients_match_finite_differences(rev_setup):
  model, loss = rev_setup
  weights = model.weights
  leaves, treedef = jax.tree.flatten(weights)
  rng = np.random.default_rng(2)
  direction = [rng.standard_normal(np.shape(w)).astype(np.float32)
               for w in leaves]
  norm = np.sqrt(sum(np.sum(d ** 2) for d in direction))
  direction = jax.tree.unflatten(treedef, [d / norm for d in direction])
  grad = jax.jit(jax.grad(loss))(weights)
  analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(
      jax.tree.leaves(grad), jax.tree.leaves(direction)))
  f = jax.jit(loss)
  eps = 1e-2
  shift = lambda s: jax.tree.map(lambda w, d: w + s * d, weights, direction)
  numeric = (float(f(shift(eps))) - float(f(shift(-eps)))) / (2 * eps)
  assert abs(analytic) > 1e-2
  np.testing.assert_allclose(numeric, analytic, rtol=2e-2)


@pytest.mark.parametrize('feature_map', ['softmax', 'relu'])
def test_reformer_eval_equals_predict(feature_map):
  attention = _favor(feature_map=feature_map)
  seq = next(_counting_batches(seed=5, length=14))[0]
  ev = _reformer('eval', attention)
  ev.init(shapes.signature(seq), rng=jax.random.PRNGKey(1))
  want = ev(seq)
  pr = _reformer('predict', attention)
  pr.init(shapes.ShapeDtype((B, 1), np.int32), rng=jax.random.PRNGKey(2))
  pr.weights = ev.weights  # the weights-only path trax's decoding uses ...
  trax_favor.transfer_projections(ev, pr)  # ... plus the fixed features
  shifted = np.pad(seq, ((0, 0), (1, 0)))[:, :-1]  # predict skips ShiftRight
  got = np.concatenate([pr(shifted[:, t:t + 1]) for t in range(seq.shape[1])],
                       axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


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
