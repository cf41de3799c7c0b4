"""The attention cores of the peer benchmark (benchmarks/peers.py), one step
each: forward and backward of sum(outputs) w.r.t. q, k and v.

Every core takes the same per-head inputs, q, k, v (1, h, l, d_head) float32
and, where it has random features, the same (m, d_head) projection:

  ours_bidir, ours_causal     trax_favor.ops.favor_attention, softmax
                              features (FAVOR+), its defaults (length blocks
                              of 512, causal chunks of 128)
  ours_*_relu                 our bidirectional_favor / causal_favor on
                              trax's features, relu(x) + 1e-3 of the inputs
                              (no projection): the like-for-like baseline of
                              trax's cores
  ours_*_plain                the same as ours_bidir, ours_causal with
                              trax_favor.ops.cpu_speedups off:
                              plain einsums, jnp.max, XLA's default options
                              (CPU only: elsewhere that is the default)
  ours_*_unblocked            ours with block_size=None (features at full
                              length, no scan over blocks); only when
                              named in --only (a question for accelerators)
  ours_bidir_xla_defaults     the switch on (product gradients, row maximum)
                              but compiled with XLA's default options: what
                              a jit of a user's own gets
  authors_bidir               the Performer authors' way, written here in a
                              few lines of jnp: features at full length (query
                              max per row, key max over all keys, eps 1e-6
                              after exp), then the two products, autodiff
  authors_bidir_xla_defaults  the same compiled with XLA's default options
  trax_favor_relu             trax's tl.FavorAttention core (its default and
  trax_causal_favor_relu      tl.CausalFavorAttention's only kernel: ReLU
                              features; causal: a scan over tokens)
  exact_bidir, exact_causal   softmax(q k^T / sqrt(d)) v in jnp, autodiff
  dpa_bidir, dpa_causal       jax.nn.dot_product_attention: cuDNN's fused
                              kernel in bfloat16 on an NVIDIA GPU (it takes
                              no float32), XLA's in float32 elsewhere
  performer_pytorch_bidir,    performer-pytorch's FastAttention (torch, the
  performer_pytorch_causal    `benchmarks` extra), its projection buffer set
                              to ours; causal on a CPU: its non-CUDA path

`prepare(name, q, k, v, w)` compiles and warms one up and returns
(run, xla_planned_bytes): run() does one step and waits for it.
"""

import contextlib
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np

from trax_favor import ops
from trax_favor.ops import cpu_speedups
from benchmarks import harness

BIDIRECTIONAL = ('ours_bidir', 'ours_bidir_plain', 'ours_bidir_xla_defaults',
                 'ours_bidir_unblocked',
                 'authors_bidir', 'authors_bidir_xla_defaults',
                 'ours_bidir_relu',
                 'trax_favor_relu', 'performer_pytorch_bidir', 'exact_bidir',
                 'dpa_bidir')
CAUSAL = ('ours_causal', 'ours_causal_plain', 'ours_causal_relu',
          'ours_causal_unblocked',
          'trax_causal_favor_relu', 'performer_pytorch_causal',
          'exact_causal', 'dpa_causal')
# Traced with trax_favor.ops.cpu_speedups off, or compiled with XLA's default
# options: only distinct on the CPU.
SWITCHED_OFF = ('ours_bidir_plain', 'ours_causal_plain')
XLA_DEFAULTS = ('ours_bidir_xla_defaults', 'authors_bidir_xla_defaults')
TORCH = ('performer_pytorch_bidir', 'performer_pytorch_causal')
ON_REQUEST = ('ours_bidir_unblocked', 'ours_causal_unblocked')
QUADRATIC = ('exact_bidir', 'dpa_bidir', 'exact_causal', 'dpa_causal')


def direction(name):
  return 'causal' if name in CAUSAL else 'bidir'


def baseline(name):
  """The core a contender's ratios are taken against: ours, with trax's
  ReLU features for trax's cores."""
  kind = direction(name)
  return f'ours_{kind}_relu' if name.startswith('trax_') else f'ours_{kind}'


def torch_missing():
  """None if torch and performer-pytorch import, else the line to print."""
  try:
    import performer_pytorch  # pylint: disable=g-import-not-at-top,unused-import
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return (f'performer-pytorch skipped ({e.name} is not installed): '
            f'pip install -c constraints.txt ".[benchmarks]"')
  return None


