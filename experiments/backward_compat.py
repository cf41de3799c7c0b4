"""Backward compatibility: exact-attention weights in FAVOR+, fine-tuned.

    python -m experiments.backward_compat --out results/backward_compat_cpu

Trains the offline default's exact-attention twin (runs/exact_default,
resumable, shared with experiments/approximation.py), loads its weights into
the FAVOR+ model unchanged, reports accuracy (on the same fixed eval
batches) of the exact model, of FAVOR+ right after the transfer and after
FAVOR+ fine-tuning (runs/exact_to_favor, resumable). Writes
<out>.json and <out>.png.
"""

import argparse
import sys

from benchmarks import harness
from trax_favor.run import training as trax_favor_training
from experiments import transfer


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/backward_compat_cpu')
  parser.add_argument('--exact_run', default='runs/exact_default')
  parser.add_argument('--fine_tune_run', default='runs/exact_to_favor')
  parser.add_argument('--fine_tune_steps', type=int, default=200)
  parser.add_argument('--eval_every', type=int, default=20)
  parser.add_argument('--eval_batches', type=int, default=16,
                      help='fixed eval batches of the before/after figures')
  parser.add_argument('--config', action='append', default=[],
                      help='extra gin binding for every model (repeatable)')
  args = parser.parse_args(argv)
  record = {'machine': harness.machine_info(), 'config': vars(args)}
  loop = transfer.train_exact(args.exact_run, args.config)
  weights = loop.model.weights
  exact_history = trax_favor_training.read_eval_history(args.exact_run)
  record['exact_training'] = exact_history
  batches = transfer.eval_batches(args.config, args.eval_batches)
  m = [transfer.config_m(args.config)]
  record['right_after_transfer'] = transfer.gap_by_m(
      weights, m, batches, args.config)[0]
  record['fine_tuning'], tuned = transfer.fine_tune(
      weights, args.fine_tune_run, args.fine_tune_steps, args.eval_every,
      args.config)
  record['after_fine_tuning'] = transfer.gap_by_m(
      weights, m, batches, args.config, favor_weights=tuned)[0]
  harness.save_json(record, args.out + '.json')
  plot(record, args.out + '.png')
  before, after = record['right_after_transfer'], record['after_fine_tuning']
  print(f"accuracy on {args.eval_batches} fixed eval batches: exact model "
        f"{before['accuracy_exact']:.3f}; FAVOR+ right after transfer "
        f"{before['accuracy_favor']:.3f}; after {args.fine_tune_steps} "
        f"FAVOR+ steps {after['accuracy_favor']:.3f}")
  print(f'wrote {args.out}.json and {args.out}.png')


def plot(record, path):
  fig, ax = harness.subplots(figsize=(6, 4))
  steps, acc = zip(*record['exact_training']['accuracy'])
  ax.plot(steps, acc, 'o-', label='exact attention, from scratch')
  offset = steps[-1]
  steps, acc = zip(*record['fine_tuning']['accuracy'])
  ax.plot([offset + s for s in steps], acc, 'o-',
          label='FAVOR+ fine-tuning from the exact weights')
  for key, style, label in (
      ('right_after_transfer', ':', 'FAVOR+ right after transfer'),
      ('after_fine_tuning', '-.', 'FAVOR+ after fine-tuning')):
    ax.axhline(record[key]['accuracy_favor'], ls=style, color='gray',
               label=label + ' (fixed batches)')
  ax.axhline(record['right_after_transfer']['accuracy_exact'], ls='--',
             color='black', label='exact model (fixed batches)')
  ax.set(xlabel='step', ylabel='eval next-byte accuracy',
         title='curves: Loop evals on moving eval windows')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == '__main__':
  sys.exit(main())
