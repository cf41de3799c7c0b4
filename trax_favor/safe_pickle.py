"""Loading a checkpoint's pickle without running code from it.

trax's checkpoint files (`model.pkl.gz`, `Layer.save_to_file`'s file) are
pickles, and a pickle may call any function it names: `pickle.load` of a
shared file can run `os.system`. `load` / `loads` read them with an
unpickler that admits exactly the globals those files contain, found by
tracing every checkpoint this project writes (FavorSelfAttention,
ReformerLM and PerformerLM with FAVOR, with and without relative
positions, through `save_to_file`; trax_favor's training; trax's stock
trainer, Loop and old Trainer formats), plus the scalar types and
bfloat16 a user's signature or state may hold. Each stands for a function
that checks its arguments, or may only be an argument (a value that is
never called):

  numpy.dtype               numeric dtypes only (bool, int, uint, float,
                            complex, bfloat16), always a fresh copy: an
                            object dtype could carry any object, and BUILD
                            on numpy's shared dtype would change it for
                            the whole process
  numpy.ndarray             only the type given to _reconstruct
  numpy.core.multiarray._reconstruct
                            only (ndarray, (0,), b'b'), what numpy writes:
                            an empty array, filled by BUILD
  numpy.core.multiarray.scalar
                            a numeric dtype and its bytes (numpy scalars
                            in the training history)
  numpy.core.numeric._frombuffer
                            bytes, a numeric dtype, a shape, 'C' or 'F'
                            (arrays pickled with protocol 5)
  jax._src.array._reconstruct_array
                            a jax.Array: the checked NumPy array above and
                            its weak type, put on the device as jax does
  collections.defaultdict   only defaultdict(list) (the history's metrics)
  builtins.list             only as that defaultdict's factory
  numpy.int32, numpy.float32, ...
                            numpy's numeric scalar types, as values only
                            (a signature ShapeDtype(shape, np.int32) holds
                            the type)
  ml_dtypes.bfloat16        as a value and as numpy.dtype's argument: jax's
                            bfloat16 arrays (2-byte numbers, no objects)
  jax.numpy.int32, jax.numpy.bfloat16, ...
                            jax's scalar types, as values only (signatures
                            made with them)
  trax.shapes.ShapeDtype    input signatures: attributes shape and dtype
  trax.supervised.history.History
                            trax's old Trainer format: attribute _values

(numpy.core.* is also accepted under numpy 2's name, numpy._core.*). Any
other global is refused before its module is imported (an import can run
code too) with `UnsafeCheckpoint`, naming the file and the global.

What a pickle does with the globals is restricted too, so this unpickler
subclasses pickle's Python implementation, whose opcodes can be overridden
(the C one only lets `find_class` be):
  REDUCE  calls only the checking functions above;
  NEWOBJ  makes only ShapeDtype and History, without arguments (INST and
          OBJ, protocols 0 and 1, make nothing);
  BUILD   sets only an array's state (a checked dtype and bytes), a
          dtype's (its byte order may differ, nothing else: forged flags
          make numpy read float64 data as object pointers) and the listed
          attributes of ShapeDtype and History (never those of a class).
No object dtype can arise, so no array carries a callable.

A file that breaks these rules raises `UnsafeCheckpoint` (a ValueError);
one malformed in another way raises pickle.UnpicklingError or EOFError, as
damaged files do. Pickle protocols 3 to 5 are read (trax writes 5; below
3, bytes need `_codecs.encode`, refused). Memory is not bounded: a file
can still be large. This module imports neither trax nor jax until a file
names them.
"""

import collections
import importlib
import io
import pickle
import sys

import numpy as np


class UnsafeCheckpoint(ValueError):
  """A checkpoint that names a global, or builds an object, outside the
  allow-list; str() names the file and what was refused."""


class _Refused(Exception):
  """What was refused, before the file's name is known."""


_NUMERIC_KINDS = 'biufc'  # bool, int, uint, float, complex
_BYTE_ORDERS = ('<', '>', '|', '=')


def _bfloat16():
  """jax's bfloat16 type (ml_dtypes'), or None before anything imported it."""
  return getattr(sys.modules.get('ml_dtypes'), 'bfloat16', None)


def _check_dtype(dtype):
  if (not isinstance(dtype, np.dtype)
      or not (dtype.kind in _NUMERIC_KINDS
              or (dtype.type is _bfloat16() and dtype.itemsize == 2))
      or dtype.hasobject or dtype.fields is not None
      or dtype.subdtype is not None):
    raise _Refused(f'numpy dtype {dtype!r} (only numeric dtypes load: an '
                   'object dtype could carry any object)')
  return dtype


