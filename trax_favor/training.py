"""Training a gin-configured model, with progress, evals and resume.

The configs in gin/ bind `train.*` as for trax's own
`trax.supervised.trainer_lib.train`; `train` here builds trax's Loop from
them (`trax_favor.loop`) and adds:

  progress   a line every log_every steps: step, steps/s, ETA; the same
             as JSON lines in output_dir/progress.jsonl, with the training
             seconds so far (summed over resumed runs, compilation excluded)
             and the peak memory (device, or process RSS on CPU);
  evals      eval metrics (loss, bits_per_dim, accuracy) at every eval
             step in output_dir/eval_history.json; an eval that an
             interruption skipped runs when the run resumes;
  configs    config.gin (everything parsed) and operative_config.gin (what
             was used);
  resume     rerunning the command continues from the newest whole
             checkpoint (output_dir/checkpoints/, see `checkpoint_files`):
             weights, optimizer slots, model state, step, random key and
             data position, so the resumed run follows the uninterrupted
             one; a damaged checkpoint is set aside and the one before it
             is used; one whose pickle would run code stops the run and
             changes nothing (see `safe_pickle`); a config that changed is
             refused (see `run_dir`);
  one run    an exclusive lock on output_dir;
  signals    Ctrl-C and SIGTERM save a checkpoint after the current step
             and exit (see `interrupts`);
  CPU        trax's steps compile with `cpu_speedups.compiler_options()`.

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
from trax.supervised import callbacks as trax_callbacks

from trax_favor import checkpoint_files
from trax_favor import configs
from trax_favor import cpu_speedups
from trax_favor import distributed
from trax_favor import files
from trax_favor import interrupts as interrupts_lib
from trax_favor import loop as loop_lib
from trax_favor import memory
from trax_favor import run_dir

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

  {metric: [[step, value], ...]}; a resumed run's evals are merged into the
  file, not written over it. Process 0 only, in a multi-process run.
  """
  if not distributed.is_chief():
    return
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



class _Progress(trax_callbacks.TrainingStepCallback):
  """Prints step, steps/s and ETA, and appends them to progress.jsonl; saves
  the eval history after each eval; stops at
  a step boundary when a signal came."""

  def __init__(self, loop, total_steps, log_every, output_dir, interrupts):
    super().__init__(loop)
    self._total = total_steps
    self._every = log_every
    self._output_dir = output_dir
    self._interrupts = interrupts
    self._last = None
    previous = read_progress(output_dir)
    self._seconds = previous[-1]['seconds'] if previous else 0.0
    self._n_evals = None
    self._warming_up = True

  def call_at(self, step):
    return True

  def _n_eval_records(self):
    return sum(len(self._loop.history.get('eval', metric))
               for metric in self._loop.history.metrics_for_mode('eval'))

  def on_step_begin(self, step):  # step: 1-based, as trax's logs count
    n_evals = self._n_eval_records()
    if self._n_evals is not None and n_evals != self._n_evals:
      save_eval_history(self._loop, self._output_dir)  # an eval just ran
    self._n_evals = n_evals
    interrupts = self._interrupts
    if interrupts.pending is not None and not interrupts.coordinated:
      self._loop.rewind_to(step - 1)  # this step has not started
      interrupts.check()
    if self._last is None:
      self._last = (None, step)
      self._interrupts.running = True

  def on_step_end(self, step):
    self._interrupts.check()
    if self._last[0] is None:  # first step of this process: model is built
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
    if not distributed.is_chief():
      return
    record = {'step': step, 'seconds': round(self._seconds, 3),
              'steps_per_s': rate,
              'peak_memory_bytes': memory.peak_memory_bytes()}
    with open(os.path.join(self._output_dir, PROGRESS), 'a') as f:
      f.write(json.dumps(record) + '\n')


def _check_layout(output_dir):
  if (os.path.exists(os.path.join(output_dir, 'model.pkl.gz'))
      and not checkpoint_files.steps(output_dir)):
    raise configs.RunError(
        f"{output_dir} holds a checkpoint in trax's layout (model.pkl.gz), "
        "not trax_favor's checkpoints/: continue it with python -m "
        'trax_favor.trax_trainer, or use another --output_dir.')


