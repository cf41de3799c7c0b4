"""Bounded multi-process faults: one line and a prompt exit, never a hang
or XLA's native abort.

JAX's coordination service notices a lost process only through its
heartbeat, and then ends every process with a native abort (SIGABRT and a
page of C++ stack); an absent coordinator costs 300 s of silence then a
misleading abort; a busy coordinator port is a segfault. None of that can
be caught in Python, so this module pre-empts it:

- `check_port_free`: process 0 binds its loopback coordinator port first;
  a busy port is one line before JAX touches it.
- `arrival_deadline`: a timer armed before `jax.distributed.initialize`;
  if the job has not assembled within --distributed_timeout, one line
  naming who is missing, and the process exits (JAX's own
  initialization_timeout is set later than this, so the timer wins).
- `watch`: after joining, each process bumps a counter in the coordination
  service's key-value store every second, and watches its peers' counters.
  A counter that stops for `STALE_S` (a killed peer), or a store that stops
  answering (a killed coordinator), is one line and an exit. JAX's
  heartbeat timeout is set to `JAX_HEARTBEAT_S`, well after ours, so its
  native abort never comes first. At a normal exit the watch stops before
  JAX's shutdown (no thread left inside the native client) and marks the
  process done, so peers still finishing do not count it lost.
- `step_failed`: a collective that fails (gloo sees a peer's socket close)
  waits briefly for the watcher's better line, then exits with its own.

Every exit goes through `fatal`: one line on stderr and `os._exit`, so no
atexit `jax.distributed.shutdown` waits on a barrier that a dead peer will
never reach. The run directory stays whole: checkpoints are published by
one rename (RunDir), so an exit mid-save leaves only a hidden temporary.
"""

import atexit
import os
import socket
import sys
import threading
import time

EXIT_CODE = 3  # the job lost a process (2 is an ordinary one-line fault)
STALE_S = 15.0  # a peer silent this long is gone
PERIOD_S = 1.0
JAX_HEARTBEAT_S = 45  # after STALE_S: the watcher speaks first
JAX_SHUTDOWN_S = 30
_KEY = 'trax_favor/alive/'
_DONE = 'done'  # a counter's last value, at a normal exit

_lock = threading.Lock()
_state = {'index': None, 'armed': None}


def fatal(line):
  """One line on stderr, then exit at once (no atexit, no JAX shutdown)."""
  with _lock:  # two threads with a line: the first one speaks
    who = _state['index']
    prefix = 'error: ' if who is None else f'error: process {who}: '
    try:
      sys.stderr.write(prefix + line + '\n')
      sys.stderr.flush()
      sys.stdout.flush()
    finally:
      os._exit(EXIT_CODE)  # pylint: disable=protected-access


def check_port_free(address):
  """Raises OSError's line as a str if HOST:PORT cannot be listened on."""
  host, port = address.rsplit(':', 1)
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind((host, int(port)))
    except OSError as e:
      return (f'the coordinator port {address} is in use ({e.strerror}); '
              'pick a free port for --coordinator_address.')
  return None


def _daemon(target, name):
  thread = threading.Thread(target=target, name=name, daemon=True)
  thread.start()
  return thread


def arrival_deadline(timeout_s, index, n_processes, address):
  """Starts the start-up timer; call the returned function once joined."""
  _state['index'] = index
  joined = threading.Event()

  def wait():
    if joined.wait(timeout_s):
      return
    if index == 0:
      fatal(f'not all {n_processes} processes joined the coordinator at '
            f'{address} within {timeout_s:g} s (--distributed_timeout): is '
            'every process started, with the same --num_processes?')
    fatal(f'could not join the coordinator at {address} within '
          f'{timeout_s:g} s (--distributed_timeout): is process 0 running '
          'there, and are all processes started?')

  _daemon(wait, 'trax_favor_arrival')
  return joined.set


def watch(client, index, n_processes, stale_s=STALE_S):
  """Starts the liveness watch over the key-value store (see the module)."""
  _state['index'] = index
  last_ok = [time.monotonic()]
  seen = {}  # peer -> (counter, when it last changed)
  finished = set()  # peers that exited normally (their counter says 'done')
  stop = threading.Event()

  def beat():
    count = 0
    while not stop.is_set():
      count += 1
      try:
        client.key_value_set(f'{_KEY}{index}', str(count),
                             allow_overwrite=True)
        values = dict(client.key_value_dir_get(_KEY))
      except Exception:  # pylint: disable=broad-except
        stop.wait(PERIOD_S)  # the checker times the store's silence
        continue
      now = time.monotonic()
      last_ok[0] = now
      for peer in range(n_processes):
        value = values.get(f'{_KEY}{peer}')
        if value == _DONE:
          finished.add(peer)
        elif peer != index and value is not None:
          if seen.get(peer, (None,))[0] != value:
            seen[peer] = (value, now)
      stop.wait(PERIOD_S)

  def check():
    start = time.monotonic()
    while not stop.wait(PERIOD_S):
      now = time.monotonic()
      if now - last_ok[0] > stale_s:
        fatal(f'lost the coordinator (process 0): its key-value store has '
              f'not answered for {stale_s:g} s; the job stops (the last '
              'whole checkpoint is kept).')
      for peer in range(n_processes):
        if peer == index or peer in finished:
          continue
        changed = seen.get(peer, (None, start))[1]
        if now - changed > stale_s:
          fatal(f'lost process {peer}: silent for {stale_s:g} s (killed or '
                'hung); the job stops (the last whole checkpoint is kept).')

  threads = [_daemon(beat, 'trax_favor_beat'),
             _daemon(check, 'trax_favor_watch')]
  _state['armed'] = stale_s

  def finish():
    """At a normal exit, before JAX's own atexit shutdown (registered
    earlier, so run later): the watch ends and its threads return from the
    store's client. A daemon thread still inside that native client when
    the interpreter finalizes aborts the process ("FATAL: exception not
    rethrown", SIGABRT: seen once as a job's last line). Peers still
    running are told this process is done, not lost."""
    stop.set()
    for thread in threads:
      thread.join(timeout=10)
    try:
      client.key_value_set(f'{_KEY}{index}', _DONE, allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass  # the coordinator is gone already: nobody is left to tell

  atexit.register(finish)


def step_failed(error):
  """A step's collective failed: the watcher names the lost process if it
  can (it will within its stale time), else this error's first line."""
  if _state['armed'] is not None:
    time.sleep(_state['armed'] + 3 * PERIOD_S)
  first = str(error).strip().splitlines()[0] if str(error).strip() else ''
  fatal(f'a step across processes failed ({type(error).__name__}: '
        f'{first[:200]}); the job stops (the last whole checkpoint is kept).')
