"""The fixes: each repairs one trax call on current JAX, in trax's modules.

Each decides by version, hasattr or signature (never by running JAX code),
patches the name trax looks up, and returns whether it patched.
"""

import contextlib
import gzip
import inspect
import pickle
import sys

from trax_favor.compat import import_hook
from trax_favor.compat import patching


# -- trax.fastmath.numpy.tree_unflatten --------------------------------------
class _MembersByValue(list):
  """A list whose `in` never compares arrays (jax raises on `array == ()`)."""

  def __contains__(self, item):
    if hasattr(item, 'shape') and hasattr(item, 'dtype'):
      return any(item is c for c in self)
    return any(item == c for c in self)


@patching.fix('tree_unflatten')
def _fix_tree_unflatten(patch):
  # Repairs trax.fastmath.numpy.tree_unflatten (used by Loop checkpoint
  # restore and init_from_file): `tree in copy_from_tree` compares a jax Array
  # with (), which raises TypeError on every jax with Python 3.11 wheels.
  import importlib  # pylint: disable=g-import-not-at-top
  from trax import fastmath  # pylint: disable=g-import-not-at-top
  # The module itself: the attribute trax.fastmath.numpy is the backend's np.
  fnp = importlib.import_module('trax.fastmath.numpy')
  # trax <= 1.4.1 tests `tree in copy_from_tree`; later trax may not.
  if patching.version('trax') is None or patching.version('trax') > (1, 4, 1):
    return False
  original = fnp.tree_unflatten

  def tree_unflatten(flat, tree, copy_from_tree=None):
    if copy_from_tree is not None:
      copy_from_tree = _MembersByValue(copy_from_tree)
    return original(flat, tree, copy_from_tree=copy_from_tree)

  patch(fnp, 'tree_unflatten', tree_unflatten)  # its recursion looks it up
  return patch(fastmath, 'tree_unflatten', tree_unflatten)


# -- trax.fastmath.cond ------------------------------------------------------
@patching.fix('cond_per_branch_operands')
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
@patching.fix('stop_gradient_of_python_scalars')
def _fix_stop_gradient(patch):
  # Repairs trax.fastmath.stop_gradient(seqlen) in the predict mode of
  # tl.SelfAttention / tl.LSHSelfAttention (`q_len=stop_gradient(seqlen)` then
  # `np.arange(q_len)`): since jax 0.8 lax.stop_gradient turns a Python int
  # into a traced array. A Python number has no gradient: return it as is.
  from trax.fastmath import jax as trax_jax  # pylint: disable=g-import-not-at-top
  if (patching.version('jax') or (0, 8, 0)) < (0, 8, 0):
    return False  # before jax 0.8 it returned Python numbers unchanged
  original = trax_jax.JAX_BACKEND['stop_gradient']

  def stop_gradient(x):
    if isinstance(x, (bool, int, float)):
      return x
    return original(x)

  return patch(trax_jax.JAX_BACKEND, 'stop_gradient', stop_gradient)


# -- trax.layers.acceleration: jax.device_put_replicated -----------------------
@patching.fix('device_put_replicated')
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
               patching.ModuleView(jax, device_put_replicated=device_put_replicated))


# -- trax.fastmath.pmap -------------------------------------------------------
@patching.fix('pmap_single_device_inputs')
def _fix_pmap_committed_inputs(patch):
  # Repairs multi-device training (trax.optimizers.trainer.Trainer.one_step,
  # `fastmath.pmap(update_fn)(weights_and_slots, ...)`): trax keeps replicated
  # optimizer slots on one device (`tl.on_cpu(tl.for_n_devices(slots))`), and
  # current pmap rejects arrays committed to a single device ("Sharding passed
  # to jit does not match"). Such arrays are re-placed one slice per device;
  # other inputs pass unchanged, so on one device the wrapper changes nothing.
  import jax  # pylint: disable=g-import-not-at-top
  from trax.fastmath import jax as trax_jax  # pylint: disable=g-import-not-at-top
  if (patching.version('jax') or (0, 8, 0)) < (0, 8, 0):
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


# -- trax.layers.on_cpu --------------------------------------------------------
@patching.fix('on_cpu_local_device')
def _fix_on_cpu(patch):
  # Repairs tl.on_cpu (the optimizer slots of every trax Trainer, and the
  # Loop's random key with the memory-efficient trainer): it puts arrays on
  # jax.devices('cpu')[0], which in a multi-process job is process 0's
  # device on every process (others then fail: "spans non-addressable
  # devices"). This process's own CPU device is meant; in a one-process
  # job it is the same device, so nothing changes there.
  import jax  # pylint: disable=g-import-not-at-top
  import trax.layers as tl  # pylint: disable=g-import-not-at-top
  from trax import fastmath  # pylint: disable=g-import-not-at-top
  from trax.layers import acceleration  # pylint: disable=g-import-not-at-top
  if "jax.devices('cpu')[0]" not in inspect.getsource(acceleration.on_cpu):
    return False

  def on_cpu(x):
    if fastmath.is_backend(fastmath.Backend.JAX):
      return jax.device_put(x, jax.local_devices(backend='cpu')[0])
    return x

  patch(acceleration, 'on_cpu', on_cpu)
  return patch(tl, 'on_cpu', on_cpu)  # trax calls it as tl.on_cpu


# -- trax.supervised.trainer_lib: jax.xla_computation ------------------------
@patching.fix('xla_computation')
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
               patching.ModuleView(jax, xla_computation=xla_computation))


