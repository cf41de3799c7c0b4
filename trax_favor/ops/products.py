"""The three matrix products FAVOR is made of, with their own gradients.

The products (`sum_over_keys` A^T B, `apply_sums` A B, `pair_scores`
A B^T) carry their own gradients: each is again one of the three, so every
product in the backward pass has its result in row-major (..., rows,
columns) order. Left to autodiff, XLA's CPU
backend computed two of these gradients as transposed results (then copied
them back) at about half the product rate; with the row maximum of
`feature_maps.row_max` this took bidirectional FAVOR+ at l = 65536 from
3.2x to 1.9x the identity-attention layer (README, Results). They are
reverse-mode only: grad, vjp and their repetitions (second order) work;
jax.jvp and jax.jacfwd raise JAX's custom_vjp error.
"""

import jax
import jax.numpy as jnp


def _product(spec, doc, gradients):
  """einsum(spec, a, b) whose backward pass is `gradients(a, b, g)`."""

  @jax.custom_vjp
  def product(a, b):
    return jnp.einsum(spec, a, b)

  product.defvjp(lambda a, b: (product(a, b), (a, b)),
                 lambda res, g: gradients(*res, g))
  product.__doc__ = doc
  return product


# Each gradient is again one of the three products (names resolved when the
# backward pass is traced, so the order of definition does not matter).
sum_over_keys = _product(
    '...lm,...lv->...mv',
    'A^T B over the key axis: (..., l, m), (..., l, v) -> (..., m, v).',
    lambda a, b, g: (pair_scores(b, g), apply_sums(a, g)))  # g: (..., m, v)
apply_sums = _product(
    '...lm,...mv->...lv', 'A B: (..., l, m), (..., m, v) -> (..., l, v).',
    lambda a, b, g: (pair_scores(g, b), sum_over_keys(a, g)))  # g: (..., l, v)
pair_scores = _product(
    '...lm,...km->...lk', 'A B^T: (..., l, m), (..., k, m) -> (..., l, k).',
    lambda a, b, g: (apply_sums(g, b), sum_over_keys(g, a)))  # g: (..., l, k)
