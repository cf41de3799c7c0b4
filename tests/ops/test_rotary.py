"""Rotary positions (ops/rotary.py): the rotation itself, FAVOR+ on rotated
queries and keys against exact RoPE softmax attention, shift invariance,
causality and gradients."""

import jax
from jax import numpy as jnp
import numpy as np
import pytest

from trax_favor import ops
from trax_favor.ops import reference
from trax_favor.ops import rotary


def _normal(seed, shape, scale=1.0):
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(
      shape), jnp.float32)


def _explicit_rotation(x, positions, dims, base):
  """Each channel pair (2i, 2i+1) < dims turned by p base^(-2i/dims), as a
  2x2 matrix per pair, in float64 NumPy."""
  x = np.asarray(x, np.float64).copy()
  for i in range(dims // 2):
    angle = np.asarray(positions, np.float64)[:, None] * base ** (-2 * i / dims)
    a, b = x[..., 2 * i].copy(), x[..., 2 * i + 1].copy()
    c, s = np.cos(angle[:, 0]), np.sin(angle[:, 0])
    x[..., 2 * i], x[..., 2 * i + 1] = c * a - s * b, s * a + c * b
  return x


@pytest.mark.parametrize('fraction,dims', [(1.0, 8), (0.5, 4), (0.3, 2)])
def test_rotation_matches_its_definition_and_keeps_norms(fraction, dims):
  x = _normal(0, (3, 20, 8))
  positions = np.arange(20) * 37  # long wavelengths and wrapped angles
  out = rotary.apply_rotary(x, positions, fraction, 500.0)
  np.testing.assert_allclose(out, _explicit_rotation(x, positions, dims,
                                                     500.0), atol=2e-5)
  np.testing.assert_array_equal(out[..., dims:], x[..., dims:])
  np.testing.assert_allclose(jnp.linalg.norm(out, axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rotated_dot_products_depend_on_the_offset_only():
  q, k = _normal(1, (16, 8)), _normal(2, (16, 8))
  pos = np.arange(16)
  dots = lambda shift: (rotary.apply_rotary(q, pos + shift)
                        @ rotary.apply_rotary(k, pos + shift).T)
  np.testing.assert_allclose(dots(1000), dots(0), atol=1e-4)
  assert not np.allclose(dots(0), q @ k.T, atol=1e-2)  # positions matter


def _rope_exact(q, k, v, causal, shift=0):
  pos = np.arange(q.shape[-2]) + shift
  return reference.exact_softmax_attention(
      rotary.apply_rotary(q, pos), rotary.apply_rotary(k, pos), v,
      causal=causal)


@pytest.mark.parametrize('causal', [False, True], ids=['bidir', 'causal'])
def test_favor_on_rotated_inputs_approaches_exact_rope_attention(causal):
  """Errors fall with m; the result is the plain op on rotated q and k."""
  q, k, v = (_normal(s, (2, 48, 16), 0.5) for s in (3, 4, 5))
  exact = _rope_exact(q, k, v, causal)
  pos = np.arange(48)
  qr, kr = rotary.apply_rotary(q, pos), rotary.apply_rotary(k, pos)
  errors = []
  for m in (16, 256, 4096):
    w = ops.draw_projection(jax.random.PRNGKey(m), m, 16)
    out = ops.favor_attention(qr, kr, v, w, causal=causal)
    out = out[0] if causal else out
    errors.append(float(jnp.mean(jnp.abs(out - exact))))
  assert errors[0] > 2 * errors[1] > 4 * errors[2], errors


def test_shifted_positions_change_nothing_in_the_mean_over_projections():
  """Exact RoPE attention ignores a common shift of the positions; the
  FAVOR+ kernel estimate of rotated inputs moves with the projection, but
  its mean over 256 projections is the same with and without the shift
  (within 4 standard errors) and near the exact kernel."""
  q, k = _normal(6, (12, 8), 0.5), _normal(7, (12, 8), 0.5)
  v = _normal(8, (12, 4))
  np.testing.assert_allclose(_rope_exact(q, k, v, False, 500),
                             _rope_exact(q, k, v, False), atol=1e-4)

  def kernels(shift):
    pos = np.arange(12) + shift
    qr, kr = rotary.apply_rotary(q, pos), rotary.apply_rotary(k, pos)
    def one(key):
      w = ops.draw_projection(key, 64, 8)
      return (ops.full_features('softmax', qr, w)
              @ ops.full_features('softmax', kr, w).T)
    return jax.vmap(one)(jax.random.split(jax.random.PRNGKey(9), 256))

  a, b = kernels(0), kernels(500)
  assert float(jnp.max(jnp.abs(a[0] - b[0]))) > 1e-3  # one draw moves
  spread = jnp.std(a - b, axis=0) / np.sqrt(256)
  assert bool(jnp.all(jnp.abs(jnp.mean(a - b, axis=0)) < 4 * spread + 1e-6))
  pos = np.arange(12)
  exact = jnp.exp(rotary.apply_rotary(q, pos) @ rotary.apply_rotary(k, pos).T
                  / np.sqrt(8))
  np.testing.assert_allclose(jnp.mean(a, axis=0), exact, rtol=0.1)


def test_causal_rope_favor_ignores_the_future_and_has_finite_gradients():
  q, k, v = (_normal(s, (2, 64, 16)) for s in (10, 11, 12))
  w = ops.draw_projection(jax.random.PRNGKey(1), 32, 16)
  pos = np.arange(64)

  def run(q, k, v):
    out, _ = ops.favor_attention(rotary.apply_rotary(q, pos),
                                 rotary.apply_rotary(k, pos), v, w,
                                 causal=True, chunk_size=16)
    return out

  out = run(q, k, v)
  changed = run(q.at[:, 40:].add(1.0), k.at[:, 40:].add(1.0),
                v.at[:, 40:].set(jnp.nan))
  np.testing.assert_array_equal(changed[:, :40], out[:, :40])
  grads = jax.grad(lambda *a: jnp.sum(run(*a) * v), argnums=(0, 1, 2))(
      q, k, v)
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in grads)


@pytest.mark.parametrize('kwargs,message', [
    (dict(fraction=0.0), 'rotary_fraction must be in'),
    (dict(fraction=1.5), 'rotary_fraction must be in'),
    (dict(fraction=0.1), 'rotates no channel pair'),
    (dict(base=1.0), 'rotary_base must be a number above 1'),
])
def test_bad_options_are_one_clear_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    rotary.apply_rotary(jnp.ones((4, 8)), np.arange(4), **kwargs)
