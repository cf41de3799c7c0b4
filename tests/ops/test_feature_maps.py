"""Random projections and feature maps: structure and statistics.

Statistical tests use fixed seeds; tolerances are stated next to each.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_favor import checks
from trax_favor import ops
from trax_favor.ops import cpu_speedups
from trax_favor.ops import favor
from trax_favor.ops import feature_maps

D = 16


@pytest.mark.parametrize('m', [16, 37, 64])
def test_orthogonal_blocks_and_norms(m):
  w = np.asarray(ops.draw_projection(jax.random.PRNGKey(0), m, D))
  assert w.shape == (m, D)
  for start in range(0, m, D):
    block = w[start:start + D]
    unit = block / np.linalg.norm(block, axis=1, keepdims=True)
    np.testing.assert_allclose(unit @ unit.T, np.eye(len(block)), atol=1e-5)
  fixed = np.asarray(ops.draw_projection(jax.random.PRNGKey(0), m, D,
                                         scaling='sqrt_d'))
  np.testing.assert_allclose(np.linalg.norm(fixed, axis=1), np.sqrt(D),
                             rtol=1e-5)


def test_row_norms_follow_the_chi_distribution():
  w = np.asarray(ops.draw_projection(jax.random.PRNGKey(1), 4096, D))
  norms_sq = np.sum(w ** 2, axis=1)  # chi-square with D dof: mean D, var 2D
  assert abs(norms_sq.mean() - D) < 4 * np.sqrt(2 * D / 4096)
  assert abs(norms_sq.var() - 2 * D) < 0.2 * 2 * D


def _kernel_estimates(name, projection, q, k, n_draws, m, seed=0):
  """phi(q).phi(k) for n_draws independent projections: (n_draws, n_pairs)."""
  def one(rng):
    w = ops.draw_projection(rng, m, D, projection)
    return jnp.sum(ops.full_features(name, q, w) * ops.full_features(
        name, k, w), axis=-1)
  rngs = jax.random.split(jax.random.PRNGKey(seed), n_draws)
  return np.asarray(jnp.stack([one(r) for r in rngs]))


def _pairs(scale=0.6, n=6):
  rng = np.random.default_rng(3)
  q = scale * rng.standard_normal((n, D)).astype(np.float32)
  k = scale * rng.standard_normal((n, D)).astype(np.float32)
  exact = np.exp(np.sum(q * k, axis=-1) / np.sqrt(D))
  return jnp.asarray(q), jnp.asarray(k), exact


@pytest.mark.parametrize('name', ['softmax', 'softmax_trig'])
def test_softmax_kernel_estimate_is_unbiased(name):
  q, k, exact = _pairs()
  est = _kernel_estimates(name, 'iid', q, k, n_draws=300, m=16)
  mean = est.mean(axis=0)
  stderr = est.std(axis=0) / np.sqrt(est.shape[0])
  # The mean of 300 draws lies within 4 standard errors of the true kernel.
  assert np.all(np.abs(mean - exact) < 4 * stderr + 1e-6), (mean, exact,
                                                            stderr)


def test_orthogonal_features_beat_iid_on_average():
  q, k, exact = _pairs(scale=0.8)
  mse = {}
  for projection in ('orthogonal', 'iid'):
    est = _kernel_estimates('softmax', projection, q, k, n_draws=200, m=D)
    mse[projection] = np.mean((est - exact) ** 2)
  # Theory (Performer, Thm 2): strictly lower MSE for orthogonal rows; seen
  # here about 0.6x; asserted with margin for the finite number of draws.
  assert mse['orthogonal'] < 0.9 * mse['iid'], mse


def test_approximation_error_falls_as_m_grows():
  rng = np.random.default_rng(4)
  q, k = (jnp.asarray(0.5 * rng.standard_normal((2, 64, D)), jnp.float32)
          for _ in range(2))
  v = jnp.asarray(rng.standard_normal((2, 64, 8)), jnp.float32)
  from trax_favor.ops import reference  # pylint: disable=g-import-not-at-top
  exact = reference.exact_softmax_attention(q, k, v)
  errors = []
  for m in (16, 128, 1024):
    errs = [float(jnp.sqrt(jnp.mean((ops.favor_attention(
        q, k, v, ops.draw_projection(jax.random.PRNGKey(s), m, D)) - exact)
                                    ** 2))) for s in range(4)]
    errors.append(np.mean(errs))
  # Roughly 1/sqrt(m): measured about 0.06, 0.025, 0.01.
  assert errors[0] > 1.8 * errors[1] > 1.8 * 1.8 * errors[2], errors


def test_generalized_kernels_match_their_definitions():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((7, D)), jnp.float32)
  w = ops.draw_projection(jax.random.PRNGKey(2), 24, D)
  u = np.asarray(x) @ np.asarray(w).T * D ** -0.25
  want = {'relu': np.maximum(u, 0), 'elu': np.where(u > 0, u, np.expm1(u)) + 1,
          'exp': np.exp(u)}
  for name, value in want.items():
    got = ops.full_features(name, x, w)
    np.testing.assert_allclose(got, value / np.sqrt(24), rtol=1e-5,
                               atol=1e-6, err_msg=name)


@pytest.mark.parametrize('width', [7, 32, 33, 64, 100, 256])
def test_row_max_is_the_maximum(width):
  x = jnp.asarray(np.random.default_rng(width).standard_normal((3, 5, width)),
                  jnp.float32)
  with cpu_speedups.forced(True):  # the 32-wide slices
    np.testing.assert_array_equal(cpu_speedups.row_max(x), np.max(x, axis=-1))
    np.testing.assert_array_equal(jax.jit(cpu_speedups.row_max)(x),
                                  np.max(x, axis=-1))


@pytest.mark.parametrize('kwargs,match', [
    (dict(n_random_features=0), 'n_random_features'),
    (dict(projection='hadamard'), 'projection'),
    (dict(scaling='unit'), 'projection_scaling'),
])
def test_projection_errors(kwargs, match):
  args = dict(n_random_features=8, d=D)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    ops.draw_projection(jax.random.PRNGKey(0), **args)


def _steep_keys(seed, length=40):
  """Keys with norms from 0.2 to 5 per depth unit, so their log-scales
  span tens of nats; about a fifth are masked and hold NaN or 1e4."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, length, D)) * np.geomspace(0.2, 5.0, length)[:,
                                                                         None]
  valid = rng.random((2, length)) < 0.8
  x[~valid] = np.where(rng.random((int((~valid).sum()), 1)) < 0.5, np.nan,
                       1e4)  # garbage at masked keys only
  return jnp.asarray(x, jnp.float32), jnp.asarray(valid)