def _check_array_state(state):
  """numpy's ndarray state: (1, shape, dtype, is_fortran, raw bytes)."""
  if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1
          and isinstance(state[1], tuple)
          and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                  for n in state[1])
          and isinstance(state[3], bool)
          and isinstance(state[4], (bytes, bytearray))):
    raise _Refused('an ndarray state other than numpy\'s (1, shape, dtype, '
                   'is_fortran, bytes)')
  _check_dtype(state[2])


def _numpy_core(module):
  try:
    return importlib.import_module(f'numpy._core.{module}')
  except ImportError:  # numpy 1.x
    return importlib.import_module(f'numpy.core.{module}')


class _ArrayType:
  """Stands for numpy.ndarray: an argument of `_reconstruct` only."""
  __slots__ = ()

  def __repr__(self):
    return 'numpy.ndarray'


_NDARRAY = _ArrayType()


def _dtype(spec=None, align=False, copy=True, *rest):
  del copy  # always a copy: BUILD must not reach numpy's shared dtypes
  bfloat16 = spec is not None and spec is _bfloat16()
  if (not (isinstance(spec, str) or bfloat16) or not isinstance(align, bool)
      or rest):
    raise _Refused(f'numpy.dtype{(spec, align, *rest)!r}')
  return _check_dtype(np.dtype(spec, align, True))


def _reconstruct(*args):
  if args != (_NDARRAY, (0,), b'b'):
    raise _Refused(f'numpy _reconstruct{args!r}')
  return np.ndarray((0,), np.int8)  # what numpy's _reconstruct gives


def _scalar(*args):
  if not (len(args) == 2 and isinstance(args[1], bytes)
          and len(args[1]) == _check_dtype(args[0]).itemsize):
    raise _Refused('a numpy scalar other than (numeric dtype, its bytes)')
  return _numpy_core('multiarray').scalar(*args)


def _frombuffer(*args):
  if not (len(args) == 4
          and isinstance(args[0], (bytes, bytearray, pickle.PickleBuffer))
          and isinstance(args[2], tuple) and args[3] in ('C', 'F')):
    raise _Refused('a numpy _frombuffer other than (bytes, dtype, shape, '
                   'order)')
  _check_dtype(args[1])
  return _numpy_core('numeric')._frombuffer(*args)  # pylint: disable=protected-access


def _jax_array(*args):
  if not (len(args) == 4 and args[0] is _reconstruct
          and isinstance(args[3], dict) and set(args[3]) <= {'weak_type'}
          and all(isinstance(v, bool) for v in args[3].values())):
    raise _Refused('a jax.Array other than a NumPy array and its weak type')
  _check_array_state(args[2])
  _reconstruct(*args[1])
  array = importlib.import_module('jax._src.array')
  return array._reconstruct_array(*args)  # pylint: disable=protected-access


def _defaultdict(*args):
  if args != (list,):
    raise _Refused(f'collections.defaultdict{args!r} (only of list)')
  return collections.defaultdict(list)


# ShapeDtype(shape, np.int32) keeps the type: a value, never called.
_SCALAR_TYPES = ('bool', 'bool_', 'int8', 'int16', 'int32', 'int64', 'uint8',
                 'uint16', 'uint32', 'uint64', 'float16', 'float32',
                 'float64', 'complex64', 'complex128')
# The globals a file may name, each standing for what it is replaced by.
_GLOBALS = {
    ('numpy', 'dtype'): _dtype,
    ('numpy', 'ndarray'): _NDARRAY,
    ('numpy.core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy.core.multiarray', 'scalar'): _scalar,
    ('numpy._core.multiarray', 'scalar'): _scalar,
    ('numpy.core.numeric', '_frombuffer'): _frombuffer,
    ('numpy._core.numeric', '_frombuffer'): _frombuffer,
    ('jax._src.array', '_reconstruct_array'): _jax_array,
    ('collections', 'defaultdict'): _defaultdict,
    ('builtins', 'list'): list,
    **{('numpy', name): getattr(np, name) for name in _SCALAR_TYPES
       if hasattr(np, name)},
}
# What REDUCE may call: the checking functions above, nothing else.
_CALLABLE = (_dtype, _reconstruct, _scalar, _frombuffer, _jax_array,
             _defaultdict)
