"""Loading a checkpoint never runs code: every checkpoint we write loads
under safe_pickle's allow-list exactly as pickle loads it, and crafted
pickles (os.system, subprocess, eval, partial, numpy.load, __reduce_ex__,
__setstate__, nested, object arrays, forged dtypes) stop every reader with
one line naming the file and what was refused, without running."""

import copyreg
import functools
import gzip
import io
import os
import pathlib
import pickle
import re
import subprocess
import time

import jax
import numpy as np
import pytest
import trax
from trax import shapes
from trax.data import inputs as trax_inputs
from trax.supervised import training as trax_training

import trax_favor
from trax_favor import compat
from trax_favor import safe_pickle
from trax_favor.run import checkpoints
from trax_favor.run import checkpoints as checkpoint_files
from trax_favor.run import configs
from trax_favor.run import loop as loop_lib

PACKAGE = pathlib.Path(trax_favor.__file__).parent
REPO = PACKAGE.parent
SMALL = ['D_MODEL=32', 'SEQUENCE_LENGTH=64', 'N_LAYERS=1', 'BATCH_SIZE=4',
         'N_RANDOM_FEATURES=16', 'STEPS=2', 'trax_favor.PerformerLM.d_ff=64',
         'trax_favor.PerformerLM.d_qk=16', 'trax_favor.PerformerLM.d_v=16',
         'trax_favor.PerformerLM.n_heads=2',
         'trax_favor.FavorSelfAttention.chunk_size=16']
X = np.random.default_rng(0).standard_normal((2, 12, 16)).astype(np.float32)
TOKENS = np.random.default_rng(1).integers(0, 16, (1, 12)).astype(np.int32)


# -- what a crafted file may try ----------------------------------------------
class Call:
  """Pickles as a call of fn(*args) (its __reduce__)."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return (self.fn, self.args)


class CallEx:
  """Pickles as os.system(command), through __reduce_ex__."""

  def __init__(self, command):
    self.command = command

  def __reduce_ex__(self, protocol):
    return (os.system, (self.command,))


class SetState:
  """Runs code in __setstate__ (pickled by reference to this class)."""

  def __init__(self, marker):
    self.marker = marker

  def __getstate__(self):
    return self.marker

  def __setstate__(self, marker):
    pathlib.Path(marker).touch()


class Forged:
  """Pickles as numpy.dtype('f8') with forged flags: 'holds objects'."""

  def __reduce__(self):
    return (np.dtype, ('f8', False, True), (3, '<', None, None, None, -1, -1,
                                            1))


# PROTO 4, GLOBAL trax.shapes.ShapeDtype, (None, {'__init__': list}), BUILD:
# sets an attribute of the class itself (never unpickle this with pickle).
BUILD_ON_CLASS = (b'\x80\x04ctrax.shapes\nShapeDtype\nN}\x8c\x08__init__'
                  b'cbuiltins\nlist\ns\x86b.')


def _record(history):
  """A training record as trax_favor's Loop writes it."""
  return {'step': 4, 'flat_weights': 2, 'slots_per_task': 2,
          'flat_state': [np.zeros((4, 2), np.float32)], 'flat_eval_state': [],
          'history': history,
          'input_signature': shapes.ShapeDtype((1, 8), np.int32),
          'version_timestamp': 'Mar-10-2021'}


def _with_attribute(obj):
  """obj's pickle, each ShapeDtype in it given one more attribute."""
  class Pickler(pickle.Pickler):
    def reducer_override(self, obj):
      if type(obj) is not shapes.ShapeDtype:  # pylint: disable=unidiomatic-typecheck
        return NotImplemented
      return (copyreg.__newobj__, (shapes.ShapeDtype,),
              (None, {'shape': obj.shape, 'dtype': obj.dtype, 'hacks': 1}))
  buffer = io.BytesIO()
  Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
  return buffer.getvalue()


