"""FavorSelfAttention's options: one frozen record, checked once.

`FavorSelfAttention(**kwargs)` takes exactly these fields as keywords (gin
binds them by these names) and keeps the record as `layer.options`. The
record holds the options in effect: defaults resolved (None -> the value
named below), and outside train mode the dropout rates are 0 and `redraw`
is 'fixed'. Any value that cannot work is one `checks.ConfigError` line,
raised when the record is built, i.e. when the layer is.

The fields, in four groups:

What trax's ReformerLM passes to an `attention_type`:
  n_heads, d_qk, d_v   heads; depth of one head's queries/keys, values.
  share_qk     one projection for queries and keys (keys are the
               RMS-normalized queries), as tl.LSHSelfAttention's weights.
  causal       each position attends to itself and earlier positions only.
  masked       a second input, a (batch, length) bool mask of valid tokens;
               masked keys leave numerator and denominator.
  output_dropout     dropout on the output (b, l, d_model), one mask per
               (b, d_model) shared along the length, as tl.SelfAttention.
  attention_dropout  each entry of the key features phi(K) (b, h, l, m) is
               dropped: rows stay normalized averages of values and the
               kernel estimate stays unbiased (ops.attention).
  mode         'train', 'eval' or 'predict' (causal decoding, O(1) state).

Random features:
  n_random_features   m, random projections per head (any positive int).
  feature_map  'softmax' (FAVOR+ positive features), 'relu', 'elu' or
               'exp'; the signed 'softmax_trig' is refused (its
               denominators can vanish; trax_favor.ops keeps it).
  projection   'orthogonal' (block-orthogonal rows) or 'iid'.
  projection_scaling  'sqrt_d' (every row of norm sqrt(d): 4-31% lower
               approximation error than 'norm' at every m and logit scale
               measured, docs/results.md) or 'norm' (chi-distributed norms,
               as the authors' code draws); a loaded checkpoint keeps the
               projection it was trained with either way.
  redraw       'fixed' (drawn at init) or 'step' (a new projection from the
               layer rng at every train-mode call; the reversible recompute
               sees the same rng, hence the same matrix).
  numerical_stabilizer  a floor in [0, 1) added to the features, relative
               to each vector's largest feature (None: 1e-6; a bool is
               refused).

Lengths:
  chunk_size   causal only: tokens per chunk of the causal form (None: 128,
               or 64 for relu/elu, ops.attention.default_chunk_size).
  block_size   longer inputs are attended in blocks whose features are
               recomputed in the backward pass (no (length, m) tensor is
               stored); None: at full length; 'auto': 512 on a CPU, None
               elsewhere (ops.default_block_size).
  sequence_axis  None, or a mesh axis name: inside jax.shard_map the input
               is this device's shard of the length (layers/sequence_axis.py);
               not with relative_position or predict.

Positions (layers/relative.py):
  relative_position  None, or 'bias' (old name 'fft'): a learned relative
               bias per head, attention exact in O(L D), O(D) decoding state.
  max_relative_distance  with relative_position only: distances clipped at
               this many tokens each side (None: 128).
  qk_normalization  None, 'fixed' or 'learned': queries and keys at unit L2
               norm times a temperature.
  rotary       rotary position embeddings on queries and keys before the
               features (ops/rotary.py); predict mode carries the position.
  rotary_fraction, rotary_base  with rotary only: share of d_qk rotated
               (None: 1.0), wavelength base (None: 10000).
"""

import dataclasses
from typing import Any, Optional

from trax_favor import checks
from trax_favor.layers import relative
from trax_favor.layers import sequence_axis as sequence_axis_lib
from trax_favor.ops import feature_maps
from trax_favor.ops import random_features

REDRAW_POLICIES = ('fixed', 'step')
DEFAULT_NUMERICAL_STABILIZER = 1e-6