# Classes made by NEWOBJ and filled by BUILD: the attributes they may get.
_CLASSES = {
    ('trax.shapes', 'ShapeDtype'): ('shape', 'dtype'),
    ('trax.supervised.history', 'History'): ('_values',),
}
# Values whose module is imported only when a file names them.
_LAZY = (tuple(_CLASSES) + (('ml_dtypes', 'bfloat16'),)
         + tuple(('jax.numpy', name) for name in _SCALAR_TYPES + ('bfloat16',)))


def _attributes(cls):
  """The attributes BUILD may set on instances of `cls`, or None."""
  for (module, name), attributes in _CLASSES.items():
    if getattr(sys.modules.get(module), name, None) is cls:
      return attributes
  return None


def _set_attributes(obj, state, allowed):
  """BUILD of an allowed class: a dict, or (dict or None, slots dict)."""
  parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
  items = {}
  for part in parts:
    if part is not None and not isinstance(part, dict):
      raise _Refused(f'a {type(obj).__name__} state of type '
                     f'{type(part).__name__}')
    items.update(part or {})
  for key, value in items.items():
    if key not in allowed:
      raise _Refused(f'attribute {key!r} of {type(obj).__name__}')
    object.__setattr__(obj, key, value)


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """pickle's Python unpickler, with the allow-list above."""

  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def find_class(self, module, name):
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    if (module, name) in _LAZY:  # imported only when a file names it
      return getattr(importlib.import_module(module), name)
    raise _Refused(f'global {module}.{name}')

  def load_reduce(self):
    if not any(self.stack[-2] is f for f in _CALLABLE):
      raise _Refused(f'calling {self.stack[-2]!r}')
    super().load_reduce()
  dispatch[pickle.REDUCE[0]] = load_reduce

  def _instantiate(self, klass, args):  # INST and OBJ, of protocols 0 and 1
    raise _Refused(f'creating {klass!r} (protocol 0/1 objects)')

  def load_build(self):
    state = self.stack.pop()
    obj = self.stack[-1]
    if type(obj) is np.ndarray:  # pylint: disable=unidiomatic-typecheck
      _check_array_state(state)
      obj.__setstate__(state)
    elif isinstance(obj, np.dtype):
      expected = obj.__reduce__()[2]
      if not (isinstance(state, tuple) and len(state) == len(expected)
              and state[1] in _BYTE_ORDERS
              and state[:1] + state[2:] == expected[:1] + expected[2:]):
        raise _Refused(f'a dtype state {state!r} (only the byte order may '
                       'differ from the dtype\'s own)')
      obj.__setstate__(state)
      _check_dtype(obj)
    elif _attributes(type(obj)) is not None:
      _set_attributes(obj, state, _attributes(type(obj)))
    else:
      raise _Refused(f'setting the state of {type(obj).__name__} {obj!r}')
  dispatch[pickle.BUILD[0]] = load_build

  def _new(self, cls, args, kwargs):
    if args or kwargs or _attributes(cls) is None:
      raise _Refused(f'creating {cls!r} from {args!r} {kwargs!r}')
    self.append(cls.__new__(cls))

  def load_newobj(self):
    args = self.stack.pop()
    self._new(self.stack.pop(), args, {})
  dispatch[pickle.NEWOBJ[0]] = load_newobj

  def load_newobj_ex(self):
    kwargs = self.stack.pop()
    args = self.stack.pop()
    self._new(self.stack.pop(), args, kwargs)
  dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex


def load(file, source=None):
  """The object pickled in `file` (a binary file object), loaded without
  running code from it.

  Args:
    file: an open binary file (e.g. a gzip.GzipFile), read to the pickle's
      end.
    source: the file's name for messages (default: file.name).

  Raises:
    UnsafeCheckpoint: the pickle names a global, or builds an object,
      outside the allow-list (nothing it names has run).
    pickle.UnpicklingError, EOFError: a malformed or truncated pickle.
  """
  source = source or getattr(file, 'name', None) or '<pickle>'
  try:
    return _Unpickler(file, fix_imports=False).load()
  except _Refused as e:
    raise UnsafeCheckpoint(
        f'{source}: refused {e}; a checkpoint may hold arrays, numbers, '
        'containers and trax\'s signatures and history, never code (see '
        'trax_favor.safe_pickle): do not unpickle this file') from None
  except (pickle.UnpicklingError, EOFError):
    raise
  except Exception as e:  # pylint: disable=broad-except
    # An allowed call or state that does not fit (a wrong shape, a bad
    # argument count): malformed, like a damaged file.
    raise pickle.UnpicklingError(f'{type(e).__name__}: {e}') from e


def loads(data, source='<bytes>'):
  """`load` of a pickle held in bytes."""
  return load(io.BytesIO(data), source)