def authors_bidir(q, k, v, w, eps=1e-6):
  """Bidirectional FAVOR+ the authors' way: (..., l, d) -> (..., l, v)."""
  d, m = q.shape[-1], w.shape[0]

  def features(x, axes):
    x = x * d ** -0.25
    logits = jnp.einsum('...ld,md->...lm', x, w)  # (..., l, m)
    half_sq = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)  # (..., l, 1)
    stab = jax.lax.stop_gradient(jnp.max(logits, axis=axes, keepdims=True))
    return (jnp.exp(logits - half_sq - stab) + eps) * m ** -0.5

  qf, kf = features(q, -1), features(k, (-2, -1))  # (..., l, m)
  kv = jnp.einsum('...lm,...lv->...mv', kf, v)  # (..., m, v)
  num = jnp.einsum('...lm,...mv->...lv', qf, kv)  # (..., l, v)
  den = jnp.einsum('...lm,...m->...l', qf, jnp.sum(kf, axis=-2))  # (..., l)
  return num / den[..., None]


def exact(q, k, v, causal):
  scores = jnp.einsum('...ld,...kd->...lk', q, k) / np.sqrt(q.shape[-1])
  if causal:
    length = q.shape[-2]
    scores = jnp.where(jnp.tril(jnp.ones((length, length), bool)), scores,
                       -jnp.inf)
  return jnp.einsum('...lk,...kv->...lv', jax.nn.softmax(scores, axis=-1), v)


def dpa_setting():
  """(implementation, dtype) of jax.nn.dot_product_attention here."""
  if jax.default_backend() == 'gpu':
    return 'cudnn', jnp.bfloat16
  return None, jnp.float32


def dot_product_attention(q, k, v, causal):
  implementation, dtype = dpa_setting()
  # (1, h, l, d) -> (1, l, h, d): the (batch, length, heads, depth) layout.
  q, k, v = (jnp.swapaxes(x, 1, 2).astype(dtype) for x in (q, k, v))
  out = jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                     implementation=implementation)
  return jnp.swapaxes(out, 1, 2).astype(jnp.float32)  # (1, h, l, d)


def _trax_core(causal, shape, m):
  """trax's FAVOR core as f(q, k, v) on (1, h, l, d) inputs of `shape`."""
  from trax import layers as tl  # pylint: disable=g-import-not-at-top
  from trax import shapes  # pylint: disable=g-import-not-at-top
  _, h, length, d = shape
  per_head = jax.ShapeDtypeStruct((h, length, d), jnp.float32)
  if causal:
    layer = tl.CausalFavorAttention()
    signature = (per_head,) * 3
  else:
    layer = tl.FavorAttention(d_feature=h * d, n_heads=h, n_random_features=m)
    signature = (per_head,) * 3 + (jax.ShapeDtypeStruct((1, 1, length),
                                                         jnp.bool_),)
  layer.init(shapes.signature(signature), rng=jax.random.PRNGKey(0))

  def call(q, k, v):
    inputs = tuple(x.reshape(h, length, d) for x in (q, k, v))  # (h, l, d)
    if not causal:
      inputs += (jnp.ones((1, 1, length), bool),)
    out = layer.pure_fn(inputs, layer.weights, layer.state,
                        jax.random.PRNGKey(1))[0]
    out = out[0] if isinstance(out, tuple) else out  # FavorAttention: (o, mask)
    return out.reshape(1, h, length, d)  # (1, h, l, d)
  return call


def trax_features(x):
  """trax's ReLU kernel features of (..., l, d) inputs: relu(x) + 1e-3."""
  return jax.nn.relu(x) + 1e-3


def jax_core(name, w, shape):
  """f(q, k, v) -> outputs of a JAX contender, for inputs of `shape`."""
  causal = name in CAUSAL
  if name == 'ours_bidir_relu':
    return lambda q, k, v: ops.bidirectional_favor(
        trax_features(q), trax_features(k), None, v)
  if name == 'ours_causal_relu':
    return lambda q, k, v: ops.causal_favor(
        trax_features(q), trax_features(k), None, v,
        chunk_size=ops.default_chunk_size('relu'))[0]
  if name.startswith('ours_'):
    block_size = None if name.endswith('_unblocked') else 512
    return lambda q, k, v: (
        ops.favor_attention(q, k, v, w, causal=True, block_size=block_size)[0]
        if causal else ops.favor_attention(q, k, v, w, block_size=block_size))
  if name.startswith('authors_bidir'):
    return lambda q, k, v: authors_bidir(q, k, v, w)
  if name.startswith('trax_'):
    return _trax_core(causal, shape, w.shape[0])
  if name.startswith('exact_'):
    return functools.partial(exact, causal=causal)
  if name.startswith('dpa_'):
    return functools.partial(dot_product_attention, causal=causal)
  raise ValueError(f'unknown contender {name!r}')


