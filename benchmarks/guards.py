"""What our guards cost: the FAVOR cores with and without them.

    python -m benchmarks.guards --out results/guards_cpu

The guards of `ops.bidirectional_favor` and `ops.causal_favor`: a query
row with a NaN or Inf gives NaN in its own output only (found by a
reduction over its features, zeroed before the products, NaN put back
after); a key row with one poisons the outputs at and after it and nothing
before (causal: a running maximum of the bad-key marks); a row that saw no
key reads 0 rather than 0/0 (masks, padding). Trax's ReLU cores have none
of them. Forward+backward of each core, on (1, h, l, d) inputs:

  kinds   bidir, causal   ReLU features (trax's kernel, relu(x) + 1e-3:
                          m = d), the cores trax has too
          softmax_bidir   our positive softmax features (m random
                          features) at full length (block_size=None):
                          what a GPU runs
  variants
    full            the op as shipped
    no_query_guard  bidirectional: without the non-finite query rows'
                    reduction and selects (keys and empty rows guarded)
    bare            no guard at all: the sums, the products, num / den
                    (softmax: keys still rescaled to the largest key's
                    log-scale, the stabilizer, as `relative_features`
                    does it)
    trax            trax's tl.FavorAttention / tl.CausalFavorAttention
                    core (ReLU kinds, where trax is installed)
    authors         softmax_bidir: the Performer authors' form (one
                    maximum over all keys, eps 1e-4 after the exp)
    factored_keys   softmax_bidir: the op as it was before keys were
                    scaled in one pass (`relative_features`): the
                    factored features, then `ops.bidirectional_favor`

timed in alternating rounds (each call after an untimed one of the same
program) with `full` as the baseline: time / full is the median of paired
rounds; memory / full is XLA's planned peak (arguments, outputs,
temporaries). Writes <out>.json (machine, versions, git SHA).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import contenders
from benchmarks import harness
from trax_favor import ops
from trax_favor.ops import favor
from trax_favor.ops import feature_maps

KINDS = ('bidir', 'causal', 'softmax_bidir')


def _no_query_guard(q_feat, sums):
  """read_out without the non-finite query rows' reduction and selects."""
  num = favor.apply_sums(q_feat, sums.kv)  # (..., l, v)
  den = jnp.einsum('...lm,...m->...l', q_feat, sums.z)  # (..., l)
  has_key = jnp.broadcast_to(favor.has_keys(sums.ref)[..., None], den.shape)
  inverse = favor.safe_divide(jnp.ones_like(den)[..., None], den,
                              has_key)[..., 0]  # (..., l)
  return num * inverse[..., None]


def _bidir_bare(q_feat, k_feat, v):
  kv = favor.sum_over_keys(k_feat, v)  # (..., m, v)
  num = favor.apply_sums(q_feat, kv)  # (..., l, v)
  den = jnp.einsum('...lm,...m->...l', q_feat, jnp.sum(k_feat, -2))
  return num * (1.0 / den)[..., None]


def _causal_bare(q_feat, k_feat, v, chunk_size):
  """The chunked causal sums of `causal_favor` with no guard around them."""
  *batch, length, m = k_feat.shape
  d_v, c = v.shape[-1], chunk_size
  if length % c:
    raise ValueError(f'guards: the length {length} is not a multiple of '
                     f'the chunk size {c}.')
  n = length // c
  qc = q_feat.reshape(*batch, n, c, m)  # (..., n, c, m)
  kc = k_feat.reshape(*batch, n, c, m)  # (..., n, c, m)
  vc = v.reshape(*batch, n, c, d_v)  # (..., n, c, v)
  vc1 = jnp.concatenate([vc, jnp.ones_like(vc[..., :1])], -1)  # (.., v+1)
  empty = favor.empty_state(batch, m, d_v)
  init = (jnp.concatenate([empty.kv, empty.z[..., None]], -1), empty.ref)
  num1, _, _ = favor._chunks_shared_scale(  # pylint: disable=protected-access
      qc, kc, vc1, jnp.zeros((*batch, n, c), jnp.float32), init)
  out = num1[..., :d_v] / num1[..., d_v:]  # (..., n, c, v)
  return out.reshape(*batch, length, d_v)  # (..., l, v)


