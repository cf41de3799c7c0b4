"""Gin-configured runs: parse configs, train with progress, restore models.

The configs in gin/ bind trax's own `trax.supervised.trainer_lib.train`
(so `python -m trax.trainer` runs them too); `train` here calls it with:

  progress   a line every log_every steps: step, steps/s, ETA; the same
             as JSON lines in output_dir/progress.jsonl, with the training
             seconds so far (summed over resumed runs, compilation excluded)
             and the peak memory (device, or process RSS on CPU);
  evals      eval metrics (loss, bits_per_dim, accuracy) at every eval
             step in output_dir/eval_history.json, the last one included;
  configs    config.gin (everything parsed) at the start and
             operative_config.gin (what was used) after the first step;
  resume     trax's Loop restores the last checkpoint in output_dir (the
             step, weights, optimizer slots), so rerunning an interrupted
             command continues it; each checkpoint file is written to a
             temporary name and renamed, so a kill mid-write leaves the
             previous file intact;
  Ctrl-C     saves a checkpoint before exiting.

Eval metrics (loss, bits_per_dim, accuracy) go to the log and, as
TensorBoard event files, to output_dir/eval; training loss to
output_dir/train.
"""

import functools
import json
import os
import sys
import time

import gin
import jax
import numpy as np
from trax import shapes
from trax.supervised import callbacks
from trax.supervised import trainer_lib

import trax_favor.configurables  # pylint: disable=unused-import
from trax_favor.experiments import report
from trax_favor.layers import favor_attention

CHECKPOINT = 'model.pkl.gz'
PROGRESS = 'progress.jsonl'
EVAL_HISTORY = 'eval_history.json'


class RunError(RuntimeError):
  """A run cannot start: bad config files, or a checkpoint that does not fit."""


def _search_paths(config_file):
  """The config's folder and its parents: where `include 'gin/...'` resolves."""
  path = os.path.dirname(os.path.abspath(config_file))
  paths = []
  while True:
    paths.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      return paths
    path = parent


def parse_config(config_files, bindings=()):
  """Clears gin, then parses config files (in order) and bindings.

  `include` lines inside the files resolve against the current directory and
  each parent folder of the config files, so `include 'gin/pg19/base.gin'`
  works from any working directory.

  Raises:
    RunError: a config file is missing or does not parse.
  """
  if not config_files:
    raise RunError('give at least one --config_file.')
  gin.clear_config()
  for config_file in config_files:
    if not os.path.isfile(config_file):
      raise RunError(f'config file not found: {config_file}')
    for path in _search_paths(config_file):
      gin.add_config_file_search_path(path)
  try:
    gin.parse_config_files_and_bindings(list(config_files), list(bindings),
                                        finalize_config=False)
  except (ValueError, IOError, SyntaxError) as e:
    raise RunError(f'cannot parse {list(config_files)} with bindings '
                   f'{list(bindings)}: {e}') from e


def add_config_flags(parser, output_dir_help):
  """--config_file (repeatable), --config (repeatable), --output_dir."""
  parser.add_argument('--config_file', action='append', required=True,
                      help='gin config file (repeatable, parsed in order)')
  parser.add_argument('--config', action='append', default=[],
                      help="gin binding (repeatable), e.g. 'train.steps=100'")
  parser.add_argument('--output_dir', required=True, help=output_dir_help)


def configured_model_fn():
  """The model factory bound as `train.model` (call it with mode=...)."""
  try:
    return gin.query_parameter('train.model').scoped_configurable_fn
  except ValueError as e:
    raise RunError('the config binds no train.model.') from e


def _shapes(tree):
  """(tree structure, [leaf shapes]) to compare checkpoints with models."""
  leaves, structure = jax.tree_util.tree_flatten(tree)
  return structure, [tuple(np.shape(leaf)) for leaf in leaves]


def configured_image_size():
  """The side of the images the config trains on, or None for text."""
  if 'imagenet64_inputs' not in str(gin.query_parameter('train.inputs')):
    return None
  return configured_value('trax_favor.imagenet64_inputs.image_size')


