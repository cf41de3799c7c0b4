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
default chunk for ReLU).

At each length every layer is compiled first, then the layers are timed in
turn, one call each per round (--repeats rounds; medians): on a shared host
whose speed drifts, ratios from alternating calls are steadier than from
separate runs. The matrix products the layers are made of are also timed
alone (GFLOP/s of the fastest of --product_rounds calls, `product_steps`).
From those rates, `floors` gives what two ratios would be if FAVOR's
products ran that fast inside the layer and everything else were free:
bidirectional FAVOR+ over identity, and the most trax's core could take
over ours. Writes JSON (machine, versions, git SHA) after each length, and a
PNG; rerun with the same settings to resume (finished lengths are skipped).

    python -m benchmarks.attention --out results/attention_cpu
"""

import argparse
import os
import resource
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp
from trax import layers as tl
from trax import shapes

import trax_favor
from trax_favor import ops
from benchmarks import baselines
from benchmarks import harness


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
      'identity': lambda: baselines.IdentityAttention(
          n_heads=h, d_qk=d_head, d_v=d_head, n_random_features=m),
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


def layer_step(layer, x):
  """(fn, args): forward+backward of `layer` on x (w.r.t. weights and x)."""
  layer.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
  weights, state, rng = layer.weights, layer.state, jax.random.PRNGKey(1)

  def loss(w, x):
    return jnp.sum(layer.pure_fn(x, w, state, rng)[0])

  return jax.value_and_grad(loss, argnums=(0, 1)), (weights, x)


def core_steps(args, length):
  """ReLU-kernel causal attention cores, features to outputs, same inputs.

  Returns {name: (fn, args)}: forward+backward w.r.t. q, k and v.
  """
  h, d_head = args.n_heads, args.d_model // args.n_heads
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((h, length, d_head)), jnp.float32)
  k, v = q * 0.5, q[..., ::-1]
  trax_core = tl.CausalFavorAttention()
  trax_core.init(shapes.signature((q, k, v)))
  ours = lambda q, k, v: ops.favor.causal_favor(
      jax.nn.relu(q) + 1e-3, jax.nn.relu(k) + 1e-3, None, v,
      chunk_size=core_chunk(args))[0]
  theirs = lambda q, k, v: trax_core.pure_fn((q, k, v), (), (), None)[0]
  return {name: (jax.value_and_grad(lambda q, k, v, f=fn: jnp.sum(f(q, k, v)),
                                    argnums=(0, 1, 2)), (q, k, v))
          for name, fn in (('core_ours_relu', ours),
                           ('core_trax_relu', theirs))}


def core_chunk(args):
  return args.chunk_size or ops.attention.default_chunk_size('relu')


BLOCK = 512  # FavorSelfAttention's default block_size


def product_steps(args, length):
  """The matrix products the layers are made of, forward only, alone.

  FAVOR's are timed on the shapes one length block (BLOCK tokens, what one
  step of the layer's scan over blocks sees) gives them; their flops are
  per block.

  Returns {name: (fn, args, flops)}:
    projection  (b l, d_model) by (d_model, d_model): the four projections
    features    per head, (block, d_head) by (d_head, m): feature maps
    key_sums    per head, (m, block) by (block, d_head)
    read_out    per head, (block, m) by (m, d_head)
    chunk       per head and chunk over the whole length, (c, d_head) by
                (d_head, c): the causal ReLU core's products (m = d_head; its
                others are the same size or close: c by c by d_head + 1,
                d_head by c by d_head + 1)
  """
  h, d_head, m = args.n_heads, args.d_model // args.n_heads, (
      args.n_random_features)
  rows, c, b = args.batch * length, core_chunk(args), args.batch
  n_chunks = max(1, length // c)
  per_block = 2 * b * h * BLOCK * d_head * m
  rng = np.random.default_rng(1)
  a = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return {
      'projection': (jnp.matmul, (a(rows, args.d_model),
                                  a(args.d_model, args.d_model)),
                     2 * rows * args.d_model ** 2),
      'features': (lambda x, w: jnp.einsum('bhld,md->bhlm', x, w),
                   (a(b, h, BLOCK, d_head), a(m, d_head)), per_block),
      'key_sums': (lambda k, v: jnp.einsum('bhlm,bhlv->bhmv', k, v),
                   (a(b, h, BLOCK, m), a(b, h, BLOCK, d_head)), per_block),
      'read_out': (lambda q, kv: jnp.einsum('bhlm,bhmv->bhlv', q, kv),
                   (a(b, h, BLOCK, m), a(b, h, m, d_head)), per_block),
      'chunk': (lambda q, k: jnp.einsum('hncm,hnkm->hnck', q, k),
                (a(h, n_chunks, c, d_head), a(h, n_chunks, c, d_head)),
                2 * h * n_chunks * c * c * d_head),
  }


def bidir_floor(args, length, rates, identity_seconds):
  """Bidirectional FAVOR+ over the identity layer, were its products as fast
  as measured alone (GFLOP/s in `rates`) and everything else free.

  Forward and backward take 12 products of h l d_head m multiply-adds each:
  query and key features (forward, recomputed in the backward pass of the
  length blocks, and their input gradients: 6), key sums and read-out
  (forward and two gradients each: 6). The identity layer's measured time
  stands for the projections.
  """
  h, d_head, m = args.n_heads, args.d_model // args.n_heads, (
      args.n_random_features)
  unit = 2.0 * h * args.batch * length * d_head * m  # flops of one product
  favor_seconds = unit * (6 / rates['features'] + 3 / rates['key_sums'] +
                          3 / rates['read_out']) / 1e9
  return (identity_seconds + favor_seconds) / identity_seconds


def core_floor_seconds(args, length, chunk_rate):
  """Our ReLU core's products (forward and backward) at the chunk rate.

  Per token and head the forward pass does c d + c (d + 1) + 2 d (d + 1)
  multiply-adds (ReLU features with m = d = d_head, chunk c: within-chunk
  scores and their product with values and a column of ones; chunk sums and
  their read-out); the backward pass twice that.
  """
  h, d, c = args.n_heads, args.d_model // args.n_heads, core_chunk(args)
  macs = h * length * (c * d + c * (d + 1) + 2 * d * (d + 1))
  return 3 * 2.0 * macs / (chunk_rate * 1e9)


def time_all(steps, rounds, label, statistic=np.median):
  """Compiles each of {name: (fn, args)}, then times them interleaved.

  Returns {name: (statistic of the seconds per round, XLA-planned peak
  bytes, the seconds per round)}; a step that fails to compile or run is
  reported and left out.
  """
  runs, peaks = {}, {}
  for name, (fn, fn_args) in steps.items():
    start = time.time()
    try:
      run, peaks[name] = harness.compile_step(fn, *fn_args)
    except Exception as e:  # pylint: disable=broad-except
      print(f'{label} {name}: failed: {type(e).__name__}: {e}'[:300],
            flush=True)
      continue
    runs[name] = lambda i, run=run: run()
    print(f'{label} {name}: compiled ({time.time() - start:.0f}s)', flush=True)
  times = harness.time_interleaved(runs, rounds)
  return {name: (float(statistic(t)), peaks[name], t)
          for name, t in times.items()}


# Ratios of two timed steps, as the median over rounds of the ratio within a
# round (the pair ran back to back, so a slow spell of the host hits both).
PAIRED = {
    'bidir_over_identity': ('favor_bidir', 'identity'),
    'causal_over_bidir': ('favor_causal', 'favor_bidir'),
    'trax_causal_favor_over_causal': ('trax_causal_favor', 'favor_causal'),
    'lsh_over_causal': ('lsh', 'favor_causal'),
    'exact_over_bidir': ('exact', 'favor_bidir'),
    'core_trax_over_ours': ('core_trax_relu', 'core_ours_relu'),
    'bidir_unblocked_over_bidir': ('favor_bidir_unblocked', 'favor_bidir'),
    'causal_unblocked_over_causal': ('favor_causal_unblocked',
                                     'favor_causal'),
}


def paired_ratios(timed):
  """The PAIRED ratios whose two steps are both in timed (time_all's)."""
  return {name: harness.paired_ratio(timed[a][2], timed[b][2])
          for name, (a, b) in PAIRED.items() if a in timed and b in timed}


def products_cores_and_floors(args, length, record, label):
  """At one length (str key in record): product rates, the attention cores
  (up to --core_max_len) and the floors derived from them; the layers are
  already in record."""
  key = str(length)
  paired = record['paired'][key]
  products = product_steps(args, length)
  # Each product takes milliseconds, where steal time on a shared host
  # swings medians 3x: the fastest of many rounds is its rate (so the
  # floors below err low, the ceiling high).
  fastest = time_all({n: p[:2] for n, p in products.items()},
                     args.product_rounds, label, statistic=np.min)
  rates = {n: products[n][2] / fastest[n][0] / 1e9 for n in fastest}
  record['product_gflops'][key] = rates
  print(f'{label} GFLOP/s ' + ', '.join(f'{n} {r:.1f}'
                                        for n, r in rates.items()),
        flush=True)
  floors = record['floors'].setdefault(key, {})
  identity = record['layers'].get('identity', {}).get(key)
  if identity and len(rates) == len(products):
    floors['bidir_over_identity'] = bidir_floor(args, length, rates,
                                                identity['seconds'])
  if length <= args.core_max_len:
    timed_cores = time_all(core_steps(args, length), args.repeats, label)
    paired.update(paired_ratios(timed_cores))
    for name, (seconds, _, _) in timed_cores.items():
      record['cores'].setdefault(name, {})[key] = seconds
      print(f'{label} {name:22s} {seconds * 1e3:10.1f} ms', flush=True)
    trax_core = record['cores'].get('core_trax_relu', {}).get(key)
    if trax_core and 'chunk' in rates:
      floors['core_ours_relu_seconds'] = core_floor_seconds(
          args, length, rates['chunk'])
      floors['core_trax_over_ours_max'] = (
          trax_core / floors['core_ours_relu_seconds'])
  print(f'{label} paired ratios {paired}; floors {floors}', flush=True)


# The settings a measurement depends on: a rerun resumes an earlier record
# only where all of them, and the code's git SHA, are the same.
MEASURED_WITH = ('d_model', 'n_heads', 'n_random_features', 'chunk_size',
                 'unblocked_max_len', 'batch', 'repeats', 'exact_max_len',
                 'lsh_max_len', 'core_max_len', 'product_rounds')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/attention_cpu')
  parser.add_argument('--lengths', default='1024,2048,4096,8192,16384',
                      type=harness.comma_list_arg(int))
  parser.add_argument('--favor_extra_lengths', default='65536',
                      type=harness.comma_list_arg(int),
                      help='lengths run for FAVOR and identity only')
  parser.add_argument('--d_model', type=int, default=512)
  parser.add_argument('--n_heads', type=int, default=8)
  parser.add_argument('--n_random_features', type=int, default=256)
  parser.add_argument('--chunk_size', type=int, default=None,
                      help='causal chunk (default: the layer default)')
  parser.add_argument('--unblocked_max_len', type=int, default=16384)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=7,
                      help='timed rounds (each times every layer once)')
  parser.add_argument('--exact_max_len', type=int, default=8192)
  parser.add_argument('--lsh_max_len', type=int, default=16384)
  parser.add_argument('--core_max_len', type=int, default=8192)
  parser.add_argument('--product_rounds', type=int, default=30,
                      help='timed rounds of the products alone (fastest)')
  args = parser.parse_args(argv)
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  lengths = harness.comma_list(args.lengths, int)
  extra = harness.comma_list(args.favor_extra_lengths, int)
  record = harness.earlier_record(args.out + '.json', vars(args),
                                 MEASURED_WITH, same_code=True) or {
      'machine': harness.machine_info(), 'layers': {}, 'cores': {},
      'paired': {}, 'product_gflops': {}, 'floors': {}}
  record['config'] = vars(args)
  record.setdefault('finished', [])

  def save():
    harness.save_json(record, args.out + '.json')

  for length in lengths + extra:
    label, key = f'L={length:6d}', str(length)  # JSON keys are strings
    if key in record['finished']:
      print(f'{label}: measured earlier, skipping', flush=True)
      continue
    x = jnp.asarray(np.random.default_rng(length).standard_normal(
        (args.batch, length, args.d_model)), jnp.float32)
    made = _layers(args, length)
    if length in extra:
      made = {k: v for k, v in made.items() if k.startswith(
          ('favor', 'identity'))}
    steps = {name: layer_step(make(), x) for name, make in made.items()}
    timed = time_all(steps, args.repeats, label)
    record['paired'].setdefault(key, {}).update(paired_ratios(timed))
    for name, (seconds, peak, rounds) in timed.items():
      record['layers'].setdefault(name, {})[key] = {
          'seconds': seconds, 'peak_bytes': peak, 'round_seconds': rounds}
      print(f'{label} {name:22s} {seconds * 1e3:10.1f} ms  peak '
            f'{(peak or 0) / 2**20:8.1f} MiB', flush=True)
    save()
    if length not in extra:
      products_cores_and_floors(args, length, record, label)
    record['finished'].append(key)
    save()
  record['peak_rss_mib'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024
  save()
  plot(record, args.out + '.png')
  print(f'wrote {args.out}.json and {args.out}.png')


def plot(record, path):
  fig, (ax_t, ax_m) = harness.subplots(1, 2, figsize=(11, 4))
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
