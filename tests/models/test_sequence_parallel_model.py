"""Sequence parallelism in the layer and the model: FavorSelfAttention and
PerformerLM built with sequence_axis='seq', run by
`models.sequence_parallel` on 4 forced host CPU devices, against the same
weights run unsplit.

As in tests/ops/test_sequence_parallel.py, JAX fixes its device count when
the backend starts, so the comparisons run in ONE child process (this file
as a script, XLA_FLAGS forcing 4 host devices) that reports JSON; the child
is killed by handle on a timeout. The refusals that need no devices run
here.

Tolerances, relative to the largest magnitude of the unsplit result (per
weight array for gradients): outputs 1e-5, gradients 1e-4.
"""

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
N_DEVICES = 4
TIMEOUT = 240  # seconds for the child; a hang fails the tests, not CI
OUT_TOL, GRAD_TOL = 1e-5, 1e-4
VOCAB, BATCH, LENGTH = 16, 2, 32  # 4 shards of 8 tokens

# name: (kind, options); kind 'layer' takes (b, l, 16) floats, 'lm' tokens.
CASES = {
    'layer-bidirectional': ('layer', dict(causal=False)),
    'layer-causal-rotary': ('layer', dict(causal=True, rotary=True)),
    # Two reversible blocks, feed-forward in chunks of 4 (two per shard).
    'lm-causal-absolute': ('lm', dict(n_layers=2, ff_chunk_size=4)),
    'lm-causal-rotary': ('lm', dict(n_layers=1, pos_type='none',
                                    rotary=True)),
    'lm-bidirectional-axial': ('lm', dict(
        n_layers=1, causal=False, pos_type='axial', pos_axial_shape=(4, 8),
        pos_d_axial_embs=(8, 8))),
}
# Data and sequence parallelism on one (2, 2) mesh: batch over 'data',
# length over 'seq' (2 shards of 16 tokens).
BATCH_AND_SEQUENCE = 'lm-causal-absolute'


def _build(kind, options, sequence_axis):
  """The case's layer or model (imports trax: in the child or a test)."""
  import trax_favor  # pylint: disable=g-import-not-at-top
  options = dict(options)
  causal = options.get('causal', True)
  attention = dict(n_random_features=16, chunk_size=4 if causal else None,
                   rotary=options.pop('rotary', False))
  if kind == 'layer':
    return trax_favor.FavorSelfAttention(
        n_heads=2, d_qk=8, d_v=8, sequence_axis=sequence_axis, **attention,
        **options)
  attention_type = functools.partial(trax_favor.FavorSelfAttention,
                                     **attention)
  return trax_favor.PerformerLM(
      VOCAB, d_model=16, d_ff=32, d_qk=8, d_v=8, n_heads=2, dropout=0.0,
      max_len=64, attention_type=attention_type, mode='train',
      sequence_axis=sequence_axis, **options)


def _run_child():
  """This file as a script with 4 host devices; returns its JSON report."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={N_DEVICES}')
  process = subprocess.Popen([sys.executable, os.path.abspath(__file__)],
                             env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  try:
    stdout, stderr = process.communicate(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    process.kill()
    process.communicate()
    pytest.fail(f'the sequence-parallel child ran over {TIMEOUT} s')
  if process.returncode != 0:
    pytest.fail(f'the child failed:\n{stderr[-4000:]}')
  return json.loads(stdout.strip().splitlines()[-1])


# The child (4 host devices, every case compiled) takes about a minute: the
# tests that read its report are slow-set; the refusals below run always.
@pytest.fixture(scope='module')
def report():
  return _run_child()


@pytest.mark.slow
@pytest.mark.parametrize('case', sorted(CASES) + ['batch-and-sequence'])
def test_outputs_and_weight_gradients_match_unsplit_model(report, case):
  """The split run's outputs and the gradients of a loss on them w.r.t.
  every weight equal the unsplit run's (reversible blocks recompute on
  their shards); batch-and-sequence: BATCH_AND_SEQUENCE's model on a
  (data, seq) mesh, the batch split too."""
  result = report[case]
  assert result['weights_equal'], result  # sequence_axis changes no weight
  assert result['out'] < OUT_TOL, result
  assert result['grad'] < GRAD_TOL, result


@pytest.mark.slow
def test_model_built_for_the_axis_runs_unsplit_outside_shard_map(report):
  """Unbound axis: the whole sequence, the unsplit model's outputs (how
  trax's init and an unsplit evaluation use the model)."""
  assert report['unbound-is-unsplit'] < OUT_TOL, report


@pytest.mark.slow
def test_length_not_divisible_or_past_the_table_is_one_line(report):
  message = report['indivisible']
  assert '\n' not in message and 'not divisible' in message, message
  assert '30' in message and '4 shards' in message, message
  message = report['past-table']
  assert '\n' not in message and '128 tokens' in message, message
  assert 'max_len' in message, message


def test_relative_positions_or_predict_with_sequence_axis_refused():
  from trax_favor import checks  # pylint: disable=g-import-not-at-top
  import trax_favor  # pylint: disable=g-import-not-at-top
  with pytest.raises(checks.ConfigError) as error:
    trax_favor.FavorSelfAttention(causal=True, relative_position='bias',
                                  sequence_axis='seq')
  assert '\n' not in str(error.value)
  assert 'relative_position' in str(error.value)
  with pytest.raises(checks.ConfigError, match='predict'):
    trax_favor.PerformerLM(VOCAB, mode='predict', sequence_axis='seq')


