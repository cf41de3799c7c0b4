"""Which `block_size` suits this backend? Time and memory of each choice.

    python -m benchmarks.block_sizes --out results/block_sizes_gpu

Forward+backward of ops.favor_attention (softmax features) at each length
and block size (0: None, features at full length), bidirectional, causal
and bidirectional with a relative bias (max_relative_distance 128), timed
in alternating rounds with the default (512) as each group's baseline:
ratios are time / default (paired medians) and XLA's planned peak memory /
default's. Writes <out>.json (machine, versions, git SHA).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from trax_favor import ops

DEFAULT = 512


def _step(kind, length, block_size, args):
  """(run, planned bytes) of one compiled forward+backward step."""
  rng = np.random.default_rng(length)
  q, k, v = (jnp.asarray(0.5 * rng.standard_normal(
      (1, args.n_heads, length, args.d)), jnp.float32) for _ in range(3))
  w = ops.draw_projection(jax.random.PRNGKey(0), args.m, args.d)
  bias = jnp.asarray(rng.standard_normal((args.n_heads, 257)), jnp.float32)
  extra = ({} if kind != 'rpe_bidir' else
           dict(relative_bias=bias, max_relative_distance=128))

  def loss(q, k, v):
    out = ops.favor_attention(q, k, v, w, causal=kind == 'causal',
                              block_size=block_size or None, **extra)
    return jnp.sum(out[0] if kind == 'causal' else out)
  return harness.compile_step(jax.grad(loss, argnums=(0, 1, 2)), q, k, v)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='results/block_sizes')
  parser.add_argument('--lengths', default='4096,16384,65536',
                      type=harness.comma_list_arg(int))
  parser.add_argument('--block_sizes', default='512,2048,8192,0',
                      type=harness.comma_list_arg(int))
  parser.add_argument('--kinds', default='bidir,causal,rpe_bidir',
                      type=harness.comma_list_arg(str))
  parser.add_argument('--n_heads', type=int, default=8)
  parser.add_argument('--d', type=int, default=64)
  parser.add_argument('--m', type=int, default=256)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args(argv)
  machine = harness.machine_info()
  sizes = [DEFAULT] + [b for b in harness.comma_list(args.block_sizes, int)
                       if b != DEFAULT]
  results = {}
  for length in harness.comma_list(args.lengths, int):
    for kind in harness.comma_list(args.kinds):
      runs, memory = {}, {}
      for size in sizes:
        if size and size >= length and size != DEFAULT:
          continue  # the same program as None
        runs[size], memory[size] = _step(kind, length, size, args)
      row = {str(s): r for s, r in harness.rate_against(
          runs, memory, DEFAULT, args.rounds, 'default').items()}
      results.setdefault(str(length), {})[kind] = row
      print(f'L={length} {kind}: ' + ', '.join(
          f'{s or "None"}: {r["time_over_default"]:.2f}x time, '
          f'{r["memory_over_default"] or float("nan"):.2f}x memory'
          for s, r in ((int(s), r) for s, r in row.items())), flush=True)
  harness.write_results(args.out, machine, args, results)


if __name__ == '__main__':
  main()
