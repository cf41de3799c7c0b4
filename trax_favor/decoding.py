"""Decoding from a predict-mode LM: the prompt in one call, then sampling.

A predict-mode PerformerLM carries an O(1) state (FAVOR prefix sums), so
memory stays constant however many tokens are generated. Its causal FAVOR
takes any number of tokens per call and returns the state after them, so
the whole prompt goes in one call (one chunked pass, not one call per
token); then each generated token is one call. Because the model shifts
its inputs right during training, the first input is the shift's pad id 0;
the output after input t predicts token t+1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
# The classes themselves: trax.layers' names for them are gin's wrappers.
from trax.layers import attention as trax_attention
from trax.layers.research import position_encodings

from trax_favor import checks
from trax_favor.ops import cpu_speedups
from trax_favor.data import streams
from trax_favor.layers import projections

START_ID = 0  # what tl.ShiftRight puts in front of a sequence


@functools.lru_cache(maxsize=8)
def _step_fn(model):
  """jit of one decoding call: (tokens (b, t), weights, state, rng, temp) ->
  (next token (b,), log-probs (b, t, vocab), state)."""
  def step(tokens, weights, state, rng, temperature):
    logits, state = model.pure_fn(tokens, weights, state, rng)  # (b, t, v)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))  # (b, t, v)
    sample_rng, _ = jax.random.split(rng)
    greedy = jnp.argmax(log_probs[:, -1], axis=-1)
    sampled = jax.random.categorical(
        sample_rng, log_probs[:, -1] / jnp.maximum(temperature, 1e-6))
    next_token = jnp.where(temperature > 0, sampled, greedy)  # (b,)
    return next_token.astype(jnp.int32), log_probs, state
  return cpu_speedups.jit(step)


def positions_left(model):
  """How many more tokens a predict-mode model's position table can take.

  Trax's positional encodings (`tl.PositionalEncoding`, and the axial one
  of the ImageNet64 configs) count the tokens fed in predict mode and read
  their table at that count; past the table's end (max_len positions) the
  read is clamped, so every later token would silently get the last
  position. Returns the table's size less the tokens fed so far, or None
  where the model has no such table (or is not in predict mode).
  """
  left = []
  for layer in projections.all_layers(model):
    if isinstance(layer, trax_attention.PositionalEncoding):
      table = layer.weights[0] if isinstance(layer.weights, tuple) else (
          layer.weights)
      size = table.shape[0]  # (max_len, d_model)
    elif isinstance(layer, position_encodings.AxialPositionalEncoding):
      # One table per axis, (1, ..., axis length, ..., d_axis) each.
      size = int(np.prod([np.prod(w.shape[1:-1]) for w in layer.weights]))
    else:
      continue
    fed = np.asarray(layer.state)  # a count in predict mode, else no state
    if fed.shape == ():
      left.append(size - int(fed))
  return min(left) if left else None


def sample(model, prompt, n_tokens, temperature=1.0, seed=0):
  """Continues `prompt` by n_tokens tokens.

  The start id and the prompt go into the model in one predict-mode call;
  then each generated token is fed back, one call each.

  Args:
    model: a predict-mode LM initialized for batch size 1 (its state is
      advanced in place).
    prompt: (p,) int token ids (may be empty).
    n_tokens: how many tokens to generate.
    temperature: sampling temperature; 0 takes the most likely token.
    seed: seed of the sampling draws.

  Returns:
    (generated (n_tokens,) int32, log_probs (p + n_tokens, vocab) float32):
    log_probs[t] is the model's distribution for token t of prompt +
    generated, given the tokens before it.

  Raises:
    ValueError: for n_tokens < 1 or temperature < 0, and where the model's
      position table (max_len) cannot take p + n_tokens more tokens.
  """
  checks.check_positive_int(n_tokens=n_tokens)
  if not 0 <= temperature < float('inf'):  # NaN fails too
    raise checks.ConfigError(
        f'temperature must be a finite number >= 0, got {temperature}.')
  prompt = np.asarray(prompt, np.int32).reshape(-1)
  left = positions_left(model)
  if left is not None and len(prompt) + n_tokens > left:
    raise checks.ConfigError(
        f'a prompt of {len(prompt)} tokens and n_tokens={n_tokens} make '
        f'{len(prompt) + n_tokens} positions, but the model has {left} '
        'left (its max_len, less tokens it was fed before): shorten the '
        'prompt or n_tokens, or build the model with a larger max_len.')
  step = _step_fn(model)
  weights, state = model.weights, model.state
  rng = jax.random.PRNGKey(seed)
  tokens = np.concatenate([[START_ID], prompt]).astype(np.int32)[None]
  generated, log_probs = [], []
  for _ in range(n_tokens):  # the first call takes start id + prompt
    rng, step_rng = jax.random.split(rng)
    next_token, step_log_probs, state = step(tokens, weights, state,
                                             step_rng, temperature)
    log_probs.append(np.asarray(step_log_probs[0]))
    generated.append(int(next_token[0]))
    tokens = np.asarray(next_token).reshape(1, 1)
  model.state = state
  return np.array(generated, np.int32), np.concatenate(log_probs)


def complete_text(model, prompt_text, n_bytes, temperature=1.0, seed=0):
  """Byte-level text continuation: returns the generated text."""
  generated, _ = sample(model, streams.byte_tokens(prompt_text), n_bytes,
                        temperature, seed)
  return generated.astype(np.uint8).tobytes().decode('utf-8',
                                                       errors='replace')


def complete_image(model, image_size, prompt_image=None, prompt_rows=0,
                   temperature=1.0, seed=0):
  """Samples an image row by row, keeping the first prompt_rows rows.

  Args:
    model: predict-mode byte LM over flattened (image_size, image_size, 3)
      images.
    image_size: side of the square image.
    prompt_image: (image_size, image_size, 3) uint8 image whose first rows
      are kept, or None for an unconditional sample.
    prompt_rows: number of rows of prompt_image to keep.
    temperature: sampling temperature.
    seed: seed of the draws.

  Returns:
    (image_size, image_size, 3) uint8 image.
  """
  n_tokens = image_size * image_size * 3
  if prompt_image is None:
    if prompt_rows:
      raise checks.ConfigError('prompt_rows needs a prompt image.')
    prompt = np.zeros((0,), np.int32)
  else:
    prompt_image = np.asarray(prompt_image)
    if prompt_image.shape != (image_size, image_size, 3):
      raise checks.ConfigError(
          f'prompt image has shape {prompt_image.shape}, the '
          f'model takes ({image_size}, {image_size}, 3).')
    if not 0 <= prompt_rows < image_size:
      raise checks.ConfigError(f'prompt_rows must be in [0, {image_size}), got '
                       f'{prompt_rows}.')
    prompt = prompt_image[:prompt_rows].reshape(-1).astype(np.int32)
  generated, _ = sample(model, prompt, n_tokens - len(prompt), temperature,
                        seed)
  tokens = np.concatenate([prompt, generated])  # (s * s * 3,)
  return tokens.reshape(image_size, image_size, 3).astype(np.uint8)
