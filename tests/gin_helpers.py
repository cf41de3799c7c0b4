"""Helpers for tests of the gin configs: which files run, shrinking, mocks."""

import contextlib
import glob
import os

import gin
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from trax_favor.run import configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ('base.gin', 'tiny.gin')  # included by runnable configs, not run

# Macro values that shrink every family (unknown macros are harmless), as
# gin.bind_parameter keys; depth (N_LAYERS) is bound separately.
TINY_MACROS = {
    'D_MODEL': 32, 'D_FF': 64, 'N_HEADS': 2, 'D_HEAD': 16, 'IMAGE_SIZE': 8,
    'SEQUENCE_LENGTH': 192, 'POS_AXIAL_SHAPE': (8, 8, 3),
    'POS_D_AXIAL_EMBS': (12, 12, 8), 'FF_CHUNK_SIZE': 64, 'BATCH_SIZE': 2,
    'N_RANDOM_FEATURES': 16, 'LSH_CHUNK_LEN': 16, 'LSH_N_BUCKETS': 24,
}


def runnable_configs():
  """Every gin file a user runs (not the parts they include), repo-relative."""
  paths = sorted(glob.glob(os.path.join(REPO, 'gin', '**', '*.gin'),
                           recursive=True))
  return [os.path.relpath(p, REPO) for p in paths
          if os.path.basename(p) not in PARTS
          and os.sep + 'attention' + os.sep not in p]


def twin_pairs():
  """(Performer config, its twin): same name with reformer_ / exact."""
  pairs = []
  for config in runnable_configs():
    head, name = os.path.split(config)
    if name.startswith('performer'):
      twin_name = ('exact' + name[len('performer'):] if 'mlm' in head
                   else 'reformer' + name[len('performer'):])
      pairs.append((config, os.path.join(head, twin_name)))
  return pairs


def parse(config, n_layers=None, shrink=True):
  configs.parse_config([os.path.join(REPO, config)])
  if shrink:
    for name, value in TINY_MACROS.items():
      gin.bind_parameter(f'{name}/macro.value', value)
  if n_layers is not None:
    gin.bind_parameter('N_LAYERS/macro.value', n_layers)


def _fake_split(self, split, **kwargs):
  """Mocked TFDS data for pg19 and downsampled_imagenet (a few examples)."""
  del split, kwargs
  rng = np.random.default_rng(0)
  if self.name == 'pg19':
    texts = [bytes(rng.integers(32, 127, 700).astype(np.uint8)).decode()
             for _ in range(3)]
    return tf.data.Dataset.from_tensor_slices({
        'book_text': texts, 'book_title': ['t'] * 3, 'book_id': [0, 1, 2],
        'publication_date': ['1900'] * 3, 'book_link': ['l'] * 3})
  images = rng.integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
  return tf.data.Dataset.from_tensor_slices({'image': images})


@contextlib.contextmanager
def mocked_tfds():
  with tfds.testing.mock_data(as_dataset_fn=_fake_split):
    yield
