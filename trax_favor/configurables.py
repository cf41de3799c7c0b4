"""Registers trax_favor with gin: the only module that imports gin.

Configurables live in the `trax_favor` gin module, e.g.

    import trax_favor.configurables
    ReformerLM.attention_type = @trax_favor.FavorSelfAttention
    trax_favor.FavorSelfAttention.n_random_features = 256

As in trax, `mode` is never bound from gin (models pass it down).
"""

import gin

from trax_favor import layers  # imports trax_favor: trax fixes, quiet import


def _configure(fn):
  return gin.external_configurable(fn, module='trax_favor', denylist=['mode'])


FavorSelfAttention = _configure(layers.FavorSelfAttention)
