"""Attention benchmark: forward+backward time and peak memory against length.

Compares, in one run, layers with the same d_model / heads:
  favor_bidir     FavorSelfAttention(causal=False), FAVOR+ (softmax features)
  favor_causal    FavorSelfAttention(causal=True)
  favor_*_unblocked  the same with block_size=None: features at full length
                  (what length blocks save, up to --unblocked_max_len)
  identity        the same four projections, attention replaced by identity
                  (o = v): the lower bound
  exact           tl.SelfAttention (dense softmax), up to --exact_max_len
  trax_causal_favor  trax's tl.CausalFavor (ReLU, per-token scan)
  lsh             tl.LSHSelfAttention, up to --lsh_max_len
and the attention cores alone (features to outputs, no projections): our
causal FAVOR with the ReLU kernel vs trax's CausalFavorAttention, same
features (ours given no log-scales, as the layer does for ReLU, and its
default chunk for ReLU). Writes JSON (machine, versions, git SHA) and a PNG plot.

    python scripts/benchmark_attention.py --out results/attention_cpu
"""

import argparse
import os
import resource
import sys
import time

import numpy as np

import trax_favor  # pylint: disable=g-bad-import-order  (quiet trax import)
import jax
import jax.numpy as jnp
from trax import layers as tl
from trax import shapes

from trax_favor import ops
from trax_favor.experiments import report


def _layers(args, length):
  h, d_head = args.n_heads, args.d_model // args.n_heads
  m = args.n_random_features
  made = {
      'favor_bidir': lambda: trax_favor.FavorSelfAttention(
          n_heads=h, d_qk=d_head, d_v=d_head, n_random_features=m),
      'favor_causal': lambda: trax_favor.FavorSelfAttention(
          n_heads=h, d_qk=d_head, d_v=d_head, causal=True,
          n_random_features=m, chunk_size=args.chunk_size),
      'favor_bidir_unblocked': lambda: trax_favor.FavorSelfAttention(
          n_heads=h, d_qk=d_head, d_v=d_head, n_random_features=m,
          block_size=None),
      'favor_causal_unblocked': lambda: trax_favor.FavorSelfAttention(
          n_heads=h, d_qk=d_head, d_v=d_head, causal=True,
          n_random_features=m, chunk_size=args.chunk_size, block_size=None),
      'identity': lambda: trax_favor.IdentityAttention(
          n_heads=h, d_qk=d_head, d_v=d_head),
      'trax_causal_favor': lambda: tl.CausalFavor(args.d_model, n_heads=h),
  }
  if length > args.unblocked_max_len:
    del made['favor_bidir_unblocked'], made['favor_causal_unblocked']
  if length <= args.exact_max_len:
    made['exact'] = lambda: tl.SelfAttention(n_heads=h, d_qk=d_head,
                                             d_v=d_head)
  if length <= args.lsh_max_len:
    made['lsh'] = lambda: tl.LSHSelfAttention(
        n_heads=h, d_qk=d_head, d_v=d_head, chunk_len=128, n_hashes=1,
        n_buckets=max(2, length // 128))
  return made


def bench_layer(layer, x, repeats):
  layer.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
  weights, state, rng = layer.weights, layer.state, jax.random.PRNGKey(1)

  def loss(w, x):
    return jnp.sum(layer.pure_fn(x, w, state, rng)[0])

  return report.compile_and_time(jax.value_and_grad(loss, argnums=(0, 1)), weights,
                          x, repeats=repeats)


def bench_cores(args, length):
  """ReLU-kernel causal attention cores, features to outputs, same inputs."""
  h, d_head = args.n_heads, args.d_model // args.n_heads
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((h, length, d_head)), jnp.float32)
  k, v = q * 0.5, q[..., ::-1]
  trax_core = tl.CausalFavorAttention()
  trax_core.init(shapes.signature((q, k, v)))
  chunk = args.chunk_size or ops.attention.default_chunk_size('relu')
  ours = lambda q, k, v: ops.favor.causal_favor(
      jax.nn.relu(q) + 1e-3, jax.nn.relu(k) + 1e-3, None, v,
      chunk_size=chunk)[0]
  theirs = lambda q, k, v: trax_core.pure_fn((q, k, v), (), (), None)[0]
  result = {}
  for name, fn in (('core_ours_relu', ours), ('core_trax_relu', theirs)):
    step = jax.value_and_grad(lambda q, k, v, f=fn: jnp.sum(f(q, k, v)),
                              argnums=(0, 1, 2))
    result[name] = report.compile_and_time(step, q, k, v, repeats=args.repeats)[0]
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
  parser.add_argument('--chunk_size', type=int, default=None,
                      help='causal chunk (default: the layer default)')
  parser.add_argument('--unblocked_max_len', type=int, default=16384)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--exact_max_len', type=int, default=8192)
  parser.add_argument('--lsh_max_len', type=int, default=16384)
  args = parser.parse_args(argv)
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  lengths = [int(s) for s in args.lengths.split(',') if s]
  extra = [int(s) for s in args.favor_extra_lengths.split(',') if s]
  record = {'machine': report.machine_info(), 'config': vars(args), 'layers': {},
            'cores': {}}

  def save():
    report.save_json(record, args.out + '.json')

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
  plt = report.pyplot()
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