@dataclasses.dataclass(frozen=True)
class FavorOptions:
  """FavorSelfAttention's options in effect (see the module docstring)."""
  n_heads: int = 2
  d_qk: int = 64
  d_v: int = 64
  share_qk: bool = False
  causal: bool = False
  masked: bool = False
  output_dropout: float = 0.0
  attention_dropout: float = 0.0
  mode: str = 'train'
  n_random_features: int = 256
  feature_map: str = 'softmax'
  projection: str = 'orthogonal'
  projection_scaling: str = 'sqrt_d'
  redraw: str = 'fixed'
  numerical_stabilizer: Optional[float] = None
  chunk_size: Optional[int] = None
  block_size: Any = 'auto'
  sequence_axis: Optional[str] = None
  relative_position: Optional[str] = None
  max_relative_distance: Optional[int] = None
  qk_normalization: Optional[str] = None
  rotary: bool = False
  rotary_fraction: Optional[float] = None
  rotary_base: Optional[float] = None

  @classmethod
  def from_arguments(cls, arguments):
    """The record of a constructor's `locals()`: its fields by name."""
    return cls(**{field.name: arguments[field.name]
                  for field in dataclasses.fields(cls)})

  def __post_init__(self):
    self._check_heads_and_lengths()
    self._check_features()
    relative.check_options(self.relative_position, self.qk_normalization,
                           self.max_relative_distance)
    fraction, base = relative.check_rotary(
        self.rotary, self.rotary_fraction, self.rotary_base, self.d_qk)
    resolved = dict(
        sequence_axis=sequence_axis_lib.check_option(
            self.sequence_axis, self.mode, 'FavorSelfAttention',
            self.relative_position),
        numerical_stabilizer=float(
            DEFAULT_NUMERICAL_STABILIZER if self.numerical_stabilizer is None
            else self.numerical_stabilizer),
        rotary_fraction=fraction, rotary_base=base)
    if self.relative_position and self.max_relative_distance is None:
      resolved['max_relative_distance'] = (
          relative.DEFAULT_MAX_RELATIVE_DISTANCE)
    if self.mode != 'train':  # no dropout, no redraw outside training
      resolved.update(output_dropout=0.0, attention_dropout=0.0,
                      redraw='fixed')
    for name, value in resolved.items():
      object.__setattr__(self, name, value)  # frozen: set once, here

  def _check_heads_and_lengths(self):
    checks.check_positive_int(n_heads=self.n_heads, d_qk=self.d_qk,
                              d_v=self.d_v)
    if self.chunk_size is not None and not self.causal:
      raise checks.ConfigError(
          'chunk_size applies to causal attention only; got '
          f'chunk_size={self.chunk_size!r} with causal=False.')
    if self.chunk_size is not None:
      checks.check_positive_int(chunk_size=self.chunk_size)
    if self.block_size not in (None, 'auto'):
      checks.check_positive_int(block_size=self.block_size)
    checks.check_rate(output_dropout=self.output_dropout,
                      attention_dropout=self.attention_dropout)
    checks.check_mode(self.mode)
    if self.mode == 'predict' and not self.causal:
      raise checks.ConfigError('mode=\'predict\' (incremental decoding) needs '
                               'causal=True.')

  def _check_features(self):
    if self.redraw not in REDRAW_POLICIES:
      raise checks.ConfigError(f'redraw must be one of {REDRAW_POLICIES}, got '
                               f'{self.redraw!r}.')
    if not feature_maps.get_feature_map(self.feature_map).non_negative:
      allowed = sorted(name for name, fmap in feature_maps.FEATURE_MAPS.items()
                       if fmap.non_negative)
      raise checks.ConfigError(
          f'feature_map={self.feature_map!r} has signed features, whose '
          'denominators can vanish (relative errors in the thousands at '
          'logit std 1, docs/results.md): the layer takes only the '
          f'non-negative maps {allowed}; trax_favor.ops keeps it for '
          'comparisons.')
    stabilizer = self.numerical_stabilizer
    if stabilizer is not None and (
        isinstance(stabilizer, bool)
        or not isinstance(stabilizer, (int, float))
        or not 0 <= stabilizer < 1):  # NaN fails too
      raise checks.ConfigError(
          'numerical_stabilizer must be a float in [0, 1) (a floor relative '
          f'to the largest feature), got {stabilizer!r}.')
    random_features.check_projection_args(
        self.n_random_features, self.d_qk, self.projection,
        self.projection_scaling)
