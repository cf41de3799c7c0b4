"""How well FAVOR approximates exact softmax attention.

    python -m experiments.approximation --out results/approximation_cpu

Attention level: queries and keys with i.i.d. N(0, s^2) entries (so the
softmax logits q.k / sqrt(d) have standard deviation s^2); the values are
the identity matrix, so the outputs are the attention matrices themselves
(row-normalized): error = ||A_FAVOR - A_softmax||_F / ||A_softmax||_F. Each
seed draws one q, k and one projection key, shared by every variant, so
variants are compared per seed (paired):

  positive_orthogonal   FAVOR+: positive features, orthogonal rows with
                        chi-distributed norms (the layer's default)
  positive_iid          positive features, iid Gaussian rows
  positive_sqrt_d       positive features, orthogonal rows of norm sqrt(d)
  trig_orthogonal       trigonometric features, orthogonal rows

Reported per (s, m): each variant's mean error with +-2 standard errors
over seeds, and the paired ratios (per-seed ratio of errors, mean +-2 SE)
of iid and sqrt(d) rows over FAVOR+'s default. A ratio above 1 means the
default is better; an interval that contains 1 is no evidence either way.

Model level: a small LM trained with exact attention (Trax's
tl.SelfAttention), its weights loaded into the FAVOR+ model, the gap between
the two models' next-token distributions as m grows (see `transfer`;
`--exact_run ''` skips it).
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from experiments import transfer
from trax_favor.ops import attention
from trax_favor.ops import random_features
from trax_favor.ops import reference

# name -> (feature map, projection, row scaling)
VARIANTS = {
    'positive_orthogonal': ('softmax', 'orthogonal', 'norm'),
    'positive_iid': ('softmax', 'iid', 'norm'),
    'positive_sqrt_d': ('softmax', 'orthogonal', 'sqrt_d'),
    'trig_orthogonal': ('softmax_trig', 'orthogonal', 'norm'),
}
BASELINE = 'positive_orthogonal'


def relative_error(approx, exact):
  return float(jnp.linalg.norm(approx - exact) / jnp.linalg.norm(exact))


def _mean_2se(values):
  """(mean, 2 standard errors of the mean) of a list."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(2 * values.std(ddof=1)
                                     / np.sqrt(len(values)))


def seed_errors(m, scale, seed, length=512, d=64):
  """{variant: relative error} for one seed (shared q, k and projection key)."""
  rng_q, rng_k, rng_p = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = scale * jax.random.normal(rng_q, (length, d))  # (l, d)
  k = scale * jax.random.normal(rng_k, (length, d))  # (l, d)
  v = jnp.eye(length)  # (l, l): outputs are attention matrices
  exact = reference.exact_softmax_attention(q, k, v)
  errors = {}
  for name, (feature_map, projection, scaling) in VARIANTS.items():
    w = random_features.draw_projection(rng_p, m, d, projection,
                                        scaling)  # (m, d)
    approx = attention.favor_attention(q, k, v, w, feature_map=feature_map,
                                       numerical_stabilizer=0.0)
    errors[name] = relative_error(approx, exact)
  return errors


def attention_sweep(ms, scales, n_seeds=64, **kwargs):
  """[{scale, m, errors: {variant: [mean, 2se]}, ratios: {...}}] per cell."""
  rows = []
  for scale in scales:
    for m in ms:
      per_seed = [seed_errors(m, scale, seed, **kwargs)
                  for seed in range(n_seeds)]
      errors = {name: _mean_2se([e[name] for e in per_seed])
                for name in VARIANTS}
      ratios = {name: _mean_2se([e[name] / e[BASELINE] for e in per_seed])
                for name in VARIANTS if name != BASELINE}
      rows.append(dict(scale=scale, m=m, n_seeds=n_seeds, errors=errors,
                       ratios=ratios))
  return rows


def plot(rows, model_rows, path):
  """Error against m, one panel per q/k scale (+-2 SE bars), and the
  model-level gap where it was measured."""
  scales = sorted({r['scale'] for r in rows})
  n_panels = len(scales) + bool(model_rows)
  fig, axes = harness.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.8),
                              squeeze=False)
  axes = axes[0]
  for ax, scale in zip(axes, scales):
    cells = sorted((r for r in rows if r['scale'] == scale),
                   key=lambda r: r['m'])
    for name in VARIANTS:
      ms = [r['m'] for r in cells]
      mean = [r['errors'][name][0] for r in cells]
      bar = [r['errors'][name][1] for r in cells]
      ax.errorbar(ms, mean, yerr=bar, marker='o', ms=3, capsize=2,
                  label=name.replace('_', ' '))
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set(xlabel='random features m', ylabel='relative error',
           title=f'q, k entries ~ N(0, {scale}^2)')
  axes[0].legend(fontsize=7)
  if model_rows:
    pts = sorted((r['m'], r['mean_kl']) for r in model_rows)
    axes[-1].plot(*zip(*pts), 'o-')
    axes[-1].set_xscale('log', base=2)
    axes[-1].set(xlabel='random features m',
                 ylabel='KL(exact || FAVOR+) per token',
                 title='trained exact model, weights in FAVOR+')
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def table(rows):
  """Markdown: per (s, m), errors (+-2 SE) and paired ratios to FAVOR+."""
  def cell(pair):
    return f'{pair[0]:.3g} ± {pair[1]:.2g}'
  others = [n for n in VARIANTS if n != BASELINE]
  header = (['s', 'm'] + [f'error {n}' for n in VARIANTS]
            + [f'{n} / {BASELINE}' for n in others])
  body = [[r['scale'], r['m']] + [cell(r['errors'][n]) for n in VARIANTS]
          + [cell(r['ratios'][n]) for n in others] for r in rows]
  return harness.markdown_table(header, body)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/approximation_cpu')
  parser.add_argument('--ms', default='16,64,256,512',
                      type=harness.comma_list_arg(int))
  parser.add_argument('--scales', default='0.25,0.5,1.0',
                      type=harness.comma_list_arg(float),
                      help='std of q, k entries (logit std = scale^2)')
  parser.add_argument('--length', type=int, default=512)
  parser.add_argument('--seeds', type=int, default=64)
  parser.add_argument('--exact_run', default='runs/exact_default',
                      help="exact-attention model ('' to skip that part)")
  parser.add_argument('--eval_batches', type=int, default=4)
  args = parser.parse_args(argv)
  ms = harness.comma_list(args.ms, int)
  record = {'machine': harness.machine_info(), 'config': vars(args)}
  record['attention'] = attention_sweep(
      ms, harness.comma_list(args.scales, float), n_seeds=args.seeds,
      length=args.length)
  harness.save_json(record, args.out + '.json')
  record['model'] = []
  if args.exact_run:
    loop = transfer.train_exact(args.exact_run)
    batches = transfer.eval_batches([], args.eval_batches)
    record['model'] = transfer.gap_by_m(loop.model.weights, ms, batches)
    harness.save_json(record, args.out + '.json')
  plot(record['attention'], record['model'], args.out + '.png')
  print(table(record['attention']))
  print(f'wrote {args.out}.json and {args.out}.png')


if __name__ == '__main__':
  sys.exit(main())