def test_model_not_built_for_the_axis_is_refused():
  """A model that would attend within shards only is refused by name."""
  # pylint: disable=g-import-not-at-top
  import jax
  import trax
  import trax_favor
  from trax_favor import checks
  from trax_favor import models
  # pylint: enable=g-import-not-at-top
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('seq',))
  unsplit = _build('lm', CASES['lm-causal-absolute'][1], None)
  with pytest.raises(checks.ConfigError, match='ShiftRight') as error:
    models.sequence_parallel(unsplit, mesh)
  assert '\n' not in str(error.value)
  other_axis = _build('layer', dict(causal=False), 'data')
  with pytest.raises(checks.ConfigError, match='FavorSelfAttention'):
    models.sequence_parallel(other_axis, mesh)
  with pytest.raises(checks.ConfigError, match='none named'):
    models.sequence_parallel(other_axis, mesh, axis='length')
  # trax's ReformerLM keeps trax's shift and positions: PerformerLM instead.
  reformer = trax.models.ReformerLM(
      VOCAB, d_model=16, d_ff=32, d_attention_key=8, d_attention_value=8,
      n_layers=2, n_heads=2, dropout=0.0, max_len=64,
      attention_type=functools.partial(trax_favor.FavorSelfAttention,
                                       sequence_axis='seq'))
  with pytest.raises(checks.ConfigError, match='use PerformerLM'):
    models.sequence_parallel(reformer, mesh)


# ---------------------------------------------------------------- the child


def _child_report():
  """Every comparison above, with 4 devices (run in the child only)."""
  # pylint: disable=g-import-not-at-top
  from trax_favor.run import cli
  cli.quiet_start()
  import jax
  import jax.numpy as jnp
  from trax import shapes
  from trax_favor import checks
  from trax_favor import models
  # pylint: enable=g-import-not-at-top
  assert jax.device_count() == N_DEVICES, jax.devices()
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('seq',))
  data = np.random.default_rng(0)
  rng = jax.random.PRNGKey(7)

  def inputs(kind, length=LENGTH):
    if kind == 'layer':
      return jnp.asarray(data.standard_normal((BATCH, length, 16)),
                         jnp.float32)
    return jnp.asarray(data.integers(0, VOCAB, (BATCH, length)), jnp.int32)

  def error(a, b):
    """max |a - b| / max |a|."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max()) / max(float(np.abs(a).max()), 1e-30)

  def value_and_grad(apply, x, state, c):
    def loss(weights):
      out, _ = apply(x, weights, state, rng)
      return jnp.sum(jnp.sin(out) * c), out
    return jax.jit(jax.value_and_grad(loss, has_aux=True))

  report = {}
  data_mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2),
                                ('data', 'seq'))
  for name, (kind, options) in CASES.items():
    x = inputs(kind)
    unsplit = _build(kind, options, None)
    split = _build(kind, options, 'seq')
    for model in (unsplit, split):  # init outside shard_map: as unsplit
      model.init(shapes.signature(x), rng=jax.random.PRNGKey(1))
    weights, state = unsplit.weights, unsplit.state
    out_shape = jax.eval_shape(
        lambda x: unsplit.pure_fn(x, weights, state, rng)[0], x).shape
    c = jnp.asarray(data.standard_normal(out_shape), jnp.float32)
    (_, out), grads = value_and_grad(unsplit.pure_fn, x, state, c)(weights)
    apply = models.sequence_parallel(split, mesh)
    (_, out_s), grads_s = value_and_grad(apply, x, state, c)(weights)
    pairs = zip(jax.tree_util.tree_leaves(grads),
                jax.tree_util.tree_leaves(grads_s))
    report[name] = {
        'weights_equal': all(
            np.array_equal(a, b) for a, b in zip(
                jax.tree_util.tree_leaves(weights),
                jax.tree_util.tree_leaves(split.weights))),
        'out': error(out, out_s),
        'grad': max(error(g, g_s) for g, g_s in pairs),
    }
    if name == BATCH_AND_SEQUENCE:
      both = models.sequence_parallel(split, data_mesh, batch_axis='data')
      (_, out_s), grads_s = value_and_grad(both, x, state, c)(weights)
      pairs = zip(jax.tree_util.tree_leaves(grads),
                  jax.tree_util.tree_leaves(grads_s))
      report['batch-and-sequence'] = {
          'weights_equal': True, 'out': error(out, out_s),
          'grad': max(error(g, g_s) for g, g_s in pairs)}
    if name == BATCH_AND_SEQUENCE:  # outside shard_map: the whole sequence
      out_u, _ = jax.jit(split.pure_fn)(x, weights, state, rng)
      report['unbound-is-unsplit'] = error(out, out_u)
      for key, length in (('indivisible', 30), ('past-table', 128)):
        try:
          apply(inputs(kind, length=length), weights, state, rng)
          report[key] = 'not refused'
        except checks.ConfigError as e:
          report[key] = str(e)
  return report


if __name__ == '__main__':
  sys.path.insert(0, REPO)
  print(json.dumps(_child_report()))