def payloads(marker):
  """{id: (pickle bytes, what the error names)}; the ones that would run
  code touch `marker` when pickle loads them."""
  command = f'touch {marker}'
  touch = f'open({str(marker)!r}, "w").close()'
  npy = marker.parent / 'objects.npy'
  np.save(npy, np.array([Call(os.system, command)], dtype=object),
          allow_pickle=True)
  running = {
      'os_system': (Call(os.system, command), f'{os.name}.system'),
      'subprocess_popen': (Call(subprocess.Popen, ['touch', str(marker)]),
                           'subprocess.Popen'),
      'builtins_eval': (Call(eval, touch), 'builtins.eval'),
      'builtins_exec': (Call(exec, touch), 'builtins.exec'),
      'partial': (Call(functools.partial(os.system, command)),
                  'functools.partial'),
      'numpy_load_allow_pickle': (Call(np.load, str(npy), None, True),
                                  'numpy.load'),
      'reduce_ex': (CallEx(command), f'{os.name}.system'),
      'setstate': (SetState(str(marker)), 'SetState'),
      'in_dict': ({'flat_state': [np.ones(3), {'a': Call(os.system, command)}]},
                  f'{os.name}.system'),
      'in_tuple': ((1, (np.ones(2), Call(os.system, command))),
                   f'{os.name}.system'),
      'in_object_array': (np.array([1, Call(os.system, command)], object),
                          'dtype'),
      'as_history': (_record(Call(os.system, command)), f'{os.name}.system'),
  }
  found = {k: (pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL), what)
           for k, (v, what) in running.items()}
  found.update({
      'object_array': (pickle.dumps(np.array([1, 'a'], object)), 'dtype'),
      'forged_dtype_flags': (pickle.dumps(Forged()), 'dtype state'),
      'build_on_class': (BUILD_ON_CLASS, 'type'),
      'calling_ndarray': (pickle.dumps(Call(np.ndarray, (2,), 'O')),
                          'calling numpy.ndarray'),
      'shape_dtype_attribute': (_with_attribute(_record(None)),
                                "attribute 'hacks'"),
  })
  return found


RUNS_CODE = ['os_system', 'subprocess_popen', 'builtins_eval', 'builtins_exec',
             'partial', 'numpy_load_allow_pickle', 'reduce_ex', 'setstate',
             'in_dict', 'in_tuple', 'in_object_array', 'as_history']
PAYLOADS = RUNS_CODE + ['object_array', 'forged_dtype_flags', 'build_on_class',
                        'calling_ndarray', 'shape_dtype_attribute']


def _ran(marker, wait=0.0):
  deadline = time.time() + wait
  while not marker.exists() and time.time() < deadline:
    time.sleep(0.05)
  return marker.exists()


@pytest.mark.parametrize('name', RUNS_CODE)
def test_the_payloads_run_code_under_pickle(name, tmp_path):
  """The control: each of these would run its command under pickle.load."""
  marker = tmp_path / 'ran'
  data, _ = payloads(marker)[name]
  pickle.loads(data)
  assert _ran(marker, wait=5.0)


# -- the readers -------------------------------------------------------------
@pytest.fixture(name='layer', scope='module')
def fixture_layer():
  layer = trax_favor.FavorSelfAttention(n_heads=2, d_qk=8, d_v=8,
                                        n_random_features=16, mode='eval')
  layer.init(shapes.signature(X), rng=jax.random.PRNGKey(0))
  return layer


def _in_trax_readers(fn):
  def read(path, layer):
    with compat.safe_unpickling():
      return fn(path, layer)
  return read


def _gzip_path(path):
  gz = path.with_suffix('.pkl.gz')
  gz.write_bytes(gzip.compress(path.read_bytes()))
  return str(gz)


READERS = {
    'safe_pickle.loads': lambda p, _: safe_pickle.loads(p.read_bytes(), str(p)),
    'read_pickle': lambda p, _: checkpoint_files.read_pickle(_gzip_path(p)),
    'load_projections': lambda p, layer: trax_favor.load_projections(
        layer, _gzip_path(p)),
    'load_weights': lambda p, layer: trax_favor.load_weights(
        layer, _gzip_path(p)),
    'trax_init_from_file': _in_trax_readers(
        lambda p, layer: layer.init_from_file(_gzip_path(p))),
    # Outside safe_unpickling: with FAVOR layers, compat's
    # init_from_file_projections reads the file through safe_pickle.
    'trax_init_from_file_weights_only': lambda p, layer: layer.init_from_file(
        _gzip_path(p), weights_only=True),
    'trax_unpickle_from_file': _in_trax_readers(
        lambda p, _: trax_training.unpickle_from_file(_gzip_path(p), True)),
    'trax_load_data_counters': _in_trax_readers(
        lambda p, _: trax_inputs.load_data_counters(
            str(p.rename(p.parent / 'data_counters0.pkl').parent), 0)),
}


