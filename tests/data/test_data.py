"""Data pipelines: TFDS code paths end to end on mocked TFDS, local text."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import trax.layers as tl

from trax_favor import data
from trax_favor.data import local_text
from trax_favor.data import streams
from trax_favor.data import tfds_data

BOOKS = {  # split -> book texts; lengths are not multiples of the window
    'train': ['abc' * 30, 'Grüße, ünïcode ✓ ' * 3, 'short'],
    'validation': ['The first validation book. ' * 4, 'x' * 7],
}


def _pg19_as_dataset(self, split, **kwargs):
  del self, kwargs
  texts = BOOKS[split]
  return tf.data.Dataset.from_tensor_slices({
      'book_text': texts, 'book_title': ['t'] * len(texts),
      'book_id': list(range(len(texts))),
      'publication_date': ['1900'] * len(texts), 'book_link': ['l'] * len(texts),
  })


def _images(split):
  rng = np.random.default_rng(0 if split == 'train' else 1)
  return rng.integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)


def _imagenet_as_dataset(self, split, **kwargs):
  del self, kwargs
  return tf.data.Dataset.from_tensor_slices({'image': _images(split)})


def _take(stream, n):
  return [next(stream) for _ in range(n)]


def _expected_windows(texts, length):
  for text in texts:
    raw = np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)
    for start in range(0, len(raw), length):
      piece = raw[start:start + length]
      yield np.pad(piece, (0, length - len(piece))), len(piece)


def test_pg19_eval_batches_are_the_books_bytes_in_order():
  length = 32
  with tfds.testing.mock_data(as_dataset_fn=_pg19_as_dataset):
    inputs = data.pg19_inputs(batch_size=2, sequence_length=length,
                              data_dir='/nonexistent/tfds')
    batches = _take(inputs.eval_stream(1), 3)
  want = list(_expected_windows(BOOKS['validation'], length))
  got = [(x[i], y[i], w[i]) for x, y, w in batches for i in range(2)]
  for (x, y, w), (tokens, n_real) in zip(got, want):
    np.testing.assert_array_equal(x, tokens)
    np.testing.assert_array_equal(y, tokens)  # causal: the model shifts
    np.testing.assert_array_equal(w, np.arange(length) < n_real)


def test_pg19_training_stream_covers_every_window():
  length = 16
  with tfds.testing.mock_data(as_dataset_fn=_pg19_as_dataset):
    inputs = data.pg19_inputs(batch_size=4, sequence_length=length, seed=3)
    rows = {tuple(x) for batch in _take(inputs.train_stream(1), 40)
            for x in batch[0]}
  want = {tuple(t) for t, _ in _expected_windows(BOOKS['train'], length)}
  assert rows == want  # shuffled, repeated, nothing lost or invented


def test_pg19_masked_lm_batches():
  with tfds.testing.mock_data(as_dataset_fn=_pg19_as_dataset):
    inputs = data.pg19_inputs(batch_size=4, sequence_length=64,
                              objective='masked', mask_rate=0.25)
    batches = _take(inputs.train_stream(1), 30)
  x, y, w = (np.concatenate(part) for part in zip(*batches))
  hidden = x == data.MASK_ID
  np.testing.assert_array_equal(w, hidden.astype(np.float32))
  np.testing.assert_array_equal(x[~hidden], y[~hidden])  # rest untouched
  assert np.all(y < 256) and np.all(y[hidden] > 0)  # never hides padding
  rate = hidden.sum() / (y > 0).sum()
  assert abs(rate - 0.25) < 0.03, rate  # binomial, n ~ 4000: sd ~ 0.007


def test_imagenet64_flattens_images_row_major_channels_last():
  with tfds.testing.mock_data(as_dataset_fn=_imagenet_as_dataset):
    inputs = data.imagenet64_inputs(batch_size=3)
    x, y, w = next(inputs.eval_stream(1))
  assert x.shape == (3, 12288)  # 64 * 64 * 3
  np.testing.assert_array_equal(x, _images('validation').reshape(3, -1))
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(w, np.ones_like(x, np.float32))


def test_imagenet64_tiny_images_are_area_averages():
  with tfds.testing.mock_data(as_dataset_fn=_imagenet_as_dataset):
    inputs = data.imagenet64_inputs(batch_size=3, image_size=8)
    x, _, _ = next(inputs.eval_stream(1))
  blocks = _images('validation').reshape(3, 8, 8, 8, 8, 3).astype(np.float64)
  want = np.round(blocks.mean(axis=(2, 4))).reshape(3, -1)  # 8x8 pixel means
  np.testing.assert_allclose(x, want, atol=1)  # float32 rounding at .5


@pytest.mark.parametrize('make,configurable', [
    (lambda d: data.pg19_inputs(batch_size=2, sequence_length=8, data_dir=d),
     'pg19_inputs'),
    (lambda d: data.imagenet64_inputs(batch_size=2, data_dir=d),
     'imagenet64_inputs'),
], ids=['pg19', 'imagenet64'])
def test_missing_dataset_says_how_to_prepare_it(make, configurable, tmp_path):
  with pytest.raises(data.DatasetNotPreparedError) as error:
    make(str(tmp_path))
  message = str(error.value)
  assert 'download_and_prepare' in message and str(tmp_path) in message
  # The binding to set is this dataset's own, with a runnable value.
  assert f'--config="trax_favor.{configurable}.data_dir=' in message
  other = ({'pg19_inputs', 'imagenet64_inputs'} - {configurable}).pop()
  assert other not in message and 'data_dir=None' not in message


def test_local_text_holds_out_whole_files():
  train, evaluation = local_text.read_corpus()
  inputs = data.local_text_inputs(batch_size=4, sequence_length=128)
  x, y, w = next(inputs.train_stream(1))
  np.testing.assert_array_equal(x, y)
  assert w.min() == 1.0 and x.shape == (4, 128)
  train_bytes = train.astype(np.uint8).tobytes()
  for row in x:  # each example is a window of the training text
    assert row.astype(np.uint8).tobytes() in train_bytes
  ex, _, _ = next(inputs.eval_stream(1))
  np.testing.assert_array_equal(ex[0], evaluation[:128])


def test_batch_size_must_split_over_devices():
  inputs = data.local_text_inputs(batch_size=3, sequence_length=16)
  with pytest.raises(ValueError, match='n_devices=2'):
    next(inputs.train_stream(2))


@pytest.mark.parametrize('kwargs, message', [
    (dict(batch_size=0), 'batch_size'),
    (dict(objective='prefix'), 'objective'),
    (dict(objective='masked', mask_rate=1.5), 'mask_rate'),
])
def test_bad_stream_arguments(kwargs, message):
  settings = dict(batch_size=2, objective='causal')
  settings.update(kwargs)
  with pytest.raises(ValueError, match=message):
    streams.make_inputs(lambda: iter([]), lambda: iter([]), **settings)


def test_bits_per_dim_is_cross_entropy_in_bits():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (2, 5)).astype(np.int32)
  weights = (rng.random((2, 5)) > 0.3).astype(np.float32)
  nats = tl.WeightedCategoryCrossEntropy()((logits, targets, weights))
  bits = data.BitsPerDim()((logits, targets, weights))
  np.testing.assert_allclose(bits, nats / math.log(2.0), rtol=1e-6)
  assert set(data.lm_metrics()) == {'loss', 'bits_per_dim', 'accuracy'}
