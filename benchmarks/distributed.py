"""Training steps/s on one process vs several (JAX's distributed runtime).

    python -m benchmarks.distributed --out results/distributed_cpu

Each round trains the offline default (shrunk by --bindings) through the
training CLI, once on one process and once on --processes processes of one
CPU device each (coordinator on 127.0.0.1), with the same global batch;
rounds alternate the two. The rate is the median of the progress lines'
steps/s (compilation excluded). Writes <out>.json: the machine, every
run's rates, and per round the rate of N processes over 1. On one machine
the processes share its cores, so no speed-up is expected there: the
figure is for the record, and for comparing hosts.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

from benchmarks import harness
from trax_favor.run import training

BINDINGS = ('D_MODEL=64,SEQUENCE_LENGTH=128,N_LAYERS=2,BATCH_SIZE=8,'
            'N_RANDOM_FEATURES=32,train.eval_frequency=1000,'
            'train.eval_steps=1')


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def train_rate(n_processes, steps, bindings, work_dir):
  """Median steps/s of one training on n_processes (1: no distribution)."""
  output_dir = os.path.join(work_dir, f'p{n_processes}')
  shutil.rmtree(output_dir, ignore_errors=True)
  command = [sys.executable, '-m', 'trax_favor.train',
             f'--config_file={harness.repo_path("gin/offline_default.gin")}',
             f'--output_dir={output_dir}', '--log_every=5',
             f'--config=train.steps={steps}',
             *[f'--config={b}' for b in bindings]]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  if n_processes == 1:
    commands = [command]
  else:
    address = f'127.0.0.1:{_free_port()}'
    commands = [command + [f'--coordinator_address={address}',
                           f'--num_processes={n_processes}',
                           f'--process_id={i}'] for i in range(n_processes)]
  processes = [subprocess.Popen(c, env=env, cwd=harness.REPO,
                                stdout=subprocess.DEVNULL) for c in commands]
  try:
    for process in processes:
      if process.wait(timeout=1800):
        raise RuntimeError(f'training on {n_processes} process(es) failed')
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  rates = [r['steps_per_s'] for r in training.read_progress(output_dir)
           if r['steps_per_s']]
  return statistics.median(rates)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/distributed_cpu')
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--bindings', type=harness.comma_list_arg(str),
                      default=BINDINGS, help='gin bindings, comma-separated')
  args = parser.parse_args(argv)
  bindings = harness.comma_list(args.bindings)
  runs = []
  with tempfile.TemporaryDirectory() as work_dir:
    for round_index in range(args.rounds):
      order = (1, args.processes) if round_index % 2 == 0 else (
          args.processes, 1)
      rates = {n: train_rate(n, args.steps, bindings, work_dir)
               for n in order}
      runs.append({'steps_per_s': {str(n): r for n, r in rates.items()},
                   'ratio': rates[args.processes] / rates[1]})
      print(f'round {round_index + 1}: 1 process {rates[1]:.2f} steps/s, '
            f'{args.processes} processes {rates[args.processes]:.2f} '
            f'steps/s', flush=True)
  ratios = [r['ratio'] for r in runs]
  record = {
      'machine': harness.machine_info(),
      'config': {'processes': args.processes, 'steps': args.steps,
                 'bindings': args.bindings, 'global_batch_fixed': True},
      'runs': runs,
      'ratio_median': statistics.median(ratios),
      'ratio_range': [min(ratios), max(ratios)],
  }
  harness.save_json(record, args.out + '.json')
  print(f'{args.processes} processes / 1 process: steps/s ratio '
        f'{record["ratio_median"]:.2f} (range {min(ratios):.2f}-'
        f'{max(ratios):.2f}); wrote {args.out}.json')


if __name__ == '__main__':
  main()
