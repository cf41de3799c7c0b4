"""Ctrl-C and SIGTERM during training: finish the step, save, exit.

SIGTERM is what `kill`, `docker stop` and cluster preemption send. While
the training loop runs, either signal only marks the run as stopping; the
loop stops at the next step boundary (before the next step reads its batch
or random key), so the checkpoint then saved holds exactly the completed
steps. A second signal stops at once, without a checkpoint. Before the loop
runs (building the model, compiling) a signal stops at once: there is
nothing to save yet.
"""

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
  """Training was stopped by a signal; `signum` says which."""

  def __init__(self, signum):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


class Interrupts:
  """Deferred signals; `check()` raises Interrupted at a safe point."""

  def __init__(self, log):
    self.running = False
    self.pending = None
    # Several processes: a signal acts after the step in which every process
    # learned of it (distributed.GlobalStep sets `agreed`), never before a
    # step, and never on one process alone.
    self.coordinated = False
    self.agreed = False
    self._log = log

  def handle(self, signum, frame):  # pylint: disable=unused-argument
    if not self.running or self.pending is not None:
      raise Interrupted(signum)
    self.pending = signum
    self._log(f'{signal.Signals(signum).name}: stopping after this step to '
              'save a checkpoint (send it again to stop now, without one).')

  def check(self):
    if self.coordinated and not self.agreed:
      return
    if self.pending is not None:
      raise Interrupted(self.pending)


@contextlib.contextmanager
def deferred(log):
  """Installs the handlers of SIGINT and SIGTERM for the block (main thread
  only; elsewhere signals keep Python's handling) and yields Interrupts."""
  interrupts = Interrupts(log)
  if threading.current_thread() is not threading.main_thread():
    yield interrupts
    return
  previous = {s: signal.signal(s, interrupts.handle) for s in SIGNALS}
  try:
    yield interrupts
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def exit_code(error):
  """The shell's code for a process stopped by this signal: 128 + signum."""
  return 128 + getattr(error, 'signum', signal.SIGINT)
