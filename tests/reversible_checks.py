"""Checks shared by the model tests of reversible models (ReformerLM,
PerformerLM): reversible and plain gradients in one program, a
finite-difference check, steep relative-bias tables, a weights-only load
for decoding that must equal the transferred model."""

import jax
import jax.numpy as jnp
import numpy as np
from trax.layers import reversible


def gradients(loss, monkeypatch):
  """A jit of w -> (loss, its reversible gradient, its plain autodiff
  gradient): one compiled program (the two share their forward pass's
  code, so it compiles in about two thirds of the time of two)."""
  def both(w):
    value, g_reversible = jax.value_and_grad(loss)(w)
    with monkeypatch.context() as patch:  # read while tracing
      patch.setattr(reversible.ReversibleLayer, 'has_backward',
                    property(lambda self: False))
      g_plain = jax.grad(loss)(w)
    return value, g_reversible, g_plain
  return jax.jit(both)


def check_finite_differences(loss, weights, gradient, eps=1e-2):
  """The gradient's derivative along a random unit direction equals the
  central difference of the loss."""
  leaves, treedef = jax.tree.flatten(weights)
  rng = np.random.default_rng(2)
  direction = [rng.standard_normal(np.shape(w)).astype(np.float32)
               for w in leaves]
  norm = np.sqrt(sum(np.sum(d ** 2) for d in direction))
  direction = [d / norm for d in direction]
  analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(gradient, direction))
  shift = lambda s: jax.tree.unflatten(
      treedef, [w + s * d for w, d in zip(leaves, direction)])
  numeric = (float(loss(shift(eps))) - float(loss(shift(-eps)))) / (2 * eps)
  assert abs(analytic) > 1e-2
  np.testing.assert_allclose(numeric, analytic, rtol=2e-2)


def steep(weights):
  """Weights with every relative-bias table (h, D + 1) = (2, 7) set to a
  random table within +-10 nats: what a trained model may hold."""
  assert [np.shape(w) for w in jax.tree.leaves(weights)].count((2, 7)) == 1
  rng = np.random.default_rng(8)
  return jax.tree.map(
      lambda w: (jnp.asarray(rng.uniform(-10, 10, w.shape), jnp.float32)
                 if w.shape == (2, 7) else w), weights)


def check_weights_only_load(loaded, path, batch, expected):
  """Trax's weights-only load of checkpoint `path` into the predict-mode
  model `loaded`, then trax_favor.load_projections: its weights and state
  (projections included) equal `expected`'s, leaf for leaf."""
  import trax_favor  # pylint: disable=g-import-not-at-top
  from trax import shapes  # pylint: disable=g-import-not-at-top
  loaded.init_from_file(path, weights_only=True,
                        input_signature=shapes.ShapeDtype((batch, 1),
                                                          np.int32))
  trax_favor.load_projections(loaded, path)
  assert (jax.tree.structure((loaded.weights, loaded.state))
          == jax.tree.structure((expected.weights, expected.state)))
  for a, b in zip(jax.tree.leaves((loaded.weights, loaded.state)),
                  jax.tree.leaves((expected.weights, expected.state))):
    np.testing.assert_array_equal(a, b)
