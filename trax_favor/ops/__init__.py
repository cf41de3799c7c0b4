"""Pure jax.numpy FAVOR+ math: no Trax layers, no gin."""

from trax_favor.ops.attention import default_block_size
from trax_favor.ops.attention import default_chunk_size
from trax_favor.ops.attention import favor_attention
from trax_favor.ops.favor import bidirectional_favor
from trax_favor.ops.favor import causal_favor
from trax_favor.ops.favor import combine_sums
from trax_favor.ops.favor import empty_state
from trax_favor.ops.favor import key_sums
from trax_favor.ops.favor import KeySums
from trax_favor.ops.favor import read_out
from trax_favor.ops.favor import relative_key_sums
from trax_favor.ops.feature_maps import FEATURE_MAPS
from trax_favor.ops.feature_maps import feature_map
from trax_favor.ops.feature_maps import full_features
from trax_favor.ops.feature_maps import relative_features
from trax_favor.ops.random_features import draw_projection
from trax_favor.ops.random_features import PROJECTION_SCALINGS
from trax_favor.ops.random_features import PROJECTIONS
