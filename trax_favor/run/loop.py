"""trax's training Loop, built from the config, with whole checkpoints and an
exact resume.

`build_loop` does what `trax.supervised.trainer_lib.train` does on its Loop
path (the configs bind `train.*` as for trax), but builds a `Loop` whose
checkpoints go through the run's `RunDir` (whole, verified, with fallback)
and whose resume continues the interrupted run exactly: besides trax's
step, weights, optimizer slots, model state and history, a checkpoint
records

  rng   the Loop's random key (dropout and every later key derive from it);
  data  how many batches each train and eval stream has given; a resumed
        run reads its streams past that many, so it sees the batches the
        uninterrupted run would have seen (the streams restart from their
        seed and are read forward: cheap for local text, a read of the
        skipped records for TFDS).

So an interrupted and resumed run follows the uninterrupted run's loss
trajectory (tests/test_resume.py checks it to float tolerance).
"""

import contextlib
import functools
import inspect

import gin
import jax
import numpy as np
import trax.layers as tl
from trax import fastmath
from trax import jaxboard
from trax.supervised import trainer_lib
from trax.supervised import training

from trax_favor import checks
from trax_favor import compat
from trax_favor import model_files
from trax_favor.run import config_drift
from trax_favor.run import configs
from trax_favor.run import distributed
from trax_favor.run import run_dir as run_dir_lib
from trax_favor.run import sequence_parallel as sequence_parallel_lib
from trax_favor.run.errors import RunError

_TRAIN = 'trax.supervised.trainer_lib.train'
# trainer_lib.train arguments this Loop does not take (trax's own trainer,
# `python -m trax_favor.trax_trainer`, does).
_UNSUPPORTED = ('use_memory_efficient_trainer', 'n_weights_shards',
                'additional_train_tasks', 'additional_eval_tasks',
                'additional_eval_streams', 'init_checkpoint', 'adasum')


class CountedStream:
  """A batch iterator that counts what it has given, and can skip ahead."""

  def __init__(self, iterator):
    self._iterator = iterator
    self.count = 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._iterator)
    self.count += 1
    return batch

  def skip_to(self, count):
    while self.count < count:
      next(self)


def _without_empty(tree):
  return [x for x in jax.tree_util.tree_leaves(tree) if x is not None]


