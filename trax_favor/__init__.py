"""trax_favor: Performer's FAVOR+ attention as a first-class Trax layer.

    import trax
    import trax_favor
    model = trax.models.ReformerLM(
        vocab_size=256, attention_type=trax_favor.FavorSelfAttention)

Importing trax_favor applies the trax-on-current-JAX fixes (`compat`) and
imports trax quietly: TensorFlow's C++ start-up lines, absl's pre-init notice
and gym's deprecation notice are kept off the terminal. Set
TRAX_FAVOR_VERBOSE_IMPORT=1 to see them.
"""

import contextlib
import os
import sys

from trax_favor import compat

__version__ = '0.1.0'


@contextlib.contextmanager
def _quiet_stderr():
  """Sends file descriptor 2 (C++ and Python stderr) to /dev/null."""
  if os.environ.get('TRAX_FAVOR_VERBOSE_IMPORT') == '1':
    yield
    return
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


def _import_trax_quietly():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  compat.install_import_hook()
  if 'trax' in sys.modules:
    return
  with _quiet_stderr():
    try:  # gym prints a deprecation notice on import unless this is empty
      import gym_notices.notices  # pylint: disable=g-import-not-at-top
      gym_notices.notices.notices.clear()
    except ImportError:
      pass
    import trax  # pylint: disable=g-import-not-at-top,unused-import


_import_trax_quietly()

# pylint: disable=g-import-not-at-top,wrong-import-position
from trax_favor import ops
from trax_favor.layers import favor_layers
from trax_favor.layers import FavorSelfAttention
from trax_favor.layers import IdentityAttention
from trax_favor.layers import transfer_projections
from trax_favor.models import PerformerLM
