"""Training a gin-configured model, with progress, evals and resume.

The configs in gin/ bind `train.*` as for trax's own
`trax.supervised.trainer_lib.train`; `train` here builds trax's Loop from
them (`loop`) and runs it in named stages:

  open      an exclusive lock on output_dir; leftovers of killed writes
            removed; the config compared with the run's config.gin (a
            changed model is refused, see `config_drift`);
  restore   the Loop, from the newest whole checkpoint if there is one
            (weights, optimizer slots, model state, step, random key and
            data position, so the resumed run follows the uninterrupted
            one); a damaged checkpoint is set aside and the one before it
            used; one whose pickle would run code stops the run and changes
            nothing (see `safe_pickle`); an eval that an interruption
            skipped runs now;
  steps     trax's Loop, with progress (`progress`: a line every log_every
            steps, progress.jsonl, the eval history after each eval);
  save      a checkpoint and the eval history, through `RunDir`: the same
            on a normal end and on Ctrl-C or SIGTERM (after the current
            step, see `interrupts`);
  stop      the lock released.

Every file the run writes is `RunDir`'s (see `run_dir` for the layout).
trax's steps compile with the CPU speed-ups' compiler options
(`compat.trax_jit_options`). Eval metrics also go to the log and, as
TensorBoard event files, to output_dir/eval; training loss to
output_dir/train.
"""

import contextlib
import functools

import gin
import jax

from trax_favor import compat
from trax_favor.run import distributed
from trax_favor.run import interrupts as interrupts_lib
from trax_favor.run import loop as loop_lib
from trax_favor.run import progress as progress_lib
from trax_favor.run import run_dir as run_dir_lib
from trax_favor.run.errors import RunError

_log = progress_lib.log


def read_progress(output_dir):
  """The records of output_dir's progress.jsonl, the latest one per step."""
  return run_dir_lib.RunDir(output_dir, read_only=True).read_progress()


def read_eval_history(output_dir):
  """{metric: [(step, value), ...]} of output_dir's evals."""
  return run_dir_lib.RunDir(output_dir, read_only=True).read_eval_history()


def save_eval_history(loop, output_dir):
  """Merges the loop's eval metrics into output_dir's eval history."""
  progress_lib.save_eval_history(loop, run_dir_lib.RunDir(output_dir))


def _set_devices(n_devices):
  if n_devices is None:
    return
  available = jax.local_device_count()
  if n_devices != available:  # trax's Loop uses all devices or fails
    raise RunError(
        f'n_devices={n_devices}, but this host has {available} device(s); '
        "trax's Loop trains on all local devices, so hide the others "
        '(CUDA_VISIBLE_DEVICES, or XLA_FLAGS=--xla_force_host_platform_'
        'device_count=N on CPU).')
  gin.bind_parameter('trax.supervised.trainer_lib.num_devices.value',
                     n_devices)


@contextlib.contextmanager
def _opened(run_dir, config_text, allow_config_change, start_afresh=False):
  """The open and stop stages: the lock (process 0, the writer of a
  multi-process run), leftovers, the layout and the config checked; with
  start_afresh, what is left of an earlier run moved aside."""
  lock = None if run_dir.read_only else run_dir.lock()
  try:
    if not run_dir.read_only:
      for path in run_dir.remove_leftovers():
        _log(f'removed {path}, left by an interrupted write')
    if run_dir.has_trax_layout():
      raise RunError(
          f"{run_dir.path} holds a checkpoint in trax's layout "
          "(model.pkl.gz), not trax_favor's checkpoints/: continue it with "
          'python -m trax_favor.trax_trainer, or use another --output_dir.')
    changes = run_dir.check_config(config_text, allow_config_change)
    moved = start_afresh and not run_dir.read_only and run_dir.start_afresh()
    if moved:
      _log(f'starting afresh: {moved} holds the earlier checkpoints and '
           'history')
    run_dir.read_eval_history()  # a damaged one stops the run before it starts
    if changes:
      _log(f'config changed since the last run: {changes}')
    yield
  finally:
    if lock is not None:
      lock.release()


