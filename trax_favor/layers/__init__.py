"""Trax layers wrapping the FAVOR+ ops."""

from trax_favor.layers.favor_attention import favor_layers
from trax_favor.layers.favor_attention import FavorSelfAttention
from trax_favor.layers.favor_attention import IdentityAttention
from trax_favor.layers.favor_attention import transfer_projections