def configured_value(binding):
  """The value bound to `binding`, with a %MACRO resolved to its value."""
  value = gin.query_parameter(binding)
  if isinstance(value, gin.config.ConfigurableReference):  # a %MACRO
    value = value.scoped_configurable_fn()
  return value


def _log(message):
  print(message, flush=True)


def _format_seconds(seconds):
  seconds = int(round(seconds))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def read_progress(output_dir):
  """The records of output_dir/progress.jsonl, the latest one per step.

  A run resumed from a checkpoint repeats the steps after it; their later
  records win. A line cut short by a kill is skipped.
  """
  by_step = {}
  path = os.path.join(output_dir, PROGRESS)
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        by_step[record['step']] = record
  return [by_step[step] for step in sorted(by_step)]


def save_eval_history(loop, output_dir):
  """Writes the loop's eval metrics to output_dir/eval_history.json.

  {metric: [[step, value], ...]}, the last eval included (trax's checkpoint
  is saved before the eval of its step, so its history lacks that one). A
  resumed run's evals are merged into the file, not written over it.
  """
  history = {metric: dict(points)
             for metric, points in read_eval_history(output_dir).items()}
  for metric in loop.history.metrics_for_mode('eval'):
    points = history.setdefault(metric.split('/', 1)[-1], {})
    points.update((int(step), float(value))
                  for step, value in loop.history.get('eval', metric))
  report.save_json({metric: sorted(points.items())
                    for metric, points in history.items()},
                   os.path.join(output_dir, EVAL_HISTORY))


def read_eval_history(output_dir):
  """{metric: [(step, value), ...]} as save_eval_history wrote it."""
  history = report.load_json(os.path.join(output_dir, EVAL_HISTORY)) or {}
  return {metric: [tuple(point) for point in points]
          for metric, points in history.items()}


class _Progress(callbacks.TrainingStepCallback):
  """Prints step, steps/s and ETA, and appends them to progress.jsonl; saves
  the operative config once."""

  def __init__(self, loop, total_steps, log_every, output_dir, state):
    super().__init__(loop)
    self._total = total_steps
    self._every = log_every
    self._output_dir = output_dir
    self._last = None
    previous = read_progress(output_dir)
    self._seconds = previous[-1]['seconds'] if previous else 0.0
    self._n_evals = 0
    state['loop'] = loop  # for the Ctrl-C checkpoint

  def call_at(self, step):
    return True

  def on_step_begin(self, step):  # step: 1-based, as trax's logs count
    if self._last is None:
      self._last = (None, step)
    else:
      n_evals = len(self._loop.history.get('eval', 'metrics/loss'))
      if n_evals != self._n_evals:  # an eval ran after the last step
        save_eval_history(self._loop, self._output_dir)
        self._n_evals = n_evals

  def on_step_end(self, step):
    if self._last[0] is None:  # first step of this process: model is built
      with open(os.path.join(self._output_dir, 'operative_config.gin'),
                'w') as f:
        f.write(gin.operative_config_str())
      self._last = (time.time(), step)  # rates exclude compilation
      _log(f'step {step}/{self._total}: compiled and ran the first step')
      self._record(step, None)
      return
    if step % self._every and step != self._total:
      return
    now = time.time()  # the rate over the last interval (evals included)
    rate = (step - self._last[1]) / max(now - self._last[0], 1e-9)
    self._seconds += now - self._last[0]
    self._last = (now, step)
    eta = (self._total - step) / rate if rate > 0 else float('inf')
    _log(f'step {step}/{self._total}: {rate:.2f} steps/s, '
         f'ETA {_format_seconds(eta)}')
    self._record(step, rate)

  def _record(self, step, rate):
    record = {'step': step, 'seconds': round(self._seconds, 3),
              'steps_per_s': rate,
              'peak_memory_bytes': report.peak_memory_bytes()}
    with open(os.path.join(self._output_dir, PROGRESS), 'a') as f:
      f.write(json.dumps(record) + '\n')


