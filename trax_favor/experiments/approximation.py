"""How well FAVOR approximates exact softmax attention.

Attention level: queries and keys with i.i.d. N(0, s^2) entries (so the
softmax logits q.k / sqrt(d) have standard deviation s^2); the values are
the identity matrix, so the outputs are the attention matrices themselves
(row-normalized): error = ||A_FAVOR - A_softmax||_F / ||A_softmax||_F,
averaged over seeds (a fresh projection and fresh q, k, v per seed), as the
number of random features m grows, for orthogonal vs iid projections and
positive vs trigonometric softmax features.

Model level: a small LM trained with exact attention (Trax's
tl.SelfAttention), its weights loaded into the FAVOR+ model, the gap between
the two models' next-token distributions as m grows (see `transfer`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from trax_favor.ops import attention
from trax_favor.ops import random_features
from trax_favor.ops import reference


def relative_error(approx, exact):
  return float(jnp.linalg.norm(approx - exact) / jnp.linalg.norm(exact))


def attention_error(m, projection, feature_map, scale, length=512, d=64,
                    n_seeds=8, causal=False):
  """Mean and std over seeds of the relative error of FAVOR's attention
  matrix against softmax's."""
  errors = []
  for seed in range(n_seeds):
    rng_q, rng_k, rng_p = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = scale * jax.random.normal(rng_q, (length, d))  # (l, d)
    k = scale * jax.random.normal(rng_k, (length, d))
    v = jnp.eye(length)  # (l, l): outputs are attention matrices
    w = random_features.draw_projection(rng_p, m, d, projection)  # (m, d)
    approx = attention.favor_attention(q, k, v, w, feature_map=feature_map,
                                   causal=causal, numerical_stabilizer=0.0)
    if causal:
      approx = approx[0]
    exact = reference.exact_softmax_attention(q, k, v, causal=causal)
    errors.append(relative_error(approx, exact))
  return float(np.mean(errors)), float(np.std(errors))


def attention_sweep(ms, scales, projections=('orthogonal', 'iid'),
                    feature_maps=('softmax', 'softmax_trig'), **kwargs):
  """[{m, scale, projection, feature_map, error, error_std}] over the grid."""
  rows = []
  for feature_map in feature_maps:
    for projection in projections:
      for scale in scales:
        for m in ms:
          mean, std = attention_error(m, projection, feature_map, scale,
                                      **kwargs)
          rows.append(dict(m=m, scale=scale, projection=projection,
                           feature_map=feature_map, error=mean,
                           error_std=std))
  return rows


def plot(rows, model_rows, path, plt):
  """Error against m: one panel per q/k scale, and the model-level gap."""
  scales = sorted({r['scale'] for r in rows})
  fig, axes = plt.subplots(1, len(scales) + 1,
                           figsize=(4 * (len(scales) + 1), 3.6))
  for ax, scale in zip(axes, scales):
    for fmap in sorted({r['feature_map'] for r in rows}):
      for proj, style in (('orthogonal', '-'), ('iid', '--')):
        pts = sorted((r['m'], r['error']) for r in rows if r['scale'] == scale
                     and r['feature_map'] == fmap and r['projection'] == proj)
        if pts:
          ax.loglog(*zip(*pts), style, marker='o', ms=3,
                    label=f'{fmap} {proj}')
    ax.set(xlabel='random features m', ylabel='relative error',
           title=f'q, k entries ~ N(0, {scale}^2)')
  axes[0].legend(fontsize=7)
  if model_rows:
    pts = sorted((r['m'], r['mean_kl']) for r in model_rows)
    axes[-1].loglog(*zip(*pts), 'o-')
    axes[-1].set(xlabel='random features m',
                 ylabel='KL(exact || FAVOR+) per token',
                 title='trained exact model, weights in FAVOR+')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
