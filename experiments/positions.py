"""Which positional encoding with FAVOR+? Quality, length extrapolation and
approximation error, measured on the offline default.

Variants (gin/offline_default.gin plus bindings; the same data and steps):
  none           no position information (PerformerLM pos_type='none')
  absolute       learned absolute positions up to max_len (the default)
  rope           rotary positions on queries and keys, no absolute ones
  relative       a learned relative bias (D = --max_relative_distance),
                 no absolute positions
  rope_relative  both
Each is trained with --seeds seeds (train.random_seed and the data seed),
at --length tokens, for --steps steps: eval bits/dim at the last step,
mean and spread over seeds. Then each seed-0 run is evaluated at every
length of --eval_lengths on the same held-out text (bits/dim over its first
--eval_bytes bytes): absolute positions cannot go past their table (the
model has no weights for position 512 and beyond), reported as such.
Finally FAVOR+'s approximation error against exact softmax attention with
and without RoPE at the configs' widths (d 64, m 256, L 1024).

    python -m experiments.positions --out results/positions_cpu

Each run is a `python -m trax_favor.train` process into <work_dir>/<name>;
rerunning resumes or skips finished runs. Writes <out>.json and <out>.png.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from trax import shapes

from benchmarks import harness
from experiments import ladder
from trax_favor import ops
from trax_favor.data import local_text
from trax_favor.ops import reference
from trax_favor.ops import rotary
from trax_favor.run import checkpoints
from trax_favor.run import configs
from trax_favor.run import training

NO_ABSOLUTE = "trax_favor.PerformerLM.pos_type='none'"
ROPE = 'trax_favor.FavorSelfAttention.rotary=True'
VARIANTS = ('none', 'absolute', 'rope', 'relative', 'rope_relative')


def variant_bindings(variant, max_relative_distance):
  """The gin bindings of one variant."""
  relative = ["trax_favor.FavorSelfAttention.relative_position='bias'",
              'trax_favor.FavorSelfAttention.max_relative_distance='
              f'{max_relative_distance}']
  return {'none': [NO_ABSOLUTE], 'absolute': [], 'rope': [NO_ABSOLUTE, ROPE],
          'relative': [NO_ABSOLUTE] + relative,
          'rope_relative': [NO_ABSOLUTE, ROPE] + relative}[variant]
CONFIG = 'gin/offline_default.gin'


def _train(name, bindings, args):
  """Trains one run (skipped if finished); returns its run directory."""
  run_dir = os.path.join(args.work_dir, name)
  done = training.read_eval_history(run_dir).get('bits_per_dim', [])
  if not done or done[-1][0] < args.steps:
    ladder.train_cli([harness.repo_path(CONFIG)], bindings + [
        f'STEPS={args.steps}', f'SEQUENCE_LENGTH={args.length}',
        f'train.eval_frequency={args.steps}'] + list(args.config), run_dir,
                     name)
  return run_dir


def bits_at_length(run_dir, bindings, extra, length, n_bytes):
  """Eval bits/dim of a run's checkpoint on the first n_bytes held-out bytes
  cut into windows of `length`; None where the model has no weights for
  that length (absolute positions past their table)."""
  configs.parse_config([harness.repo_path(CONFIG)], bindings + list(extra) + [
      f'SEQUENCE_LENGTH={length}'])
  model = configs.configured_model_fn()(mode='eval')
  _, held_out = local_text.read_corpus()
  n = max(1, n_bytes // length)
  tokens = np.asarray(held_out[:n * length], np.int32).reshape(
      n, length)  # (windows, length)
  signature = shapes.ShapeDtype((1, length), np.int32)
  model.init(signature)
  expected = [np.shape(w) for w in jax.tree_util.tree_leaves(model.weights)]
  try:
    model.init_from_file(checkpoints.latest(run_dir), weights_only=False,
                         input_signature=signature)
  except (ValueError, TypeError, IndexError):
    return None  # the checkpoint's weights do not fit this length
  if [np.shape(w) for w in jax.tree_util.tree_leaves(model.weights)] != (
      expected):
    return None
  nats = []
  for row in tokens:
    logits = model(row[None])  # (1, l, 256)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nats.append(-jnp.take_along_axis(logp, row[None, :, None], -1).mean())
  return float(np.mean(nats) / np.log(2))


def approximation_errors(seeds=4, length=1024, d=64, m=256):
  """Mean |FAVOR+ - exact| / mean |exact| of causal attention outputs, with
  and without RoPE, over `seeds` draws of inputs and projection."""
  errors = {'plain': [], 'rope': []}
  for seed in range(seeds):
    rng = np.random.default_rng(seed)
    q, k = (jnp.asarray(rng.standard_normal((4, length, d)) * 0.5,
                        jnp.float32) for _ in range(2))
    v = jnp.asarray(rng.standard_normal((4, length, d)), jnp.float32)
    w = ops.draw_projection(jax.random.PRNGKey(seed), m, d)
    pos = np.arange(length)
    for name, (qq, kk) in (('plain', (q, k)), ('rope', (
        rotary.apply_rotary(q, pos), rotary.apply_rotary(k, pos)))):
      exact = reference.exact_softmax_attention(qq, kk, v, causal=True)
      out, _ = ops.favor_attention(qq, kk, v, w, causal=True)
      errors[name].append(float(jnp.mean(jnp.abs(out - exact))
                                / jnp.mean(jnp.abs(exact))))
  return {name: {'mean': float(np.mean(e)), 'min': min(e), 'max': max(e)}
          for name, e in errors.items()}


def run(args):
  record = {'machine': harness.machine_info(), 'config': vars(args),
            'quality': {}, 'extrapolation': {}}
  lengths = harness.comma_list(args.eval_lengths, int)
  for variant in harness.comma_list(args.variants, str):
    bindings = variant_bindings(variant, args.max_relative_distance)
    finals = []
    for seed in range(args.seeds):
      seeded = bindings + [f'train.random_seed={seed}',
                           f'trax_favor.local_text_inputs.seed={seed}']
      run_dir = _train(f'{variant}_s{seed}', seeded, args)
      finals.append(training.read_eval_history(run_dir)['bits_per_dim'][-1][1])
      if seed == 0:
        record['extrapolation'][variant] = {
            str(length): bits_at_length(run_dir, seeded, args.config, length,
                                        args.eval_bytes)
            for length in lengths}
    record['quality'][variant] = {'per_seed': finals,
                                  'mean': float(np.mean(finals)),
                                  'spread': float(np.max(finals)
                                                  - np.min(finals))}
    print(variant, record['quality'][variant],
          record['extrapolation'][variant], flush=True)
    harness.save_json(record, args.out + '.json')
  record['approximation_error'] = approximation_errors(seeds=args.error_seeds)
  harness.save_json(record, args.out + '.json')
  plot(record, args.out + '.png')
  return record


def plot(record, path):
  figure, axes = harness.subplots(1, 2, figsize=(11, 4))
  names = list(record['quality'])
  means = [record['quality'][n]['mean'] for n in names]
  spreads = [record['quality'][n]['spread'] / 2 for n in names]
  axes[0].bar(names, means, yerr=spreads)
  axes[0].set(ylabel='eval bits/dim', title='quality (mean, seeds)')
  axes[0].set_ylim(min(means) - 0.3, max(means) + 0.3)
  for name in names:
    points = [(int(l), b) for l, b in record['extrapolation'][name].items()
              if b is not None]
    axes[1].plot([l for l, _ in points], [b for _, b in points], 'o-',
                 label=name)
  axes[1].set(xscale='log', xlabel='eval length (trained at '
              f'{record["config"]["length"]})', ylabel='bits/dim')
  axes[1].legend(fontsize=7)
  figure.savefig(path, dpi=100, bbox_inches='tight')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/positions_cpu')
  parser.add_argument('--work_dir', default='runs/positions')
  parser.add_argument('--variants', default=','.join(VARIANTS),
                      type=harness.comma_list_arg(str, choices=VARIANTS))
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--length', type=int, default=512)
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--eval_lengths', type=harness.comma_list_arg(int),
                      default='512,1024,2048')
  parser.add_argument('--eval_bytes', type=int, default=16384)
  parser.add_argument('--error_seeds', type=int, default=4)
  parser.add_argument('--max_relative_distance', type=int, default=128)
  parser.add_argument('--config', action='append', default=[],
                      help='extra gin binding for every run (repeatable)')
  run(parser.parse_args(argv))


if __name__ == '__main__':
  main()
