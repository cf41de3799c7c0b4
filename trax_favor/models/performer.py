"""PerformerLM: a reversible language model with FAVOR+ attention.

The model is assembled from Trax's own parts, so it is a Reformer in every
respect but the attention layer:

  tokens (b, l)
    -> [ShiftRight if causal] -> Embedding -> Dropout -> positional encoding
    -> Dup -> ReversibleSerial(n_layers x [
         ReversibleHalfResidual(LayerNorm, attention) , ReversibleSwap,
         ReversibleHalfResidual(feed-forward, chunked by ff_chunk_size),
         ReversibleSwap])
    -> Concatenate -> LayerNorm -> Dropout -> Dense(vocab_size)
  logits (b, l, vocab_size)

Nothing here re-implements those pieces: the blocks come from
`tl.ReversibleHalfResidual` / `tl.ReversibleSwap` / `tl.ReversibleSerial`, the
(chunked) feed-forward from `FeedForwardWithOptions` in trax's
configurable_transformer, the positional encodings (learned, or axial for
images) are trax's as its `PositionalEncoder` builds them, plus a clear
error when predict mode runs past their table. The attention layer is built directly
with ReformerLM's keywords (trax's `ApplyAttentionLayer` would retry another
signature on any TypeError, hiding errors raised inside the layer).
With causal=True the model computes exactly what `trax.models.ReformerLM`
computes, with the same weight tree, for any attention type (tested); the
differences are the FAVOR+ default, Trax naming (`d_qk`, `d_v`), a `causal`
switch for bidirectional (masked-LM) models, and argument checks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import trax.layers as tl
from trax.models.research import configurable_transformer as ct

from trax_favor import checks
from trax_favor.layers import FavorSelfAttention
from trax_favor.layers import sequence_axis as sequence_axis_lib


def _attention_types(attention_type, n_layers):
  """One attention class per layer, cycling a list as ReformerLM does."""
  types = (list(attention_type) if isinstance(attention_type, (list, tuple))
           else [attention_type])
  if not types or n_layers % len(types):
    raise checks.ConfigError(
        f'attention_type: a list of {len(types)} attention types does not '
        f'divide n_layers={n_layers}; ReformerLM cycles the list over the '
        'layers, so its length must divide n_layers.')
  for t in types:
    if not callable(t):
      raise checks.ConfigError(f'attention_type: {t!r} is not a layer class.')
  return [types[i % len(types)] for i in range(n_layers)]


class _PositionTable:
  """Mixin for trax's position tables: in predict mode a call that would run
  past the table (max_len positions) is refused with one clear error (trax
  would fail deep inside JAX, or clamp and give later tokens the last
  position); with a sequence axis bound (inside shard_map), this shard's
  rows of the table are added (`shard_positions`). Weights and state are
  trax's, so checkpoints and the other modes are unchanged."""

  def forward(self, x):
    fed = self.state
    if self._mode == 'predict' and not isinstance(fed, jax.core.Tracer):
      if int(fed) + x.shape[1] > self._table_size:
        raise checks.ConfigError(
            f'predict mode: {int(fed)} tokens fed before and {x.shape[1]} '
            f'in this call exceed max_len={self._table_size}; start a new '
            'sequence (a fresh model state) or build the model with a '
            'larger max_len.')
    if sequence_axis_lib.bound(self._sequence_axis) is None:
      return super().forward(x)
    return x + self.shard_positions(x)  # (b, l, d) at global positions

  @property
  def sequence_axis(self):
    return self._sequence_axis

  def check_sequence_length(self, n_tokens):
    """One ConfigError if a whole sequence of n_tokens does not fit the
    table (a dynamic slice would clamp: later tokens, earlier positions)."""
    if n_tokens > self._table_size:
      raise checks.ConfigError(
          f'{self._name}: the sequence has {n_tokens} tokens, more than the '
          f'{self._table_size} positions of its table (max_len).')

  def _read(self, table, local_length):
    """Rows offset .. offset + l - 1 of a table (1, table_size, d)."""
    n_shards = sequence_axis_lib.n_shards(self._sequence_axis)
    self.check_sequence_length(n_shards * local_length)
    start = sequence_axis_lib.offset(self._sequence_axis, local_length)
    return jax.lax.dynamic_slice_in_dim(table, start, local_length, axis=1)

  def _dropout_multiplier(self, noise_shape):
    """trax's position dropout (mask shared along the length, so every
    shard draws the same one from the same rng), or 1."""
    if not self._dropout:
      return 1.0
    keep = jax.random.bernoulli(self.rng, 1.0 - self._dropout, noise_shape)
    return keep.astype(np.float32) / (1.0 - self._dropout)


