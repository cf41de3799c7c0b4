"""Model-level benchmark: reversible training step, depth, decoding.

    python -m benchmarks.model --out results/model_cpu   # CPU widths
    python -m benchmarks.model --out results/model_gpu \
        --width_bindings=''                             # the configs' widths
    python -m benchmarks.model --out results/model_cpu_full_width \
        --width_bindings=N_LAYERS=2 --pg19_length=0 --depths= --prefixes= \
        --steps=6 --repeats=3 --interleave=performer,reformer
        # the configs' widths on CPU: ImageNet64, 2 layers, each model in 3
        # fresh processes (medians), then Performer and LSH steps alternating

Writes <out>.json (machine, versions, git SHA) after every measurement and
<out>.png at the end; rerunning with the same widths skips what the JSON
already holds.
"""

import argparse
import sys

from benchmarks import model_bench
from benchmarks import harness

# CPU widths: the configs' layout (heads of 64, ff 4x, m=256, LSH chunks of
# 128) at a quarter of the width and 2 layers.
CPU_WIDTH = ('D_MODEL=256,D_FF=1024,N_HEADS=4,D_HEAD=64,N_LAYERS=2,'
             'POS_D_AXIAL_EMBS=(96,96,64)')


# The settings the measurements depend on: a rerun resumes the JSON only
# where these agree (step and token counts may differ: they set precision).
MEASURED_WITH = ('width_bindings', 'imagenet64_bindings', 'batch',
                 'depth_length', 'decode_width')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/model_cpu')
  parser.add_argument('--width_bindings', default=CPU_WIDTH,
                      help='comma-separated gin macros for every model')
  parser.add_argument('--imagenet64_bindings', default='',
                      help='comma-separated gin macros for the ImageNet64 '
                      'steps only (e.g. a shorter SEQUENCE_LENGTH with its '
                      'POS_AXIAL_SHAPE and LSH_N_BUCKETS)')
  parser.add_argument('--pg19_length', type=int, default=8192,
                      help='PG-19 step length (0: no PG-19 steps)')
  parser.add_argument('--exact_max_len', type=int, default=8192)
  parser.add_argument('--depths', default='6,12,24',
                      type=harness.comma_list_arg(int))
  parser.add_argument('--depth_length', type=int, default=2048,
                      help='PG-19 length of the depth sweep')
  parser.add_argument('--models', default=','.join(model_bench.MODELS),
                      type=harness.comma_list_arg(_model_name),
                      help='the models of the training steps, each in its '
                      'own process')
  parser.add_argument('--interleave', default='',
                      type=harness.comma_list_arg(_model_name),
                      help='ImageNet64 models also timed in one process, their '
                      'steps alternating (steadier ratios on a shared host): '
                      + ', '.join(model_bench.MODELS))
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=1,
                      help='fresh processes per training-step measurement; '
                      'the JSON keeps each and their medians (memory varies '
                      'between processes)')
  parser.add_argument('--prefixes', default='128,8192',
                      type=harness.comma_list_arg(int))
  parser.add_argument('--decode_tokens', type=int, default=64)
  parser.add_argument('--decode_width', default='256,1024,4,2',
                      type=harness.comma_list_arg(int),
                      help='d_model,d_ff,n_heads,n_layers of the decoders')
  args = parser.parse_args(argv)
  if args.repeats < 1:
    parser.error(f'--repeats must be at least 1, got {args.repeats}')
  decode_width = tuple(harness.comma_list(args.decode_width, int))
  if len(decode_width) != 4:
    parser.error(f'--decode_width takes 4 ints, got {args.decode_width!r}')
  width = _rejoin_tuples(harness.comma_list(args.width_bindings))
  record = harness.earlier_record(args.out + '.json', vars(args),
                                 MEASURED_WITH) or {}
  record.update(machine=harness.machine_info(), config=vars(args))
  record.setdefault('steps', {})
  record.setdefault('depth', {})
  record.setdefault('decoding', {})
  record.setdefault('interleaved', {})

  def run(table, key, fn, *fn_args):
    if key in record[table] and 'failed' not in record[table][key]:
      print(f'{table} {key}: measured earlier, skipping', flush=True)
      return
    record[table][key] = result = fn(*fn_args)
    print(f'{table} {key}: {result}', flush=True)
    harness.save_json(record, args.out + '.json')

  def run_together(table, prefix, names, fn, *fn_args):
    """Like run, for an fn that measures several names at once (alternating
    them) and returns {name: result}: stored as table[prefix + name], all
    from that one call, or none if it failed."""
    keys = [prefix + n for n in names]
    if not keys:
      return
    if all(key in record[table] for key in keys):
      print(f'{table} {", ".join(keys)}: measured earlier, skipping',
            flush=True)
      return
    result = fn(*fn_args)
    if 'failed' in result:
      print(f'{table}: {result}', flush=True)
      return
    for name, r in result.items():
      record[table][prefix + name] = r
      print(f'{table} {prefix}{name}: {r}', flush=True)
    harness.save_json(record, args.out + '.json')

  step = lambda family, model, bindings: model_bench.measure_step_repeated(
      family, model, width + bindings, args.steps, args.batch, args.repeats)
  imagenet64 = _rejoin_tuples(harness.comma_list(args.imagenet64_bindings))
  models = harness.comma_list(args.models)
  for model in models:  # ImageNet64: 12288 tokens
    if model != 'exact' or 12288 <= args.exact_max_len:
      run('steps', f'imagenet64/{model}', step, 'imagenet64', model,
          imagenet64)
  interleave = harness.comma_list(args.interleave)
  run_together('interleaved', 'imagenet64/', interleave,
               model_bench.measure_step_in_child, 'imagenet64', interleave,
               width, args.steps, args.batch)
  pg19 = [f'SEQUENCE_LENGTH={args.pg19_length}',
          f'LSH_N_BUCKETS={2 * args.pg19_length // 128}']
  for model in models if args.pg19_length else ():
    if model != 'exact' or args.pg19_length <= args.exact_max_len:
      run('steps', f'pg19_{args.pg19_length}/{model}', step, 'pg19', model,
          pg19)
  depth_bindings = [f'SEQUENCE_LENGTH={args.depth_length}',
                    f'LSH_N_BUCKETS={2 * args.depth_length // 128}']
  for depth in harness.comma_list(args.depths, int):
    for model in ('performer', 'reformer'):
      run('depth', f'{model}/{depth}', step, 'pg19', model,
          depth_bindings + [f'N_LAYERS={depth}'])
  decoders = [(kind, prefix) for kind in ('performer', 'transformer')
              for prefix in harness.comma_list(args.prefixes, int)]
  run_together('decoding', '', [f'{k}/{p}' for k, p in decoders],
               model_bench.measure_decoding, decoders, args.decode_tokens,
               decode_width)
  record['ratios'] = model_bench.ratios(record)
  harness.save_json(record, args.out + '.json')
  plotted = model_bench.plot(record, args.out + '.png')
  print(harness.markdown_table(['ratio', 'value'],
                              sorted(record['ratios'].items())))
  print(f'wrote {args.out}.json' + (f' and {args.out}.png' if plotted else
                                    ' (nothing measured to plot)'))


def _model_name(name):
  if name not in model_bench.MODELS:
    raise ValueError(name)
  return name


_model_name.__name__ = 'model'


def _rejoin_tuples(parts):
  """Splits on commas outside parentheses: 'A=1,B=(2,3)' -> [A=1, B=(2,3)]."""
  joined, depth = [], 0
  for part in parts:
    if depth:
      joined[-1] += ',' + part
    else:
      joined.append(part)
    depth += part.count('(') - part.count(')')
  return joined


if __name__ == '__main__':
  sys.exit(main())