def _report_resume(loop):
  for damaged in loop.fell_back_from:
    _log(f'damaged checkpoint: {damaged}')
  if loop.resumed_from:
    note = ' (the newest whole one)' if loop.fell_back_from else ''
    _log(f'resuming from {loop.resumed_from}{note} at step {loop.step}')


def _run_missed_eval(loop, output_dir):
  """Runs the eval of the resumed step if it was due and did not run (the
  run stopped between that step's checkpoint and its eval)."""
  step = loop.step
  evaluated = {s for metric in loop.history.metrics_for_mode('eval')
               for s, _ in loop.history.get('eval', metric)}
  if step and loop.eval_due(step) and step not in evaluated:
    _log(f'step {step}: running its eval (its checkpoint precedes it)')
    loop.run_evals()
    save_eval_history(loop, output_dir)


def train(output_dir, n_devices=None, log_every=10, allow_config_change=False,
          callbacks=()):
  """Trains the parsed config's model into output_dir (resuming if there).

  Args:
    output_dir: checkpoints, configs and TensorBoard files go here.
    n_devices: data-parallel devices: None or the number of local devices
      (trax trains on all of them; the flag checks that assumption).
    log_every: print progress every this many steps.
    allow_config_change: resume even where the config's data, optimizer or
      schedule differ from the run's saved config.gin (a change to the model
      is refused regardless).
    callbacks: more trax StepCallback classes for the Loop.

  Returns:
    The trax Loop after training.

  Raises:
    RunError: output_dir is in use, its config differs, or it has no whole
      checkpoint left to resume from.
    interrupts.Interrupted: Ctrl-C or SIGTERM (after saving a checkpoint).
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
  chief = distributed.is_chief()  # the writer of a multi-process run
  lock = run_dir.Lock(output_dir) if chief else None
  try:
    for path in checkpoint_files.remove_leftovers(output_dir) if chief else ():
      _log(f'removed {path}, left by an interrupted write')
    _check_layout(output_dir)
    config_text = gin.config_str()
    changes = run_dir.check_config(output_dir, config_text,
                                   allow_config_change)
    if changes:
      _log(f'config changed since the last run: {changes}')
    with interrupts_lib.deferred(_log) as interrupts:
      return _train(output_dir, log_every, config_text, callbacks, interrupts)
  finally:
    if lock is not None:
      lock.release()


def _train(output_dir, log_every, config_text, callbacks, interrupts):
  """train() once the run directory is locked and its config checked."""
  progress = functools.partial(_Progress, log_every=log_every,
                               output_dir=output_dir, interrupts=interrupts)
  loop = None
  try:
    with cpu_speedups.trax_jit_options():
      args = loop_lib.train_args()
      total_steps = args['steps']
      loop = loop_lib.build_loop(
          output_dir, args,
          [functools.partial(progress, total_steps=total_steps), *callbacks])
      if distributed.is_chief():
        # After the check: a refused run leaves the saved config as it was.
        files.save_text(config_text, os.path.join(output_dir, run_dir.CONFIG))
      if distributed.is_multiprocess():
        distributed.install(loop, interrupts)
      _report_resume(loop)
      _run_missed_eval(loop, output_dir)
      if loop.step < total_steps:
        loop.run(total_steps - loop.step)
  except interrupts_lib.Interrupted:
    if loop is not None and interrupts.running:
      interrupts.running = False  # a further signal stops the save at once
      loop.save_checkpoint('model')
      save_eval_history(loop, output_dir)
      _log(f'interrupted at step {loop.step}: checkpoint saved in '
           f'{output_dir}; rerun the same command to continue.')
    raise
  if loop.saved_step != loop.step:
    loop.save_checkpoint('model')
  save_eval_history(loop, output_dir)
  _log(f'done: step {loop.step}/{total_steps}, checkpoint in {output_dir}')
  return loop
