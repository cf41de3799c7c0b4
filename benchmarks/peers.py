"""Peer benchmark: trax_favor's attention cores against the other FAVOR
implementations and exact attention, forward and backward, time and memory.

    python -m benchmarks.peers --out results/peers_cpu

The contenders are in benchmarks/contenders.py (performer-pytorch comes with
the `benchmarks` extra and is skipped with one line without it). Inputs: one
sequence, --n_heads heads of --d_head, m = --n_random_features, float32, the
same q, k, v and projection for every core.

Time: at each length every contender is compiled and warmed up, then they
run in turn, one step each per round (--rounds rounds), in this one process;
a contender's ratio is the median over rounds of its seconds over ours
(ours_bidir or ours_causal) in the same round, so a slow spell of a shared
host falls on both sides.

Memory: each contender and length in a child process of its own: inputs
made and one warm-up step run, then the peak added by one more step (CPU:
the resident set's high-water mark, restarted after the warm-up, with
glibc's mmap threshold fixed so freed buffers leave the resident set; GPU:
the allocator's peak). XLA's planned bytes are recorded beside it for the
JAX cores. A child that fails (out of memory) is recorded as such.
--memory=planned starts no children (the accelerator run): XLA's plan for
the JAX cores, torch's CUDA allocator peak for performer-pytorch.

Sanity: at --sanity_length, with our projection, trax_favor's outputs
against performer-pytorch's (a) with both stabilizers set to 0 (their
`softmax_kernel(eps=0)` and linear attention; the same math, so float32
roundoff only: --same_math_tol) and (b) as both ship (their eps 1e-4 added
to features after exp(-|x|^2/2), relative to the largest logit: of the row
for queries, of all keys for keys; ours 1e-6 relative to each row's
largest logit; their causal denominators also add 1e-6: --shipped_tol),
both relative to the largest output, inputs scaled by 0.25 (unit-variance
q and k of d_head 64 put FAVOR+ far from softmax; there eps decides). Each
is also compared with exact softmax attention.

Writes <out>.json after each length (a rerun with the same settings resumes)
and <out>.png.
"""

import argparse
import gc
import json
import os
import subprocess
import sys

import jax
import numpy as np

from trax_favor import ops
from trax_favor.run import memory
from benchmarks import contenders
from benchmarks import harness

MEASURED_WITH = ('d_head', 'n_heads', 'n_random_features', 'rounds',
                 'memory', 'exact_max_len', 'dpa_max_len',
                 'torch_causal_max_len', 'trax_causal_max_len')


def inputs(args, length, seed=0, scale=1.0):
  """q, k, v (1, h, l, d_head) float32 and the (m, d_head) projection."""
  rng = np.random.default_rng(seed)
  shape = (1, args.n_heads, length, args.d_head)
  q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
  w = ops.draw_projection(jax.random.PRNGKey(seed), args.n_random_features,
                          args.d_head)
  return q * scale, k * scale, v, np.asarray(w)


def names_at(args, length, skipped):
  """The contenders that run at `length` (limits and what is installed)."""
  limits = {'exact_bidir': args.exact_max_len,
            'exact_causal': args.exact_max_len,
            'dpa_bidir': args.dpa_max_len, 'dpa_causal': args.dpa_max_len,
            'performer_pytorch_causal': args.torch_causal_max_len,
            'trax_causal_favor_relu': args.trax_causal_max_len}
  names = []
  only = harness.comma_list(args.only)
  for name in contenders.BIDIRECTIONAL + contenders.CAUSAL:
    if (only and name not in only) or (
        name in contenders.ON_REQUEST and name not in only):
      continue
    if (name in contenders.SWITCHED_OFF + contenders.XLA_DEFAULTS and
        jax.default_backend() != 'cpu'):
      continue  # off the CPU the switch is off already
    if name in contenders.TORCH and skipped.get('torch'):
      continue
    if length > limits.get(name, length):
      continue
    names.append(name)
  return names


def time_length(args, length, names):
  """({name: seconds per round} of forward+backward, all in turn,
  {name: memory in this process}: XLA's plan, or torch's CUDA peak)."""
  q, k, v, w = inputs(args, length)
  runs, planned = {}, {}
  for name in names:
    try:
      run, planned[name] = contenders.prepare(name, q, k, v, w)
    except Exception as e:  # pylint: disable=broad-except
      print(f'L={length} {name}: failed: {type(e).__name__}: {e}'[:300],
            flush=True)
      continue
    if name in contenders.TORCH:
      planned[name] = torch_cuda_peak(run)
    runs[name] = lambda i, run=run: run()
  memory_found = {n: {'peak_bytes': p, 'xla_planned_bytes': p}
                  for n, p in planned.items()}
  return harness.time_interleaved(runs, args.rounds, settle=True), memory_found


