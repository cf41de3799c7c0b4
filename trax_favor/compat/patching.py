"""The fix registry: each fix runs once, records whether it patched, and
can be undone for a test (`undone`)."""

import contextlib
from importlib import metadata
import re
import types

_APPLIED = {}
_UNDO = {}  # fix name -> [(owner, key, old value or _MISSING)]
_MISSING = object()


def applied():
  """{fix name: True if the fix was installed, False if not needed}."""
  return dict(_APPLIED)


def fix(name):
  """Registers a fix; it runs once, and records whether it patched."""
  def wrap(fn):
    def run():
      if name not in _APPLIED:
        _APPLIED[name] = bool(fn(lambda *change: _patch(name, *change)))
    FIXES.append(run)
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


def version(package):
  """(major, minor, patch) of an installed package, or None."""
  try:
    found = re.match(r'(\d+)\.(\d+)\.(\d+)', metadata.version(package))
  except metadata.PackageNotFoundError:
    return None
  return tuple(int(x) for x in found.groups()) if found else None


class ModuleView(types.ModuleType):
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


FIXES = []


def apply():
  """Applies every registered fix (once); returns applied()."""
  for run in FIXES:
    run()
  return applied()
