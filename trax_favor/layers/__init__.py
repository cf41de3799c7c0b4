"""Trax layers wrapping the FAVOR+ ops."""

from trax_favor.layers.options import FavorOptions
from trax_favor.layers.projections import all_layers
from trax_favor.layers.projections import favor_layers
from trax_favor.layers.projections import load_projections
from trax_favor.layers.projections import load_weights
from trax_favor.layers.projections import redraw_projections
from trax_favor.layers.projections import transfer_projections
from trax_favor.layers.self_attention import FavorSelfAttention
