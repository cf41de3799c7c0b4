"""FavorSelfAttention: FAVOR+ self-attention as a Trax layer.

A drop-in `attention_type` for `trax.models.ReformerLM` (it accepts exactly the
keywords Reformer passes: n_heads, d_qk, d_v, causal, masked, output_dropout,
attention_dropout, mode) whose weights have the structure of
`tl.SelfAttention`'s (or `tl.LSHSelfAttention`'s with share_qk=True), so a
trained exact-attention Reformer's weights load into it unchanged.

Weights (per head, stacked on a leading head axis h):
  w_q (h, d_model, d_qk), [w_k (h, d_model, d_qk)], w_v (h, d_model, d_v),
  w_o (h, d_v, d_model).
State:
  train / eval:  projection (m, d_qk), the fixed random projection.
  predict:       (projection, (kv (b, h, m', d_v), z (b, h, m'), ref (b, h))),
                 the causal prefix sums: O(1) in the decoded length; with
                 relative positions also the last D keys (ops/rpe.py).

The fixed projection is drawn from the init rng, so every layer draws its own.
It is state, not a weight: trax's `init_from_file(..., weights_only=True)`
restores it from the file's state where the file has one (compat's
`init_from_file_projections`); `transfer_projections`, `load_projections`
and `redraw_projections` set it explicitly (see `projections.py`). A layer
whose weights were loaded without it refuses to run, in every mode, with
one line naming those calls (see `projection_state.py`), instead of running
with fresh random features.
"""

import jax
import jax.numpy as jnp
from trax.layers.research import efficient_attention

from trax_favor import checks
from trax_favor.ops import attention
from trax_favor.ops import favor
from trax_favor.ops import feature_maps
from trax_favor.layers import options as layer_options
from trax_favor.layers import projection_state
from trax_favor.layers import relative
from trax_favor.layers import sequence_axis as sequence_axis_lib
from trax_favor.ops import random_features
from trax_favor.ops import rpe