@pytest.mark.parametrize('reader', list(READERS))
@pytest.mark.parametrize('name', PAYLOADS)
def test_no_reader_runs_a_crafted_file(name, reader, layer, tmp_path):
  marker = tmp_path / 'ran'
  data, what = payloads(marker)[name]
  path = tmp_path / 'model.pkl'
  path.write_bytes(data)
  before = layer.weights, layer.state
  with pytest.raises(safe_pickle.UnsafeCheckpoint) as refused:
    READERS[reader](path, layer)
  message = str(refused.value)
  assert '\n' not in message and 'refused' in message
  assert what in message and str(tmp_path) in message, message
  assert not _ran(marker, wait=0.2 if name == 'subprocess_popen' else 0)
  assert layer.weights is before[0] and layer.state is before[1]
  assert shapes.ShapeDtype.__init__ is not list  # the class is untouched


def test_outside_the_context_trax_readers_are_trax_own(tmp_path):
  """The undo test of compat.safe_unpickling: it replaces trax's readers
  only while open, and without it trax's reader runs the payload."""
  originals = (trax_training.unpickle_from_file, trax.layers.base.pickle,
               trax_inputs.pickle)
  marker = tmp_path / 'ran'
  path = str(tmp_path / 'model.pkl.gz')
  pathlib.Path(path).write_bytes(gzip.compress(
      payloads(marker)['os_system'][0]))
  with compat.safe_unpickling():
    with compat.safe_unpickling():  # nested: still on after the inner one
      pass
    with pytest.raises(safe_pickle.UnsafeCheckpoint):
      trax_training.unpickle_from_file(path, gzip=True)
  assert not marker.exists()
  assert (trax_training.unpickle_from_file, trax.layers.base.pickle,
          trax_inputs.pickle) == originals
  trax_training.unpickle_from_file(path, gzip=True)
  assert marker.exists()


# -- every checkpoint we write loads -----------------------------------------
def _attention(relative):
  extra = (dict(relative_position='bias', max_relative_distance=6)
           if relative else {})
  return functools.partial(trax_favor.FavorSelfAttention,
                           n_random_features=16, chunk_size=4, **extra)


def _favor_layer(relative):
  return _attention(relative)(n_heads=2, d_qk=8, d_v=8, causal=True,
                              mode='eval'), shapes.signature(X)


def _reformer(relative):
  return trax.models.ReformerLM(
      vocab_size=16, d_model=16, d_ff=32, d_attention_key=8,
      d_attention_value=8, n_layers=2, n_heads=2, dropout=0.0, max_len=64,
      ff_chunk_size=8, attention_type=_attention(relative), mode='eval'), (
          shapes.ShapeDtype(TOKENS.shape, np.int32))  # the type, not a dtype


def _performer(relative):
  return trax_favor.PerformerLM(
      16, d_model=16, d_ff=32, d_qk=8, d_v=8, n_layers=2, n_heads=2,
      max_len=64, dropout=0.0, attention_type=_attention(relative),
      mode='eval'), shapes.signature(TOKENS)


def _same(a, b):
  a_leaves = jax.tree_util.tree_leaves(a, is_leaf=lambda x: isinstance(
      x, shapes.ShapeDtype))
  b_leaves = jax.tree_util.tree_leaves(b, is_leaf=lambda x: isinstance(
      x, shapes.ShapeDtype))
  assert len(a_leaves) == len(b_leaves)
  for x, y in zip(a_leaves, b_leaves):
    assert type(x) is type(y)
    if isinstance(x, (np.ndarray, jax.Array)):
      assert x.dtype == y.dtype
      np.testing.assert_array_equal(x, y)
    else:
      assert x == y


@pytest.mark.parametrize('relative', [False, True], ids=['plain', 'relative'])
@pytest.mark.parametrize('build', [_favor_layer, _reformer, _performer],
                         ids=['favor_layer', 'reformer_lm', 'performer_lm'])
