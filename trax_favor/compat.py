"""trax 1.4.1 on current JAX: the only place where trax_favor patches anything.

Trax's last release (1.4.1, 2021) calls JAX APIs that have since changed or
gone. Each fix below is the smallest change that restores one upstream call
and names that call. Rules:

- A fix decides whether it is needed by a version, `hasattr` or a signature,
  never by running JAX code (that would start the backend: on a GPU it
  preallocates memory, and `jax.distributed.initialize()` must come first).
- A fix changes trax's modules only: the name trax looks up (an entry of
  trax's fastmath backend table, a function of a trax module, or the `jax`
  global of one trax module, replaced by a view of jax with one name added).
  No attribute of `jax` itself changes, so other code that feature-detects
  JAX sees JAX as it is.
- Each is applied once; `applied()` says which were needed, and `undone(name)`
  reverts one temporarily (the tests use it to show the fix is needed).

`install_import_hook()` (called by `import trax_favor`) adds a finder to
`sys.meta_path` that acts on trax's own modules only: it applies the fixes
when `trax` finishes importing and speeds up `trax.layers.assert_shape`
(see `_fast_inspect`); it removes itself once both are done. Where trax was
imported before trax_favor, `apply()` (run by trax_favor.layers, models and
data) applies the fixes then.

This module must not import trax, or anything heavy, at module level.
"""

import contextlib
from importlib import metadata
import importlib.abc
import importlib.machinery
import inspect
import re
import sys
import types

_APPLIED = {}
_UNDO = {}  # fix name -> [(owner, key, old value or _MISSING)]
_MISSING = object()


def applied():
  """{fix name: True if the fix was installed, False if not needed}."""
  return dict(_APPLIED)


def _fix(name):
  """Registers a fix; it runs once, and records whether it patched."""
  def wrap(fn):
    def run():
      if name not in _APPLIED:
        _APPLIED[name] = bool(fn(lambda *change: _patch(name, *change)))
    _FIXES.append(run)
    return run
  return wrap


def _get(owner, key):
  if isinstance(owner, dict):
    return owner.get(key, _MISSING)
  return getattr(owner, key, _MISSING)


def _set(owner, key, value):
  if isinstance(owner, dict):
    if value is _MISSING:
      owner.pop(key, None)
    else:
      owner[key] = value
  elif value is _MISSING:
    delattr(owner, key)
  else:
    setattr(owner, key, value)


def _patch(name, owner, key, value):
  """Sets owner[key] / owner.key, remembering the old value for `undone`."""
  _UNDO.setdefault(name, []).append((owner, key, _get(owner, key)))
  _set(owner, key, value)
  return True


@contextlib.contextmanager
def undone(name):
  """Temporarily reverts one applied fix (for tests that show it is needed)."""
  changes = _UNDO.get(name, [])
  current = [(owner, key, _get(owner, key)) for owner, key, _ in changes]
  for owner, key, old in changes:
    _set(owner, key, old)
  try:
    yield bool(changes)
  finally:
    for owner, key, value in current:
      _set(owner, key, value)


def _version(package):
  """(major, minor, patch) of an installed package, or None."""
  try:
    found = re.match(r'(\d+)\.(\d+)\.(\d+)', metadata.version(package))
  except metadata.PackageNotFoundError:
    return None
  return tuple(int(x) for x in found.groups()) if found else None


class _ModuleView(types.ModuleType):
  """A module that adds names to another and forwards every other lookup.

  Installed as the `jax` global of one trax module, it gives that module a
  name jax no longer has without adding it to jax itself.
  """

  def __init__(self, module, **extra):
    super().__init__(module.__name__, module.__doc__)
    self.__dict__.update(extra)
    self._module = module

  def __getattr__(self, name):
    return getattr(self._module, name)


_FIXES = []


# -- trax.fastmath.numpy.tree_unflatten --------------------------------------
class _MembersByValue(list):
  """A list whose `in` never compares arrays (jax raises on `array == ()`)."""

  def __contains__(self, item):
    if hasattr(item, 'shape') and hasattr(item, 'dtype'):
      return any(item is c for c in self)
    return any(item == c for c in self)


@_fix('tree_unflatten')
def _fix_tree_unflatten(patch):
  # Repairs trax.fastmath.numpy.tree_unflatten (used by Loop checkpoint
  # restore and init_from_file): `tree in copy_from_tree` compares a jax Array
  # with (), which raises TypeError on every jax with Python 3.11 wheels.
  import importlib  # pylint: disable=g-import-not-at-top
  from trax import fastmath  # pylint: disable=g-import-not-at-top
  # The module itself: the attribute trax.fastmath.numpy is the backend's np.
  fnp = importlib.import_module('trax.fastmath.numpy')
  # trax <= 1.4.1 tests `tree in copy_from_tree`; later trax may not.
  if _version('trax') is None or _version('trax') > (1, 4, 1):
    return False
  original = fnp.tree_unflatten

  def tree_unflatten(flat, tree, copy_from_tree=None):
    if copy_from_tree is not None:
      copy_from_tree = _MembersByValue(copy_from_tree)
    return original(flat, tree, copy_from_tree=copy_from_tree)

  patch(fnp, 'tree_unflatten', tree_unflatten)  # its recursion looks it up
  return patch(fastmath, 'tree_unflatten', tree_unflatten)


