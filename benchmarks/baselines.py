"""Baseline layers for speed and memory benchmarks (not installed).

IdentityAttention: FavorSelfAttention with the attention core replaced by
o = v, the lower bound that the Performer paper plots as its "X" line.
Registered with gin as `benchmarks.IdentityAttention` when this module is
imported (benchmarks/identity.gin does).
"""

import gin
import jax
import jax.numpy as jnp

from trax_favor.layers import FavorSelfAttention


class IdentityAttention(FavorSelfAttention):
  """FavorSelfAttention whose attention core is o = v.

  Same weights and projections (q and k are still computed, and the
  projection of n_random_features rows is drawn and held), so a model built
  with it costs what the FAVOR model costs minus attention. It takes the
  keywords ReformerLM passes plus share_qk and n_random_features; it
  attends to nothing, so it refuses masked=True rather than ignore a mask.
  attention_dropout (train mode) drops entries of o = v, the same kind of
  per-entry mask FAVOR+ draws over its key features.
  """

  def __init__(self, n_heads=2, d_qk=64, d_v=64, share_qk=False,
               causal=False, masked=False, output_dropout=0.0,
               attention_dropout=0.0, mode='train', n_random_features=256):
    if masked:
      raise ValueError('IdentityAttention attends to nothing, so it cannot '
                       'honour a padding mask: masked=True is refused.')
    super().__init__(n_heads=n_heads, d_qk=d_qk, d_v=d_v, share_qk=share_qk,
                     causal=causal, output_dropout=output_dropout,
                     attention_dropout=attention_dropout, mode=mode,
                     n_random_features=n_random_features)

  def attend(self, q, k, v, projection, decode_state, key_mask, rng):
    del projection, decode_state, key_mask  # no attention
    # 0 * (...) keeps the q and k projections in the computation, as XLA
    # does not fold x * 0.0 for floats (x may be NaN or Inf).
    o = v + 0.0 * (q[..., :1] + k[..., :1])  # (b, h, l, d_v)
    rate = self._attention_dropout  # 0 outside train mode
    if rate:
      keep = jax.random.bernoulli(rng, 1.0 - rate, o.shape)
      o = jnp.where(keep, o / (1.0 - rate), 0.0)
    return o


gin.external_configurable(IdentityAttention, module='benchmarks',
                          denylist=['mode'])
