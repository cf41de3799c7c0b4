"""Progress of a training run: a line every few steps (step, steps/s, ETA),
the same as JSON lines in the run directory (with the training seconds so
far, summed over resumed runs, compilation excluded, and the peak memory),
and the eval history saved after each eval. Also where a deferred signal
stops the loop: at a step boundary (see `interrupts`).
"""

import time

from trax.supervised import callbacks as trax_callbacks

from trax_favor.run import distributed
from trax_favor.run import memory


def log(message):
  print(message, flush=True)


def format_seconds(seconds):
  seconds = int(round(seconds))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def eval_points(loop):
  """{metric: [(step, value), ...]} of the loop's eval history."""
  return {metric.split('/', 1)[-1]: [(int(step), float(value)) for step, value
                                     in loop.history.get('eval', metric)]
          for metric in loop.history.metrics_for_mode('eval')}


def save_eval_history(loop, run_dir):
  """Merges the loop's eval metrics into the run's eval history (process 0
  only, in a multi-process run)."""
  if distributed.is_chief():
    run_dir.merge_eval_history(eval_points(loop))


class Progress(trax_callbacks.TrainingStepCallback):
  """Prints step, steps/s and ETA and records them in the run directory;
  saves the eval history after each eval; stops at a step boundary when a
  signal came."""

  def __init__(self, loop, total_steps, log_every, run_dir, interrupts):
    super().__init__(loop)
    self._total = total_steps
    self._every = log_every
    self._run_dir = run_dir
    self._interrupts = interrupts
    self._last = None
    previous = run_dir.read_progress()
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
      save_eval_history(self._loop, self._run_dir)  # an eval just ran
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
      log(f'step {step}/{self._total}: compiled and ran the first step')
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
    log(f'step {step}/{self._total}: {rate:.2f} steps/s, '
        f'ETA {format_seconds(eta)}')
    self._record(step, rate)

  def _record(self, step, rate):
    if not distributed.is_chief():
      return
    self._run_dir.append_progress({
        'step': step, 'seconds': round(self._seconds, 3),
        'steps_per_s': rate, 'peak_memory_bytes': memory.peak_memory_bytes()})
