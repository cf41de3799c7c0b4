"""The peer benchmark's own pieces: the authors'-way baseline is FAVOR+,
every JAX contender computes attention, ratios pair the right baseline, and
trax_favor agrees with performer-pytorch (where the extra is installed)."""

import argparse

import jax
import numpy as np
import pytest

from benchmarks import contenders
from benchmarks import peers
from trax_favor import ops
from trax_favor.ops import reference


def _args(**overrides):
  args = dict(d_head=8, n_heads=2, n_random_features=16, sanity_length=48,
              same_math_tol=1e-5, shipped_tol=5e-3, exact_max_len=64,
              dpa_max_len=64, torch_causal_max_len=64,
              trax_causal_max_len=64, only='')
  args.update(overrides)
  return argparse.Namespace(**args)


def test_authors_way_is_favor_plus():
  """Without stabilizer eps, the baseline equals our op to 1e-5: the same
  estimator, its stabilizers cancel (key max over all keys vs per key)."""
  q, k, v, w = peers.inputs(_args(), 40, scale=0.5)
  ours = ops.favor_attention(q, k, v, w, numerical_stabilizer=0.0)
  np.testing.assert_allclose(contenders.authors_bidir(q, k, v, w, eps=0.0),
                             ours, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # compiles several cores: the README's suite stays short
@pytest.mark.parametrize('name', ['exact_bidir', 'dpa_bidir', 'exact_causal',
                                  'dpa_causal'])
def test_exact_contenders_are_softmax_attention(name):
  q, k, v, _ = peers.inputs(_args(), 24)
  causal = name.endswith('causal')
  want = reference.exact_softmax_attention(q, k, v, causal=causal)
  np.testing.assert_allclose(contenders.outputs(name, q, k, v, None), want,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_trax_cores_are_relu_favor():
  """trax's cores match the ReLU kernel (features relu(x) + 1e-3)."""
  q, k, v, w = peers.inputs(_args(), 24)
  relu = lambda x: jax.nn.relu(x) + 1e-3
  for name, causal in (('trax_favor_relu', False),
                       ('trax_causal_favor_relu', True)):
    want = reference.masked_linear_attention(relu(q), relu(k), None, v,
                                             causal)
    np.testing.assert_allclose(contenders.outputs(name, q, k, v, w), want,
                               rtol=1e-4, atol=1e-5, err_msg=name)


def test_names_respect_limits_and_ratios_pair_the_same_direction():
  names = peers.names_at(_args(), 128, {'torch': 'missing'})
  assert 'exact_bidir' not in names and 'ours_bidir' in names
  assert not any(n.startswith('performer_pytorch') for n in names)
  assert peers.names_at(_args(only='ours_bidir,authors_bidir'), 32, {}) == [
      'ours_bidir', 'authors_bidir']
  assert peers.ratios({'ours_bidir': 2.0, 'authors_bidir': 3.0,
                       'ours_causal': 4.0, 'exact_causal': 2.0,
                       'ours_causal_relu': 1.0,
                       'trax_causal_favor_relu': 8.0}) == {
                           'ours_bidir': 1.0, 'authors_bidir': 1.5,
                           'ours_causal': 1.0, 'exact_causal': 0.5,
                           'ours_causal_relu': 0.25,
                           'trax_causal_favor_relu': 8.0}


def test_unknown_contender_is_a_usage_error(capsys):
  with pytest.raises(SystemExit):
    peers.main(['--only=ours_bidir,flash'])
  assert "invalid comma-separated contender value: 'ours_bidir,flash'" in (
      capsys.readouterr().err)


@pytest.mark.slow
def test_agrees_with_performer_pytorch():
  pytest.importorskip('performer_pytorch')
  q, k, v, w = peers.inputs(_args(), 48, seed=1, scale=0.25)
  found = contenders.sanity(q, k, v, w, same_math_tol=1e-5, shipped_tol=5e-3)
  assert found['passed'], found
  for kind in ('bidir', 'causal'):
    # Both are the same estimator: far closer to each other than to exact.
    assert found[kind]['as_shipped'] < 0.1 * found[kind]['ours_vs_exact']


@pytest.mark.slow
def test_memory_of_a_step_in_a_child(in_repo):
  """The CPU memory path: a fresh process, its resident-set peak of one
  step after a warm-up, beside XLA's plan of the same step."""
  del in_repo
  found = peers.memory_in_child(_args(child_timeout=300), 'ours_bidir', 256)
  assert 0 < found['peak_bytes'] < 2 ** 30, found
  assert found['xla_planned_bytes'] > 0
  failed = peers.memory_in_child(_args(child_timeout=300, d_head=-1),
                                 'ours_bidir', 256)
  assert failed['failed'].startswith('exit 1'), failed


def test_time_ratios_pair_rounds_and_compare_fastest_rounds():
  seconds = {'ours_bidir': [1.0, 4.0, 1.0], 'authors_bidir': [2.0, 2.0, 3.0],
             'ours_causal_relu': [1.0, 1.0, 1.0],
             'trax_causal_favor_relu': [3.0, 1.0, 2.0]}
  found = peers.ratios_in(seconds, list(seconds))
  # ours_causal_relu's own baseline (ours_causal) was not timed: no ratio.
  assert found['paired'] == {'ours_bidir': 1.0, 'authors_bidir': 2.0,
                             'trax_causal_favor_relu': 2.0}
  assert found['fastest'] == {'ours_bidir': 1.0, 'authors_bidir': 2.0,
                              'trax_causal_favor_relu': 1.0}
