"""What trax_favor's command lines share: a quiet start, config flags, and
one-line errors.

The entry modules (`python -m trax_favor.train`, `.sample`,
`.trax_trainer`) parse their flags, call `quiet_start`, and hand the flags
to `commands`; the benchmark and experiment scripts use the same pieces.
Only command lines call `quiet_start`: importing the library never touches
the environment or the terminal.
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def _stderr_to_devnull():
  """Sends file descriptor 2 (C++ and Python stderr) to /dev/null."""
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def quiet_start():
  """Imports trax for a command line, keeping its start-up noise off the
  terminal: TensorFlow's C++ lines (TF_CPP_MIN_LOG_LEVEL=2, and stderr sent
  to /dev/null while TensorFlow loads: its cudart_stub line ignores the
  level) and gym's deprecation notice. TRAX_FAVOR_VERBOSE_IMPORT=1 shows
  them."""
  from trax_favor import compat  # pylint: disable=g-import-not-at-top
  verbose = os.environ.get('TRAX_FAVOR_VERBOSE_IMPORT') == '1'
  if 'trax' in sys.modules or verbose:
    compat.import_trax()
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  with _stderr_to_devnull():
    try:  # gym prints a deprecation notice on import unless this is empty
      import gym_notices.notices  # pylint: disable=g-import-not-at-top
      gym_notices.notices.notices.clear()
    except ImportError:
      pass
    compat.import_trax()


def add_config_flags(parser, output_dir_help):
  """--config_file (repeatable), --config (repeatable), --output_dir."""
  parser.add_argument('--config_file', action='append', required=True,
                      help='gin config file (repeatable, parsed in order)')
  parser.add_argument('--config', action='append', default=[],
                      help="gin binding (repeatable), e.g. 'train.steps=100'")
  parser.add_argument('--output_dir', required=True, help=output_dir_help)


def add_verbose_flag(parser):
  parser.add_argument('--verbose', action='store_true',
                      help='on an error, show the full traceback')


def user_error(error):
  """The one line to print for an ordinary fault (a bad config or binding,
  a missing or damaged file, a checkpoint that would run code, a directory
  that cannot be written, a full disk), or None for an unexpected internal
  error."""
  # pylint: disable=g-import-not-at-top
  from trax_favor import checks
  from trax_favor import model_files
  from trax_favor import safe_pickle
  from trax_favor.data import DatasetNotPreparedError
  from trax_favor.run.errors import RunError
  # pylint: enable=g-import-not-at-top
  if isinstance(error, (RunError, DatasetNotPreparedError,
                        checks.ConfigError,
                        model_files.DamagedCheckpoint,
                        safe_pickle.UnsafeCheckpoint)):
    message = str(error)
  elif isinstance(error, OSError):
    where = f': {error.filename}' if error.filename else ''
    message = f'{error.strerror or error}{where}'
  elif type(error).__module__.startswith('tensorflow') and hasattr(
      error, 'message'):  # tf.io.gfile's errors (e.g. TensorBoard files)
    message = error.message
  else:
    return None
  # gin adds "In call to configurable X" on a line of its own: keep it.
  return ' '.join(line.strip() for line in message.splitlines() if line.strip())


def start_up():
  """`quiet_start`, then the command module (`run.commands`), with Ctrl-C
  and SIGTERM during it (trax's import takes seconds) ending the process
  with one line, 130 or 143 (`stopped`). Returns run.commands."""
  import signal  # pylint: disable=g-import-not-at-top
  from trax_favor.run import interrupts  # pylint: disable=g-import-not-at-top

  def terminated(signum, frame):  # pylint: disable=unused-argument
    raise interrupts.Interrupted(signum)
  previous = signal.signal(signal.SIGTERM, terminated)
  try:
    quiet_start()
    from trax_favor.run import commands  # pylint: disable=g-import-not-at-top
  except KeyboardInterrupt as e:
    stopped(e)
  finally:
    signal.signal(signal.SIGTERM, previous)
  return commands


def stopped(error):
  """Ends the process for Ctrl-C or SIGTERM (KeyboardInterrupt `error`)
  with 130 or 143, saying so in one line unless the run already said what
  it saved (`error.saved`, see `training`)."""
  import signal  # pylint: disable=g-import-not-at-top
  from trax_favor.run import interrupts  # pylint: disable=g-import-not-at-top
  if not getattr(error, 'saved', False):
    name = signal.Signals(getattr(error, 'signum', signal.SIGINT)).name
    print(f'stopped by {name} before any checkpoint was saved (during '
          'start-up: nothing of this run was written).', file=sys.stderr,
          flush=True)
  sys.exit(interrupts.exit_code(error))


def supervise_job(args, argv):
  """With multi-process flags, runs this command again as a child under
  run/supervisor.py (its native aborts become one line) and exits with its
  code; otherwise (or in that child) returns."""
  from trax_favor.run import supervisor  # pylint: disable=g-import-not-at-top
  if supervisor.wanted(args):
    sys.exit(supervisor.run(argv, args.process_id))


def main_guard(fn, verbose=False):
  """Runs fn(). An ordinary fault (see user_error) ends the process with one
  line and exit code 2 (its traceback with verbose); Ctrl-C and SIGTERM end
  it with 130 and 143; an unexpected error shows its traceback."""
  try:
    return fn()
  except KeyboardInterrupt as e:
    stopped(e)
  except Exception as e:  # pylint: disable=broad-except
    line = user_error(e)
    if line is None or verbose:
      raise
    print(f'error: {line}', file=sys.stderr)
    sys.exit(2)
