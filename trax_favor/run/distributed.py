"""Data-parallel training across processes on JAX's distributed runtime.

One process per device (GPU, TPU host or CPU), started like any JAX
multi-process job: `initialize` calls `jax.distributed.initialize` (the
coordinator's HOST:PORT, the number of processes, this one's id; or JAX's
own JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) before
anything starts the XLA backend.

Design. trax's Loop stays: its checkpoints, evals, schedules and
callbacks. Only the update step is replaced (`install`): each task's
`one_step` becomes one `jax.jit` over a mesh of every process's device
(axis 'data'), with weights, optimizer slots and model state replicated
and the batch sharded by rows; inside it, trax's own `value_and_grad` of
the model with its loss and the optimizer's `tree_update`, so XLA inserts
the gradient all-reduce. (trax's own step is a plain local `jit` with one
device per process: the processes would train apart; its `pmap` across
processes hung in gloo on CPU.) The step's loss is the mean over the
global batch, so N processes compute what one process computes on the same
global batch (tested: bit-identical weights across processes, equal to the
one-process run within 1e-5).

Data. The global batch is the config's batch size; every process reads the
same stream and keeps its rows [i*B/N, (i+1)*B/N) (`process_rows`), so a
run on N processes sees exactly the 1-process run's data, and a checkpoint
resumes at the same data position whatever N. Evals run whole on every
process (same weights, same batches), and only process 0 writes.

The first step is compiled on every process, then the processes meet at a
barrier of the coordination service before it runs: gloo's first
collective waits only 30 s for a peer whose compilation is slower.
"""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
from trax import fastmath

from trax_favor.ops import cpu_speedups
from trax_favor.run import watchdog
from trax_favor.run.errors import RunError

_BARRIER_TIMEOUT_MS = 30 * 60 * 1000  # a slow first compilation is fine
_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               timeout=120, several_devices=False):
  """Joins the multi-process job, if one is asked for (flags or JAX_*).

  Faults are bounded (run/watchdog.py): a busy loopback port is refused
  first; a job that has not assembled within `timeout` seconds, a lost
  peer or coordinator end the process with one line.

  Args:
    several_devices: a process may see several devices (--sequence_parallel
      splits sequences over them); otherwise one per process.

  Returns:
    Whether this is a job of several processes.

  Raises:
    RunError: the backend had started already, or a process sees other than
      one device (unless several_devices).
  """
  if (coordinator_address is None and num_processes is None
      and process_id is None and not any(os.environ.get(k) for k in _ENV)):
    return False
  bind = None  # a loopback coordinator listens on loopback only
  if coordinator_address and coordinator_address.rsplit(':', 1)[0] in (
      '127.0.0.1', 'localhost'):
    bind = coordinator_address
  index = process_id if process_id is not None else int(
      os.environ.get('JAX_PROCESS_ID', '0'))
  if bind and index == 0:
    busy = watchdog.check_port_free(bind)
    if busy:
      raise RunError(f'process 0: {busy}')
  joined = watchdog.arrival_deadline(timeout, index, num_processes,
                                     coordinator_address)
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes, process_id=process_id,
        coordinator_bind_address=bind,
        initialization_timeout=int(timeout) + 30,  # our timer speaks first
        heartbeat_timeout_seconds=watchdog.JAX_HEARTBEAT_S,
        shutdown_timeout_seconds=watchdog.JAX_SHUTDOWN_S)
  except (RuntimeError, ValueError) as e:
    raise RunError(f'jax.distributed.initialize failed: {e}') from e
  joined()
  if jax.process_count() > 1:
    watchdog.watch(_client(), jax.process_index(), jax.process_count())
  if jax.local_device_count() != 1 and not several_devices:
    raise RunError(
        f'process {jax.process_index()} sees {jax.local_device_count()} '
        'devices; multi-process training takes one device per process (set '
        'CUDA_VISIBLE_DEVICES per process on GPU hosts), or several with '
        '--sequence_parallel.')
  return jax.process_count() > 1


def _client():
  # JAX has no public handle on its coordination service (jax 0.10.2:
  # jax.distributed exports initialize/shutdown only).
  # pylint: disable-next=g-import-not-at-top
  from jax._src import distributed as jax_distributed
  return jax_distributed.global_state.client


