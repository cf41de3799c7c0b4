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
from trax_favor.layers import projection_state
from trax_favor.layers import relative
from trax_favor.layers import sequence_axis as sequence_axis_lib
from trax_favor.ops import random_features
from trax_favor.ops import rpe

REDRAW_POLICIES = ('fixed', 'step')


def _output_dropout(rng, x, rate):
  """Inverted dropout on (b, l, d), one keep-mask per (b, d) for all of l."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0], 1, x.shape[2]))
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class FavorSelfAttention(projection_state.ProjectionStateLayer):
  """Multi-head self-attention by FAVOR+ random features (Performer).

  Dropout semantics (train mode only):
    attention_dropout: each entry of the key features phi(K) (b, h, l, m) is
      dropped with this probability (see `ops.attention.favor_attention`):
      rows stay normalized averages of values and the kernel estimate stays
      unbiased; the linear-attention analogue of dropping attention weights,
      without an (l, l) matrix.
    output_dropout: dropout on the layer output (b, l, d_model) with the mask
      shared along the length axis, as tl.SelfAttention does.
  """

  def __init__(self, n_heads=2, d_qk=64, d_v=64, share_qk=False,
               causal=False, masked=False, output_dropout=0.0,
               attention_dropout=0.0, mode='train', n_random_features=256,
               feature_map='softmax', projection='orthogonal',
               projection_scaling='sqrt_d', redraw='fixed',
               numerical_stabilizer=None, chunk_size=None, block_size='auto',
               relative_position=None, max_relative_distance=None,
               qk_normalization=None, rotary=False, rotary_fraction=None,
               rotary_base=None, sequence_axis=None):
    """Builds the layer.

    Args:
      n_heads: number of attention heads.
      d_qk: depth of one head's queries and keys.
      d_v: depth of one head's values.
      share_qk: one projection for queries and keys (keys are the RMS-normalized
        queries), mirroring tl.LSHSelfAttention's weights.
      causal: each position attends to itself and earlier positions only.
      masked: take a second input, a (batch, length) bool mask of valid tokens;
        masked keys are removed from numerator and denominator.
      output_dropout: dropout rate on the output (see class docstring).
      attention_dropout: dropout rate on key features (see class docstring).
      mode: 'train', 'eval' or 'predict' (causal decoding with O(1) state).
      n_random_features: m, random projections per head (any positive int).
      feature_map: 'softmax' (FAVOR+ positive features), 'relu', 'elu' or
        'exp' (see trax_favor.ops.FEATURE_MAPS; the signed 'softmax_trig' is
        refused: its denominators can vanish).
      projection: 'orthogonal' (block-orthogonal rows) or 'iid'.
      projection_scaling: 'sqrt_d' (every row of norm sqrt(d): 4-31% lower
        approximation error than 'norm' at every m and logit scale measured,
        docs/results.md) or 'norm' (chi-distributed row norms: the
        earlier default, as the authors' code draws; a loaded checkpoint
        keeps the projection it was trained with either way).
      redraw: 'fixed' (the projection drawn at init) or 'step' (a new one from
        the layer rng at every train-mode call; the reversible recompute sees
        the same rng, hence the same matrix). Eval and predict always use the
        fixed projection.
      numerical_stabilizer: non-negative floor added to the features,
        relative to each vector's largest feature, so that every denominator
        is at least this times the largest feature product (a relative bias
        of the same order); None: 1e-6.
      chunk_size: causal only: tokens per chunk of the chunked causal form
        (None: 128, or 64 for relu/elu, see
        ops.attention.default_chunk_size); setting it with causal=False is an
        error.
      block_size: inputs longer than this many tokens are attended in blocks
        whose features are recomputed in the backward pass, so no (length,
        n_random_features) tensor is ever stored (see ops/attention.py);
        None computes features at full length (more memory, no recompute);
        'auto': 512 on a CPU, None elsewhere (ops.default_block_size).
      relative_position: None, or 'bias' (old name 'fft'): a learned
        relative positional bias per head, attention exact in O(L D), with
        an O(D) decoding state (see layers/relative.py).
      max_relative_distance: relative_position only: distances are clipped
        at this many tokens, each side (None: 128); an error without
        relative_position.
      qk_normalization: None, 'fixed' or 'learned': queries and keys at unit
        L2 norm times a temperature (see layers/relative.py).
      rotary: rotary position embeddings on queries and keys before the
        features (ops/rotary.py); predict mode carries the position.
      rotary_fraction: rotary only: share of d_qk rotated (None: 1.0).
      rotary_base: rotary only: the wavelength base (None: 10000).
      sequence_axis: None, or a mesh axis name: inside jax.shard_map the
        input is this device's shard of the length (layers/sequence_axis.py,
        docs/sequence_parallel.md); not with relative_position or predict.
    """
    super().__init__(n_in=(2 if masked else 1), n_out=1)
    checks.check_positive_int(n_heads=n_heads, d_qk=d_qk, d_v=d_v)
    if chunk_size is not None and not causal:
      raise checks.ConfigError(
          'chunk_size applies to causal attention only; got '
          f'chunk_size={chunk_size!r} with causal=False.')
    if chunk_size is not None:
      checks.check_positive_int(chunk_size=chunk_size)
    if block_size not in (None, 'auto'):
      checks.check_positive_int(block_size=block_size)
    checks.check_rate(output_dropout=output_dropout,
                      attention_dropout=attention_dropout)
    checks.check_mode(mode)
    if mode == 'predict' and not causal:
      raise checks.ConfigError('mode=\'predict\' (incremental decoding) needs '
                               'causal=True.')
    if redraw not in REDRAW_POLICIES:
      raise checks.ConfigError(f'redraw must be one of {REDRAW_POLICIES}, got '
                               f'{redraw!r}.')
    self._feature_map = feature_maps.get_feature_map(feature_map)
    if not self._feature_map.non_negative:
      allowed = sorted(name for name, fmap in feature_maps.FEATURE_MAPS.items()
                       if fmap.non_negative)
      raise checks.ConfigError(
          f'feature_map={feature_map!r} has signed features, whose '
          'denominators can vanish (relative errors in the thousands at '
          'logit std 1, docs/results.md): the layer takes only the '
          f'non-negative maps {allowed}; trax_favor.ops keeps it for '
          'comparisons.')
    numerical_stabilizer = (1e-6 if numerical_stabilizer is None
                            else numerical_stabilizer)
    if not isinstance(numerical_stabilizer, (int, float)) or (
        numerical_stabilizer < 0):
      raise checks.ConfigError(
          'numerical_stabilizer must be a non-negative float, got '
          f'{numerical_stabilizer!r}.')
    random_features.check_projection_args(n_random_features, d_qk, projection,
                                          projection_scaling)
    relative.check_options(relative_position, qk_normalization,
                           max_relative_distance)
    self._relative_position = relative_position
    self._max_relative_distance = (
        relative.DEFAULT_MAX_RELATIVE_DISTANCE if max_relative_distance is None
        else max_relative_distance)
    self._qk_normalization = qk_normalization
    rotation = relative.check_rotary(rotary, rotary_fraction, rotary_base,
                                     d_qk)
    self._rotary = rotation if rotary else None  # (fraction, base)
    self._sequence_axis = sequence_axis_lib.check_option(
        sequence_axis, mode, 'FavorSelfAttention', relative_position)
    self._n_heads, self._d_qk, self._d_v = n_heads, d_qk, d_v
    self._share_qk, self._causal, self._masked = share_qk, causal, masked
    self._mode = mode
    training = mode == 'train'
    self._output_dropout = output_dropout if training else 0.0
    self._attention_dropout = attention_dropout if training else 0.0
    self._feature_map_name = feature_map
    self._n_random_features = n_random_features
    self._projection = projection
    self._projection_scaling = projection_scaling
    self._redraw = redraw if training else 'fixed'
    self._numerical_stabilizer = float(numerical_stabilizer)
    self._chunk_size = chunk_size
    self._block_size = block_size

  @property
  def sequence_axis(self):
    """The mesh axis the length may be split over (None: never)."""
    return self._sequence_axis

  # -- initialization ---------------------------------------------------------

  def _kernel_init(self, rng, shape):
    # Glorot-uniform over the total width of all heads, as tl.SelfAttention.
    lim = jnp.sqrt(6.0 / (shape[0] + shape[1] * self._n_heads))
    return jax.random.uniform(rng, shape, jnp.float32, -lim, lim)

  def draw_projection(self, rng):
    """A fresh (n_random_features, d_qk) projection from `rng`."""
    return random_features.draw_projection(
        rng, self._n_random_features, self._d_qk, self._projection,
        self._projection_scaling)

  def _split(self, inputs):
    """(x, mask or None) of the layer's inputs (or their signatures)."""
    if not self._masked:
      return inputs, None
    if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
      raise checks.ConfigError('FavorSelfAttention(masked=True) takes two '
                               'inputs, (x, mask), but was given one.')
    return tuple(inputs)

  def init_weights_and_state(self, input_signature):
    x_sig, _ = self._split(input_signature)
    if len(x_sig.shape) != 3:
      raise checks.ConfigError(
          'FavorSelfAttention expects inputs of shape (batch, '
          f'length, d_model), got {tuple(x_sig.shape)}.')
    batch, d_model = int(x_sig.shape[0]), int(x_sig.shape[-1])

    def head_weights(rng):  # same rng use as tl.SelfAttention, per head
      rng_q, rng_k, rng_v, rng_o = jax.random.split(rng, 4)
      w_q = self._kernel_init(rng_q, (d_model, self._d_qk))
      w_v = self._kernel_init(rng_v, (d_model, self._d_v))
      w_o = self._kernel_init(rng_o, (d_model, self._d_v)).T
      if self._share_qk:
        return (w_q, w_v, w_o)
      return (w_q, self._kernel_init(rng_k, (d_model, self._d_qk)), w_v, w_o)

    head_rngs = jax.random.split(self.rng, self._n_heads)
    self.weights = jax.vmap(head_weights)(head_rngs) + relative.extra_weights(
        self._relative_position, self._qk_normalization,
        self._max_relative_distance, self._causal, self._n_heads,
        self._d_qk)  # each (h, ...): projections, then the options' weights
    projection = self.draw_projection(jax.random.fold_in(self.rng, 1))
    if self._mode == 'predict':
      m_out = self._n_random_features * self._feature_map.features_per_row
      if self._relative_position:
        empty = rpe.empty_state((batch, self._n_heads), m_out, self._d_v,
                                self._max_relative_distance)
      else:
        empty = favor.empty_state((batch, self._n_heads), m_out, self._d_v)
      position = (jnp.zeros((), jnp.int32),) if self._rotary else ()
      self.state = (projection, tuple(empty) + position)
    else:
      self.state = projection
    self.remember_drawn(projection)  # see projection_state.py

  # -- forward ----------------------------------------------------------------

  def forward(self, inputs):
    x, mask = self._split(inputs)
    n_projections = 3 if self._share_qk else 4
    if self._share_qk:
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
    if self._share_qk:
      k = efficient_attention.length_normalized(q)  # as tl.LSHSelfAttention
    else:
      k = jnp.einsum('bld,hdk->bhlk', x, w_k)  # (b, h, l, d_qk)
    v = jnp.einsum('bld,hdv->bhlv', x, w_v)  # (b, h, l, d_v)
    bias = extra.pop(0) if self._relative_position else None
    t = None
    if self._qk_normalization:
      t = relative.temperature(self._qk_normalization,
                               extra.pop(0) if extra else None, self._d_qk)
      q, k = relative.normalize(q, t), relative.normalize(k, t)

    start = sequence_axis_lib.offset(self._sequence_axis, x.shape[1])
    if self._mode == 'predict':
      projection, decode_state = self.state
      if self._rotary:
        start, decode_state = decode_state[-1], decode_state[:-1]
    else:
      projection, decode_state = self.state, None
    if self._rotary:
      q, k = relative.rotate(q, k, start, *self._rotary)
    if self._redraw == 'step':
      projection = self.draw_projection(rng_proj)
    if projection.shape != (self._n_random_features, self._d_qk):
      raise checks.ConfigError(
          f'the projection in state has shape {projection.shape},'
          ' expected (n_random_features, d_qk) = '
          f'{(self._n_random_features, self._d_qk)}.')

    key_mask = None if mask is None else mask[:, None, :].astype(jnp.bool_)
    if decode_state is not None:
      decode_state = self._checked_decode_state(decode_state, q.shape[0])
    if bias is not None:
      o = self.attend_relative(q, k, v, projection, bias, t, key_mask,
                               rng_attn, decode_state)
    else:
      o = self.attend(q, k, v, projection, decode_state, key_mask, rng_attn)
    if self._mode == 'predict' and self._rotary:  # the position travels on
      self.state = (self.state[0], self.state[1] + (start + x.shape[1],))
    out = jnp.einsum('bhlv,hvd->bld', o, w_o)  # (b, l, d_model)
    if self._output_dropout:
      out = _output_dropout(rng_out, out, self._output_dropout)
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
    common = dict(feature_map=self._feature_map_name, key_mask=key_mask,
                  numerical_stabilizer=self._numerical_stabilizer,
                  attention_dropout=self._attention_dropout, rng=rng,
                  block_size=self._block_size,
                  sequence_axis=sequence_axis_lib.bound(self._sequence_axis))
    if bias is not None:
      common.update(relative_bias=bias,
                    max_relative_distance=self._max_relative_distance)
    if not self._causal:
      return attention.favor_attention(q, k, v, projection, **common)
    o, final = attention.favor_attention(
        q, k, v, projection, causal=True, initial_state=decode_state,
        chunk_size=self._chunk_size, **common)  # (b, h, l, d_v)
    if self._mode == 'predict':
      self.state = (projection, tuple(final))
    return o

  def _checked_decode_state(self, decode_state, batch):
    state = (rpe.RelativeState if self._relative_position
             else favor.KeySums)(*decode_state)
    if state.ref.shape != (batch, self._n_heads):
      raise checks.ConfigError(
          f'predict-mode state was initialized for batch size '
          f'{state.ref.shape[0]}, but the input has batch size {batch}; '
          'init the predict-mode model with the decoding batch size.')
    return state