def torch_cuda_peak(run):
  """Bytes torch's CUDA allocator adds during run(); None on a CPU."""
  import torch  # pylint: disable=g-import-not-at-top
  if not torch.cuda.is_available():
    return None
  torch.cuda.reset_peak_memory_stats()
  before = torch.cuda.memory_allocated()
  run()
  return torch.cuda.max_memory_allocated() - before


def memory_in_child(args, name, length):
  """{'peak_bytes', 'xla_planned_bytes'} from a child, or {'failed': why}."""
  env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072')
  command = [sys.executable, '-m', 'benchmarks.peers', f'--memory_of={name}',
             f'--length={length}'] + [
                 f'--{k}={getattr(args, k)}'
                 for k in ('d_head', 'n_heads', 'n_random_features')]
  try:
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=args.child_timeout, cwd=harness.REPO)
  except subprocess.TimeoutExpired:
    return {'failed': f'timed out after {args.child_timeout} s'}
  lines = [l for l in done.stdout.splitlines() if l.startswith('{')]
  if done.returncode or not lines:
    tail = (done.stderr.strip().splitlines() or ['no output'])[-1]
    return {'failed': f'exit {done.returncode}: {tail}'[:300]}
  return json.loads(lines[-1])


def _memory_child(args):
  """One contender's step memory (run in a child by memory_in_child)."""
  q, k, v, w = inputs(args, args.length)
  name = args.memory_of
  run, planned = contenders.prepare(name, q, k, v, w)
  gc.collect()
  added = torch_cuda_peak(run) if name in contenders.TORCH else None
  if added is None:  # a JAX step, or torch on a CPU: the resident set
    before = memory.memory_in_use_bytes()
    memory.reset_peak_memory()
    run()
    added = memory.peak_memory_bytes() - before
  print(json.dumps({'peak_bytes': added, 'xla_planned_bytes': planned}))


def ratios(values):
  """{name: value / ours} in each direction, for a {name: value} dict."""
  found = {}
  for name, value in values.items():
    base = values.get(contenders.baseline(name))
    if value is not None and base:
      found[name] = value / base
  return found


def ratios_in(seconds, names):
  """Time over ours for names in a group timed together ({name: [seconds
  per round]}): 'paired', the median over rounds of the ratio within a
  round; 'fastest', the ratio of the fastest rounds (interference only adds
  time: on this CPU our bidirectional core's rounds were bimodal, 0.04 or
  0.15 s at 1024, in the same process)."""
  found = {'paired': {}, 'fastest': {}}
  for name in names:
    base = contenders.baseline(name)
    if name in seconds and base in seconds:
      found['paired'][name] = harness.paired_ratio(seconds[name],
                                                   seconds[base])
      found['fastest'][name] = min(seconds[name]) / min(seconds[base])
  return found


def measure_length(args, length, skipped):
  """Times in two groups: the linear cores, then the quadratic ones (exact,
  dot_product_attention) with our two cores again as their baselines: on
  this CPU a 2 GB quadratic step in the same rounds slowed the next steps
  (ours_bidir ran 1.8x slower at 4096 beside exact_bidir, not at all
  beside the others)."""
  names = names_at(args, length, skipped)
  linear = [n for n in names if n not in contenders.QUADRATIC]
  seconds, in_process = time_length(args, length, linear)
  time_over_ours = ratios_in(seconds, names)
  quadratic = [n for n in names if n in contenders.QUADRATIC]
  if quadratic:
    group, quadratic_memory = time_length(
        args, length, [n for n in ('ours_bidir', 'ours_causal')
                       if n in names] + quadratic)
    group_ratios = ratios_in(group, quadratic)
    for name in quadratic:
      in_process[name] = quadratic_memory.get(name, {'failed': 'no step'})
      if name in group:
        seconds[name] = group[name]
      for kind, value in group_ratios.items():
        if name in value:
          time_over_ours[kind][name] = value[name]
  result = {
      'seconds': {n: float(np.median(s)) for n, s in seconds.items()},
      'rounds': seconds, 'time_over_ours': time_over_ours['paired'],
      'fastest_over_ours': time_over_ours['fastest'], 'memory': {}}
  for name in names:
    result['memory'][name] = (memory_in_child(args, name, length)
                              if args.memory == 'child' else
                              in_process.get(name, {'failed': 'no step'}))
    print(f'L={length} {name}: {result["seconds"].get(name, float("nan")):.4f}'
          f' s, memory {result["memory"][name]}', flush=True)
  result['memory_over_ours'] = ratios(
      {n: m.get('peak_bytes') for n, m in result['memory'].items()})
  return result