def test_every_saved_model_loads_as_pickle_loads_it(build, relative, tmp_path):
  model, signature = build(relative)
  model.init(signature, rng=jax.random.PRNGKey(2))
  path = str(tmp_path / 'model.pkl.gz')
  model.save_to_file(path, weights_only=False, input_signature=signature)
  with gzip.open(path, 'rb') as f:
    _same(checkpoint_files.read_pickle(path), pickle.load(f))
  loaded, _ = build(relative)
  loaded.init(signature, rng=jax.random.PRNGKey(3))
  with compat.safe_unpickling():
    loaded.init_from_file(path)
  _same(loaded.weights, model.weights)
  _same(loaded.state, model.state)
  projected, _ = build(relative)
  projected.init(signature, rng=jax.random.PRNGKey(4))
  trax_favor.load_projections(projected, path)
  for ours, theirs in zip(trax_favor.favor_layers(projected),
                          trax_favor.favor_layers(model)):
    np.testing.assert_array_equal(ours.projection_matrix,
                                  theirs.projection_matrix)


def test_arrays_of_every_numeric_dtype_load_as_pickle_loads_them():
  values = {str(np.dtype(t)): np.arange(6).astype(t).reshape(2, 3)
            for t in (np.bool_, np.int8, np.uint8, np.int16, np.uint16,
                      np.int32, np.uint32, np.int64, np.uint64, np.float16,
                      np.float32, np.float64, np.complex64, np.complex128,
                      jax.numpy.bfloat16)}
  values['fortran'] = np.asfortranarray(values['float32'])
  values['big_endian'] = values['float32'].astype('>f4')
  values['scalars'] = [np.float32(1.5), np.int64(3), jax.numpy.bfloat16(2)]
  values['jax'] = [jax.numpy.ones(3, t) for t in (jax.numpy.float32,
                                                   jax.numpy.bfloat16,
                                                   jax.numpy.int32)]
  values['signature'] = shapes.ShapeDtype((1, 2), jax.numpy.bfloat16)
  for protocol in (4, 5):  # trax and trax_favor write 5 (the highest)
    data = pickle.dumps(values, protocol=protocol)
    _same(safe_pickle.loads(data), pickle.loads(data))
    for x, y in zip(safe_pickle.loads(data)['jax'], values['jax']):
      assert x.weak_type == y.weak_type


@pytest.mark.parametrize('relative', [False, True], ids=['plain', 'relative'])
def test_training_checkpoints_load_as_pickle_loads_them(relative, tmp_path):
  """trax_favor's Loop writes a checkpoint (eval history with numpy scalars
  in it) and resumes from it through safe_pickle."""
  extra = (["trax_favor.FavorSelfAttention.relative_position='bias'",
            'trax_favor.FavorSelfAttention.max_relative_distance=6']
           if relative else [])
  configs.parse_config([os.path.join(REPO, 'gin', 'offline_default.gin')],
                       SMALL + extra)
  args = loop_lib.train_args()
  loop = loop_lib.build_loop(str(tmp_path), args)
  loop.history.append('eval', 'metrics/loss', 0, np.float32(5.5))
  loop.save_checkpoint('model')
  path = checkpoints.latest(str(tmp_path))
  with gzip.open(path, 'rb') as f:
    _same(checkpoint_files.read_pickle(path), pickle.load(f))
  resumed = loop_lib.build_loop(str(tmp_path), args)
  assert resumed.resumed_from == os.path.dirname(path)
  assert resumed.history.get('eval', 'metrics/loss') == [(0, 5.5)]
  _same(resumed.model.state, loop.model.state)
  restored = checkpoints.restore(str(tmp_path), mode='eval')  # the sampler's
  leaves = [jax.tree_util.tree_leaves(m.weights)
            for m in (restored, loop.model)]
  assert len(leaves[0]) == len(leaves[1])
  for a, b in zip(*leaves):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(trax_favor.favor_layers(restored),
                  trax_favor.favor_layers(loop.model)):
    np.testing.assert_array_equal(a.projection_matrix, b.projection_matrix)


def test_no_other_unpickling_in_the_package():
  """Every read of a pickle goes through safe_pickle: no pickle.load(s),
  Unpickler or allow_pickle=True elsewhere in trax_favor/."""
  pattern = re.compile(r'(?<![\w.])pickle\.loads?\(|\bUnpickler\b|'
                       r'from pickle import|allow_pickle\s*=\s*True|'
                       r'\bdill\b|cloudpickle|joblib')
  found = [f'{path.relative_to(PACKAGE)}:{n}: {line.strip()}'
           for path in sorted(PACKAGE.rglob('*.py'))
           if path.name != 'safe_pickle.py'
           for n, line in enumerate(path.read_text().splitlines(), 1)
           if pattern.search(line)]
  assert not found, found