def core(kind, variant, shape, m=256):
  """f(q, k, v) -> outputs of one variant on (1, h, l, d) inputs."""
  if kind == 'softmax_bidir':
    return _softmax_core(variant, ops.draw_projection(
        jax.random.PRNGKey(0), m, shape[-1]))
  feat = contenders.trax_features
  chunk = min(ops.default_chunk_size('relu'), shape[-2])
  if variant == 'trax':
    return contenders.jax_core(
        'trax_favor_relu' if kind == 'bidir' else 'trax_causal_favor_relu',
        jnp.zeros((shape[-1], shape[-1])), shape)
  if kind == 'bidir':
    fn = {'full': lambda qf, kf, v: ops.bidirectional_favor(qf, kf, None, v),
          'no_query_guard': lambda qf, kf, v: _no_query_guard(
              qf, favor.key_sums(kf, None, v)),
          'bare': _bidir_bare}[variant]
  elif variant == 'full':
    fn = lambda qf, kf, v: ops.causal_favor(qf, kf, None, v,
                                            chunk_size=chunk)[0]
  else:
    fn = lambda qf, kf, v: _causal_bare(qf, kf, v, chunk)
  return lambda q, k, v: fn(feat(q), feat(k), v)


def _softmax_core(variant, w):
  if variant == 'full':
    return lambda q, k, v: ops.favor_attention(q, k, v, w, block_size=None)
  if variant == 'authors':
    return lambda q, k, v: contenders.authors_bidir(q, k, v, w)
  if variant == 'factored_keys':
    def factored(q, k, v):
      q_feat, _ = feature_maps.feature_map('softmax', q, w)
      k_feat, k_log_scale = feature_maps.feature_map('softmax', k, w)
      return ops.bidirectional_favor(q_feat, k_feat, k_log_scale, v)
    return factored

  def call(q, k, v):
    q_feat, _ = feature_maps.feature_map('softmax', q, w)
    k_feat, ref = feature_maps.relative_features('softmax', k, w)
    if variant == 'bare':
      return _bidir_bare(q_feat, k_feat, v)
    return _no_query_guard(q_feat, favor.relative_key_sums(k_feat, ref, v))
  return call


def variants(kind, with_trax):
  if kind == 'softmax_bidir':
    return ['full', 'no_query_guard', 'bare', 'authors', 'factored_keys']
  names = (['full', 'no_query_guard', 'bare'] if kind == 'bidir'
           else ['full', 'bare'])
  return names + (['trax'] if with_trax else [])


def _trax_installed():
  try:
    import trax  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='results/guards')
  parser.add_argument('--lengths', default='4096,16384',
                      type=harness.comma_list_arg(int))
  parser.add_argument('--kinds', default=','.join(KINDS),
                      type=harness.comma_list_arg(str, KINDS))
  parser.add_argument('--n_heads', type=int, default=8)
  parser.add_argument('--d', type=int, default=64)
  parser.add_argument('--m', type=int, default=256,
                      help='random features of softmax_bidir')
  parser.add_argument('--rounds', type=int, default=7)
  args = parser.parse_args(argv)
  machine = harness.machine_info()
  with_trax = _trax_installed()
  results = {}
  for length in harness.comma_list(args.lengths, int):
    rng = np.random.default_rng(length)
    q, k, v = (jnp.asarray(rng.standard_normal(
        (1, args.n_heads, length, args.d)), jnp.float32) for _ in range(3))
    for kind in harness.comma_list(args.kinds):
      runs, memory = {}, {}
      for variant in variants(kind, with_trax):
        f = core(kind, variant, q.shape, args.m)
        step = jax.value_and_grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v)),
                                  argnums=(0, 1, 2))
        runs[variant], memory[variant] = harness.compile_step(step, q, k, v)
      row = harness.rate_against(runs, memory, 'full', args.rounds, 'full')
      results.setdefault(str(length), {})[kind] = row
      print(f'L={length} {kind}: ' + ', '.join(
          f'{name}: {r["time_over_full"]:.3f}x time, '
          f'{r["memory_over_full"] or float("nan"):.3f}x memory'
          for name, r in row.items()), flush=True)
  harness.write_results(args.out, machine, args, results)


if __name__ == '__main__':
  main()
