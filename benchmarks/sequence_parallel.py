"""Sequence parallelism: per-device memory and time of causal FAVOR+ fwd+bwd
with one sequence split across 1, 2, 4 devices.

    python -m benchmarks.sequence_parallel --out results/sequence_parallel_cpu

For every length and device count n, the attention core alone
(`ops.favor_attention(..., causal=True, sequence_axis='seq')` on q, k, v of
shape (b, h, l, d), softmax features, length blocks) is compiled inside
`jax.shard_map` over a mesh of the first n devices, with the gradient
w.r.t. q, k and v. Recorded per (l, n): XLA's planned memory per device
(arguments + outputs + temporaries, `compiled.memory_analysis()`), and the
median seconds of --repeats calls after a warm-up (`block_until_ready`).

On CPU the devices are forced host devices (--host_devices, set before JAX
starts its backend): they share one machine's cores and memory, so the
memory per device is meaningful and the time is not a speed-up measurement
(n devices on 2 cores run no faster than one). On an accelerator host pass
--host_devices 0 to use the real devices. Writes JSON (machine, versions,
git SHA) after each measurement; rerun with the same settings to resume.
"""

import argparse
import os
import time

import numpy as np

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from benchmarks import harness
from trax_favor import ops

# The settings the numbers depend on (a rerun with others starts over).
MEASURED_WITH = ('batch', 'n_heads', 'd_head', 'n_random_features',
                 'block_size', 'chunk_size')


def gradient_program(args, length, n_devices):
  """(compiled fwd+bwd over n_devices, its arguments)."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:n_devices]), ('seq',))
  seq = P(None, None, 'seq')  # (b, h, l, d): the length is split
  projection = ops.draw_projection(jax.random.PRNGKey(0),
                                   args.n_random_features, args.d_head)
  rng = np.random.default_rng(length)
  shape = (args.batch, args.n_heads, length, args.d_head)
  q, k, v, c = (jnp.asarray(0.5 * rng.standard_normal(shape), jnp.float32)
                for _ in range(4))

  def loss(q, k, v, c):
    out, _ = ops.favor_attention(q, k, v, projection, causal=True,
                                 block_size=args.block_size,
                                 chunk_size=args.chunk_size,
                                 sequence_axis='seq')
    return jax.lax.psum(jnp.sum(jnp.sin(out) * c), 'seq')

  sharded = jax.shard_map(loss, mesh=mesh, in_specs=(seq,) * 4,
                          out_specs=P())
  step = jax.jit(jax.grad(sharded, argnums=(0, 1, 2)))
  return step.lower(q, k, v, c).compile(), (q, k, v, c)


def measure(args, length, n_devices):
  """{'bytes_per_device', 'seconds', 'round_seconds', 'compile_seconds'}."""
  start = time.perf_counter()
  compiled, inputs = gradient_program(args, length, n_devices)
  compile_seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  per_device = None if stats is None else int(
      stats.temp_size_in_bytes + stats.argument_size_in_bytes
      + stats.output_size_in_bytes)
  jax.block_until_ready(compiled(*inputs))  # warm-up
  rounds = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))
    rounds.append(time.perf_counter() - start)
  return {'bytes_per_device': per_device,
          'seconds': float(np.median(rounds)), 'round_seconds': rounds,
          'compile_seconds': compile_seconds}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/sequence_parallel_cpu')
  parser.add_argument('--lengths', default='16384,32768,65536',
                      type=harness.comma_list_arg(int))
  parser.add_argument('--devices', default='1,2,4',
                      type=harness.comma_list_arg(int),
                      help='device counts the length is split across')
  parser.add_argument('--host_devices', type=int, default=4,
                      help='forced host CPU devices (0: the backend as is)')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--n_heads', type=int, default=8)
  parser.add_argument('--d_head', type=int, default=64)
  parser.add_argument('--n_random_features', type=int, default=256)
  parser.add_argument('--block_size', type=int, default=512)
  parser.add_argument('--chunk_size', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  if args.host_devices:  # before anything starts the backend
    jax.config.update('jax_num_cpu_devices', args.host_devices)
  lengths = harness.comma_list(args.lengths, int)
  counts = harness.comma_list(args.devices, int)
  if max(counts) > len(jax.devices()):
    parser.error(f'--devices asks for {max(counts)} devices; '
                 f'{len(jax.devices())} are available.')
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  path = args.out + '.json'
  record = harness.earlier_record(path, vars(args), MEASURED_WITH) or {
      'machine': harness.machine_info(), 'runs': {}}
  record['config'] = vars(args)
  for length in lengths:
    for n in counts:
      key, runs = str(n), record['runs'].setdefault(str(length), {})
      if key in runs:
        print(f'L={length} devices={n}: measured earlier, skipping')
        continue
      if length % n:
        print(f'L={length} devices={n}: length not divisible, skipping')
        continue
      runs[key] = measure(args, length, n)
      per_device = runs[key]['bytes_per_device']
      print(f'L={length:6d} devices={n}  {runs[key]["seconds"]:8.3f} s  '
            f'{(per_device or 0) / 2**20:8.1f} MiB per device', flush=True)
      harness.save_json(record, path)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
