"""trax_favor: Performer's FAVOR+ attention as a first-class Trax layer.

    import trax
    import trax_favor
    model = trax.models.ReformerLM(
        vocab_size=256, attention_type=trax_favor.FavorSelfAttention)

Importing trax_favor applies the trax-on-current-JAX fixes (`compat`) and
imports trax quietly: TensorFlow's C++ start-up lines, absl's pre-init notice
and gym's deprecation notice are kept off the terminal. Set
TRAX_FAVOR_VERBOSE_IMPORT=1 to see them.

It also turns off XLA's CPU YNNPACK fusions (`prefer_eigen_dots_on_cpu`):
on this project's CPU they made FAVOR+'s gradients slow (README, "XLA's CPU
fusions"). Set XLA_FLAGS' --xla_cpu_experimental_ynn_fusion_type yourself,
or TRAX_FAVOR_XLA_CPU_DEFAULTS=0, to keep your own choice.
"""

import contextlib
from importlib import metadata
import os
import re
import sys
import warnings

from trax_favor import compat

__version__ = '0.1.0'

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'


def prefer_eigen_dots_on_cpu():
  """Adds `--xla_cpu_experimental_ynn_fusion_type=` (no YNNPACK fusions) to
  XLA_FLAGS, so XLA's CPU backend runs dots with its own (Eigen) kernels and
  fuses the elementwise work around them itself.

  Measured on the project's 2-core CPU (Sapphire Rapids, jaxlib 0.10.2):
  with YNNPACK fusions, a product fused with reductions (FAVOR+'s key
  feature gradient) ran about 10x below the same product alone, and the
  attention benchmark's causal / bidirectional ratio at L=4096 went from
  1.77x to 1.52x without them (README, "XLA's CPU fusions").

  XLA reads XLA_FLAGS when JAX starts its first backend, so this works only
  before the first JAX computation; after it, on the CPU, it warns instead.
  It leaves XLA_FLAGS alone where the user set the flag, where
  TRAX_FAVOR_XLA_CPU_DEFAULTS=0, and for jaxlib older than 0.10.1 (XLA
  stops at a flag it does not know). Returns whether it added the flag.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if YNN_FLAG in flags or os.environ.get('TRAX_FAVOR_XLA_CPU_DEFAULTS') == '0':
    return False
  try:
    version = re.match(r'(\d+)\.(\d+)\.(\d+)', metadata.version('jaxlib'))
  except metadata.PackageNotFoundError:
    return False
  if not version or tuple(map(int, version.groups())) < (0, 10, 1):
    return False  # the flag is known from 0.10.1 (tested with 0.10.2)
  if 'jax' in sys.modules:
    import jax  # pylint: disable=g-import-not-at-top
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    if xla_bridge.backends_are_initialized():
      if jax.default_backend() == 'cpu':
        warnings.warn(
            'trax_favor was imported after JAX started, so XLA\'s CPU '
            'YNNPACK fusions stay on (slower FAVOR+ gradients on CPU); '
            'import trax_favor before running JAX code, or set '
            f'XLA_FLAGS={YNN_FLAG}= yourself.', stacklevel=3)
      return False
  os.environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}='.strip()
  return True


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


prefer_eigen_dots_on_cpu()
_import_trax_quietly()

# pylint: disable=g-import-not-at-top,wrong-import-position
from trax_favor import ops
from trax_favor.layers import favor_layers
from trax_favor.layers import FavorSelfAttention
from trax_favor.layers import IdentityAttention
from trax_favor.layers import transfer_projections
from trax_favor.models import PerformerLM
