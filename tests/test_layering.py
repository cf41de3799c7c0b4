"""The package's floors, checked by parsing every module's imports (ast, at
module level and inside functions): see docs/design.md.

  0  checks, safe_pickle, model_files   pure Python / NumPy
  1  ops                                pure JAX; no trax, no compat
  1  compat                             the trax fixes (trax's modules only)
  2  layers, models, data, decoding, configurables
  3  run                                the run directory, loop, commands
  4  train, sample, trax_trainer        entry modules: flags, then run/

A module imports trax_favor modules of its own floor or below; nothing in
the package imports benchmarks/ or experiments/; only compat assigns
attributes of trax's modules.
"""

import ast
import os
import pathlib

import pytest

import gin_helpers

PACKAGE = os.path.join(gin_helpers.REPO, 'trax_favor')
FLOORS = {
    'checks': 0, 'safe_pickle': 0, 'model_files': 0,
    'ops': 1, 'compat': 1,
    'layers': 2, 'models': 2, 'data': 2, 'decoding': 2, 'configurables': 2,
    'run': 3,
    'train': 4, 'sample': 4, 'trax_trainer': 4, '__init__': 4,
}
# Third-party packages that know trax: never in the pure-JAX floor.
TRAX_WORLD = ('trax', 'tensorflow', 'tensorflow_datasets', 'gym', 'gin')


def _modules():
  """{dotted name: path} of every module in the package."""
  found = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
        found[rel.replace(os.sep, '.').removesuffix('.__init__')] = path
  return found


MODULES = _modules()


def _tree(path):
  with open(path) as f:
    return ast.parse(f.read(), path)


def _imports(path):
  """The dotted names a module imports (`from a import b` gives a.b)."""
  names = []
  for node in ast.walk(_tree(path)):
    if isinstance(node, ast.Import):
      names.extend(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.extend(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def _part(name):
  """trax_favor.run.loop -> 'run'; trax_favor -> '__init__'."""
  parts = name.split('.')
  return parts[1] if len(parts) > 1 else '__init__'


def test_every_package_part_has_a_floor():
  assert {_part(name) for name in MODULES} <= set(FLOORS)


@pytest.mark.parametrize('name', sorted(MODULES))
def test_imports_stay_at_or_below_the_floor(name):
  floor = FLOORS[_part(name)]
  for imported in _imports(MODULES[name]):
    top = imported.split('.')[0]
    assert top not in ('benchmarks', 'experiments'), (name, imported)
    if top != 'trax_favor' or imported == 'trax_favor':
      continue
    target = _part(imported)
    assert target in FLOORS, (name, imported)
    assert FLOORS[target] <= floor, (
        f'{name} (floor {floor}) imports {imported} (floor {FLOORS[target]})')


@pytest.mark.parametrize('name', sorted(n for n in MODULES
                                        if _part(n) == 'ops'))
def test_ops_are_pure_jax(name):
  """ops import no trax (nor TensorFlow, gym, gin) and nothing of
  trax_favor but ops and the pure-Python floor."""
  for imported in _imports(MODULES[name]):
    top = imported.split('.')[0]
    assert top not in TRAX_WORLD, (name, imported)
    if top == 'trax_favor':
      assert FLOORS[_part(imported)] == 0 or _part(imported) == 'ops', (
          name, imported)


def _trax_names(tree):
  """Names a module binds to trax's modules or their contents."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update((a.asname or a.name).split('.')[0] for a in node.names
                   if a.name.split('.')[0] == 'trax')
    elif isinstance(node, ast.ImportFrom) and (node.module or '').split(
        '.')[0] == 'trax':
      names.update(a.asname or a.name for a in node.names)
  return names


def _root(target):
  """The name at the root of `a.b[c].d`, if the chain has an attribute."""
  attribute = False
  while isinstance(target, (ast.Attribute, ast.Subscript)):
    attribute = attribute or isinstance(target, ast.Attribute)
    target = target.value
  return target.id if attribute and isinstance(target, ast.Name) else None


@pytest.mark.parametrize('name', sorted(n for n in MODULES
                                        if _part(n) != 'compat'))
def test_only_compat_changes_trax_modules(name):
  """Outside compat no module assigns (or setattr's) an attribute of a name
  bound to a trax module, or an entry of one of its tables."""
  tree = _tree(MODULES[name])
  trax_names = _trax_names(tree)
  for node in ast.walk(tree):
    targets = []
    if isinstance(node, ast.Assign):
      targets = node.targets
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
      targets = [node.target]
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
          and node.func.id in ('setattr', 'delattr') and node.args
          and isinstance(node.args[0], ast.Name)):
      assert node.args[0].id not in trax_names, (name, node.lineno)
    for target in targets:
      assert _root(target) not in trax_names or _root(target) is None, (
          f'{name}:{node.lineno} assigns into trax module '
          f'{_root(target)}')


def test_at_most_eight_modules_at_the_package_root():
  root = [n for n in os.listdir(PACKAGE)
          if n.endswith('.py') and n != '__init__.py']
  assert len(root) <= 8, sorted(root)


def test_test_module_names_are_unique():
  """tests/ has no __init__.py: pytest imports test files by basename, so
  two files of one name break collection (as a clean clone showed)."""
  tests = pathlib.Path(__file__).parent
  names = [p.name for p in tests.rglob('test_*.py')]
  assert sorted({n for n in names if names.count(n) > 1}) == []
