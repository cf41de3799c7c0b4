"""trax_favor: Performer's FAVOR+ attention as a first-class Trax layer.

    import trax_favor
    import trax
    model = trax.models.ReformerLM(
        vocab_size=256, attention_type=trax_favor.FavorSelfAttention)

`import trax_favor` is cheap: it imports neither JAX nor trax and starts no
backend. It changes one global thing, `sys.meta_path`: it puts a finder
first (`compat.install_import_hook`) that acts only when trax itself is
imported: it applies the trax-on-current-JAX fixes to trax's own modules
(`trax_favor.compat`) and gives `trax.layers.assert_shape` a cheaper
`inspect.stack`, which makes `import trax` several times faster (see
docs/compat.md); once trax has loaded the finder removes itself. Where
trax was imported first, the fixes are applied at once instead. Nothing
else changes: no environment variable, signal handler, logging, JAX
attribute or stderr (tests/test_import_hook.py). The names below load on
first use; `trax_favor.ops` is pure JAX (no trax, TensorFlow or gym).
"""

import importlib

from trax_favor import compat

__version__ = '0.1.0'

_EXPORTS = {
    'FavorSelfAttention': 'trax_favor.layers',
    'favor_layers': 'trax_favor.layers',
    'load_projections': 'trax_favor.layers',
    'load_weights': 'trax_favor.layers',
    'redraw_projections': 'trax_favor.layers',
    'transfer_projections': 'trax_favor.layers',
    'PerformerLM': 'trax_favor.models',
    'compiler_options': 'trax_favor.ops.cpu_speedups',
}
_SUBMODULES = ('ops', 'layers', 'models', 'data', 'compat', 'run',
               'decoding', 'configurables', 'safe_pickle', 'model_files',
               'checks')
# The modules users reach as trax_favor.<name> (`from trax_favor import
# configs, training`), where they live.
_MODULES = {
    'configs': 'trax_favor.run.configs',
    'training': 'trax_favor.run.training',
    'checkpoints': 'trax_favor.run.checkpoints',
    'cpu_speedups': 'trax_favor.ops.cpu_speedups',
}

__all__ = sorted(_EXPORTS) + list(_SUBMODULES) + sorted(_MODULES)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  if name in _SUBMODULES:
    return importlib.import_module(f'trax_favor.{name}')
  if name in _MODULES:
    return importlib.import_module(_MODULES[name])
  raise AttributeError(f'module trax_favor has no attribute {name!r}')


def __dir__():
  return __all__ + ['__version__']


compat.install_import_hook()
