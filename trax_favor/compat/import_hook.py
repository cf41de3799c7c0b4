"""The import finder: applies the fixes when trax is imported, and speeds up
`trax.layers.assert_shape`; it removes itself once trax has loaded."""

import importlib.abc
import importlib.machinery
import inspect
import sys
import types

from trax_favor.compat import patching


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
  patching.apply()
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

  Where trax is imported already, applies the fixes instead; where it is
  blocked (None in sys.modules), does nothing.
  """
  if sys.modules.get('trax') is not None:
    patching.apply()
  elif 'trax' not in sys.modules and not any(isinstance(f, _TraxFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _TraxFinder())


def import_trax():
  """Imports trax (fast, through the finder) with every fix applied."""
  install_import_hook()
  import trax  # pylint: disable=g-import-not-at-top,unused-import
  patching.apply()
  return sys.modules['trax']


