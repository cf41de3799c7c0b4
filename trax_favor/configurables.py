"""Registers trax_favor with gin: the one place the package registers anything.

Configurables live in the `trax_favor` gin module, e.g.

    import trax_favor.configurables
    train.model = @trax_favor.PerformerLM
    trax_favor.PerformerLM.attention_type = @trax_favor.FavorSelfAttention
    trax_favor.FavorSelfAttention.n_random_features = 256
    train.inputs = @trax_favor.pg19_inputs

As in trax, `mode` is never bound from gin (models pass it down).
"""

import inspect

import gin

from trax_favor import data
from trax_favor import layers
from trax_favor import models


def _configure(fn):
  """Registers fn in the `trax_favor` gin module; `mode` is never bindable."""
  has_mode = 'mode' in inspect.signature(fn).parameters
  return gin.external_configurable(fn, module='trax_favor',
                                   denylist=['mode'] if has_mode else None)


FavorSelfAttention = _configure(layers.FavorSelfAttention)
PerformerLM = _configure(models.PerformerLM)
local_text_inputs = _configure(data.local_text_inputs)
pg19_inputs = _configure(data.pg19_inputs)
imagenet64_inputs = _configure(data.imagenet64_inputs)
lm_metrics = _configure(data.lm_metrics)
