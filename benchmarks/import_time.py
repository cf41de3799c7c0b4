"""Import time of trax, with and without trax_favor imported first.

Each measurement is a fresh interpreter, timing one statement:

  trax                    `import trax`, as trax ships (nothing before it)
  trax_after_trax_favor   `import trax` after `import trax_favor` (whose
                          import finder speeds up trax.layers.assert_shape;
                          see docs/compat.md)
  trax_favor              `import trax_favor` (imports neither JAX nor trax)
  trax_favor_layer        `import trax_favor; trax_favor.FavorSelfAttention`
                          (trax, through trax_favor, with the fixes)

Writes JSON (machine, versions, git SHA).

    python -m benchmarks.import_time --out results/import_cpu
"""

import argparse
import subprocess
import sys

from benchmarks import harness

CASES = {  # name: (untimed prelude, timed statement)
    'trax': ('', 'import trax'),
    'trax_after_trax_favor': ('import trax_favor', 'import trax'),
    'trax_favor': ('', 'import trax_favor'),
    'trax_favor_layer': ('', 'import trax_favor; trax_favor.FavorSelfAttention'),
}
TIMED = """{prelude}
import time
start = time.perf_counter()
{statement}
print('SECONDS', time.perf_counter() - start)
"""


def measure(prelude, statement):
  code = TIMED.format(prelude=prelude, statement=statement)
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, check=True, cwd=harness.REPO)
  line = [l for l in result.stdout.splitlines() if l.startswith('SECONDS')][0]
  return float(line.split()[1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/import_cpu')
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args(argv)
  record = {'machine': harness.machine_info(), 'config': vars(args),
            'seconds': {}}
  for name, (prelude, statement) in CASES.items():
    runs = [measure(prelude, statement) for _ in range(args.repeats)]
    record['seconds'][name] = runs
    print(f'{name:22s} ' + ' '.join(f'{s:6.2f}s' for s in runs), flush=True)
  seconds = {name: min(runs) for name, runs in record['seconds'].items()}
  record['speedup_trax_after_trax_favor'] = (
      seconds['trax'] / seconds['trax_after_trax_favor'])
  harness.save_json(record, args.out + '.json')
  print('import trax after import trax_favor: '
        f"{record['speedup_trax_after_trax_favor']:.1f}x faster")


if __name__ == '__main__':
  sys.exit(main())
