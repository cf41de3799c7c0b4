"""Relative positions for FAVOR+: time and memory against plain FAVOR+.

    python -m benchmarks.rpe --out results/rpe_cpu

At each length, forward+backward (w.r.t. queries, keys, values and the
bias) of the attention cores, features included, no projections:
  rpe_bidir / rpe_causal      FAVOR+ with a relative bias (ops/rpe, exact,
                              O(L D))
  favor_bidir / favor_causal  plain FAVOR+ (ops.favor_attention)
  exact_bidir / exact_causal  softmax attention with the same relative bias
                              (dense (L, L) logits), up to --exact_max_len
timed in alternating rounds (medians), with XLA's planned peak memory.
Writes <out>.json (machine, versions, git SHA) and <out>.png, with the
ratios rpe / favor in time and peak memory at every length, the growth
of each from 4K to 16K tokens (linear: 4x), and causal decoding's seconds
per token after prompts of --decode_prefixes tokens.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from trax_favor import ops
from trax_favor.ops import rpe


def _cores(args, length):
  """{name: (fn, fn_args)} at this length."""
  shape = (1, args.n_heads, length, args.d)
  rng = np.random.default_rng(length)
  q, k, v = (jnp.asarray(0.5 * rng.standard_normal(shape), jnp.float32)
             for _ in range(3))
  w = ops.draw_projection(jax.random.PRNGKey(0), args.m, args.d)
  distance = args.max_relative_distance
  cores = {}
  for causal in (False, True):
    kind = 'causal' if causal else 'bidir'
    bias = jnp.asarray(rng.standard_normal(
        (args.n_heads, distance + 1 if causal else 2 * distance + 1)),
                       jnp.float32)

    def rpe_core(q, k, v, bias, causal=causal):
      out = ops.favor_attention(q, k, v, w, causal=causal, relative_bias=bias,
                                max_relative_distance=distance)
      return jnp.sum(out[0] if causal else out)

    def favor_core(q, k, v, bias, causal=causal):
      del bias
      out = ops.favor_attention(q, k, v, w, causal=causal)
      return jnp.sum(out[0] if causal else out)

    def exact_core(q, k, v, bias, causal=causal):
      i = jnp.arange(length)
      index = rpe.clipped_distances(length, distance, causal)[
          i[None, :] - i[:, None] + length - 1]
      logits = jnp.einsum('...id,...jd->...ij', q, k) / np.sqrt(args.d)
      logits = logits + bias[:, index]  # (h, l, l)
      if causal:
        logits = jnp.where(i[None, :] <= i[:, None], logits, -jnp.inf)
      return jnp.sum(jax.nn.softmax(logits, axis=-1) @ v)

    grad = lambda f: jax.value_and_grad(f, argnums=(0, 1, 2, 3))
    cores[f'rpe_{kind}'] = (grad(rpe_core), (q, k, v, bias))
    cores[f'favor_{kind}'] = (grad(favor_core), (q, k, v, bias))
    if length <= args.exact_max_len:
      cores[f'exact_{kind}'] = (grad(exact_core), (q, k, v, bias))
  return cores


def _decode_steps(args, length):
  """A compiled one-token causal relative step after a `length`-token
  prompt (fed in one call): run() decodes --decode_tokens tokens."""
  shape = (1, args.n_heads, length + args.decode_tokens, args.d)
  rng = np.random.default_rng(length)
  q, k, v = (jnp.asarray(0.5 * rng.standard_normal(shape), jnp.float32)
             for _ in range(3))
  w = ops.draw_projection(jax.random.PRNGKey(0), args.m, args.d)
  bias = jnp.asarray(rng.standard_normal(
      (args.n_heads, args.max_relative_distance + 1)), jnp.float32)
  attend = lambda q, k, v, state: ops.favor_attention(
      q, k, v, w, causal=True, initial_state=state, relative_bias=bias,
      max_relative_distance=args.max_relative_distance)
  _, state = jax.jit(attend)(q[..., :length, :], k[..., :length, :],
                             v[..., :length, :], None)
  step = jax.jit(attend)

  def run():
    current = state
    for t in range(length, length + args.decode_tokens):
      out, current = step(q[..., t:t + 1, :], k[..., t:t + 1, :],
                          v[..., t:t + 1, :], current)
    return jax.block_until_ready(out)
  run()  # compiles
  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/rpe_cpu')
  parser.add_argument('--lengths', type=harness.comma_list_arg(int),
                      default='4096,16384')
  parser.add_argument('--exact_max_len', type=int, default=4096)
  parser.add_argument('--n_heads', type=int, default=8)
  parser.add_argument('--d', type=int, default=64)
  parser.add_argument('--m', type=int, default=256)
  parser.add_argument('--max_relative_distance', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--decode_prefixes', type=harness.comma_list_arg(int),
                      default='1024,4096,16384')
  parser.add_argument('--decode_tokens', type=int, default=32)
  args = parser.parse_args(argv)
  record = {'machine': harness.machine_info(), 'config': vars(args),
            'lengths': {}}
  for length in harness.comma_list(args.lengths, int):
    runs, peaks = {}, {}
    for name, (fn, fn_args) in _cores(args, length).items():
      run, peaks[name] = harness.compile_step(fn, *fn_args)
      runs[name] = lambda i, run=run: run()
    times = harness.time_interleaved(runs, args.rounds)
    record['lengths'][str(length)] = {
        name: {'seconds': float(np.median(t)), 'round_seconds': t,
               'peak_bytes': peaks[name]} for name, t in times.items()}
    row = record['lengths'][str(length)]
    print(f'L={length}: ' + ', '.join(
        f'{name} {v["seconds"] * 1e3:.1f} ms / {(v["peak_bytes"] or 0) / 2**20:.0f} MiB'
        for name, v in row.items()), flush=True)
    harness.save_json(record, args.out + '.json')
  lengths = record['lengths']
  if '4096' in lengths and '16384' in lengths:
    record['growth_16k_over_4k'] = {
        name: lengths['16384'][name]['seconds'] / lengths['4096'][name][
            'seconds'] for name in lengths['16384'] if name in lengths['4096']}
    print('16K / 4K:', {k: round(v, 2)
                        for k, v in record['growth_16k_over_4k'].items()})
  record['rpe_over_favor'] = {
      length: {f'{kind}_{what}': _ratio(row, kind, key)
               for kind in ('bidir', 'causal')
               for what, key in (('time', 'seconds'), ('memory', 'peak_bytes'))}
      for length, row in lengths.items()}
  print('rpe / favor:', record['rpe_over_favor'])
  # Decoding: seconds per token after prompts of each length (flat: the
  # state is O(D) whatever the prefix).
  runs = {prefix: lambda i, run=_decode_steps(args, prefix): run()
          for prefix in harness.comma_list(args.decode_prefixes, int)}
  record['decode_seconds_per_token'] = {
      str(prefix): float(np.median(t)) / args.decode_tokens
      for prefix, t in harness.time_interleaved(runs, args.rounds).items()}
  print('decode s/token:', record['decode_seconds_per_token'])
  harness.save_json(record, args.out + '.json')
  plot(record, args.out + '.png')


def _ratio(row, kind, key):
  """rpe_<kind> over favor_<kind> in `key`; None where one is missing."""
  a, b = row[f'rpe_{kind}'][key], row[f'favor_{kind}'][key]
  return a / b if a and b else None


def plot(record, path):
  figure, axes = harness.subplots(1, 2, figsize=(11, 4))
  names = sorted({n for row in record['lengths'].values() for n in row})
  for name in names:
    points = [(int(l), row[name]) for l, row in record['lengths'].items()
              if name in row]
    axes[0].loglog([l for l, _ in points], [v['seconds'] for _, v in points],
                   'o-', label=name)
    axes[1].loglog([l for l, _ in points],
                   [(v['peak_bytes'] or 0) / 2**20 for _, v in points], 'o-',
                   label=name)
  axes[0].set(xlabel='tokens', ylabel='fwd+bwd seconds')
  axes[1].set(xlabel='tokens', ylabel='XLA peak MiB')
  axes[0].legend(fontsize=7)
  figure.savefig(path, dpi=100, bbox_inches='tight')


if __name__ == '__main__':
  main()
