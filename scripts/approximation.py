"""FAVOR approximation error against exact softmax attention, as m grows.

    python scripts/approximation.py --out results/approximation_cpu

Attention level: orthogonal vs iid projections, positive vs trigonometric
softmax features, q/k entries of several scales. Model level: a small LM
trained with exact attention (runs/exact_default, trained here if missing,
shared with scripts/backward_compat.py), its weights in FAVOR+ models of
growing m: next-token KL and accuracy. Writes <out>.json and <out>.png.
"""

import argparse
import sys

from trax_favor.experiments import approximation
from trax_favor.experiments import report
from trax_favor.experiments import transfer


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/approximation_cpu')
  parser.add_argument('--ms', default='16,32,64,128,256,512',
                      type=report.comma_list_arg(int))
  parser.add_argument('--scales', default='0.25,0.5,1.0',
                      type=report.comma_list_arg(float),
                      help='std of q, k entries (logit std = scale^2)')
  parser.add_argument('--length', type=int, default=512)
  parser.add_argument('--seeds', type=int, default=8)
  parser.add_argument('--exact_run', default='runs/exact_default',
                      help="exact-attention model ('' to skip that part)")
  parser.add_argument('--eval_batches', type=int, default=4)
  args = parser.parse_args(argv)
  ms = report.comma_list(args.ms, int)
  record = {'machine': report.machine_info(), 'config': vars(args)}
  record['attention'] = approximation.attention_sweep(
      ms, report.comma_list(args.scales, float), length=args.length,
      n_seeds=args.seeds)
  report.save_json(record, args.out + '.json')
  record['model'] = []
  if args.exact_run:
    loop = transfer.train_exact(args.exact_run)
    batches = transfer.eval_batches([], args.eval_batches)
    record['model'] = transfer.gap_by_m(loop.model.weights, ms, batches)
    report.save_json(record, args.out + '.json')
  approximation.plot(record['attention'], record['model'], args.out + '.png',
                     report.pyplot())
  print(report.markdown_table(
      ['feature map', 'projection', 'scale', 'm', 'relative error'],
      [[r['feature_map'], r['projection'], r['scale'], r['m'], r['error']]
       for r in record['attention']]))
  print(f'wrote {args.out}.json and {args.out}.png')


if __name__ == '__main__':
  sys.exit(main())
