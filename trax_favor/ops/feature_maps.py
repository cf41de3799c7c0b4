"""Kernel feature maps phi(x) for FAVOR attention, kept in a registry.

Every map turns per-head vectors x (..., l, d) and a projection w (m, d) into
features in *factored* form:

    phi(x) = features * exp(log_scale)[..., None]

with `features` of shape (..., l, m_out) and `log_scale` of shape (..., l).
`features` are kept in a safe range (the largest positive-feature entry of a
vector is 1 + numerical_stabilizer) and the per-vector factor exp(log_scale)
carries the rest. The attention code only ever uses *differences* of key
log-scales (see `favor.py`), and drops query log-scales, which cancel between
numerator and denominator, so nothing overflows however large the logits.
For bidirectional attention, `relative_features` gives a stabilized map's
keys already multiplied by exp(log_scale - ref), ref the largest key
log-scale, in the one pass that makes them (it takes favor.NEG, the
reference of an empty sum, from `favor.py`).

Queries and keys are first multiplied by d**-0.25 (the "data normalizer"), which
folds softmax attention's 1/sqrt(d) temperature into the features:
phi(q) . phi(k) estimates exp(q . k / sqrt(d)) for the softmax maps.

`numerical_stabilizer` (eps) is added to `features` of the non-negative maps.
It keeps every denominator strictly positive (at least eps times the largest
feature), at the cost of a relative bias of order eps. It is treated as a
constant by the gradient (the log-scale maximum is under stop_gradient).

Registered maps (`FEATURE_MAPS`):
  softmax        positive random features of the softmax kernel (FAVOR+):
                 exp(w.x - |x|^2/2) / sqrt(m); unbiased, never negative.
  softmax_trig   trigonometric random features of the softmax kernel:
                 exp(|x|^2/2) [sin(w.x), cos(w.x)] / sqrt(m), 2m features;
                 unbiased but signed (denominators can vanish): for comparison.
  relu           generalized kernel, relu(w.x) / sqrt(m).
  elu            generalized kernel, (elu(w.x) + 1) / sqrt(m).
  exp            generalized kernel, exp(w.x) / sqrt(m).
"""

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from trax_favor import checks
from trax_favor.ops import cpu_speedups
from trax_favor.ops import favor


@dataclasses.dataclass(frozen=True)
class FeatureMap:
  """A registered feature map.

  Attributes:
    fn: (x_normalized (..., l, d), projection (m, d), eps) -> (features,
      log_scale); x is already multiplied by d**-0.25 and cast to float32.
    features_per_row: m_out / m (2 for trigonometric maps).
    non_negative: whether features are >= 0, so denominators are > 0.
    estimates_softmax: whether phi(q).phi(k) estimates exp(q.k/sqrt(d)).
    shared_log_scale: whether log_scale is one constant for every vector
      (bounded activations): attention then needs no stabilizer, and is
      given None instead of the log-scales (the constant cancels).
    logits_fn: stabilized maps (softmax, exp), None for the others:
      (x_normalized, projection) -> (logits (..., l, m), offset (..., l)),
      phi(x) = exp(logits + offset); `fn` is then the factored form with
      the row maximum s of the logits: (exp(logits - s) + eps, s + offset).
      `relative_features` uses it to scale keys in one pass.
  """
  fn: Callable
  features_per_row: int = 1
  non_negative: bool = True
  estimates_softmax: bool = False
  shared_log_scale: bool = False
  logits_fn: Optional[Callable] = None


def _half_sq_norm(x):
  return 0.5 * jnp.sum(jnp.square(x), axis=-1)  # (..., l)


def _log_sqrt_m(projection):
  return 0.5 * jnp.log(float(projection.shape[0]))


def _logits(x, projection):
  return jnp.einsum('...ld,md->...lm', x, projection)  # (..., l, m)


def _softmax_logits(x, projection):
  return _logits(x, projection), -_half_sq_norm(x) - _log_sqrt_m(projection)


def _exp_logits(x, projection):
  return _logits(x, projection), -_log_sqrt_m(projection)


def _row_max(logits):
  return jax.lax.stop_gradient(cpu_speedups.row_max(logits))  # (..., l)


def _stabilized(logits_fn):
  """The factored form of exp(logits + offset): (exp(logits - s) + eps,
  s + offset), with s the row maximum (under stop_gradient)."""
  def fn(x, projection, eps):
    logits, offset = logits_fn(x, projection)
    s = _row_max(logits)  # (..., l)
    return jnp.exp(logits - s[..., None]) + eps, s + offset
  return fn


def _softmax_trig(x, projection, eps):
  del eps  # signed features: a positive floor would not help
  logits = _logits(x, projection)  # (..., l, m)
  features = jnp.concatenate([jnp.sin(logits), jnp.cos(logits)], axis=-1)
  return features, _half_sq_norm(x) - _log_sqrt_m(projection)


def _generalized(kernel_fn):
  """A generalized kernel f(w.x) / sqrt(m) with a bounded activation f."""
  def fn(x, projection, eps):
    features = kernel_fn(_logits(x, projection)) + eps  # (..., l, m)
    log_scale = jnp.full(features.shape[:-1], -_log_sqrt_m(projection))
    return features, log_scale
  return fn


def _stabilized_map(logits_fn, **kwargs):
  return FeatureMap(_stabilized(logits_fn), logits_fn=logits_fn, **kwargs)


