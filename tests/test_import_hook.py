"""What `import trax_favor` changes in the interpreter: exactly one finder
first on sys.meta_path, which acts on trax's own modules only and removes
itself once trax has loaded (the trax_favor docstring says so), and
nothing else that is global."""

import json
import subprocess
import sys

import gin_helpers

_SNAPSHOT = '''
import json, logging, os, signal, sys, warnings
def snapshot():
  return {
      'meta_path': [type(f).__name__ for f in sys.meta_path],
      'path_hooks': len(sys.path_hooks), 'path': list(sys.path),
      'env': dict(os.environ),
      'signals': {s.name: repr(signal.getsignal(s))
                  for s in (signal.SIGINT, signal.SIGTERM)},
      'warnings': len(warnings.filters),
      'logging': len(logging.getLogger().handlers),
      'recursion': sys.getrecursionlimit(),
      'heavy': sorted(m for m in ('jax', 'trax', 'tensorflow', 'gym')
                      if m in sys.modules),
  }
before = snapshot()
import trax_favor
after = snapshot()
import importlib.machinery
finder = sys.meta_path[0]
trax_dir = importlib.machinery.PathFinder.find_spec(
    'trax').submodule_search_locations[0]
paths = {'trax.layers': [trax_dir],
         'trax.layers.assert_shape': [os.path.join(trax_dir, 'layers')]}
asked = {name: finder.find_spec(name, paths.get(name)) is not None
         for name in ('trax', 'trax.layers.assert_shape', 'numpy', 'json',
                      'trax.layers', 'jax')}
print(json.dumps({'before': before, 'after': after, 'asked': asked}))
'''


def _run(code):
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, cwd=gin_helpers.REPO, check=False,
                          env={'PYTHONPATH': gin_helpers.REPO,
                               'PATH': '/usr/bin:/bin'})
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_adds_one_finder_and_changes_nothing_else():
  found = _run(_SNAPSHOT)
  before, after = found['before'], found['after']
  assert after['meta_path'] == ['_TraxFinder'] + before['meta_path']
  assert after['heavy'] == [] == before['heavy']
  for key in before:
    if key != 'meta_path':
      assert after[key] == before[key], key


def test_the_finder_acts_on_trax_and_its_assert_shape_only():
  asked = _run(_SNAPSHOT)['asked']
  assert asked == {'trax': True, 'trax.layers.assert_shape': True,
                   'numpy': False, 'json': False, 'trax.layers': False,
                   'jax': False}
