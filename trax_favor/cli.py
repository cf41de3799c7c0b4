"""What trax_favor's command lines share: a quiet start, config flags, and
one-line errors.

Only the command lines (train, sample, trax_trainer, the benchmark and
experiment scripts) call `quiet_start`; importing the library never
touches the environment or the terminal.
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


def main_guard(fn):
  """Runs fn(); a RunError or data error ends the process with its message."""
  from trax_favor import configs  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from trax_favor.data import DatasetNotPreparedError
  try:
    return fn()
  except (configs.RunError, DatasetNotPreparedError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    sys.exit(130)
