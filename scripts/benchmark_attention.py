"""Attention benchmark: forward+backward time and peak memory against length.

Compares, in one run, layers with the same d_model / heads:
  favor_bidir     FavorSelfAttention(causal=False), FAVOR+ (softmax features)
  favor_causal    FavorSelfAttention(causal=True)
  identity        the same four projections, attention replaced by identity
                  (o = v): the lower bound
  exact           tl.SelfAttention (dense softmax), up to --exact_max_len
  trax_causal_favor  trax's tl.CausalFavor (ReLU, per-token scan)
  lsh             tl.LSHSelfAttention, up to --lsh_max_len
and the attention cores alone (features to outputs, no projections): our
causal FAVOR with the ReLU kernel vs trax's CausalFavorAttention, same
features. Writes JSON (machine, versions, git SHA) and a PNG plot.

    python scripts/benchmark_attention.py --out results/attention_cpu
"""

import argparse
from importlib import metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

import trax_favor  # pylint: disable=g-bad-import-order  (quiet trax import)
import jax
import jax.numpy as jnp
from trax import layers as tl
from trax import shapes

from trax_favor import ops


def _git_sha():
  try:
    return subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True,
                          text=True, check=True,
                          cwd=os.path.dirname(__file__)).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def machine_info():
  return {
      'platform': platform.platform(), 'python': platform.python_version(),
      'cpu_count': os.cpu_count(), 'jax': jax.__version__,
      'jaxlib': jax.lib.__version__, 'trax': metadata.version('trax'),
      'trax_favor': trax_favor.__version__, 'devices': [
          str(d) for d in jax.devices()], 'git_sha': _git_sha(),
  }


class IdentityAttention(tl.Layer):
  """Projections of tl.SelfAttention with o = v: the FLOP floor of a layer."""

  def __init__(self, n_heads, d_qk, d_v):
    super().__init__()
    self._h, self._d_qk, self._d_v = n_heads, d_qk, d_v

  def init_weights_and_state(self, input_signature):
    d = input_signature.shape[-1]
    rngs = jax.random.split(self.rng, 4)
    shape = lambda k: (self._h, d, k)
    self.weights = (jax.random.normal(rngs[0], shape(self._d_qk)) * 0.02,
                    jax.random.normal(rngs[1], shape(self._d_qk)) * 0.02,
                    jax.random.normal(rngs[2], shape(self._d_v)) * 0.02,
                    jax.random.normal(rngs[3], (self._h, self._d_v, d)) * 0.02)

  def forward(self, x):
    w_q, w_k, w_v, w_o = self.weights
    q = jnp.einsum('bld,hdk->bhlk', x, w_q)  # (b, h, l, d_qk)
    k = jnp.einsum('bld,hdk->bhlk', x, w_k)
    v = jnp.einsum('bld,hdv->bhlv', x, w_v)  # (b, h, l, d_v)
    o = v + 0.0 * (q[..., :1] + k[..., :1])  # keep q, k live
    return jnp.einsum('bhlv,hvd->bld', o, w_o)


def _layers(args, length):
  h, d_head = args.n_heads, args.d_model // args.n_heads
  m = args.n_random_features
  made = {
      'favor_bidir': lambda: trax_favor.FavorSelfAttention(
          n_heads=h, d_qk=d_head, d_v=d_head, n_random_features=m),
      'favor_causal': lambda: trax_favor.FavorSelfAttention(
          n_heads=h, d_qk=d_head, d_v=d_head, causal=True,
          n_random_features=m, chunk_size=args.chunk_size),
      'identity': lambda: IdentityAttention(h, d_head, d_head),
      'trax_causal_favor': lambda: tl.CausalFavor(args.d_model, n_heads=h),
  }
  if length <= args.exact_max_len:
    made['exact'] = lambda: tl.SelfAttention(n_heads=h, d_qk=d_head,
                                             d_v=d_head)
  if length <= args.lsh_max_len:
    made['lsh'] = lambda: tl.LSHSelfAttention(
        n_heads=h, d_qk=d_head, d_v=d_head, chunk_len=128, n_hashes=1,
        n_buckets=max(2, length // 128))
  return made


def compile_and_time(fn, *fn_args, repeats):
  """Compiles fn once; returns (median seconds, XLA-planned peak bytes)."""
  compiled = jax.jit(fn).lower(*fn_args).compile()
  jax.block_until_ready(compiled(*fn_args))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*fn_args))
    times.append(time.perf_counter() - start)
  stats = compiled.memory_analysis()
  peak = None if stats is None else int(
      stats.temp_size_in_bytes + stats.argument_size_in_bytes +
      stats.output_size_in_bytes)
  return float(np.median(times)), peak


