"""Data for trax_favor models: TFDS pipelines and the offline default."""

from trax_favor.data.local_text import local_text_inputs
from trax_favor.data.streams import BitsPerDim
from trax_favor.data.streams import BYTE_VOCAB_SIZE
from trax_favor.data.streams import lm_metrics
from trax_favor.data.streams import MASK_ID
from trax_favor.data.tfds_data import DatasetNotPreparedError
from trax_favor.data.tfds_data import imagenet64_inputs
from trax_favor.data.tfds_data import pg19_inputs
