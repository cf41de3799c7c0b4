"""Example streams -> Trax batches, shared by every dataset.

An example is a pair of NumPy arrays (tokens (l,) int32, weights (l,)
float32); weights are 0 on padding. `make_inputs` batches two example
streams (train, eval) into a `trax.data.Inputs`, whose batches are

  causal LM:  (tokens, tokens, weights)      the model shifts inputs right
  masked LM:  (masked tokens, tokens, weights on masked positions only)

each (b, l). The batch size is global: with n_devices > 1 Trax splits each
batch across devices, so the data (and the loss trajectory) do not depend on
the number of devices.
"""

import math

import numpy as np
import trax.layers as tl
from trax.data import inputs as trax_inputs

from trax_favor import checks

OBJECTIVES = ('causal', 'masked')
BYTE_VOCAB_SIZE = 256
MASK_ID = 256  # masked LM: the id after the 256 bytes (vocab_size 257)


def byte_tokens(data):
  """bytes or str -> (n,) int32 byte ids in [0, 256)."""
  if isinstance(data, str):
    data = data.encode('utf-8')
  return np.frombuffer(data, dtype=np.uint8).astype(np.int32)


def windows(tokens, length):
  """Cuts (n,) tokens into consecutive (length,) examples, the last padded.

  Yields:
    (tokens (length,) int32, weights (length,) float32), weights 0 on padding.
  """
  for start in range(0, max(len(tokens), 1), length):
    piece = tokens[start:start + length]
    example = np.zeros((length,), np.int32)
    weights = np.zeros((length,), np.float32)
    example[:len(piece)] = piece
    weights[:len(piece)] = 1.0
    if len(piece):
      yield example, weights


def mask_tokens(examples, mask_rate, seed):
  """Masked-LM examples: hides a random mask_rate of the real tokens.

  Each real (weight 1) position is independently replaced by MASK_ID with
  probability mask_rate; the loss is taken on those positions only.

  Args:
    examples: iterable of (tokens (l,), weights (l,)).
    mask_rate: probability of hiding a token, in (0, 1).
    seed: seed of the masking draws (a stream gives the same masks each run).

  Yields:
    (masked tokens (l,), tokens (l,), weights (l,) on masked positions).
  """
  rng = np.random.RandomState(seed)
  for tokens, weights in examples:
    hidden = (rng.random_sample(tokens.shape) < mask_rate) & (weights > 0)
    masked = np.where(hidden, MASK_ID, tokens).astype(np.int32)
    yield masked, tokens, hidden.astype(np.float32)


def _causal(examples):
  for tokens, weights in examples:
    yield tokens, tokens, weights


def _batches(examples, batch_size):
  """Stacks examples ((l,) arrays each) into (batch_size, l) batches."""
  buffer = []
  for example in examples:
    buffer.append(example)
    if len(buffer) == batch_size:
      yield tuple(np.stack(parts) for parts in zip(*buffer))
      buffer = []


def make_inputs(train_examples, eval_examples, batch_size,
                objective='causal', mask_rate=0.15, seed=0):
  """Builds trax Inputs from two example-stream factories.

  Args:
    train_examples: () -> endless iterator of (tokens, weights).
    eval_examples: () -> endless iterator of (tokens, weights).
    batch_size: global batch size (split over devices by Trax).
    objective: 'causal' (next-token LM) or 'masked' (masked LM).
    mask_rate: masked LM only: fraction of tokens hidden.
    seed: masked LM only: seed of the masks.

  Returns:
    trax.data.Inputs.
  """
  checks.check_positive_int(batch_size=batch_size)
  if objective not in OBJECTIVES:
    raise checks.ConfigError(f'objective must be one of {OBJECTIVES}, '
                             f'got {objective!r}.')
  if objective == 'masked' and not 0.0 < mask_rate < 1.0:
    raise checks.ConfigError(f'mask_rate must be in (0, 1), got {mask_rate!r}.')

  def stream_fn(examples_fn, stream_seed):
    def stream(n_devices):
      if batch_size % n_devices:
        raise checks.ConfigError(
            f'batch_size={batch_size} does not split over n_devices='
            f'{n_devices}: use a multiple of the number of devices.')
      examples = examples_fn()
      if objective == 'masked':
        labeled = mask_tokens(examples, mask_rate, stream_seed)
      else:
        labeled = _causal(examples)
      return _batches(labeled, batch_size)
    return stream

  return trax_inputs.Inputs(stream_fn(train_examples, seed),
                            stream_fn(eval_examples, seed + 1))


def BitsPerDim():  # pylint: disable=invalid-name
  """Metric layer: weighted cross-entropy in bits per token (byte, subpixel).

  Takes (logits, targets, weights) like tl.WeightedCategoryCrossEntropy,
  whose value (nats) it divides by ln 2.
  """
  return tl.Serial(
      tl.WeightedCategoryCrossEntropy(),
      tl.Fn('NatsToBits', lambda x: x / math.log(2.0)),
      name='BitsPerDim')


def lm_metrics():
  """Eval metrics of every config: loss (nats), bits/dim, accuracy."""
  return {
      'loss': tl.WeightedCategoryCrossEntropy(),
      'bits_per_dim': BitsPerDim(),
      'accuracy': tl.WeightedCategoryAccuracy(),
  }
