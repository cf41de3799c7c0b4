"""Backward compatibility: an exact-attention model's weights in FAVOR+.

FavorSelfAttention has tl.SelfAttention's weight structure, so a model
trained with exact attention loads into the FAVOR+ model unchanged. This
module trains the exact model (the offline default config with Trax's
tl.SelfAttention, resumable like any run), loads its weights into FAVOR+
models, measures how close they are (next-token KL, accuracy) as m grows,
and fine-tunes one of them with FAVOR+, recording eval accuracy on the way
(the Performer paper saw LM1B accuracy fall to 0.07 right after transfer
and recover in a small fraction of the original steps).
"""

import gin
import jax
import numpy as np
from trax import layers as tl
from trax import shapes
from trax.supervised import training

from benchmarks import harness
from trax_favor.data import streams
from trax_favor.run import configs
from trax_favor.run import training as trax_favor_training

CONFIG = harness.repo_path('gin/offline_default.gin')
EXACT = ['trax_favor.PerformerLM.attention_type=@trax.layers.SelfAttention',
         'trax.layers.SelfAttention.chunk_len=None']  # full causal softmax


def train_exact(output_dir, bindings=()):
  """Trains (or resumes) the exact-attention twin of the offline default."""
  configs.parse_config([CONFIG], EXACT + list(bindings))
  return trax_favor_training.train(output_dir, log_every=50)


def _configured(binding):
  """Calls the configurable bound to `binding` (e.g. train.inputs)."""
  return gin.query_parameter(binding).scoped_configurable_fn()


def eval_batches(bindings, n_batches):
  """n_batches of (inputs, targets, weights) from the config's eval stream."""
  configs.parse_config([CONFIG], list(bindings))
  stream = _configured('train.inputs').eval_stream(1)
  return [next(stream) for _ in range(n_batches)]


def _log_probs(model, weights, state, tokens):
  logits, _ = model.pure_fn(tokens, weights, state, jax.random.PRNGKey(0))
  return jax.nn.log_softmax(logits, axis=-1)  # (b, l, vocab)


def compare(exact_model, favor_model, batches):
  """Mean per-token KL(exact || favor), and both models' accuracy."""
  kls, acc_exact, acc_favor, total = 0.0, 0.0, 0.0, 0.0
  for inputs, targets, weights in batches:
    lp_e = _log_probs(exact_model, exact_model.weights, exact_model.state,
                      inputs)
    lp_f = _log_probs(favor_model, favor_model.weights, favor_model.state,
                      inputs)
    kl = np.sum(np.exp(lp_e) * (lp_e - lp_f), axis=-1)  # (b, l)
    kls += float(np.sum(kl * weights))
    acc_exact += float(np.sum((np.argmax(lp_e, -1) == targets) * weights))
    acc_favor += float(np.sum((np.argmax(lp_f, -1) == targets) * weights))
    total += float(np.sum(weights))
  return {'mean_kl': kls / total, 'accuracy_exact': acc_exact / total,
          'accuracy_favor': acc_favor / total}


def build(bindings, batch):
  """The config's model in eval mode, initialized for `batch`."""
  configs.parse_config([CONFIG], list(bindings))
  model = configs.configured_model_fn()(mode='eval')
  model.init(shapes.signature(batch[0]), rng=jax.random.PRNGKey(1))
  return model


def gap_by_m(exact_weights, ms, batches, bindings=(), favor_weights=None):
  """For each m: the FAVOR+ model with the exact weights (or favor_weights,
  e.g. fine-tuned ones) vs the exact model, on the same batches."""
  exact = build(EXACT + list(bindings), batches[0])
  exact.weights = exact_weights
  rows = []
  for m in ms:
    favor_model = build(list(bindings) + [f'N_RANDOM_FEATURES={m}'],
                        batches[0])
    favor_model.weights = (exact_weights if favor_weights is None
                           else favor_weights)  # the same weight tree
    rows.append(dict(m=m, **compare(exact, favor_model, batches)))
    print(f'm={m}: {rows[-1]}', flush=True)
  return rows


def fine_tune(exact_weights, output_dir, steps, eval_every, bindings=()):
  """Fine-tunes the FAVOR+ model from the exact weights.

  Resumable: the Loop restores its checkpoint from output_dir.

  Returns:
    (eval history {metric: [(step, value)]}, the fine-tuned weights). The
    Loop's evals read consecutive eval windows, a different stretch of text
    at each eval; `compare` on fixed batches is the like-for-like measure.
  """
  configs.parse_config([CONFIG], list(bindings) + [f'STEPS={steps}'])
  inputs = _configured('train.inputs')
  model = configs.configured_model_fn()(mode='train')
  eval_model = configs.configured_model_fn()(mode='eval')
  batch = next(inputs.train_stream(1))
  model.init(shapes.signature(batch), rng=jax.random.PRNGKey(2))
  model.weights = exact_weights
  metrics = streams.lm_metrics()
  train_task = training.TrainTask(
      inputs.train_stream(1), tl.WeightedCategoryCrossEntropy(),
      _configured('train.optimizer'),
      lr_schedule=_configured('train.lr_schedule_fn'),
      n_steps_per_checkpoint=eval_every)
  eval_task = training.EvalTask(
      inputs.eval_stream(1), list(metrics.values()),
      metric_names=list(metrics), n_eval_batches=4)
  loop = training.Loop(model, [train_task], eval_model=eval_model,
                       eval_tasks=[eval_task], output_dir=output_dir,
                       eval_at=lambda step: step == 1 or step % eval_every == 0)
  loop.run(steps - loop.step)
  trax_favor_training.save_eval_history(loop, output_dir)
  return trax_favor_training.read_eval_history(output_dir), loop.model.weights


def config_m(bindings=()):
  """n_random_features of the config's FAVOR+ layers."""
  configs.parse_config([CONFIG], list(bindings))
  return configs.configured_value(
      'trax_favor.FavorSelfAttention.n_random_features')