FEATURE_MAPS = {
    'softmax': _stabilized_map(_softmax_logits, estimates_softmax=True),
    'softmax_trig': FeatureMap(_softmax_trig, features_per_row=2,
                               non_negative=False, estimates_softmax=True),
    'relu': FeatureMap(_generalized(jax.nn.relu), shared_log_scale=True),
    'elu': FeatureMap(_generalized(lambda u: jax.nn.elu(u) + 1.0),
                      shared_log_scale=True),
    'exp': _stabilized_map(_exp_logits),
}


def get_feature_map(name):
  """Returns the registered FeatureMap, or raises ValueError naming it."""
  if not isinstance(name, str) or name not in FEATURE_MAPS:
    raise checks.ConfigError(
        f'feature_map must be one of {sorted(FEATURE_MAPS)}, '
        f'got {name!r}.')
  return FEATURE_MAPS[name]


def _check_depth(x, projection):
  if x.shape[-1] != projection.shape[-1]:
    raise checks.ConfigError(
        f'projection depth {projection.shape[-1]} does not match '
        f'the query/key depth {x.shape[-1]}.')


def feature_map(name, x, projection, numerical_stabilizer=1e-6):
  """Applies feature map `name` to x (..., l, d) with projection (m, d).

  Returns:
    (features (..., l, m_out), log_scale (..., l)), float32, such that
    phi(x) = features * exp(log_scale)[..., None].
  """
  get_feature_map(name)
  _check_depth(x, projection)
  return _feature_map(name, x, projection, numerical_stabilizer)


def _normalized(x, projection):
  """x in float32 times d**-0.25 (the data normalizer), and the projection
  in float32."""
  return (x.astype(jnp.float32) * float(x.shape[-1]) ** -0.25,
          projection.astype(jnp.float32))


@functools.partial(cpu_speedups.jit, static_argnums=(0,))
def _feature_map(name, x, projection, numerical_stabilizer):
  return FEATURE_MAPS[name].fn(*_normalized(x, projection),
                               numerical_stabilizer)


def relative_features(name, x, projection, numerical_stabilizer=1e-6,
                      key_mask=None):
  """Keys' features relative to their largest log-scale, in one pass.

  For a stabilized map (softmax, exp), the factored keys' features_j *
  exp(log_scale_j - ref), with ref the largest log-scale of an unmasked key:
  what bidirectional FAVOR sums (`favor.relative_key_sums`). Computed as
  exp(logits - s + (log_scale - ref)) + eps * exp(log_scale - ref), one
  elementwise pass over (l, m) instead of three (the exp, the floor, the
  rescale).

  Args:
    name: a map with `logits_fn` (softmax or exp).
    x: (..., l, d) keys; projection: (m, d).
    numerical_stabilizer: eps, as in `feature_map`.
    key_mask: optional bool broadcastable to (..., l); masked keys take no
      part in ref. Their features may hold anything (NaN for a NaN key):
      the sums select them out.

  Returns:
    (features (..., l, m), ref (...,)) float32: phi(x_j) = features_j *
    exp(ref) for every unmasked key j; ref (under stop_gradient) is
    favor.NEG when every key is masked.
  """
  fmap = get_feature_map(name)
  if fmap.logits_fn is None:
    raise checks.ConfigError(
        f'relative_features needs a stabilized feature map (softmax, exp); '
        f'got {name!r}.')
  _check_depth(x, projection)
  if key_mask is not None:
    key_mask = favor.as_key_mask(key_mask, x.shape[:-1])
  return _relative_features(name, x, projection, numerical_stabilizer,
                            key_mask)


@functools.partial(cpu_speedups.jit, static_argnums=(0,))
def _relative_features(name, x, projection, eps, key_mask):
  logits, offset = FEATURE_MAPS[name].logits_fn(
      *_normalized(x, projection))  # (..., l, m), (..., l)
  s = _row_max(logits)  # (..., l)
  log_scale = s + offset
  if key_mask is not None:  # a masked key's log-scale is left out of ref
    log_scale = jnp.where(key_mask, log_scale, favor.NEG)
  ref = jax.lax.stop_gradient(jnp.max(log_scale, axis=-1))  # (...,)
  rel = log_scale - ref[..., None]  # (..., l), <= 0 for unmasked keys
  features = (jnp.exp(logits - s[..., None] + rel[..., None])
              + eps * jnp.exp(rel)[..., None])  # (..., l, m)
  return features, ref


def full_features(name, x, projection, numerical_stabilizer=0.0):
  """phi(x) itself (..., l, m_out); may overflow: for tests and analysis."""
  features, log_scale = feature_map(name, x, projection, numerical_stabilizer)
  return features * jnp.exp(log_scale)[..., None]


def normalize(x, t):
  """qk_normalization: x (b, h, l, d) at L2 norm sqrt(t) d^(1/4): the
  feature maps divide by d^(1/4), so q.k / sqrt(d) becomes t cos(q, k)."""
  d = x.shape[-1]
  # (h,) -> (h, 1, 1): a temperature per head, over positions and features
  t = jnp.reshape(t, (-1, 1, 1)) if jnp.ndim(t) else t
  norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), -1,
                          keepdims=True) + 1e-12)
  return (x / norm * jnp.sqrt(t) * float(d) ** 0.25).astype(x.dtype)