class PositionalEncoding(_PositionTable, tl.PositionalEncoding):
  """trax's learned positions, with the predict-mode limit; with
  sequence_axis bound, the table is read at the shard's offset."""

  def __init__(self, max_len, dropout, mode, sequence_axis=None):
    super().__init__(max_len=max_len, dropout=dropout, mode=mode)
    self._name = 'PositionalEncoding'
    self._table_size = max_len
    self._sequence_axis = sequence_axis_lib.check_option(
        sequence_axis, mode, 'PositionalEncoding')

  def shard_positions(self, x):
    """(1, l, d): this shard's rows of the table, with trax's dropout."""
    table = self.weights
    table = table[None] if table.ndim < 3 else table  # (1, max_len, d)
    rows = self._read(table, x.shape[1])  # (1, l, d)
    return rows * self._dropout_multiplier((1, 1, rows.shape[-1]))


class AxialPositionalEncoding(_PositionTable, tl.AxialPositionalEncoding):
  """trax's axial positions (images), with the predict-mode limit; with
  sequence_axis bound, the flattened table is read at the shard's offset."""

  def __init__(self, shape, d_embs, dropout, mode, sequence_axis=None):
    super().__init__(shape=shape, d_embs=d_embs, dropout=dropout, mode=mode,
                     dropout_broadcast_dims=tuple(range(1, len(shape) + 1)))
    self._name = 'AxialPositionalEncoding'
    self._table_size = int(np.prod(shape))
    self._sequence_axis = sequence_axis_lib.check_option(
        sequence_axis, mode, 'AxialPositionalEncoding')

  def check_sequence_length(self, n_tokens):
    """One ConfigError unless a whole sequence of n_tokens fills the table
    exactly (as trax's reshape requires)."""
    if n_tokens != self._table_size:
      raise checks.ConfigError(
          f'AxialPositionalEncoding: the sequence has {n_tokens} tokens; '
          f'pos_axial_shape {self._shape} needs exactly {self._table_size}.')

  def shard_positions(self, x):
    """(b, l, d): this shard's rows of the table, with trax's dropout
    (drawn at trax's shape (b, 1, .., 1, d), so the unsplit mask)."""
    shape = (1,) + tuple(self._shape)
    table = jnp.concatenate(
        [jnp.broadcast_to(w, shape + (w.shape[-1],)) for w in self.weights],
        -1)  # (1, *pos_axial_shape, d)
    table = table.reshape(1, self._table_size, -1)  # (1, prod(shape), d)
    rows = self._read(table, x.shape[1])  # (1, l, d)
    if not self._dropout:
      return rows
    noise = (x.shape[0],) + (1,) * len(self._shape) + (rows.shape[-1],)
    multiplier = self._dropout_multiplier(noise)  # (b, 1, .., 1, d)
    return rows * multiplier.reshape(x.shape[0], 1, -1)  # (b, 1, d) mask


POS_TYPES = (None, 'axial', 'none')


@tl.assert_shape('...d->...d')  # as trax's PositionalEncoder: same weight tree
def _positional_encoder(max_len, dropout, mode, pos_type, pos_axial_shape,
                        pos_d_axial_embs, sequence_axis):
  """trax's positional encodings as its PositionalEncoder builds them for
  pos_type None and 'axial', with the predict-mode limit."""
  if pos_type == 'axial':
    return AxialPositionalEncoding(pos_axial_shape, pos_d_axial_embs,
                                   dropout, mode, sequence_axis)
  return PositionalEncoding(max_len, dropout, mode, sequence_axis)