# -- trax.supervised.training: jax.host_count ----------------------------------
@patching.fix('host_count_alias')
def _fix_host_count(patch):
  # Repairs `jax.host_count()` in trax.supervised.training's
  # init_host_and_devices (every Loop) and trax.data's batching: a
  # deprecated alias of jax.process_count that warns on every call.
  import jax  # pylint: disable=g-import-not-at-top
  from trax.data import inputs  # pylint: disable=g-import-not-at-top
  from trax.data import tf_inputs  # pylint: disable=g-import-not-at-top
  from trax.supervised import training  # pylint: disable=g-import-not-at-top
  if not hasattr(jax, 'process_count'):
    return False  # an old jax, whose host_count is no alias
  view = patching.ModuleView(jax, host_count=jax.process_count,
                             host_id=jax.process_index)
  for module in (training, inputs, tf_inputs):
    patch(module, 'jax', view)
  return True


# -- trax.layers.base, trax.supervised.training: gzip.GzipFile(fileobj=f) ---
class _GzipFileWithMode(gzip.GzipFile):
  """GzipFile that takes its mode from the file object when none is given.

  That is what GzipFile does today, but without a mode it warns
  (FutureWarning) that the default will change; trax's checkpoint writers
  pass none.
  """

  def __init__(self, filename=None, mode=None, compresslevel=9, fileobj=None,
               mtime=None):
    if mode is None and fileobj is not None:
      mode = getattr(fileobj, 'mode', 'rb')
    super().__init__(filename, mode, compresslevel, fileobj, mtime)


@patching.fix('gzip_explicit_mode')
def _fix_gzip_mode(patch):
  # Repairs `gzip.GzipFile(fileobj=f, compresslevel=...)` in trax's
  # save_to_file / np_to_file (trax.layers.base) and pickle_to_file
  # (trax.supervised.training), which warn on every checkpoint written.
  from trax.layers import base  # pylint: disable=g-import-not-at-top
  from trax.supervised import training  # pylint: disable=g-import-not-at-top
  if 'FutureWarning' not in inspect.getsource(gzip.GzipFile.__init__):
    return False  # a Python whose GzipFile does not warn (before 3.11.6)
  view = patching.ModuleView(gzip, GzipFile=_GzipFileWithMode)
  patch(base, 'gzip', view)
  return patch(training, 'gzip_lib', view)


# -- trax/trainer.py: from jax.lib import xla_extension -----------------------
def import_trainer():
  """Imports and returns `trax.trainer` (the stock training CLI's module).

  trax/trainer.py starts with `from jax.lib import xla_extension as xc`, a
  module gone since jax 0.9; it uses xc.get_distributed_runtime_{service,
  client}, which now live in jaxlib's `_jax` extension. Where the module is
  missing it is offered under that name only while trax.trainer executes, so
  `jax.lib` is left as it was.
  """
  import_hook.import_trax()
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


@contextlib.contextmanager
def jit_with_options(compiler_options):
  """Within this context, trax's `fastmath.jit` passes compiler_options.

  Trax's training and eval steps are jitted by trax (`fastmath.jit`, an
  entry of its backend table); the programs they compile keep the options
  after the context ends. Used by trax_favor's training for the CPU options
  of `trax_favor.ops.cpu_speedups`; an explicit compiler_options argument wins.
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


# -- trax's checkpoint readers: pickle.load -----------------------------------
_GzipFile = gzip.GzipFile  # the name `gzip` is trax's argument below


def _safe_unpickle_from_file(file_path, gzip=False):  # pylint: disable=redefined-outer-name
  """trax.supervised.training.unpickle_from_file (which opens with
  tf.io.gfile, so remote paths work), through safe_pickle."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trax_favor import safe_pickle  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(file_path, 'rb') as f:
    if not gzip:
      return safe_pickle.load(f, str(file_path))
    with _GzipFile(fileobj=f, mode='rb') as unzipped:
      return safe_pickle.load(unzipped, str(file_path))


@contextlib.contextmanager
def safe_unpickling():
  """Within this context, trax's checkpoint readers run no code from a file.

  trax reads its checkpoints with pickle.load, which calls whatever a file
  names. Here its three readers of a run's files go through
  `trax_favor.safe_pickle`: `trax.supervised.training.unpickle_from_file`
  (Loop.load_checkpoint, trainer_lib.load_trainer_state), and the `pickle`
  of trax.layers.base (Layer.init_from_file) and of trax.data.inputs
  (load_data_counters, which every Loop calls on output_dir's
  data_counters<i>.pkl), each replaced by a view of pickle whose `load` is
  safe_pickle's. A file naming anything but arrays, plain values and
  trax's checkpoint classes raises safe_pickle.UnsafeCheckpoint. The
  change holds for the whole process while the context is open and is
  reverted after it (nesting is fine); trax_favor's Loop, `restore` and
  `python -m trax_favor.trax_trainer` read inside it.
  """
  from trax.data import inputs  # pylint: disable=g-import-not-at-top
  from trax.layers import base  # pylint: disable=g-import-not-at-top
  from trax.supervised import training  # pylint: disable=g-import-not-at-top
  from trax_favor import safe_pickle  # pylint: disable=g-import-not-at-top
  view = patching.ModuleView(pickle, load=safe_pickle.load)
  changes = [(training, 'unpickle_from_file', _safe_unpickle_from_file),
             (base, 'pickle', view), (inputs, 'pickle', view)]
  saved = [(owner, key, getattr(owner, key)) for owner, key, _ in changes]
  for owner, key, value in changes:
    setattr(owner, key, value)
  try:
    yield
  finally:
    for owner, key, value in saved:
      setattr(owner, key, value)
