"""A multi-process job's process runs under a thin supervisor: the one
fault that cannot be caught in the training process itself becomes one
line.

When the coordinator (process 0) dies, JAX's distributed client on every
other process polls the error within a second and ends the process with
LOG(FATAL) on a native thread: SIGABRT and a page of C++ stack, before any
Python code can run (jaxlib's client takes a `missed_heartbeat_callback`,
but calling a Python one fails to convert its absl::Status and terminates
just the same). So `python -m trax_favor.train` with multi-process flags
starts itself again as a child (TRAX_FAVOR_SUPERVISED=1) and only:

- passes the child's stdout through untouched, and its stderr line by line,
  minus the native log lines (absl's `E1204 ...`, `*** Check failure stack
  trace`, `    @ 0x...`, `terminate called ...`);
- kills the child if it dies itself (PR_SET_PDEATHSIG), so a SIGKILL to a
  process of the job is a SIGKILL to its training;
- forwards SIGINT and SIGTERM to the child (the child's own interrupt
  handling agrees on a step with its peers, as before);
- turns a child killed by a signal without having printed an `error:` line
  into one line naming this process and what happened, exit code 3.

Everything else (the watchdog, the one-line faults, the checkpoints) stays
in the child; the supervisor imports nothing of JAX.
"""

import os
import re
import signal
import subprocess
import sys

ENV = 'TRAX_FAVOR_SUPERVISED'
EXIT_CODE = 3
_NATIVE = re.compile(
    r'^([EFWI]\d{4} \d\d:\d\d|\*\*\* |\s+@\s+0x|terminate called|'
    r'\s*what\(\):|WARNING: All log messages before absl|Fatal Python error|'
    r'Additional GRPC error|:UNKNOWN:Error received)')


def wanted(args):
  """Whether this process should run under a supervisor."""
  return (os.environ.get(ENV) != '1' and
          any(getattr(args, k, None) is not None for k in
              ('coordinator_address', 'num_processes', 'process_id')))


def _die_with_parent():
  """In the child, before exec: its own process group (a terminal's Ctrl-C
  reaches the supervisor only, which forwards it once: a second SIGINT
  would cut the interrupt's save short), and SIGKILL when the supervisor
  dies (Linux), so killing a process of the job kills its training too."""
  os.setpgid(0, 0)
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PDEATHSIG
  except (OSError, AttributeError):
    pass


def run(argv, process_id):
  """Runs `python -m trax_favor.train *argv` as a child; returns its exit
  code (see the module)."""
  env = dict(os.environ, **{ENV: '1'})
  child = subprocess.Popen(
      [sys.executable, '-u', '-m', 'trax_favor.train', *argv], env=env,
      stderr=subprocess.PIPE, text=True, errors='replace',
      preexec_fn=_die_with_parent)

  def forward(signum, _):
    if child.poll() is None:
      child.send_signal(signum)

  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, forward)
  spoke = False
  for line in child.stderr:
    if _NATIVE.match(line):
      continue
    spoke = spoke or line.startswith('error: ')
    sys.stderr.write(line)
    sys.stderr.flush()
  code = child.wait()
  if code >= 0 or spoke:
    return code if code >= 0 else EXIT_CODE
  who = 'this process' if process_id is None else f'process {process_id}'
  if code == -signal.SIGABRT:
    what = ("JAX's coordination service stopped it: the coordinator "
            '(process 0) or another process died')
  else:
    what = f'it was killed by signal {signal.Signals(-code).name}'
  sys.stderr.write(f'error: {who}: {what}; the job stops (the last whole '
                   'checkpoint is kept).\n')
  return EXIT_CODE