def _check_axial(pos_axial_shape, pos_d_axial_embs, d_model, max_len):
  if len(pos_axial_shape) != len(pos_d_axial_embs):
    raise checks.ConfigError(
        f'pos_d_axial_embs {pos_d_axial_embs} needs one depth per axis of '
        f'pos_axial_shape {pos_axial_shape}.')
  if sum(pos_d_axial_embs) != d_model:
    raise checks.ConfigError(
        f'pos_d_axial_embs {pos_d_axial_embs} must sum to d_model={d_model}.')
  n_positions = 1
  for n in pos_axial_shape:
    n_positions *= n
  if n_positions > max_len:
    raise checks.ConfigError(
        f'pos_axial_shape {pos_axial_shape} covers {n_positions} positions, '
        f'more than max_len={max_len}.')


def PerformerBlock(d_model, d_ff, d_qk, d_v, n_heads, attention_type,
                   causal, dropout, ff_activation, ff_chunk_size, mode,
                   sequence_axis=None):
  """One reversible block: attention half-residual, then feed-forward.

  The same layers, in the same order, as trax's reformer `DecoderBlock` (so
  weight trees and outputs match ReformerLM's), with `causal` passed through
  instead of fixed to True; sequence_axis, when given, is passed to the
  attention (the feed-forward is position-wise).

  Returns:
    A list of four reversible layers for `tl.ReversibleSerial`.
  """
  split = {} if sequence_axis is None else dict(sequence_axis=sequence_axis)
  attention = attention_type(
      n_heads=n_heads, d_qk=d_qk, d_v=d_v, causal=causal,
      masked=False,  # LM batches have no padding-mask input
      output_dropout=dropout, attention_dropout=dropout, mode=mode, **split)
  feed_forward = ct.FeedForwardWithOptions(
      d_model=d_model, d_ff=d_ff, dropout=dropout, dropout_shared_axes=[-2],
      ff_activation=ff_activation, ff_dropout=dropout,
      ff_chunk_size=ff_chunk_size, ff_use_sru=0, ff_sparsity=0,
      center_layernorm=True, mode=mode, use_bfloat16=False)
  return [
      tl.ReversibleHalfResidual(tl.LayerNorm(), attention_layer=attention,
                                name='ReversibleHalfResidualDecoderAttn'),
      tl.ReversibleSwap(),
      tl.ReversibleHalfResidual(feed_forward,
                                name='ReversibleHalfResidualDecoderFF'),
      tl.ReversibleSwap(),
  ]