# -- trax.fastmath.cond ------------------------------------------------------
@_fix('cond_per_branch_operands')
def _fix_cond(patch):
  # Repairs trax.fastmath.cond(pred=, true_operand=, true_fun=, false_operand=,
  # false_fun=) as called by tl.SelfAttention / tl.LSHSelfAttention predict
  # mode and LSH bucketing: jax >= 0.8 lax.cond lost per-branch operands.
  from trax.fastmath import jax as trax_jax  # pylint: disable=g-import-not-at-top
  parameters = inspect.signature(trax_jax.JAX_BACKEND['cond']).parameters
  if 'true_operand' in parameters or any(
      p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return False  # the old keywords are still taken
  original = trax_jax.JAX_BACKEND['cond']

  def cond(*args, **kwargs):
    if 'true_operand' not in kwargs:
      return original(*args, **kwargs)
    true_fun, false_fun = kwargs['true_fun'], kwargs['false_fun']
    return original(kwargs['pred'], lambda ops: true_fun(ops[0]),
                    lambda ops: false_fun(ops[1]),
                    (kwargs['true_operand'], kwargs['false_operand']))

  return patch(trax_jax.JAX_BACKEND, 'cond', cond)


# -- trax.fastmath.stop_gradient ---------------------------------------------
@_fix('stop_gradient_of_python_scalars')
def _fix_stop_gradient(patch):
  # Repairs trax.fastmath.stop_gradient(seqlen) in the predict mode of
  # tl.SelfAttention / tl.LSHSelfAttention (`q_len=stop_gradient(seqlen)` then
  # `np.arange(q_len)`): since jax 0.8 lax.stop_gradient turns a Python int
  # into a traced array. A Python number has no gradient: return it as is.
  from trax.fastmath import jax as trax_jax  # pylint: disable=g-import-not-at-top
  if (_version('jax') or (0, 8, 0)) < (0, 8, 0):
    return False  # before jax 0.8 it returned Python numbers unchanged
  original = trax_jax.JAX_BACKEND['stop_gradient']

  def stop_gradient(x):
    if isinstance(x, (bool, int, float)):
      return x
    return original(x)

  return patch(trax_jax.JAX_BACKEND, 'stop_gradient', stop_gradient)


# -- trax.layers.acceleration: jax.device_put_replicated -----------------------
@_fix('device_put_replicated')
def _fix_device_put_replicated(patch):
  # Repairs trax.layers.acceleration.for_n_devices (multi-device training),
  # which calls jax.device_put_replicated, removed from jax. Replicating from a
  # host array lets pmap place one copy per device.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from trax.layers import acceleration  # pylint: disable=g-import-not-at-top
  if hasattr(jax, 'device_put_replicated'):
    return False

  def device_put_replicated(x, devices):
    x = np.asarray(x)
    return np.broadcast_to(x, (len(devices),) + x.shape)

  return patch(acceleration, 'jax',
               _ModuleView(jax, device_put_replicated=device_put_replicated))


# -- trax.fastmath.pmap -------------------------------------------------------
@_fix('pmap_single_device_inputs')
def _fix_pmap_committed_inputs(patch):
  # Repairs multi-device training (trax.optimizers.trainer.Trainer.one_step,
  # `fastmath.pmap(update_fn)(weights_and_slots, ...)`): trax keeps replicated
  # optimizer slots on one device (`tl.on_cpu(tl.for_n_devices(slots))`), and
  # current pmap rejects arrays committed to a single device ("Sharding passed
  # to jit does not match"). Such arrays are re-placed one slice per device;
  # other inputs pass unchanged, so on one device the wrapper changes nothing.
  import jax  # pylint: disable=g-import-not-at-top
  from trax.fastmath import jax as trax_jax  # pylint: disable=g-import-not-at-top
  if (_version('jax') or (0, 8, 0)) < (0, 8, 0):
    return False  # measured failing on 0.10.2; 0.7.2 and older accepted them
  original = trax_jax.JAX_BACKEND['pmap']

  def pmap(fun, *args, **kwargs):
    mapped = original(fun, *args, **kwargs)
    devices = kwargs.get('devices') or jax.local_devices()
    sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(list(devices), ('devices',)),
        jax.sharding.PartitionSpec('devices'))

    def spread(x):
      if (isinstance(x, jax.Array) and len(x.sharding.device_set) == 1
          and x.ndim and x.shape[0] == len(devices)):
        return jax.device_put(x, sharding)
      return x

    def call(*call_args):
      return mapped(*jax.tree.map(spread, call_args))
    return call

  return patch(trax_jax.JAX_BACKEND, 'pmap', pmap)


