"""Import time of trax with and without trax_favor's import hook.

Each measurement is a fresh interpreter. Baseline: `import trax` with the
hook's finder removed from sys.meta_path first (trax as it ships); then
`import trax` with the hook (installed by trax_favor.pth), and
`import trax_favor`. Writes JSON (machine, versions, git SHA).

    python scripts/benchmark_import.py --out results/import_cpu
"""

import argparse
import json
import os
import platform
import subprocess
import sys

CASES = {
    'trax_without_hook': (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
        "if type(f).__name__ != '_TraxFinder']\n"),
    'trax_with_hook': '',
    'trax_favor': None,
}
TIMED = """
import time
start = time.perf_counter()
import {module}
print('SECONDS', time.perf_counter() - start)
"""


def measure(prelude, module):
  code = (prelude or '') + TIMED.format(module=module)
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, check=True)
  line = [l for l in result.stdout.splitlines() if l.startswith('SECONDS')][0]
  return float(line.split()[1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/import_cpu')
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args(argv)
  sha = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True,
                       text=True, check=False,
                       cwd=os.path.dirname(__file__)).stdout.strip()
  record = {'machine': {'platform': platform.platform(),
                        'python': platform.python_version(),
                        'cpu_count': os.cpu_count(), 'git_sha': sha},
            'seconds': {}}
  for name, prelude in CASES.items():
    module = 'trax_favor' if prelude is None else 'trax'
    runs = [measure(prelude, module) for _ in range(args.repeats)]
    record['seconds'][name] = runs
    print(f'{name:20s} ' + ' '.join(f'{s:6.1f}s' for s in runs), flush=True)
  base = min(record['seconds']['trax_without_hook'])
  record['speedup_with_hook'] = base / min(record['seconds']['trax_with_hook'])
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out + '.json', 'w') as f:
    json.dump(record, f, indent=1)
  print(f"speed-up with the hook: {record['speedup_with_hook']:.1f}x")


if __name__ == '__main__':
  sys.exit(main())
