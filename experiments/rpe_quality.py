"""Relative positions for FAVOR+: quality and training stability.

The offline default (same data, seed and steps) trained four ways:
  favor         gin/offline_default.gin (FAVOR+, learned absolute positions)
  favor_rpe     gin/offline_default_rpe.gin (+ a learned relative bias and
                normalized queries/keys with a learned temperature)
  favor_qknorm  the offline default with normalized queries/keys only
  exact_rpe     exact softmax attention with the same relative bias
                (benchmarks/exact_rpe.gin)
Quality: eval bits/dim at the last step (and the best). Stability: each
variant is also trained for --sweep_steps at each learning rate of
--learning_rates; a run diverged if its last eval bits/dim is not finite or
above --diverged_above; the table gives the highest rate that did not.

    python -m experiments.rpe_quality --out results/rpe_quality_cpu

Each run is a `python -m trax_favor.train` process into
<work_dir>/<variant>[_lr<rate>]; rerunning resumes or skips finished runs.
Writes <out>.json and <out>.md.
"""

import argparse
import math
import os

from benchmarks import harness
from experiments import ladder
from trax_favor.run import training

EVAL_EVERY = 20  # steps; the runs' lengths are multiples of it
VARIANTS = {
    'favor': (['gin/offline_default.gin'], []),
    'favor_rpe': (['gin/offline_default_rpe.gin'], []),
    'favor_qknorm': (['gin/offline_default.gin'],
                     ["trax_favor.FavorSelfAttention.qk_normalization="
                      "'learned'"]),
    'exact_rpe': (['gin/offline_default.gin', 'benchmarks/exact_rpe.gin'],
                  []),
}


def _train(name, variant, steps, work_dir, bindings, extra=()):
  """Trains one run (skipped if finished) and returns its eval history."""
  config_files, variant_bindings = VARIANTS[variant]
  run_dir = os.path.join(work_dir, name)
  done = training.read_eval_history(run_dir).get('bits_per_dim', [])
  if not done or done[-1][0] < steps:
    configs_arg = [harness.repo_path(c) for c in config_files]
    ladder.train_cli(configs_arg, variant_bindings + [
        f'STEPS={steps}', f'train.eval_frequency={EVAL_EVERY}'] + list(
            extra) + list(bindings), run_dir, name)
  return training.read_eval_history(run_dir)['bits_per_dim']


def run(args):
  record = {'machine': harness.machine_info(), 'config': vars(args),
            'quality': {}, 'stability': {}}
  variants = harness.comma_list(args.variants, str)
  for variant in variants:
    bits = _train(variant, variant, args.steps, args.work_dir, [],
                  args.config)
    record['quality'][variant] = {'last': bits[-1][1],
                                  'best': min(v for _, v in bits),
                                  'curve': bits}
    harness.save_json(record, args.out + '.json')
  rates = harness.comma_list(args.learning_rates, float)
  for variant in variants:
    runs = {}
    for rate in rates:
      bits = _train(f'{variant}_lr{rate:g}', variant, args.sweep_steps,
                    args.work_dir, [f'multifactor.constant={rate}'],
                    args.config)
      last = bits[-1][1]
      runs[f'{rate:g}'] = {'last': last, 'diverged': not math.isfinite(last)
                                                     or last > args.diverged_above}
    stable = [r for r in rates if not runs[f'{r:g}']['diverged']]
    record['stability'][variant] = {'runs': runs, 'highest_stable_rate':
                                    max(stable) if stable else None}
    harness.save_json(record, args.out + '.json')
  rows = [[v, f'{record["quality"][v]["last"]:.3f}',
           f'{record["quality"][v]["best"]:.3f}',
           ', '.join(f'{r}: {x["last"]:.2f}' for r, x in
                     record['stability'][v]['runs'].items()),
           str(record['stability'][v]['highest_stable_rate'])]
          for v in variants]
  table = harness.markdown_table(
      ['variant', f'bits/dim @ {args.steps}', 'best',
       f'bits/dim @ {args.sweep_steps} per learning rate',
       'highest stable rate'], rows)
  with open(args.out + '.md', 'w') as f:
    f.write(table + '\n')
  print(table)
  return record


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/rpe_quality_cpu')
  parser.add_argument('--work_dir', default='runs/rpe_quality')
  parser.add_argument('--variants', default=','.join(VARIANTS),
                      type=harness.comma_list_arg(str, choices=VARIANTS))
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--sweep_steps', type=int, default=60)
  parser.add_argument('--learning_rates', type=harness.comma_list_arg(float),
                      default='0.003,0.01,0.03')
  parser.add_argument('--config', action='append', default=[],
                      help='extra gin binding for every run (repeatable)')
  parser.add_argument('--diverged_above', type=float, default=6.0,
                      help='bits/dim: a run ending above this diverged '
                      '(8 is chance for bytes)')
  run(parser.parse_args(argv))


if __name__ == '__main__':
  main()
