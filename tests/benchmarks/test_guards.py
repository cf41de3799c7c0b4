"""benchmarks/guards.py: its unguarded variants compute what the op does
(so the figures compare the same attention), the guards do what they are
charged for, and a run writes ratios against the op."""

import json

import jax
import numpy as np
import pytest

from benchmarks import guards
from trax_favor import ops
from trax_favor.ops import reference

SHAPE = (1, 2, 128, 8)  # (batch, heads, length, d): 2 relu chunks of 64


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  return tuple(rng.standard_normal(SHAPE).astype(np.float32)
               for _ in range(3))


@pytest.mark.parametrize('kind', guards.KINDS)
def test_every_variant_is_the_same_attention(kind):
  """Each variant equals the naive form of the same features' linear
  attention on finite inputs (trax's core included); the authors' form,
  its own eps, to their agreed 5e-3 (benchmarks/peers.py's sanity)."""
  q, k, v = (x * 0.25 for x in _inputs())
  if kind == 'softmax_bidir':
    w = ops.draw_projection(jax.random.PRNGKey(0), 16, SHAPE[-1])
    q_feat, _ = ops.feature_map('softmax', q, w)
    k_feat, k_log_scale = ops.feature_map('softmax', k, w)
  else:
    feat = guards.contenders.trax_features
    q_feat, k_feat, k_log_scale = feat(q), feat(k), None
  want = reference.masked_linear_attention(q_feat, k_feat, k_log_scale, v,
                                           kind == 'causal')
  for variant in guards.variants(kind, with_trax=True):
    got = guards.core(kind, variant, SHAPE, m=16)(q, k, v)
    tolerance = (dict(atol=5e-3 * np.abs(want).max()) if variant == 'authors'
                 else dict(rtol=1e-5, atol=1e-6))
    np.testing.assert_allclose(got, want, err_msg=f'{kind} {variant}',
                               **tolerance)


@pytest.mark.parametrize('kind', guards.KINDS)
def test_the_guards_are_what_the_bare_core_lacks(kind):
  """A NaN query at position 80: the op keeps it to that row, in outputs
  and gradients; the bare core, charged as guard-free, lets it reach the
  gradients of the values before it (earlier positions)."""
  q, k, v = _inputs(1)
  q[0, 0, 80, 0] = np.nan
  full = np.asarray(guards.core(kind, 'full', SHAPE, m=16)(q, k, v))
  assert np.isnan(full[0, 0, 80]).all()
  rows = np.delete(full[0, 0], 80, axis=0)
  assert np.isfinite(rows).all() and np.isfinite(full[0, 1]).all()
  bare = np.asarray(guards.core(kind, 'bare', SHAPE, m=16)(q, k, v))
  # the bare form gives the same NaN row: its outputs do not spread it...
  assert np.isnan(bare[0, 0, 80]).all()

  def value_grad(variant):
    f = guards.core(kind, variant, SHAPE, m=16)
    return np.asarray(jax.grad(lambda v: f(q, k, v).sum())(v))
  # ...but its gradient does, where the op's stays finite.
  assert np.isfinite(value_grad('full')).all()
  assert np.isnan(value_grad('bare')[0, 0, :80]).all()


def test_run_writes_ratios_against_the_op(tmp_path):
  out = str(tmp_path / 'guards')
  guards.main([f'--out={out}', '--lengths=128', '--rounds=2', '--d=8',
               '--n_heads=2', '--m=16'])
  with open(out + '.json') as f:
    record = json.load(f)
  rows = record['results']['128']
  assert set(rows) == set(guards.KINDS)
  for kind, row in rows.items():
    assert set(row) == set(guards.variants(kind, with_trax=True))
    assert row['full']['time_over_full'] == 1.0
    assert row['full']['memory_over_full'] == 1.0
    for r in row.values():
      assert r['seconds'] > 0 and r['peak_bytes'] > 0
      assert r['memory_over_full'] == (r['peak_bytes']
                                       / row['full']['peak_bytes'])
  assert record['machine']['git_sha']