def plot(record, path):
  figure, axes = harness.subplots(2, 2, figsize=(12, 9))
  for column, kind in enumerate(('bidir', 'causal')):
    for row, (key, label) in enumerate((('seconds', 'seconds, fwd+bwd'),
                                        ('memory', 'peak step memory, MiB'))):
      ax = axes[row][column]
      series = {}
      for length, result in record['lengths'].items():
        for name, value in result[key].items():
          if contenders.direction(name) != kind:
            continue
          if key == 'memory':
            value = value.get('peak_bytes')
            value = None if value is None else value / 2 ** 20
          if value is not None:
            series.setdefault(name, []).append((int(length), value))
      for name, points in sorted(series.items()):
        points.sort()
        ax.loglog(*zip(*points), marker='o',
                  linewidth=2.5 if name.startswith('ours_') else 1,
                  label=name)
      ax.set_xlabel('sequence length')
      ax.set_ylabel(label)
      ax.set_title(f'{kind}: {label}')
      ax.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path)


def summary(record):
  """Markdown: each peer's time and memory over ours, per length."""
  rows = []
  for length, result in record['lengths'].items():
    for name in result['seconds']:
      if name in ('ours_bidir', 'ours_causal', 'ours_bidir_relu',
                  'ours_causal_relu'):
        continue  # the baselines
      rows.append([length, name, result['time_over_ours'].get(name),
                   result.get('fastest_over_ours', {}).get(name),
                   result['memory_over_ours'].get(name)])
  return harness.markdown_table(
      ['L', 'contender', 'time / ours (paired)', 'time / ours (fastest)',
       'memory / ours'], rows)


def _contender(name):
  if name not in contenders.BIDIRECTIONAL + contenders.CAUSAL:
    raise ValueError(name)
  return name


_contender.__name__ = 'contender'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/peers_cpu')
  parser.add_argument('--lengths', default='1024,4096,16384,65536',
                      type=harness.comma_list_arg(int))
  parser.add_argument('--d_head', type=int, default=64)
  parser.add_argument('--n_heads', type=int, default=8)
  parser.add_argument('--n_random_features', type=int, default=256)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--exact_max_len', type=int, default=8192)
  parser.add_argument('--dpa_max_len', type=int, default=8192)
  parser.add_argument('--torch_causal_max_len', type=int, default=8192,
                      help="performer-pytorch's non-CUDA causal path keeps "
                      'an (m, d) sum per token')
  parser.add_argument('--trax_causal_max_len', type=int, default=16384)
  parser.add_argument('--sanity_length', type=int, default=1024)
  parser.add_argument('--same_math_tol', type=float, default=1e-5)
  parser.add_argument('--shipped_tol', type=float, default=5e-3)
  parser.add_argument('--memory', choices=('child', 'planned'),
                      default='child',
                      help='child: each step in a fresh process (see '
                      "above); planned: XLA's plan for JAX steps, torch's "
                      'CUDA peak for torch ones (none on a CPU), no children')
  parser.add_argument('--child_timeout', type=int, default=900)
  parser.add_argument('--only', default='', type=harness.comma_list_arg(
      _contender), help='these contenders only (comma-separated)')
  parser.add_argument('--memory_of', help=argparse.SUPPRESS)
  parser.add_argument('--length', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.memory_of:
    return _memory_child(args)
  config = {k: v for k, v in vars(args).items()
            if k not in ('out', 'memory_of', 'length')}
  path = args.out + '.json'
  record = harness.earlier_record(path, config, MEASURED_WITH) or {
      'lengths': {}}
  record['config'] = config
  record['machine'] = harness.machine_info()
  skipped = {}
  missing = contenders.torch_missing()
  if missing:
    skipped['torch'] = missing
    print(missing, flush=True)
  else:
    import torch  # pylint: disable=g-import-not-at-top
    record['machine'].update(torch=torch.__version__,
                             torch_threads=torch.get_num_threads())
  record['machine']['dot_product_attention'] = [
      str(x) for x in contenders.dpa_setting()]
  record['skipped'] = skipped
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  if 'sanity' not in record or 'skipped' in record['sanity']:
    q, k, v, w = inputs(args, args.sanity_length, seed=1, scale=0.25)
    # Full float32 products (a GPU's default is TF32 for JAX, not for
    # PyTorch): the tolerances are float32 roundoff.
    with jax.default_matmul_precision('highest'):
      record['sanity'] = contenders.sanity(q, k, v, w, args.same_math_tol,
                                           args.shipped_tol)
    print(f'sanity: {record["sanity"]}', flush=True)
    harness.save_json(record, path)
  for length in harness.comma_list(args.lengths, int):
    if str(length) in record['lengths']:
      print(f'L={length}: measured already', flush=True)
      continue
    record['lengths'][str(length)] = measure_length(args, length, skipped)
    harness.save_json(record, path)
  record['summary'] = summary(record)
  harness.save_json(record, path)
  plot(record, args.out + '.png')
  print(record['summary'])
  print(f'wrote {path} and {args.out}.png')
  if record['sanity'].get('passed') is False:
    print('sanity check FAILED: see "sanity" in the JSON', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