def _output_dropout(rng, x, rate):
  """Inverted dropout on (b, l, d), one keep-mask per (b, d) for all of l."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0], 1, x.shape[2]))
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class FavorSelfAttention(projection_state.ProjectionStateLayer):
  """Multi-head self-attention by FAVOR+ random features (Performer)."""

  def __init__(self, n_heads=2, d_qk=64, d_v=64, share_qk=False,
               causal=False, masked=False, output_dropout=0.0,
               attention_dropout=0.0, mode='train', n_random_features=256,
               feature_map='softmax', projection='orthogonal',
               projection_scaling='sqrt_d', redraw='fixed',
               numerical_stabilizer=None, chunk_size=None, block_size='auto',
               relative_position=None, max_relative_distance=None,
               qk_normalization=None, rotary=False, rotary_fraction=None,
               rotary_base=None, sequence_axis=None):
    """Builds the layer. Every argument is a field of `FavorOptions`
    (layers/options.py), which documents, checks and resolves it; the first
    nine are those trax's ReformerLM passes to an attention_type."""
    options = layer_options.FavorOptions.from_arguments(locals())
    super().__init__(n_in=(2 if masked else 1), n_out=1)
    self._options = options
    self._mode = options.mode  # read by ProjectionStateLayer
    self._feature_map = feature_maps.get_feature_map(options.feature_map)

  @property
  def options(self):
    """The options in effect, a frozen `FavorOptions`."""
    return self._options

  @property
  def sequence_axis(self):
    """The mesh axis the length may be split over (None: never)."""
    return self._options.sequence_axis

  # -- initialization ---------------------------------------------------------

  def _kernel_init(self, rng, shape):
    # Glorot-uniform over the total width of all heads, as tl.SelfAttention.
    lim = jnp.sqrt(6.0 / (shape[0] + shape[1] * self._options.n_heads))
    return jax.random.uniform(rng, shape, jnp.float32, -lim, lim)

  def draw_projection(self, rng):
    """A fresh (n_random_features, d_qk) projection from `rng`."""
    opt = self._options
    return random_features.draw_projection(
        rng, opt.n_random_features, opt.d_qk, opt.projection,
        opt.projection_scaling)

  def _split(self, inputs):
    """(x, mask or None) of the layer's inputs (or their signatures)."""
    if not self._options.masked:
      return inputs, None
    if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
      raise checks.ConfigError('FavorSelfAttention(masked=True) takes two '
                               'inputs, (x, mask), but was given one.')
    return tuple(inputs)

  def init_weights_and_state(self, input_signature):
    opt = self._options
    x_sig, _ = self._split(input_signature)
    if len(x_sig.shape) != 3:
      raise checks.ConfigError(
          'FavorSelfAttention expects inputs of shape (batch, '
          f'length, d_model), got {tuple(x_sig.shape)}.')
    batch, d_model = int(x_sig.shape[0]), int(x_sig.shape[-1])

    def head_weights(rng):  # same rng use as tl.SelfAttention, per head
      rng_q, rng_k, rng_v, rng_o = jax.random.split(rng, 4)
      w_q = self._kernel_init(rng_q, (d_model, opt.d_qk))
      w_v = self._kernel_init(rng_v, (d_model, opt.d_v))
      w_o = self._kernel_init(rng_o, (d_model, opt.d_v)).T
      if opt.share_qk:
        return (w_q, w_v, w_o)
      return (w_q, self._kernel_init(rng_k, (d_model, opt.d_qk)), w_v, w_o)

    head_rngs = jax.random.split(self.rng, opt.n_heads)
    # each (h, ...): the projections, then the options' weights
    self.weights = (jax.vmap(head_weights)(head_rngs)
                    + relative.extra_weights(opt))
    projection = self.draw_projection(jax.random.fold_in(self.rng, 1))
    if self._mode == 'predict':
      m_out = opt.n_random_features * self._feature_map.features_per_row
      if opt.relative_position:
        empty = rpe.empty_state((batch, opt.n_heads), m_out, opt.d_v,
                                opt.max_relative_distance)
      else:
        empty = favor.empty_state((batch, opt.n_heads), m_out, opt.d_v)
      position = (jnp.zeros((), jnp.int32),) if opt.rotary else ()
      self.state = (projection, tuple(empty) + position)
    else:
      self.state = projection
    self.remember_drawn(projection)  # see projection_state.py

  # -- forward ----------------------------------------------------------------

  def forward(self, inputs):
    opt = self._options
    x, mask = self._split(inputs)
    n_projections = 3 if opt.share_qk else 4
    if opt.share_qk:
      w_q, w_v, w_o = self.weights[:3]
      w_k = None
    else:
      w_q, w_k, w_v, w_o = self.weights[:4]
    extra = list(self.weights[n_projections:])  # [bias], [log temperature]
    if x.ndim != 3 or x.shape[-1] != w_q.shape[1]:
      raise checks.ConfigError(
          f'FavorSelfAttention with d_model={w_q.shape[1]} '
          'expects inputs of shape (batch, length, '
          f'{w_q.shape[1]}), got {tuple(x.shape)}.')
    self.check_projection()  # at trace time: a Python-side mark
    if mask is not None and mask.shape != x.shape[:2]:
      raise checks.ConfigError(
          f'mask must have shape (batch, length) = {x.shape[:2]}, '
          f'got {tuple(mask.shape)}.')
    rng_proj, rng_attn, rng_out = jax.random.split(self.rng, 3)

    q = jnp.einsum('bld,hdk->bhlk', x, w_q)  # (b, h, l, d_qk)
    if opt.share_qk:
      k = efficient_attention.length_normalized(q)  # as tl.LSHSelfAttention
    else:
      k = jnp.einsum('bld,hdk->bhlk', x, w_k)  # (b, h, l, d_qk)
    v = jnp.einsum('bld,hdv->bhlv', x, w_v)  # (b, h, l, d_v)
    bias = extra.pop(0) if opt.relative_position else None
    t = None
    if opt.qk_normalization:
      t = relative.temperature(opt.qk_normalization,
                               extra.pop(0) if extra else None, opt.d_qk)
      q, k = relative.normalize(q, t), relative.normalize(k, t)

    start = sequence_axis_lib.offset(opt.sequence_axis, x.shape[1])
    if self._mode == 'predict':
      projection, decode_state = self.state
      if opt.rotary:
        start, decode_state = decode_state[-1], decode_state[:-1]
    else:
      projection, decode_state = self.state, None
    if opt.rotary:
      q, k = relative.rotate(q, k, start, opt.rotary_fraction,
                             opt.rotary_base)
    if opt.redraw == 'step':
      projection = self.draw_projection(rng_proj)
    if projection.shape != (opt.n_random_features, opt.d_qk):
      raise checks.ConfigError(
          f'the projection in state has shape {projection.shape},'
          ' expected (n_random_features, d_qk) = '
          f'{(opt.n_random_features, opt.d_qk)}.')

    key_mask = None if mask is None else mask[:, None, :].astype(jnp.bool_)
    if decode_state is not None:
      decode_state = self._checked_decode_state(decode_state, q.shape[0])
    if bias is not None:
      o = self.attend_relative(q, k, v, projection, bias, t, key_mask,
                               rng_attn, decode_state)
    else:
      o = self.attend(q, k, v, projection, decode_state, key_mask, rng_attn)
    if self._mode == 'predict' and opt.rotary:  # the position travels on
      self.state = (self.state[0], self.state[1] + (start + x.shape[1],))
    out = jnp.einsum('bhlv,hvd->bld', o, w_o)  # (b, l, d_model)
    if opt.output_dropout:
      out = _output_dropout(rng_out, out, opt.output_dropout)
    return out

  def attend(self, q, k, v, projection, decode_state, key_mask, rng):
    """The attention core: q, k (b, h, l, d_qk), v (b, h, l, d_v) -> o."""
    return self._favor(q, k, v, projection, decode_state, key_mask, rng)

  def attend_relative(self, q, k, v, projection, bias, t, key_mask, rng,
                      decode_state=None):
    """The core with relative positions (see layers/relative.py); t, the
    temperature, is already applied to q and k."""
    del t
    return self._favor(q, k, v, projection, decode_state, key_mask, rng,
                       bias)

  def _favor(self, q, k, v, projection, decode_state, key_mask, rng,
             bias=None):
    """ops.favor_attention with the layer's options (and a relative bias);
    in predict mode the final state becomes the layer's."""
    opt = self._options
    common = dict(feature_map=opt.feature_map, key_mask=key_mask,
                  numerical_stabilizer=opt.numerical_stabilizer,
                  attention_dropout=opt.attention_dropout, rng=rng,
                  block_size=opt.block_size,
                  sequence_axis=sequence_axis_lib.bound(opt.sequence_axis))
    if bias is not None:
      common.update(relative_bias=bias,
                    max_relative_distance=opt.max_relative_distance)
    if not opt.causal:
      return attention.favor_attention(q, k, v, projection, **common)
    o, final = attention.favor_attention(
        q, k, v, projection, causal=True, initial_state=decode_state,
        chunk_size=opt.chunk_size, **common)  # (b, h, l, d_v)
    if self._mode == 'predict':
      self.state = (projection, tuple(final))
    return o

  def _checked_decode_state(self, decode_state, batch):
    state = (rpe.RelativeState if self._options.relative_position
             else favor.KeySums)(*decode_state)
    if state.ref.shape != (batch, self._options.n_heads):
      raise checks.ConfigError(
          f'predict-mode state was initialized for batch size '
          f'{state.ref.shape[0]}, but the input has batch size {batch}; '
          'init the predict-mode model with the decoding batch size.')
    return state
