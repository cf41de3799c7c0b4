"""trax_favor's CPU speed-ups on (the CPU default) and off: layer times.

    python -m benchmarks.cpu_speedups --out results/cpu_speedups

`trax_favor.ops.cpu_speedups` (hand-written product gradients, the sliced row
maximum, xla_cpu_experimental_ynn_fusion_type='') is on by default on the
CPU; TRAX_FAVOR_CPU_SPEEDUPS=0 turns all three off (plain einsums, jnp.max,
XLA's default options). Each setting runs in its own child process:
benchmarks/attention.py over --lengths, for the FAVOR+ layers and the
identity layer, --pairs times, the two settings alternating (a slow spell of
the shared host then falls on both). Writes <out>.json: every child's record
(its machine block names its XLA_FLAGS); per length and layer, the median
over pairs of the time with the speed-ups off over the time with them on
(`off_over_on`); and per setting the median over its children of their
within-run ratios (`paired`: FAVOR+ bidirectional / identity, causal /
bidirectional).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ENV = 'TRAX_FAVOR_CPU_SPEEDUPS'
SETTINGS = {'on': {}, 'off': {ENV: '0'}}


def run_child(setting, out, args):
  env = dict(os.environ, **SETTINGS[setting])
  if setting == 'on':
    env.pop(ENV, None)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run(
      [sys.executable, '-m', 'benchmarks.attention', f'--out={out}', '--lengths=',
       f'--favor_extra_lengths={args.lengths}', f'--repeats={args.repeats}',
       '--unblocked_max_len=0', f'--d_model={args.d_model}',
       f'--n_heads={args.n_heads}',
       f'--n_random_features={args.n_random_features}'],
      env=env, check=True, cwd=repo)
  with open(out + '.json') as f:
    return json.load(f)


def off_over_on(runs):
  """{length: {layer: median over pairs of seconds off / seconds on}}."""
  ratios = {}
  for on, off in zip(runs['on'], runs['off']):
    for layer, by_length in on['layers'].items():
      for length, result in by_length.items():
        ratios.setdefault(length, {}).setdefault(layer, []).append(
            off['layers'][layer][length]['seconds'] / result['seconds'])
  return {length: {layer: statistics.median(r) for layer, r in by_layer.items()}
          for length, by_layer in ratios.items()}


def paired_medians(runs):
  """{setting: {length: {ratio: median over that setting's children}}} of
  the attention benchmark's within-run ratios (bidir_over_identity,
  causal_over_bidir): steadier than off_over_on, whose two sides ran in
  different processes, when the host's speed drifts."""
  found = {}
  for setting, records in runs.items():
    by_length = {}
    for record in records:
      for length, ratios in record['paired'].items():
        for name, value in ratios.items():
          by_length.setdefault(length, {}).setdefault(name, []).append(value)
    found[setting] = {length: {name: statistics.median(values)
                               for name, values in ratios.items()}
                      for length, ratios in by_length.items()}
  return found


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/cpu_speedups')
  parser.add_argument('--lengths', default='4096,16384')
  parser.add_argument('--pairs', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--d_model', type=int, default=512)
  parser.add_argument('--n_heads', type=int, default=8)
  parser.add_argument('--n_random_features', type=int, default=256)
  args = parser.parse_args(argv)
  if 'xla_cpu_experimental_ynn_fusion_type' in os.environ.get('XLA_FLAGS',
                                                              ''):
    parser.error('XLA_FLAGS sets xla_cpu_experimental_ynn_fusion_type: both '
                 'children would run with it; unset it to compare.')
  runs = {setting: [] for setting in SETTINGS}
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    for pair in range(args.pairs):
      for setting in SETTINGS:
        print(f'pair {pair + 1}/{args.pairs}: CPU speed-ups {setting}',
              flush=True)
        runs[setting].append(
            run_child(setting, os.path.join(tmp, f'{setting}{pair}'), args))
      record = {'config': vars(args), 'runs': runs,
                'off_over_on': off_over_on(runs),
                'paired': paired_medians(runs)}
      with open(args.out + '.json', 'w') as f:  # after every pair
        json.dump(record, f, indent=1)
  for length, by_layer in record['off_over_on'].items():
    print(f'L={length}: time with speed-ups off / on: ' + ', '.join(
        f'{layer} {ratio:.2f}x' for layer, ratio in by_layer.items()))
    for setting, by_length in record['paired'].items():
      print(f'L={length}: within-run ratios, speed-ups {setting}: ' + ', '.join(
          f'{name} {ratio:.2f}x' for name, ratio in by_length[length].items()))
  print(f'wrote {args.out}.json')


if __name__ == '__main__':
  sys.exit(main())