def _torch_attention(name, w):
  """performer-pytorch's FastAttention with our projection."""
  import torch  # pylint: disable=g-import-not-at-top
  from performer_pytorch import FastAttention  # pylint: disable=g-import-not-at-top
  with contextlib.redirect_stdout(io.StringIO()):  # its line about CUDA code
    attention = FastAttention(dim_heads=w.shape[1], nb_features=w.shape[0],
                              causal=name == 'performer_pytorch_causal')
  attention.projection_matrix.copy_(torch.from_numpy(np.array(w)))
  return attention


def _prepare_torch(name, q, k, v, w):
  import torch  # pylint: disable=g-import-not-at-top
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  attention = _torch_attention(name, w).to(device)
  tq, tk, tv = (torch.tensor(np.asarray(x), device=device, requires_grad=True)
                for x in (q, k, v))

  def run():
    for x in (tq, tk, tv):
      x.grad = None
    attention(tq, tk, tv).sum().backward()
    if device == 'cuda':
      torch.cuda.synchronize()

  run()
  return run, None


def prepare(name, q, k, v, w):
  """(run, XLA-planned bytes or None) for one contender, warmed up."""
  if name in TORCH:
    return _prepare_torch(name, q, k, v, w)
  core = jax_core(name, w, q.shape)
  step = jax.value_and_grad(lambda q, k, v: jnp.sum(core(q, k, v)),
                            argnums=(0, 1, 2))
  if name in SWITCHED_OFF:
    with cpu_speedups.forced(False):
      return harness.compile_step(step, q, k, v)
  return harness.compile_step(step, q, k, v,
                              options={} if name in XLA_DEFAULTS else None)


def outputs(name, q, k, v, w):
  """A contender's outputs as a numpy array (for the sanity check)."""
  if name in TORCH:
    import torch  # pylint: disable=g-import-not-at-top
    with torch.no_grad():
      return _torch_attention(name, w)(
          *(torch.from_numpy(np.asarray(x)) for x in (q, k, v))).numpy()
  return np.asarray(jax_core(name, w, q.shape)(q, k, v))


def sanity(q, k, v, w, same_math_tol, shipped_tol):
  """trax_favor against performer-pytorch and exact softmax (peers.py says
  what is compared); errors relative to the largest exact output."""
  missing = torch_missing()
  if missing:
    return {'skipped': missing}
  import torch  # pylint: disable=g-import-not-at-top
  from performer_pytorch import performer_pytorch as pp  # pylint: disable=g-import-not-at-top
  w_torch = torch.from_numpy(np.array(w))
  found = {}
  for causal in (False, True):
    ours = ops.favor_attention(q, k, v, w, causal=causal,
                               numerical_stabilizer=0.0)
    ours = np.asarray(ours[0] if causal else ours)
    feats = [pp.softmax_kernel(torch.from_numpy(np.array(x)),
                               projection_matrix=w_torch, is_query=is_query,
                               eps=0.0)
             for x, is_query in ((q, True), (k, False))]
    tv = torch.from_numpy(np.array(v))
    theirs_eps0 = (pp.causal_linear_attention_noncuda(*feats, tv, eps=0.0)
                   if causal else pp.linear_attention(*feats, tv))
    kind = 'causal' if causal else 'bidir'
    shipped = {who: outputs(f'{who}_{kind}', q, k, v, w)
               for who in ('ours', 'performer_pytorch')}
    exact_out = np.asarray(exact(q, k, v, causal))
    scale = float(np.abs(exact_out).max())
    error = lambda a, b: float(np.abs(a - b).max() / scale)
    found[kind] = {
        'same_math': error(ours, theirs_eps0.numpy()),
        'as_shipped': error(shipped['ours'], shipped['performer_pytorch']),
        'ours_vs_exact': error(shipped['ours'], exact_out),
        'performer_pytorch_vs_exact': error(shipped['performer_pytorch'],
                                            exact_out)}
  found['passed'] = all(
      found[kind]['same_math'] <= same_math_tol and
      found[kind]['as_shipped'] <= shipped_tol for kind in ('bidir', 'causal'))
  found['tolerances'] = {'same_math': same_math_tol, 'as_shipped': shipped_tol}
  return found