# -- trax.supervised.trainer_lib: jax.xla_computation ------------------------
@_fix('xla_computation')
def _fix_xla_computation(patch):
  # Repairs Trainer.save_computation_graphs in trax.supervised.trainer_lib
  # (`jax.xla_computation(f)(batch, weights=..., ...)` then `.as_hlo_text()`,
  # `.as_hlo_dot_graph()`): jax.xla_computation was deleted in jax 0.4.35.
  import jax  # pylint: disable=g-import-not-at-top
  from trax.supervised import trainer_lib  # pylint: disable=g-import-not-at-top
  if hasattr(jax, 'xla_computation'):
    return False

  def xla_computation(fun):
    return lambda *args, **kwargs: jax.jit(fun).lower(
        *args, **kwargs).compiler_ir('hlo')

  return patch(trainer_lib, 'jax',
               _ModuleView(jax, xla_computation=xla_computation))


# -- trax/trainer.py: from jax.lib import xla_extension -----------------------
def import_trainer():
  """Imports and returns `trax.trainer` (the stock training CLI's module).

  trax/trainer.py starts with `from jax.lib import xla_extension as xc`, a
  module gone since jax 0.9; it uses xc.get_distributed_runtime_{service,
  client}, which now live in jaxlib's `_jax` extension. Where the module is
  missing it is offered under that name only while trax.trainer executes, so
  `jax.lib` is left as it was.
  """
  import_trax()
  if 'trax.trainer' in sys.modules:
    return sys.modules['trax.trainer']
  import importlib  # pylint: disable=g-import-not-at-top
  try:
    import jax.lib.xla_extension  # pylint: disable=g-import-not-at-top,unused-import
    return importlib.import_module('trax.trainer')
  except ImportError:
    pass
  import jax.lib  # pylint: disable=g-import-not-at-top
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  sys.modules['jax.lib.xla_extension'] = _jax
  jax.lib.xla_extension = _jax
  try:
    return importlib.import_module('trax.trainer')
  finally:
    del sys.modules['jax.lib.xla_extension']
    del jax.lib.xla_extension


def apply():
  """Applies every fix (once); returns applied()."""
  for fix in _FIXES:
    fix()
  return applied()


# -- import hook -------------------------------------------------------------
def _shallow_stack(context=1):
  """inspect.stack() without source context: frame records, cheaply.

  trax.layers.assert_shape calls `inspect.getframeinfo(inspect.stack()[1][0])`
  in every decorated layer at import; inspect.stack() reads the source of
  every frame on the stack, and made `import trax` take over a minute.
  """
  del context
  frame = sys._getframe(1)  # pylint: disable=protected-access
  records = []
  while frame is not None:
    records.append((frame, frame.f_code.co_filename, frame.f_lineno,
                    frame.f_code.co_name, None, None))
    frame = frame.f_back
  return records


class _AfterExec(importlib.abc.Loader):
  """Wraps a module's loader and runs `after(module)` once it has executed."""

  def __init__(self, loader, after):
    self._loader, self._after = loader, after

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    self._loader.exec_module(module)
    self._after(module)


def _fast_inspect(module):
  # Speeds up trax.layers.assert_shape: its `inspect` becomes a copy whose
  # stack() skips reading source files; nothing else in it changes.
  shim = types.ModuleType('inspect')
  shim.__dict__.update(inspect.__dict__)
  shim.stack = _shallow_stack
  module.inspect = shim


def _after_trax(module):
  del module
  apply()
  _remove_import_hook()


_AFTER_IMPORT = {
    'trax.layers.assert_shape': _fast_inspect,
    'trax': _after_trax,
}


class _TraxFinder(importlib.abc.MetaPathFinder):
  """Meta-path finder that post-processes the modules in _AFTER_IMPORT."""

  def find_spec(self, fullname, path, target=None):
    if fullname not in _AFTER_IMPORT:
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is None or spec.loader is None:
      return None
    spec.loader = _AfterExec(spec.loader, _AFTER_IMPORT[fullname])
    return spec


def _remove_import_hook():
  sys.meta_path[:] = [f for f in sys.meta_path
                      if not isinstance(f, _TraxFinder)]


def install_import_hook():
  """Installs the finder until trax is imported (idempotent).

  Where trax is imported already, applies the fixes instead.
  """
  if 'trax' in sys.modules:
    apply()
  elif not any(isinstance(f, _TraxFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _TraxFinder())


def import_trax():
  """Imports trax (fast, through the finder) with every fix applied."""
  install_import_hook()
  import trax  # pylint: disable=g-import-not-at-top,unused-import
  apply()
  return sys.modules['trax']


@contextlib.contextmanager
def jit_with_options(compiler_options):
  """Within this context, trax's `fastmath.jit` passes compiler_options.

  Trax's training and eval steps are jitted by trax (`fastmath.jit`, an
  entry of its backend table); the programs they compile keep the options
  after the context ends. Used by trax_favor's training for the CPU options
  of `trax_favor.xla_cpu`; an explicit compiler_options argument wins.
  """
  from trax.fastmath import jax as trax_jax  # pylint: disable=g-import-not-at-top
  original = trax_jax.JAX_BACKEND['jit']

  def jit(*args, **kwargs):
    kwargs.setdefault('compiler_options', dict(compiler_options))
    return original(*args, **kwargs)

  trax_jax.JAX_BACKEND['jit'] = jit
  try:
    yield
  finally:
    trax_jax.JAX_BACKEND['jit'] = original