def _key_bits(key):
  """A random key as a list of ints (raw uint32 keys, as trax makes them,
  or typed keys)."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key).tolist()


def _resume_record_ok(manifest, streams, key_words=None):
  """Whether a manifest holds a random key (a list of `key_words` uint32
  words, as this loop's key has) and a list of data positions for each
  kind of stream of this loop."""
  def counts(values):
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for v in values)
  data, rng = manifest.get('data'), manifest.get('rng')
  key_ok = counts(rng) and all(v < 2**32 for v in rng) and (
      key_words is None or len(rng) == key_words)
  return (key_ok and isinstance(data, dict)
          and all(counts(data.get(kind)) and len(data[kind]) == len(found)
                  for kind, found in streams.items()))


def _signature(arrays):
  return [(tuple(np.shape(a)), str(np.asarray(a).dtype)) for a in arrays]


class Loop(training.Loop):
  """trax's Loop with whole, verified checkpoints and an exact resume."""

  def __init__(self, *args, streams, **kwargs):
    # Set before trax's __init__, which loads the checkpoint.
    self._streams = streams  # {'train': [...], 'eval': [...]}
    self.resumed_from = None
    self.fell_back_from = []  # damaged checkpoints passed over, as strings
    output_dir = kwargs.get('output_dir')
    # The other processes of a multi-process run only read.
    self.run_dir = None if output_dir is None else run_dir_lib.RunDir(
        output_dir, read_only=not distributed.is_chief())
    # trax's __init__ also unpickles output_dir/data_counters<i>.pkl.
    with compat.safe_unpickling():
      super().__init__(*args, **kwargs)

  def _parts(self):
    """What a checkpoint holds, as trax writes it: (pickled dict, weight
    arrays, slot arrays per task)."""
    flat_weights, flat_state = tl.flatten_weights_and_state(
        self._model.weights, self._model.state)
    _, flat_eval_state = tl.flatten_weights_and_state(
        self._model.weights, self._eval_model.state)
    slots = [self._to_bits(_without_empty(t.slots))
             for t in self._trainer_per_task]
    record = {
        'step': self.step, 'flat_weights': 2, 'slots_per_task': 2,
        'flat_state': flat_state, 'flat_eval_state': flat_eval_state,
        'history': self._history.to_dict(),
        'input_signature': self._batch_signature[:self._model.n_in],
        'version_timestamp': 'Mar-10-2021',  # trax's format of that date
    }
    return record, self._to_bits(flat_weights), slots

  def save_checkpoint(self, basename):
    """Publishes checkpoints/step_<step>/ (or checkpoints/<basename>/ for
    trax's permanent and best-metric checkpoints) as a whole."""
    if self.run_dir is None or not self.is_chief:
      return
    record, weights, slots = self._parts()

    def write(directory):
      stem = run_dir_lib.model_stem(directory)
      for i, task_slots in enumerate(slots):
        model_files.write_arrays(task_slots, f'{stem}.opt_slots{i}.npy.gz')
      model_files.write_arrays(weights, f'{stem}.weights.npy.gz')
      model_files.write_pickle(record, f'{stem}.pkl.gz')

    self.run_dir.save_checkpoint(self.step, write, {
        'model_config': config_drift.model_config(
            configs.operative_config_str()),
        'rng': _key_bits(self._rng),
        'data': {kind: [s.count for s in streams]
                 for kind, streams in self._streams.items()},
    }, name=None if basename == 'model' else basename)
    self.saved_step = self.step

  def _check(self, path):
    """Reads checkpoint `path` completely and checks it against this model:
    the manifest, then every array. Returns the manifest."""
    manifest = run_dir_lib.verify(path)
    stem = run_dir_lib.model_stem(path)
    record = model_files.read_pickle(f'{stem}.pkl.gz')
    weights = model_files.read_arrays(f'{stem}.weights.npy.gz')
    slots = [model_files.read_arrays(f'{stem}.opt_slots{i}.npy.gz')
             for i in range(len(self._trainer_per_task))]
    if record.get('step') != manifest.get('step'):
      raise model_files.DamagedCheckpoint(
          f'{stem}.pkl.gz: step {record.get("step")}, the manifest says '
          f'{manifest.get("step")}')
    if not _resume_record_ok(manifest, self._streams,
                             len(_key_bits(self._rng))):
      raise model_files.DamagedCheckpoint(
          f'{path}: its manifest has no valid random key and data positions')
    if 'model_config' in manifest:  # absent in older checkpoints
      config_drift.check_model_config(
          manifest['model_config'], configs.operative_config_str(), path)
    _, expected_weights, expected_slots = self._parts()
    expected_state = tl.flatten_weights_and_state(
        self._model.weights, self._model.state)[1]
    for what, found, expected in [
        ('weights', weights, expected_weights),
        ('state', record['flat_state'], expected_state),
        *[(f'optimizer slots {i}', s, e)
          for i, (s, e) in enumerate(zip(slots, expected_slots))]]:
      found, expected = _signature(_without_empty(found)), _signature(
          _without_empty(expected))
      if found != expected:
        first = next((f'{a} vs {b}' for a, b in zip(found, expected)
                      if a != b), f'{len(found)} vs {len(expected)} arrays')
        raise RunError(
            f'checkpoint {path} does not fit the configured model: its '
            f'{what} differ ({first}); was it trained with another config?')
    return manifest

  def load_checkpoint(self, directory=None, filename=None):
    """Loads the newest whole checkpoint of output_dir; a damaged one is set
    aside (output_dir/checkpoints/<name>.damaged) and the one before it is
    tried. A pickle that names a global outside `safe_pickle`'s allow-list
    is not damaged but made: safe_pickle.UnsafeCheckpoint stops the run,
    nothing in output_dir is renamed. `directory`/`filename`: trax's form,
    for a path given explicitly (unverified, as trax loads it, but through
    safe_pickle too)."""
    if directory is not None or filename is not None:
      with compat.safe_unpickling():
        return super().load_checkpoint(directory, filename)
    if self.run_dir is None:
      return None
    path, manifest = self.run_dir.latest_checkpoint(check=self._check)
    self.fell_back_from = list(self.run_dir.passed_over)
    if path is None:
      if self.fell_back_from:
        raise RunError(
            'no whole checkpoint to resume from: '
            + '; '.join(self.fell_back_from)
            + '. Pass --start_afresh to start at step 0 in this directory, '
            'or use another --output_dir.')
      damaged = self.run_dir.damaged_checkpoints()
      if damaged:  # set aside by an earlier run: never start over silently
        raise RunError(
            f'no whole checkpoint to resume from in {self.run_dir.path}: only '
            f'damaged ones ({", ".join(damaged)}). Pass --start_afresh to '
            'start at step 0 in this directory, or use another --output_dir.')
      self.saved_step = None
      return None
    with compat.safe_unpickling():  # _check read it; trax reads it again
      super().load_checkpoint(path, run_dir_lib.MODEL)
    self._rng = jax.numpy.asarray(np.asarray(manifest['rng'], np.uint32))
    for kind, counts in manifest['data'].items():
      for stream, count in zip(self._streams[kind], counts):
        stream.skip_to(count)
    self.resumed_from = path
    self.saved_step = self.step
    return None

  def _save_gin(self, summary_writer):
    """The operative config to operative_config.gin (trax writes it over
    config.gin, which holds the run's whole config here: see run_dir)."""
    if self.run_dir is None or not self.is_chief:
      return
    text = configs.operative_config_str()
    self.run_dir.save_operative_config(text)
    if summary_writer is not None:
      summary_writer.text('gin_config',
                          jaxboard.markdownify_operative_config_str(text))

  @property
  def trainers(self):
    """The trax Trainer of each task (their `one_step` is the update)."""
    return self._trainer_per_task

  @contextlib.contextmanager
  def _open_summary_writers(self):
    """TensorBoard writers: process 0's only, in a multi-process run."""
    if self.is_chief:
      with super()._open_summary_writers() as writers:
        yield writers
    else:
      yield [None] * len(self._tasks), [None] * len(self._eval_tasks)

  def rewind_to(self, step):
    """Sets the step back to the last completed one (a stop at the start of
    a step that has not read its batch or key yet)."""
    self._step = step

  def eval_due(self, step):
    return self._eval_at(step)


def train_args():
  """trainer_lib.train's arguments: the config's bindings, else defaults."""
  defaults = {name: p.default for name, p in
              inspect.signature(trainer_lib.train).parameters.items()}
  try:
    bound = gin.get_bindings(_TRAIN)
  except ValueError as e:
    raise RunError(f'the config binds no train.*: {e}') from e
  args = {**defaults, **bound}
  if args['model'] is gin.REQUIRED:
    raise RunError('the config binds no train.model.')
  if jax.process_count() > 1 and args['random_seed'] is None:
    raise RunError(
        'a multi-process run needs train.random_seed: without it trax draws '
        'different weights and FAVOR projections per process and averages '
        'them, which destroys the projections\' orthogonality.')
  used = [name for name in _UNSUPPORTED if args[name] not in (None, False, 1)]
  if used:
    raise RunError(
        f'train.{used[0]} is not supported by trax_favor.train; run the '
        'config with python -m trax_favor.trax_trainer (trax\'s trainer).')
  checks.check_positive_int(**{'train.steps': args['steps'],
                               'train.eval_frequency': args['eval_frequency'],
                               'train.eval_steps': args['eval_steps']})
  return args


def build_loop(output_dir, args, callbacks=(), sequence_parallel=None):
  """The Loop of `args` (train_args()), restored from output_dir's newest
  whole checkpoint if there is one; with sequence_parallel=N, every
  sequence split over N local devices (run/sequence_parallel.py)."""
  split = sequence_parallel and sequence_parallel_lib.Setup(sequence_parallel)
  n_devices = 1 if split else (trainer_lib.num_devices() or
                               fastmath.local_device_count())
  inputs = args['inputs']() if callable(args['inputs']) else args['inputs']
  train_batches = inputs.train_stream(n_devices)
  eval_batches = inputs.eval_stream(n_devices)
  model = args['model']
  if split:  # trax sees one device; the model's shard_map uses the mesh
    train_batches = split.checked(train_batches, 'train')
    eval_batches = split.checked(eval_batches, 'eval')
    model = functools.partial(split.model, model)
  if jax.process_count() > 1:  # the same global stream, this process's rows
    train_batches = distributed.process_rows(
        train_batches, jax.process_count(), jax.process_index())
  train_stream = CountedStream(train_batches)
  eval_stream = CountedStream(eval_batches)
  train_task = training.TrainTask(
      train_stream, loss_layer=args['loss_fn'], optimizer=args['optimizer'](),
      lr_schedule=args['lr_schedule_fn'](),
      n_steps_per_checkpoint=args['eval_frequency'],
      n_steps_per_permanent_checkpoint=args['permanent_checkpoint_frequency'])
  # pylint: disable-next=protected-access
  metrics = args['metrics'] or trainer_lib._DEFAULT_METRICS
  names, layers = zip(*metrics.items())
  eval_task = training.EvalTask(eval_stream, layers, metric_names=names,
                                n_eval_batches=args['eval_steps'])

  def at(steps):
    return None if steps is None else (lambda step: step in steps)

  with (compat.one_trax_device() if split
        else contextlib.nullcontext()):
    loop = Loop(
        model(mode='train'), [train_task],
        eval_model=model(mode='eval'), eval_tasks=[eval_task],
        output_dir=output_dir, checkpoint_at=at(args['checkpoints_at']),
        checkpoint_low_metric=args['checkpoint_lowest'],
        checkpoint_high_metric=args['checkpoint_highest'],
        permanent_checkpoint_at=at(args['permanent_checkpoints_at']),
        n_devices=n_devices, loss_chunk_size=args['loss_chunk_size'],
        random_seed=args['random_seed'], callbacks=list(callbacks),
        streams={'train': [train_stream], 'eval': [eval_stream]})
  if split:
    split.place(loop)
  return loop