def PerformerLM(vocab_size,
                d_model=512,
                d_ff=2048,
                d_qk=64,
                d_v=64,
                n_layers=6,
                n_heads=8,
                dropout=0.1,
                max_len=2048,
                attention_type=FavorSelfAttention,
                causal=True,
                pos_type=None,
                pos_axial_shape=(),
                pos_d_axial_embs=None,
                ff_activation=tl.FastGelu,
                ff_chunk_size=0,
                mode='train',
                sequence_axis=None):
  """Reversible Performer language model (causal or bidirectional).

  Args:
    vocab_size: number of token ids (256 for bytes).
    d_model: depth of each of the two reversible halves.
    d_ff: depth of the feed-forward hidden layer.
    d_qk: depth of one head's queries and keys.
    d_v: depth of one head's values.
    n_layers: number of reversible blocks.
    n_heads: attention heads.
    dropout: dropout rate for embeddings, attention, feed-forward and output.
    max_len: longest sequence the positional encoding covers.
    attention_type: attention class (FavorSelfAttention by default, any Trax
      attention taking ReformerLM's keywords), or a list cycled over the
      layers, e.g. [FavorSelfAttention, local tl.SelfAttention].
    causal: True for a left-to-right LM (inputs are shifted right inside the
      model, attention is causal, predict mode decodes); False for a
      bidirectional model such as a masked LM (no shift).
    pos_type: None (learned positions up to max_len), 'axial', or 'none'
      (no absolute positions: for attention that brings its own, e.g.
      FavorSelfAttention(rotary=True)).
    pos_axial_shape: with 'axial', the shape of one example, e.g. (64, 64, 3)
      for ImageNet64; inputs must then have exactly prod(shape) tokens.
    pos_d_axial_embs: with 'axial', embedding depth per axis, summing to
      d_model.
    ff_activation: feed-forward non-linearity.
    ff_chunk_size: if > 0, run the feed-forward on chunks of this many
      positions (tl.BatchLeadingAxes(tl.Chunk(...)) inside Trax).
    mode: 'train', 'eval' or 'predict'.
    sequence_axis: None, or a mesh axis name: the model can then run with
      the length split over that axis (`models.sequence_parallel`; the
      attention must take `sequence_axis`, as FavorSelfAttention does);
      the shift, positions and attention see the whole sequence. Weights
      are the same as without it. Not in predict mode.

  Returns:
    A Trax layer mapping token ids (b, l) to logits (b, l, vocab_size).
  """
  checks.check_positive_int(vocab_size=vocab_size, d_model=d_model, d_ff=d_ff,
                            d_qk=d_qk, d_v=d_v, n_layers=n_layers,
                            n_heads=n_heads, max_len=max_len)
  checks.check_mode(mode)
  if mode == 'predict' and not causal:
    raise checks.ConfigError('mode=predict decodes left to right: it needs '
                             'causal=True (this model is bidirectional).')
  checks.check_rate(dropout=dropout)
  if pos_type not in POS_TYPES:
    raise checks.ConfigError(
        f'pos_type must be one of {POS_TYPES}, got {pos_type!r}.')
  if pos_type == 'none' and (tuple(pos_axial_shape) or pos_d_axial_embs):
    raise checks.ConfigError(
        "pos_type='none' takes no pos_axial_shape or pos_d_axial_embs.")
  if pos_type == 'axial':
    _check_axial(tuple(pos_axial_shape), tuple(pos_d_axial_embs or ()),
                 d_model, max_len)
  sequence_axis_lib.check_option(sequence_axis, mode, 'PerformerLM')
  if ff_chunk_size < 0:
    raise checks.ConfigError(
        f'ff_chunk_size must be >= 0, got {ff_chunk_size}.')
  blocks = [
      PerformerBlock(d_model=d_model, d_ff=d_ff, d_qk=d_qk, d_v=d_v,
                     n_heads=n_heads, attention_type=layer_attention,
                     causal=causal, dropout=dropout,
                     ff_activation=ff_activation, ff_chunk_size=ff_chunk_size,
                     mode=mode, sequence_axis=sequence_axis)
      for layer_attention in _attention_types(attention_type, n_layers)]
  positional_encoding = [] if pos_type == 'none' else _positional_encoder(
      max_len, dropout, mode, pos_type, tuple(pos_axial_shape),
      tuple(pos_d_axial_embs or ()), sequence_axis)
  shift = (sequence_axis_lib.ShiftRight(sequence_axis, mode) if sequence_axis
           else tl.ShiftRight(mode=mode))  # the same without sequence_axis
  return tl.Serial(
      shift if causal else [],
      tl.Embedding(vocab_size, d_model),
      tl.Dropout(rate=dropout, shared_axes=[-2], mode=mode),
      positional_encoding,
      tl.Dup(),  # the two reversible halves, (b, l, d_model) each
      tl.ReversibleSerial(blocks),
      tl.Concatenate(),  # (b, l, 2 * d_model)
      tl.LayerNorm(),
      tl.Dropout(rate=dropout, shared_axes=[-2], mode=mode),
      # ReformerLM's output layer (a plain Dense with Trax's shape checks).
      tl.SparseDenseWithOptions(vocab_size, d_input=d_model, mode=mode),
  )
