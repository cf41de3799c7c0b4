"""Random projection matrices for FAVOR+ random features.

A projection is an array `w` of shape (m, d): m random directions in the
d-dimensional space of (per-head) queries and keys. Feature maps (see
`feature_maps.py`) compute `x @ w.T` and turn it into kernel features.

Two structures are offered:

* `'orthogonal'`: rows drawn in blocks of d mutually orthogonal directions
  (QR of a Gaussian matrix), the "O" of FAVOR+. Orthogonal directions lower the
  variance of the softmax-kernel estimate (Performer paper, Theorem 2) while
  keeping it unbiased, provided the row norms are distributed as those of iid
  Gaussian rows (`scaling='norm'`).
* `'iid'`: independent standard Gaussian rows.

Row scaling (`scaling`):

* `'norm'`: each row's norm is drawn from the chi distribution with d degrees
  of freedom (the norm of a d-dim standard Gaussian vector). This makes each
  row marginally N(0, I_d), which the unbiasedness of softmax features needs.
* `'sqrt_d'`: every row has norm sqrt(d) (the mean-square norm of a Gaussian
  row); slightly biased for softmax features, the research code's alternative.

For `'iid'` rows `'norm'` is the identity (the rows are Gaussian already).
"""

import functools

import jax
import jax.numpy as jnp

from trax_favor import checks

PROJECTIONS = ('orthogonal', 'iid')
PROJECTION_SCALINGS = ('norm', 'sqrt_d')


def check_projection_args(n_random_features, d, projection, scaling):
  """Raises ValueError naming the bad argument; returns nothing."""
  checks.check_positive_int(n_random_features=n_random_features, d=d)
  if projection not in PROJECTIONS:
    raise checks.ConfigError(f'projection must be one of {PROJECTIONS}, got '
                             f'{projection!r}.')
  if scaling not in PROJECTION_SCALINGS:
    raise checks.ConfigError(
        f'projection_scaling must be one of {PROJECTION_SCALINGS},'
        f' got {scaling!r}.')


def _orthogonal_rows(rng, n_rows, d):
  """(n_rows, d): blocks of d orthonormal rows; the last block truncated."""
  n_blocks = -(-n_rows // d)  # ceil
  gaussian = jax.random.normal(rng, (n_blocks, d, d), jnp.float32)
  q, r = jnp.linalg.qr(gaussian)  # q: (blocks, d, d), orthonormal columns
  # Fix the sign ambiguity of QR so that q is Haar-distributed.
  signs = jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))  # (blocks, d)
  signs = jnp.where(signs == 0, 1.0, signs)
  q = q * signs[:, None, :]
  rows = jnp.swapaxes(q, -1, -2)  # (blocks, d, d): each row a direction
  return rows.reshape(n_blocks * d, d)[:n_rows]  # (n_rows, d)


def draw_projection(rng, n_random_features, d, projection='orthogonal',
                    scaling='norm'):
  """Draws a (n_random_features, d) float32 projection matrix.

  Args:
    rng: a JAX PRNG key.
    n_random_features: m, the number of rows; any positive int (it need not be
      a multiple of d; the last orthogonal block is truncated).
    d: depth of the projected vectors (d_qk of one head).
    projection: 'orthogonal' or 'iid'.
    scaling: 'norm' (chi-distributed row norms) or 'sqrt_d' (all norms sqrt d).

  Returns:
    An array of shape (n_random_features, d).
  """
  check_projection_args(n_random_features, d, projection, scaling)
  return _draw_projection(rng, n_random_features, d, projection, scaling)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _draw_projection(rng, n_random_features, d, projection, scaling):
  rng_dirs, rng_norms = jax.random.split(rng)
  if projection == 'iid':
    w = jax.random.normal(rng_dirs, (n_random_features, d), jnp.float32)
    if scaling == 'norm':
      return w
    unit = w / jnp.linalg.norm(w, axis=-1, keepdims=True)  # (m, d)
    return unit * jnp.sqrt(float(d))
  unit = _orthogonal_rows(rng_dirs, n_random_features, d)  # (m, d)
  if scaling == 'norm':
    # Norms of iid Gaussian d-vectors: chi distribution with d dof.
    norms = jnp.linalg.norm(
        jax.random.normal(rng_norms, (n_random_features, d), jnp.float32),
        axis=-1)  # (m,)
  else:
    norms = jnp.full((n_random_features,), jnp.sqrt(float(d)), jnp.float32)
  return unit * norms[:, None]
