"""The identity-attention baseline of the benchmarks."""

import jax
import numpy as np
import pytest
from trax import shapes

from benchmarks import baselines
from trax_favor import FavorSelfAttention


def _x(batch=2, length=12, d_model=16):
  return np.random.default_rng(0).standard_normal(
      (batch, length, d_model)).astype(np.float32)


def _init(layer, x):
  layer.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
  return layer


def test_identity_attention_outputs_projected_values_and_rejects_options():
  """o = v through the layer's own weights; dropout used; no mask taken;
  its projection has n_random_features rows."""
  x = _x()
  favor = _init(FavorSelfAttention(n_heads=2, d_qk=8, d_v=8), x)
  identity = _init(baselines.IdentityAttention(n_heads=2, d_qk=8, d_v=8), x)
  identity.weights = favor.weights  # the same weight tree
  w_q, w_k, w_v, w_o = identity.weights
  del w_q, w_k
  expected = np.einsum('bld,hdv,hvD->blD', x, w_v, w_o)  # o = v per head
  np.testing.assert_allclose(identity(x), expected, rtol=1e-5, atol=1e-5)
  dropped = _init(baselines.IdentityAttention(
      n_heads=2, d_qk=8, d_v=8, attention_dropout=0.5), x)
  dropped.weights = favor.weights
  # Dropping half the entries of o = v changes the train-mode output ...
  assert np.max(np.abs(dropped(x) - expected)) > 1e-3
  evaluated = _init(baselines.IdentityAttention(
      n_heads=2, d_qk=8, d_v=8, attention_dropout=0.5, mode='eval'), x)
  evaluated.weights = favor.weights  # ... and nothing in eval mode.
  np.testing.assert_allclose(evaluated(x), expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='attention_dropout'):
    baselines.IdentityAttention(attention_dropout=1.0)
  with pytest.raises(ValueError, match='masked=True is refused'):
    baselines.IdentityAttention(masked=True)
  held = _init(baselines.IdentityAttention(n_heads=2, d_qk=8, d_v=8,
                                           n_random_features=24), x)
  assert held.projection_matrix.shape == (24, 8)  # honours n_random_features