def _restore(run_dir, args, callbacks, config_text, interrupts,
             sequence_parallel=None):
  """The restore stage: the Loop at its newest whole checkpoint."""
  loop = loop_lib.build_loop(run_dir.path, args, callbacks, sequence_parallel)
  if not run_dir.read_only:
    # After the check: a refused run leaves the saved config as it was.
    run_dir.save_config(config_text)
  if distributed.is_multiprocess():
    distributed.install(loop, interrupts)
  for damaged in loop.fell_back_from:
    _log(f'damaged checkpoint: {damaged}')
  if loop.resumed_from:
    note = ' (the newest whole one)' if loop.fell_back_from else ''
    _log(f'resuming from {loop.resumed_from}{note} at step {loop.step}')
  return loop


def _evaluate_missed(loop, run_dir):
  """Runs the eval of the resumed step if it was due and did not run (the
  run stopped between that step's checkpoint and its eval)."""
  step = loop.step
  evaluated = {s for metric in loop.history.metrics_for_mode('eval')
               for s, _ in loop.history.get('eval', metric)}
  if step and loop.eval_due(step) and step not in evaluated:
    _log(f'step {step}: running its eval (its checkpoint precedes it)')
    loop.run_evals()
    progress_lib.save_eval_history(loop, run_dir)


def _save(loop, run_dir, again=False):
  """The save stage: the checkpoint of the current step (unless it has one
  and not `again`), and the eval history. The Loop's own checkpoints go
  the same way (`Loop.save_checkpoint`, through RunDir)."""
  if again or loop.saved_step != loop.step:
    loop.save_checkpoint('model')
  progress_lib.save_eval_history(loop, run_dir)


def train(output_dir, n_devices=None, log_every=10, allow_config_change=False,
          callbacks=(), start_afresh=False, sequence_parallel=None):
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
    start_afresh: where no whole checkpoint is left (only damaged ones),
      start at step 0, the earlier checkpoints and history moved into
      output_dir/before_afresh/ (refused while a whole one is left).
    sequence_parallel: None, or N: every sequence of training and eval
      split over N local devices (run/sequence_parallel.py); the
      checkpoints are the same as without it.

  Returns:
    The trax Loop after training.

  Raises:
    RunError: output_dir is in use, its config differs, or it has no whole
      checkpoint left to resume from.
    interrupts.Interrupted: Ctrl-C or SIGTERM (after saving a checkpoint).
  """
  _set_devices(n_devices)
  run_dir = run_dir_lib.RunDir(output_dir,
                               read_only=not distributed.is_chief())
  run_dir.create()  # every process: trax writes too
  config_text = gin.config_str()
  distributed.check_same_config(config_text)  # before the run dir opens
  with _opened(run_dir, config_text, allow_config_change, start_afresh):
    with interrupts_lib.deferred(_log) as interrupts:
      return _train(run_dir, log_every, config_text, callbacks, interrupts,
                    sequence_parallel)


def _train(run_dir, log_every, config_text, callbacks, interrupts,
           sequence_parallel=None):
  """restore, steps, save: train() once the run directory is open."""
  loop = None
  try:
    with compat.trax_jit_options():
      args = loop_lib.train_args()
      total_steps = args['steps']
      progress = functools.partial(
          progress_lib.Progress, total_steps=total_steps,
          log_every=log_every, run_dir=run_dir, interrupts=interrupts)
      loop = _restore(run_dir, args, [progress, *callbacks], config_text,
                      interrupts, sequence_parallel)
      _evaluate_missed(loop, run_dir)
      for trainer in loop.trainers:  # one compile of the update step
        compat.commit_to_one_device(trainer)
      if loop.step < total_steps:
        loop.run(total_steps - loop.step)
  except interrupts_lib.Interrupted as stop:
    stop.saved = loop is not None and interrupts.running  # said below
    if stop.saved:
      interrupts.running = False  # a further signal stops the save at once
      _save(loop, run_dir, again=True)  # the streams may have moved on
      _log(f'interrupted at step {loop.step}: checkpoint saved in '
           f'{run_dir.path}; rerun the same command to continue.')
    raise
  _save(loop, run_dir)
  _log(f'done: step {loop.step}/{total_steps}, checkpoint in {run_dir.path}')
  return loop