def check_same_config(config_text, timeout_s=120):
  """Refuses, on every process, a job whose processes parsed different
  configs (or run different trax_favor versions), naming the bindings.

  Each process publishes its config text in the coordination service's
  key-value store and reads every other's (a few KB, once per run).
  """
  if not is_multiprocess():
    return
  import trax_favor  # pylint: disable=g-import-not-at-top
  text = f'trax_favor.__version__ = {trax_favor.__version__!r}\n{config_text}'
  client, index = _client(), jax.process_index()
  client.key_value_set(f'trax_favor/config/{index}', text,
                       allow_overwrite=True)
  mine = _bindings(text)
  for peer in range(jax.process_count()):
    if peer == index:
      continue
    theirs = _bindings(client.blocking_key_value_get(
        f'trax_favor/config/{peer}', int(timeout_s * 1000)))
    if theirs != mine:
      low, high = sorted((index, peer))
      a, b = (mine, theirs) if index == low else (theirs, mine)
      differences = '; '.join(
          f'{k}: {a.get(k, "(unset)")} vs {b.get(k, "(unset)")}'
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
      raise RunError(
          f'processes {low} and {high} of this job have different configs '
          f'({differences}): start every process with the same --config_file '
          'and --config flags and the same trax_favor.')


def _bindings(text):
  """{binding: value} of a gin config text (continuation lines joined)."""
  bindings, key = {}, None
  for line in text.splitlines():
    if not line.strip() or line.lstrip().startswith('#'):
      continue
    if ' = ' in line and not line[0].isspace():
      key, value = line.split(' = ', 1)
      bindings[key.strip()] = value.strip()
    elif key is not None:
      bindings[key] += ' ' + line.strip()
  return bindings


def is_multiprocess():
  return jax.process_count() > 1


def is_chief():
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def process_rows(batches, n_processes, index):
  """This process's rows [i*B/N, (i+1)*B/N) of each global batch."""
  for batch in batches:
    size = len(batch[0])
    if size % n_processes:
      raise RunError(
          f'the global batch of {size} does not split over {n_processes} '
          'processes: use a batch size divisible by the number of processes.')
    rows = size // n_processes
    yield tuple(x[index * rows:(index + 1) * rows] for x in batch)


def barrier(name):
  """Waits until every process got here (the coordination service, not a
  device collective, so it has no 30 s limit)."""
  # Not multihost_utils.sync_global_devices: a device collective, with
  # gloo's 30 s limit.
  client = _client()
  if client is None or not hasattr(client, 'wait_at_barrier'):
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(name, _BARRIER_TIMEOUT_MS)


class GlobalStep:
  """A trax Trainer's `one_step`, as one program over every process."""

  def __init__(self, trainer, interrupts, mesh=None):
    """mesh: None (one axis 'data' over every device), or --sequence_parallel's
    ('data', 'seq') mesh: batches split by rows and by length."""
    self._trainer = trainer
    self._interrupts = interrupts
    if mesh is None:
      mesh = Mesh(np.array(jax.devices()), ('data',))
    self._replicated = NamedSharding(mesh, PartitionSpec())
    self._mesh = mesh
    # One stop flag per device, over all the mesh's axes at once.
    self._flags = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    self._values = None  # (weights, slots, state) as global arrays
    self._compiled = None
    forward_and_backward = fastmath.value_and_grad(
        trainer.model_with_loss.pure_fn, argnums=1, has_aux=True)
    optimizer = trainer.optimizer

    def update(weights, slots, state, step, opt_params, batch, rng, stop):
      (loss, state), gradients = forward_and_backward(batch, weights, state,
                                                      rng)
      weights, slots, stats = optimizer.tree_update(
          step, gradients, weights, slots, opt_params, store_slots=False)
      stats['loss'] = loss
      return weights, slots, state, stats, jnp.max(stop)

    self._update = jax.jit(update, out_shardings=self._replicated,
                           compiler_options=cpu_speedups.compiler_options() or None)

  def _global(self, tree):
    """A tree of equal host values on every process -> replicated arrays."""
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(
            self._replicated, np.asarray(x)), tree)

  def _rows(self, x):
    """This process's rows of a batch array -> the global array, split by
    rows (and by length over a second mesh axis)."""
    x = np.asarray(x)
    spec = PartitionSpec(*self._mesh.axis_names[:x.ndim])
    return jax.make_array_from_process_local_data(
        NamedSharding(self._mesh, spec), x)

  @staticmethod
  def _local(tree):
    return jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree)

  def __call__(self, batch, rng, step=0, learning_rate=None):
    trainer = self._trainer
    if self._values is None:  # after the Loop restored its checkpoint
      model = trainer.model_with_loss
      self._values = self._global((model.weights, trainer.slots,
                                   model.state))
    opt_params = dict(trainer.optimizer.opt_params)
    if learning_rate is not None:
      opt_params['learning_rate'] = learning_rate
    stop = np.full(jax.local_device_count(),
                   self._interrupts.pending is not None, np.int32)
    args = (*self._values, self._global(np.int32(step)),
            self._global(opt_params),
            jax.tree_util.tree_map(self._rows, tuple(batch)),
            self._global(rng),
            jax.make_array_from_process_local_data(self._flags, stop))
    if self._compiled is None:
      self._compiled = self._update.lower(*args).compile()
      barrier('trax_favor_first_step')
    try:
      weights, slots, state, stats, stop_all = self._compiled(*args)
      stop_all = int(self._local(stop_all))  # waits for the collective
    except Exception as e:  # pylint: disable=broad-except
      watchdog.step_failed(e)  # a peer is gone: one line, exit
    self._values = (weights, slots, state)
    local_weights, local_state = self._local(weights), self._local(state)
    trainer.accelerated_model_with_loss.weights = local_weights
    trainer.accelerated_model_with_loss.state = local_state
    trainer.optimizer.slots = self._local(slots)
    if stop_all:  # some process was signalled before it
      self._interrupts.agreed = True
      if self._interrupts.pending is None:
        self._interrupts.pending = signal.SIGTERM
    stats = self._local(stats)
    return stats['loss'], stats


def install(loop, interrupts):
  """Replaces the update step of each of the Loop's tasks (after restore),
  and makes signals act at the same step on every process."""
  interrupts.coordinated = True
  mesh = getattr(loop, 'sequence_parallel_mesh', None)
  for trainer in loop.trainers:
    trainer.one_step = GlobalStep(trainer, interrupts, mesh)
