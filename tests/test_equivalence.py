"""Performer configs and their Reformer / exact-attention twins differ only
in attention: in gin bindings, in model structure, and (for exact
attention) numerically, up to the FAVOR+ approximation."""

import functools
import re

import gin
import jax
import numpy as np
import pytest
import trax
import trax_favor
from trax import layers as tl
from trax import shapes
from trax.supervised import training

import gin_helpers
from trax_favor.run import configs
from trax_favor.run import training as favor_training

PAIRS = gin_helpers.twin_pairs()
PAIR_IDS = [p.replace('gin/', '').replace('.gin', '') for p, _ in PAIRS]
ATTENTION_CONFIGURABLES = ('FavorSelfAttention', 'LSHSelfAttention',
                           'SelfAttention')


def _bindings(config):
  """{binding: value} of everything parsed, from gin's config string."""
  gin_helpers.parse(config, shrink=False)
  text = re.sub(r'\\\n\s*', ' ', gin.config_str())  # join continued lines
  bindings = {}
  for line in text.splitlines():
    if ' = ' in line and not line.startswith(('#', 'import')):
      key, value = line.split(' = ', 1)
      bindings[key.strip()] = value.strip()
  return bindings


def _is_attention(key):
  name = key.split('.')[-2] if '.' in key else key
  return name in ATTENTION_CONFIGURABLES or key == 'ATTENTION'


@pytest.mark.parametrize('performer, twin', PAIRS, ids=PAIR_IDS)
def test_twin_configs_differ_only_in_attention_bindings(performer, twin):
  ours, theirs = _bindings(performer), _bindings(twin)
  assert len(ours) > 30
  assert ({k: v for k, v in ours.items() if not _is_attention(k)}
          == {k: v for k, v in theirs.items() if not _is_attention(k)})
  assert ours['ATTENTION'] == '@trax_favor.FavorSelfAttention'
  assert ours['ATTENTION'] != theirs['ATTENTION']
  assert ours['PerformerLM.attention_type'] == '%ATTENTION'


def _layers(layer, path=()):
  """(path, layer name, weight shapes) of every layer, attention as a leaf."""
  name = type(layer).__name__
  if name in ATTENTION_CONFIGURABLES:
    yield path, 'attention', None
    return
  own = None if layer.sublayers else [np.shape(w) for w in
                                      jax.tree.leaves(layer.weights)]
  yield path, name, own
  for i, sub in enumerate(layer.sublayers):
    yield from _layers(sub, path + (i,))


def _structure(config):
  """The config's model at shrunk width, full depth: its layer list."""
  gin_helpers.parse(config)
  depth = gin.query_parameter('N_LAYERS/macro.value')
  model = configs.configured_model_fn()(mode='train')
  model.init(shapes.ShapeDtype((1, gin_helpers.TINY_MACROS['SEQUENCE_LENGTH']),
                               np.int32))
  return depth, list(_layers(model))


@pytest.mark.parametrize('performer, twin', [
    p for p in PAIRS if '6l' in p[0] or 'mlm/performer.gin' in p[0]],
                         ids=lambda p: p.replace('gin/', ''))
def test_twin_models_have_the_same_structure_outside_attention(performer,
                                                               twin):
  depth, ours = _structure(performer)
  twin_depth, theirs = _structure(twin)
  assert depth == twin_depth
  assert ours == theirs
  attention = [entry for entry in ours if entry[1] == 'attention']
  assert len(attention) == depth
  # attention and feed-forward half-residuals of every reversible block
  assert sum(1 for e in ours if e[1] == 'ReversibleHalfResidual') == 2 * depth


def _counting_batches(vocab, length, batch=4, seed=0):
  rng = np.random.default_rng(seed)
  while True:
    start = rng.integers(0, vocab, (batch, 1))
    seq = ((start + np.arange(length)) % vocab).astype(np.int32)
    yield seq, seq, np.ones_like(seq, np.float32)


@pytest.mark.slow
def test_exact_attention_weights_load_unchanged_and_gap_shrinks_with_m():
  """Train with Trax's exact tl.SelfAttention; the same weights in the FAVOR+
  model approximate it better as n_random_features grows."""
  vocab, length = 16, 32
  build = functools.partial(
      trax_favor.PerformerLM, vocab, d_model=32, d_ff=64, d_qk=16, d_v=16,
      n_layers=2, n_heads=2, dropout=0.0, max_len=length)
  exact = build(attention_type=tl.SelfAttention, mode='train')
  task = training.TrainTask(_counting_batches(vocab, length),
                            tl.WeightedCategoryCrossEntropy(),
                            trax.optimizers.Adam(0.01))
  loop = training.Loop(exact, [task], random_seed=0)
  loop.run(10)
  x = next(_counting_batches(vocab, length, seed=1))[0]
  reference = build(attention_type=tl.SelfAttention, mode='eval')
  reference.init(shapes.signature(x))
  reference.weights = exact.weights
  want = np.asarray(reference(x))

  def gap(m, seed):
    favor = build(attention_type=functools.partial(
        trax_favor.FavorSelfAttention, n_random_features=m), mode='eval')
    favor.init(shapes.signature(x), rng=jax.random.PRNGKey(seed))
    assert (jax.tree.structure(favor.weights)
            == jax.tree.structure(exact.weights))
    favor.weights = exact.weights  # unchanged; projections stay the layer's
    return float(np.mean(np.abs(np.asarray(favor(x)) - want)))
  gaps = [np.mean([gap(m, seed) for seed in range(3)])
          for m in (4, 32, 256, 2048)]
  # Measured: the gap falls by about 0.7x per 8x more features.
  assert gaps[0] > gaps[1] > gaps[2] > gaps[3], gaps
  assert gaps[3] < 0.5 * gaps[0], gaps