def train(output_dir, n_devices=None, log_every=10):
  """Trains the parsed config's model into output_dir (resuming if there).

  Args:
    output_dir: checkpoints, configs and TensorBoard files go here.
    n_devices: data-parallel devices: None or the number of local devices
      (trax trains on all of them; the flag checks that assumption).
    log_every: print progress every this many steps.

  Returns:
    The trax Loop after training.
  """
  if n_devices is not None:
    available = jax.local_device_count()
    if n_devices != available:  # trax's Loop uses all devices or fails
      raise RunError(
          f'n_devices={n_devices}, but this host has {available} device(s); '
          "trax's Loop trains on all local devices, so hide the others "
          '(CUDA_VISIBLE_DEVICES, or XLA_FLAGS=--xla_force_host_platform_'
          'device_count=N on CPU).')
    gin.bind_parameter('trax.supervised.trainer_lib.num_devices.value',
                       n_devices)
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, 'config.gin'), 'w') as f:
    f.write(gin.config_str())
  total_steps = configured_value('train.steps')
  state = {}
  progress = functools.partial(_Progress, total_steps=total_steps,
                               log_every=log_every, output_dir=output_dir,
                               state=state)
  if os.path.exists(os.path.join(output_dir, CHECKPOINT)):
    _log(f'resuming from {os.path.join(output_dir, CHECKPOINT)}')
  try:
    loop = trainer_lib.train(output_dir=output_dir, callbacks=[progress])
  except KeyboardInterrupt:
    loop = state.get('loop')
    if loop is not None:
      loop.save_checkpoint('model')
      _log(f'interrupted at step {loop.step}: checkpoint saved in '
           f'{output_dir}; rerun the same command to continue.')
    raise
  save_eval_history(loop, output_dir)
  _log(f'done: step {loop.step}/{total_steps}, checkpoint in {output_dir}')
  return loop


def restore(output_dir, mode='predict', batch_size=1):
  """The parsed config's model in `mode`, with output_dir's trained weights.

  Weights and the fixed FAVOR projections (model state, see
  FavorSelfAttention) both come from the checkpoint.

  Args:
    output_dir: a training run's directory (holding model.pkl.gz).
    mode: 'eval' or 'predict'.
    batch_size: predict mode: the batch size of the decoding state.

  Returns:
    The model, ready to call.

  Raises:
    RunError: no checkpoint, or one that does not fit the configured model.
  """
  path = os.path.join(output_dir, CHECKPOINT)
  if not os.path.exists(path):
    raise RunError(f'no checkpoint {path}: train first, or point '
                   '--output_dir at a training run.')
  model_fn = configured_model_fn()
  trained = model_fn(mode='eval')
  image_size = configured_image_size()  # axial positions need whole images
  length = 1 if image_size is None else image_size * image_size * 3
  signature = shapes.ShapeDtype((1, length), np.int32)
  mismatch = (f'checkpoint {path} does not fit the model of this config '
              '(was it trained with another config?)')
  trained.init(signature)
  expected = _shapes(trained.weights), _shapes(trained.state)
  try:
    trained.init_from_file(path, weights_only=False, input_signature=signature)
  except (ValueError, TypeError, IndexError) as e:
    raise RunError(f'{mismatch}: {e}') from e
  found = _shapes(trained.weights), _shapes(trained.state)
  if found != expected:
    diffs = [f'{a} vs {b}' for a, b in zip(found[0][1] + found[1][1],
                                           expected[0][1] + expected[1][1])
             if a != b]
    raise RunError(f'{mismatch}: checkpoint/config shapes differ, first '
                   f'{diffs[:3]}')
  if mode == 'eval':
    return trained
  model = model_fn(mode=mode)
  model.init(shapes.ShapeDtype((batch_size, 1), np.int32))
  if (jax.tree_util.tree_structure(model.weights)
      != jax.tree_util.tree_structure(trained.weights)):
    raise RunError(f'checkpoint {path} does not fit the {mode}-mode model.')
  model.weights = trained.weights
  favor_attention.transfer_projections(trained, model)
  return model


def main_guard(fn):
  """Runs fn(); a RunError or data error ends the process with its message."""
  from trax_favor.data import DatasetNotPreparedError  # pylint: disable=g-import-not-at-top
  try:
    return fn()
  except (RunError, DatasetNotPreparedError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    sys.exit(130)