@pytest.mark.parametrize('name', ['softmax', 'exp'])
def test_relative_features_are_the_factored_keys_rescaled(name):
  """relative_features (one pass) = factored features * exp(log_scale -
  ref), ref the largest unmasked log-scale, computed in float64 from the
  factored form; gradients too (2e-5 relative, against float32 autodiff of
  the factored form). Masked keys (NaN or 1e4) change neither ref nor any
  other key's value or gradient."""
  x, valid = _steep_keys(3)
  w = ops.draw_projection(jax.random.PRNGKey(1), 24, D)
  feats, ref = feature_maps.relative_features(name, x, w, 1e-6, valid)
  f, s = (np.asarray(a, np.float64) for a in ops.feature_map(name, x, w))
  want_ref = np.max(np.where(valid, s, -np.inf), axis=-1)
  np.testing.assert_allclose(ref, want_ref, rtol=1e-6)
  rel = np.where(valid, s, -np.inf) - want_ref[:, None]  # (2, l)
  want = f * np.exp(rel)[..., None]
  v = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(feats)[v], want[v], rtol=2e-5,
                             atol=1e-30)
  assert 0 < np.min(want[v]) < 1e-12 * np.max(want[v])  # steep

  probe = jnp.asarray(np.random.default_rng(4).standard_normal(feats.shape),
                      jnp.float32)
  def relative(x):
    out, _ = feature_maps.relative_features(name, x, w, 1e-6, valid)
    return jnp.sum(jnp.where(valid[..., None], out * probe, 0.0))

  def factored(x):
    f, s = ops.feature_map(name, x, w)
    s_ref = jax.lax.stop_gradient(jnp.asarray(want_ref, jnp.float32))
    out = f * jnp.exp(s - s_ref[:, None])[..., None]
    return jnp.sum(jnp.where(valid[..., None], out * probe, 0.0))

  clean = jnp.where(valid[..., None], x, 0.0)  # same valid keys, no garbage
  g = np.asarray(jax.grad(relative)(x))
  np.testing.assert_allclose(g[v], np.asarray(jax.grad(factored)(clean))[v],
                             rtol=2e-5, atol=1e-6)
  assert np.all(np.isfinite(g[v]))


def test_relative_features_without_keys_and_for_other_maps():
  x, _ = _steep_keys(5, length=6)
  w = ops.draw_projection(jax.random.PRNGKey(1), 8, D)
  none = jnp.zeros((2, 6), bool)
  feats, ref = feature_maps.relative_features('softmax', x, w, 1e-6, none)
  assert not np.any(favor.has_keys(ref))
  v = jnp.ones((2, 6, 3))
  sums = favor.relative_key_sums(feats, ref, v, none)
  q_feat, _ = ops.feature_map('softmax', jnp.ones((2, 6, D)), w)
  np.testing.assert_array_equal(favor.read_out(q_feat, sums, v.dtype), 0.0)
  for name in ('relu', 'elu', 'softmax_trig'):
    with pytest.raises(checks.ConfigError, match='stabilized feature map'):
      feature_maps.relative_features(name, x, w)
  with pytest.raises(checks.ConfigError, match='key_mask of shape'):
    feature_maps.relative_features('softmax', x, w, key_mask=none.T)
  # Features made without the mask: the mask still empties the sums.
  feats, ref = feature_maps.relative_features('softmax', jnp.ones_like(x), w)
  assert np.all(favor.has_keys(ref))
  sums = favor.relative_key_sums(feats, ref, v, none)
  np.testing.assert_array_equal(favor.read_out(q_feat, sums, v.dtype), 0.0)
