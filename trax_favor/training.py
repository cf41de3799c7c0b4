"""Training a gin-configured model, with progress, evals and resume.

The configs in gin/ bind trax's own `trax.supervised.trainer_lib.train`;
`train` here calls it with:

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
  Ctrl-C     saves a checkpoint before exiting;
  CPU        trax's steps compile with `xla_cpu.compiler_options()`.

Eval metrics (loss, bits_per_dim, accuracy) go to the log and, as
TensorBoard event files, to output_dir/eval; training loss to
output_dir/train.
"""

import functools
import json
import os
import time

import gin
import jax
from trax.supervised import callbacks
from trax.supervised import trainer_lib

from trax_favor import checkpoints
from trax_favor import configs
from trax_favor import files
from trax_favor import memory
from trax_favor import xla_cpu

PROGRESS = 'progress.jsonl'
EVAL_HISTORY = 'eval_history.json'


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
  files.save_json({metric: sorted(points.items())
                    for metric, points in history.items()},
                   os.path.join(output_dir, EVAL_HISTORY))


def read_eval_history(output_dir):
  """{metric: [(step, value), ...]} as save_eval_history wrote it."""
  history = files.load_json(os.path.join(output_dir, EVAL_HISTORY)) or {}
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
    self._warming_up = True
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
    if (self._warming_up and step == self._last[1] + 1
        and step != self._total):
      # The first eval (compiled after the first step) and the second step
      # (trax compiles its step again for the first step's outputs) would
      # make the first rate, and its ETA, several times too slow.
      self._warming_up = False
      self._last = (time.time(), step)
      self._record(step, None)  # no rate; its seconds stay uncounted
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
              'peak_memory_bytes': memory.peak_memory_bytes()}
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
      raise configs.RunError(
          f'n_devices={n_devices}, but this host has {available} device(s); '
          "trax's Loop trains on all local devices, so hide the others "
          '(CUDA_VISIBLE_DEVICES, or XLA_FLAGS=--xla_force_host_platform_'
          'device_count=N on CPU).')
    gin.bind_parameter('trax.supervised.trainer_lib.num_devices.value',
                       n_devices)
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, 'config.gin'), 'w') as f:
    f.write(gin.config_str())
  total_steps = configs.configured_value('train.steps')
  state = {}
  progress = functools.partial(_Progress, total_steps=total_steps,
                               log_every=log_every, output_dir=output_dir,
                               state=state)
  if os.path.exists(os.path.join(output_dir, checkpoints.CHECKPOINT)):
    _log(f'resuming from {os.path.join(output_dir, checkpoints.CHECKPOINT)}')
  try:
    with xla_cpu.trax_jit_options():
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
