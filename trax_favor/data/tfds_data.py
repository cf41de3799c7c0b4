"""TFDS pipelines: PG-19 books and ImageNet64 pixels as byte tokens.

  pg19_inputs:        TFDS `pg19`; each book's UTF-8 bytes cut into windows
                      of sequence_length tokens (vocab 256, or 257 with the
                      masked-LM mask id); splits train / validation.
  imagenet64_inputs:  TFDS `downsampled_imagenet/64x64`; each image flattened
                      row by row, channel last, to 64 * 64 * 3 = 12288 byte
                      tokens (vocab 256); splits train / validation.

Datasets are read from `data_dir` (TFDS's default, ~/tensorflow_datasets or
$TFDS_DATA_DIR, when None) and never downloaded here: a missing dataset
raises DatasetNotPreparedError with the command that prepares it.
"""

import numpy as np

from trax_favor import checks
from trax_favor.data import streams

PG19 = 'pg19'
IMAGENET64 = 'downsampled_imagenet/64x64'
IMAGENET64_SIZE = 64
_SHUFFLE_BUFFER = 256  # examples (book windows, images) mixed in memory


class DatasetNotPreparedError(RuntimeError):
  """The TFDS dataset is not in data_dir; says how to prepare it."""


_CONFIGURABLE = {PG19: 'pg19_inputs', IMAGENET64: 'imagenet64_inputs'}


def _prepare_hint(name, data_dir):
  """How to prepare dataset `name` and point this dataset's config at it."""
  where = f", data_dir='{data_dir}'" if data_dir else ''
  configurable = _CONFIGURABLE.get(name, 'the inputs function')
  return (
      f'TFDS dataset {name!r} is not prepared in '
      f'{data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"}. '
      'Prepare it once on a machine with internet access:\n'
      '  python -c "import tensorflow_datasets as tfds; '
      f"tfds.builder('{name}'{where}).download_and_prepare()\"\n"
      'then copy that data_dir to this machine and point the config at it: '
      f'--config="trax_favor.{configurable}.data_dir=\'/path/to/'
      'tensorflow_datasets\'"')


def load_split(name, split, data_dir=None, shuffle=False, seed=0):
  """A TFDS split as an endless iterator of NumPy example dicts.

  Args:
    name: TFDS name, e.g. 'pg19'.
    split: 'train', 'validation', ...
    data_dir: TFDS data directory, or None for TFDS's default.
    shuffle: shuffle files and examples (training); else a fixed order.
    seed: shuffling seed.

  Returns:
    An iterator of dicts of NumPy values, repeating the split forever.

  Raises:
    DatasetNotPreparedError: the dataset is not in data_dir.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    dataset = builder.as_dataset(split=split, shuffle_files=shuffle,
                                 read_config=read_config)
  except (AssertionError, tfds.core.DatasetNotFoundError,
          FileNotFoundError) as e:
    raise DatasetNotPreparedError(_prepare_hint(name, data_dir)) from e
  except ValueError as e:  # e.g. an unknown split
    raise DatasetNotPreparedError(
        f'TFDS dataset {name!r} in {data_dir or "the default data_dir"} '
        f'cannot give split {split!r}: {e}') from e
  if shuffle:
    dataset = dataset.shuffle(_SHUFFLE_BUFFER, seed=seed)
  dataset = dataset.repeat().prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(dataset))


def _shuffled(examples, seed, buffer_size=_SHUFFLE_BUFFER):
  """Mixes an endless example stream through a buffer (book windows)."""
  rng = np.random.RandomState(seed)
  buffer = []
  for example in examples:
    buffer.append(example)
    if len(buffer) >= buffer_size:
      yield buffer.pop(rng.randint(len(buffer)))


def pg19_examples(split, sequence_length, data_dir=None, shuffle=False,
                  seed=0):
  """PG-19 books as (tokens (l,), weights (l,)) byte windows, endless."""
  checks.check_positive_int(sequence_length=sequence_length)
  books = load_split(PG19, split, data_dir, shuffle, seed)
  windows = (window for book in books
             for window in streams.windows(
                 streams.byte_tokens(book['book_text']), sequence_length))
  return _shuffled(windows, seed) if shuffle else windows


def resized_image(image, size):
  """(h, w, 3) uint8 -> (size, size, 3) uint8, by area averaging."""
  if image.shape[:2] == (size, size):
    return image
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  resized = tf.image.resize(image, (size, size), method='area')
  return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def imagenet64_examples(split, image_size=IMAGENET64_SIZE, data_dir=None,
                        shuffle=False, seed=0):
  """ImageNet64 images as (tokens (s*s*3,), weights) byte sequences, endless.

  image_size < 64 shrinks images by area averaging (tiny configs: 8 gives
  192 tokens); the real dataset is already 64 x 64.
  """
  checks.check_positive_int(image_size=image_size)
  for example in load_split(IMAGENET64, split, data_dir, shuffle, seed):
    image = resized_image(example['image'], image_size)  # (s, s, 3)
    tokens = image.reshape(-1).astype(np.int32)  # (s * s * 3,) row-major
    yield tokens, np.ones(tokens.shape, np.float32)


def pg19_inputs(batch_size, sequence_length, data_dir=None,
                objective='causal', mask_rate=0.15, seed=0):
  """trax Inputs for PG-19 (train split; eval on validation)."""
  return streams.make_inputs(
      lambda: pg19_examples('train', sequence_length, data_dir, True, seed),
      lambda: pg19_examples('validation', sequence_length, data_dir),
      batch_size, objective, mask_rate, seed)


def imagenet64_inputs(batch_size, image_size=IMAGENET64_SIZE, data_dir=None,
                      seed=0):
  """trax Inputs for ImageNet64 (train split; eval on validation)."""
  return streams.make_inputs(
      lambda: imagenet64_examples('train', image_size, data_dir, True, seed),
      lambda: imagenet64_examples('validation', image_size, data_dir),
      batch_size, 'causal', seed=seed)