def bench_layer(layer, x, repeats):
  layer.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
  weights, state, rng = layer.weights, layer.state, jax.random.PRNGKey(1)

  def loss(w, x):
    return jnp.sum(layer.pure_fn(x, w, state, rng)[0])

  return compile_and_time(jax.value_and_grad(loss, argnums=(0, 1)), weights,
                          x, repeats=repeats)


def bench_cores(args, length):
  """ReLU-kernel causal attention cores, features to outputs, same inputs."""
  h, d_head = args.n_heads, args.d_model // args.n_heads
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((h, length, d_head)), jnp.float32)
  k, v = q * 0.5, q[..., ::-1]
  trax_core = tl.CausalFavorAttention()
  trax_core.init(shapes.signature((q, k, v)))
  ours = lambda q, k, v: ops.favor.causal_favor(
      jax.nn.relu(q) + 1e-3, jax.nn.relu(k) + 1e-3,
      jnp.zeros(k.shape[:-1]), v, chunk_size=args.chunk_size)[0]
  theirs = lambda q, k, v: trax_core.pure_fn((q, k, v), (), (), None)[0]
  result = {}
  for name, fn in (('core_ours_relu', ours), ('core_trax_relu', theirs)):
    step = jax.value_and_grad(lambda q, k, v, f=fn: jnp.sum(f(q, k, v)),
                              argnums=(0, 1, 2))
    result[name] = compile_and_time(step, q, k, v, repeats=args.repeats)[0]
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/attention_cpu')
  parser.add_argument('--lengths', default='1024,2048,4096,8192,16384')
  parser.add_argument('--favor_extra_lengths', default='65536',
                      help='lengths run for FAVOR and identity only')
  parser.add_argument('--d_model', type=int, default=512)
  parser.add_argument('--n_heads', type=int, default=8)
  parser.add_argument('--n_random_features', type=int, default=256)
  parser.add_argument('--chunk_size', type=int, default=128)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--exact_max_len', type=int, default=8192)
  parser.add_argument('--lsh_max_len', type=int, default=16384)
  args = parser.parse_args(argv)
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  lengths = [int(s) for s in args.lengths.split(',') if s]
  extra = [int(s) for s in args.favor_extra_lengths.split(',') if s]
  record = {'machine': machine_info(), 'config': vars(args), 'layers': {},
            'cores': {}}

  def save():
    with open(args.out + '.json', 'w') as f:
      json.dump(record, f, indent=1)

  for length in lengths + extra:
    x = jnp.asarray(np.random.default_rng(length).standard_normal(
        (args.batch, length, args.d_model)), jnp.float32)
    layers = _layers(args, length)
    if length in extra:
      layers = {k: v for k, v in layers.items() if k.startswith(
          ('favor', 'identity'))}
    for name, make in layers.items():
      start = time.time()
      try:
        seconds, peak = bench_layer(make(), x, args.repeats)
      except Exception as e:  # pylint: disable=broad-except
        print(f'L={length} {name}: failed: {type(e).__name__}: {e}'[:300],
              flush=True)
        continue
      record['layers'].setdefault(name, {})[length] = {
          'seconds': seconds, 'peak_bytes': peak}
      print(f'L={length:6d} {name:18s} {seconds * 1e3:10.1f} ms  peak '
            f'{(peak or 0) / 2**20:8.1f} MiB  ({time.time() - start:.0f}s)',
            flush=True)
      save()
    if length in lengths and length <= 8192:
      for name, seconds in bench_cores(args, length).items():
        record['cores'].setdefault(name, {})[length] = seconds
        print(f'L={length:6d} {name:18s} {seconds * 1e3:10.1f} ms', flush=True)
      save()
  record['peak_rss_mib'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024
  save()
  plot(record, args.out + '.png')
  print(f'wrote {args.out}.json and {args.out}.png')


def plot(record, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
  for name, by_len in record['layers'].items():
    ls = sorted(by_len, key=int)
    ax_t.loglog([int(l) for l in ls], [by_len[l]['seconds'] for l in ls],
                'o-', label=name)
    ax_m.loglog([int(l) for l in ls], [(by_len[l]['peak_bytes'] or 0) / 2**20
                                       for l in ls], 'o-', label=name)
  ax_t.set(xlabel='sequence length', ylabel='fwd+bwd seconds',
           title='time')
  ax_m.set(xlabel='sequence length', ylabel='peak MiB (XLA plan)',
           title='memory')
  ax_t.legend(fontsize=7)
  fig.suptitle(f"{record['machine']['platform']} "
               f"({record['machine']['cpu_count']} cpus)", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == '__main__':
  sys.exit(main())
