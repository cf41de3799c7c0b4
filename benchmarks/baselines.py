"""Baseline layers for speed and memory benchmarks (not installed).

IdentityAttention: FavorSelfAttention with the attention core replaced by
o = v, the lower bound that the Performer paper plots as its "X" line.
Registered with gin as `benchmarks.IdentityAttention` when this module is
imported (benchmarks/identity.gin does).

ExactRelativeAttention: exact softmax attention with FavorSelfAttention's
relative positional bias (same table, same clipping), the quality baseline
of relative positions (experiments/rpe_quality.py, benchmarks/exact_rpe.gin).
"""

import gin
import jax
import jax.numpy as jnp
import numpy as np

from trax_favor.layers import FavorSelfAttention
from trax_favor.ops import rpe


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
    rate = self.options.attention_dropout  # 0 outside train mode
    if rate:
      keep = jax.random.bernoulli(rng, 1.0 - rate, o.shape)
      o = jnp.where(keep, o / (1.0 - rate), 0.0)
    return o


gin.external_configurable(IdentityAttention, module='benchmarks',
                          denylist=['mode'])


class ExactRelativeAttention(FavorSelfAttention):
  """Softmax attention, logits q.k / sqrt(d) plus the relative bias b_{j-i}
  (FavorSelfAttention's table and clipping; no query/key normalization):
  an (l, l) matrix, for quality comparisons at short lengths."""

  def __init__(self, n_heads=2, d_qk=64, d_v=64, share_qk=False,
               causal=False, masked=False, output_dropout=0.0,
               attention_dropout=0.0, mode='train', n_random_features=256,
               max_relative_distance=128):
    if mode == 'predict' or masked or attention_dropout:
      raise ValueError('ExactRelativeAttention: no predict mode, mask or '
                       'attention dropout.')
    # The bias weight (see layers/relative.py), attended exactly.
    super().__init__(n_heads=n_heads, d_qk=d_qk, d_v=d_v, share_qk=share_qk,
                     causal=causal, output_dropout=output_dropout, mode=mode,
                     n_random_features=n_random_features,
                     relative_position='bias',
                     max_relative_distance=max_relative_distance)

  def attend_relative(self, q, k, v, projection, bias, t, key_mask, rng,
                      decode_state=None):
    del projection, t, key_mask, rng, decode_state
    length = q.shape[-2]
    i = jnp.arange(length)
    index = rpe.clipped_distances(length, self.options.max_relative_distance,
                                  self.options.causal)[i[None, :] - i[:, None]
                                                + length - 1]  # (l, l)
    logits = jnp.einsum('bhid,bhjd->bhij', q, k) / np.sqrt(q.shape[-1])
    logits = logits + bias[:, index][None]  # (b, h, l, l)
    if self.options.causal:
      logits = jnp.where(i[None, :] <= i[:, None], logits, -jnp.inf)
    return jnp.einsum('bhij,bhjv->bhiv', jax.nn.softmax(logits, -1), v)


gin.external_configurable(ExactRelativeAttention, module='benchmarks',
                          denylist=['mode'])
