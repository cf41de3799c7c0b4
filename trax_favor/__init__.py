"""trax_favor: Performer's FAVOR+ attention as a first-class Trax layer.

    import trax_favor
    import trax
    model = trax.models.ReformerLM(
        vocab_size=256, attention_type=trax_favor.FavorSelfAttention)

`import trax_favor` is cheap and changes nothing global: it imports neither
JAX nor trax and starts no backend. The names below load on first use;
`trax_favor.ops` is pure JAX (no trax, TensorFlow or gym). The first name
that needs trax imports it with the trax-on-current-JAX fixes applied
(`trax_favor.compat`, which changes trax's own modules only). Importing
trax_favor before trax also makes `import trax` several times faster (see
`compat.install_import_hook`).
"""

import importlib

from trax_favor import compat

__version__ = '0.1.0'

_EXPORTS = {
    'FavorSelfAttention': 'trax_favor.layers',
    'favor_layers': 'trax_favor.layers',
    'load_projections': 'trax_favor.layers',
    'load_weights': 'trax_favor.layers',
    'transfer_projections': 'trax_favor.layers',
    'PerformerLM': 'trax_favor.models',
    'compiler_options': 'trax_favor.cpu_speedups',
}
_SUBMODULES = ('ops', 'layers', 'models', 'data', 'compat', 'cpu_speedups',
               'configs', 'training', 'checkpoints', 'decoding',
               'configurables', 'safe_pickle')

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  if name in _SUBMODULES:
    return importlib.import_module(f'trax_favor.{name}')
  raise AttributeError(f'module trax_favor has no attribute {name!r}')


def __dir__():
  return __all__ + ['__version__']


compat.install_import_hook()
