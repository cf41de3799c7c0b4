"""Sequence parallelism: favor_attention(..., sequence_axis=) inside shard_map
against the unsplit call, on 4 forced host CPU devices.

JAX fixes its device count when the backend starts, and this test process may
have started it already, so the checks run in ONE child process (this file
run as a script, with XLA_FLAGS forcing 4 host devices) that reports JSON;
the tests read its report. The child is killed by handle on a timeout.

Tolerances, relative to the largest magnitude of the unsplit result: outputs
1e-5, gradients 1e-4 (the same sums added in another order).
"""

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



def _case(name, feature_map, causal, block_size, unsplit_block=None,
          chunk_size=4, masked=False, dropout=0.0, initial=False,
          future_nan=None, check_vma=True):
  """One comparison on L = 80 (4 shards of 20 tokens).

  block_size is the sharded call's; the unsplit call uses unsplit_block
  (default: the same). masked: random padding, shards 0 and 2 entirely
  masked, and a NaN key under the mask. dropout: the unsplit call's
  block_size is then the sharded call's block length (whole blocks per
  shard), so the masks are the same. initial: a carried initial state.
  future_nan: a NaN key at this position; the loss sees earlier rows only.
  check_vma: shard_map's type check of values varying across devices.
  """
  return dict(name=name, feature_map=feature_map, causal=causal,
              block_size=block_size,
              unsplit_block=unsplit_block or block_size,
              chunk_size=chunk_size, masked=masked, dropout=dropout,
              initial=initial, future_nan=future_nan, check_vma=check_vma)


CASES = [
    # Blocks of 8 leave each shard's last block padded (20 = 8 + 8 + 4).
    _case('softmax-bi-blocks-masked', 'softmax', False, 8, masked=True),
    _case('softmax-causal-blocks-masked-init', 'softmax', True, 8,
          masked=True, initial=True),
    _case('relu-causal-full-masked-unchecked', 'relu', True, None,
          masked=True, check_vma=False),
    # Dropout: one block per shard vs the unsplit call in blocks of 20 ...
    _case('relu-bi-full-dropout', 'relu', False, None, unsplit_block=20,
          dropout=0.3),
    _case('softmax-causal-full-dropout', 'softmax', True, None,
          unsplit_block=20, dropout=0.3),
    # ... and two blocks of 10 per shard (chunks of 5) vs the same blocks.
    _case('relu-causal-blocks-dropout-init', 'relu', True, 10, chunk_size=5,
          dropout=0.3, initial=True),
    # A NaN key at 45 (shard 2, block 0 of it): rows >= 45 NaN, as unsplit.
    _case('softmax-causal-blocks-future-nan', 'softmax', True, 8,
          future_nan=45),
]
HLO_LENGTHS = (512, 2048)


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


@pytest.fixture(scope='module')
def report():
  return _run_child()


@pytest.mark.slow  # a child interpreter with 4 host devices
@pytest.mark.parametrize('case', [c['name'] for c in CASES])
def test_outputs_and_gradients_match_unsplit_call(report, case):
  """Outputs, gradients w.r.t. q, k, v and (causal) the whole sequence's
  final state equal the unsplit call's. Non-finite values stand where the
  unsplit call's do: a masked NaN nowhere; a future NaN key in its own and
  later outputs and in its own key's gradient only (the loss sees the
  earlier rows), never in an earlier output or another gradient (a NaN
  key's own gradient may be NaN, as it is unsplit)."""
  result = report[case]
  assert result['out'] < OUT_TOL, result
  assert max(result['grads']) < GRAD_TOL, result
  if 'state' in result:
    assert result['state'] < OUT_TOL, result
  assert result['nan_out_rows'] == result['unsplit_nan_out_rows'], result
  assert result['nan_grad_rows'] == result['unsplit_nan_grad_rows'], result
  spec = [c for c in CASES if c['name'] == case][0]
  spoiled = spec['future_nan']
  if spoiled is None:
    assert not result['nan_out_rows'], result
  else:
    assert result['nan_out_rows'] == list(range(spoiled, 80)), result
  nan_keys = {spoiled, 30 if spec['masked'] else None} - {None}
  q_rows, k_rows, v_rows = result['nan_grad_rows']
  assert not q_rows and not v_rows and set(k_rows) <= nan_keys, result


@pytest.mark.slow
def test_communication_does_not_grow_with_length(report):
  """The collectives of the sharded gradient program (causal, blocks of 128)
  have the same operand and result shapes at both lengths: one all-gather
  of the (n, m + 1, v + 1) sums per head forward, its reduce-scatter
  backward."""
  short, long_ = (report['hlo'][str(n)] for n in HLO_LENGTHS)
  assert sorted(op for op, _, _ in short) == ['all-gather',
                                              'reduce-scatter'], short
  assert short == long_


def test_relative_bias_or_no_mesh_with_sequence_axis_is_refused():
  from trax_favor import checks  # pylint: disable=g-import-not-at-top
  from trax_favor import ops  # pylint: disable=g-import-not-at-top
  q = np.zeros((1, 8, 4), np.float32)
  projection = np.ones((6, 4), np.float32)
  with pytest.raises(checks.ConfigError, match='relative_bias'):
    ops.favor_attention(q, q, q, projection, causal=True,
                        relative_bias=np.zeros((1, 5), np.float32),
                        max_relative_distance=2, sequence_axis='seq')
  # Outside shard_map the axis is unbound: one line, not JAX's NameError.
  with pytest.raises(checks.ConfigError, match='inside jax.shard_map'):
    ops.favor_attention(q, q, q, projection, sequence_axis='seq')


# ---------------------------------------------------------------- the child


def _child_report():
  """Every check above, computed with 4 devices (run in the child only)."""
  # pylint: disable=g-import-not-at-top
  import re
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P
  from trax_favor import ops
  # pylint: enable=g-import-not-at-top
  assert jax.device_count() == N_DEVICES, jax.devices()
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('seq',))
  seq = P(None, None, 'seq')  # (b, h, l, d): the length is sharded
  d, d_v, m = 8, 6, 16
  projection = ops.draw_projection(jax.random.PRNGKey(3), m, d)

  def data(length, seed=0):
    rng = np.random.default_rng(seed)
    q, k = (0.8 * rng.standard_normal((1, 2, length, d)) for _ in range(2))
    v = rng.standard_normal((1, 2, length, d_v))
    c = rng.standard_normal((1, 2, length, d_v))  # loss weights
    return [jnp.asarray(x, jnp.float32) for x in (q, k, v, c)]

  def grad_fn(call, loss_rows):
    """jit of (loss, (outputs, final state)), d loss / d (q, k, v); the loss
    sees loss_rows (l,) only (selected, so NaN elsewhere stays there)."""
    def loss(q, k, v, c, mask, state):
      result = call(q, k, v, mask, state)
      out, final = result if isinstance(result, tuple) else (result, None)
      terms = jnp.where(loss_rows[:, None], jnp.sin(out) * c, 0.0)
      return jnp.sum(terms), (out, final)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

  def error(a, b):
    """max |a - b| / max |a| over the finite entries of a."""
    a, b = np.asarray(a), np.asarray(b)
    finite = np.isfinite(a)
    if not finite.any():
      return 0.0
    scale = max(float(np.abs(a[finite]).max()), 1e-30)
    return float(np.abs(a[finite] - b[finite]).max()) / scale

  def nan_rows(x):  # positions l of (b, h, l, f) holding a non-finite value
    bad = ~np.isfinite(np.asarray(x)).all(axis=(0, 1, 3))
    return np.flatnonzero(bad).tolist()

  def compare(case, length=80):
    q, k, v, c = data(length)
    keep = np.ones((1, 1, length), bool)
    loss_rows = jnp.ones((length,), bool)
    if case['masked']:  # padding; shards 0 and 2 without any key
      keep = np.random.default_rng(1).random((1, 1, length)) > 0.2
      shard = length // N_DEVICES
      keep[..., :shard] = False
      keep[..., 2 * shard:3 * shard] = False
      k = k.at[..., 30, :].set(np.nan)  # under the mask: changes nothing
      keep[..., 30] = False
    if case['future_nan'] is not None:
      k = k.at[..., case['future_nan'], :].set(np.nan)
      loss_rows = jnp.arange(length) < case['future_nan']
    mask = jnp.asarray(keep)
    kwargs = dict(feature_map=case['feature_map'], causal=case['causal'],
                  chunk_size=case['chunk_size'],
                  attention_dropout=case['dropout'],
                  rng=jax.random.PRNGKey(5) if case['dropout'] else None)
    state = None
    if case['initial']:  # the tokens before the sequence, as a carried state
      _, state = ops.favor_attention(*data(24, seed=9)[:3], projection,
                                     **kwargs)

    def unsplit(q, k, v, mask, state):
      return ops.favor_attention(q, k, v, projection, key_mask=mask,
                                 initial_state=state,
                                 block_size=case['unsplit_block'], **kwargs)

    def shard(q, k, v, mask, state):
      result = ops.favor_attention(q, k, v, projection, key_mask=mask,
                                   initial_state=state,
                                   block_size=case['block_size'],
                                   sequence_axis='seq', **kwargs)
      if not case['causal']:
        return result
      out, final = result  # final: the same on every device; stacked
      return out, jax.tree_util.tree_map(lambda x: x[None], final)

    sharded = jax.shard_map(
        shard, mesh=mesh, in_specs=(seq, seq, seq, seq, P()),
        out_specs=(seq, P('seq')) if case['causal'] else seq,
        check_vma=case['check_vma'])
    (_, (out, final)), grads = grad_fn(unsplit, loss_rows)(
        q, k, v, c, mask, state)
    (_, (out_s, final_s)), grads_s = grad_fn(sharded, loss_rows)(
        q, k, v, c, mask, state)
    result = {
        'out': error(out, out_s),
        'grads': [error(g, g_s) for g, g_s in zip(grads, grads_s)],
        'nan_out_rows': nan_rows(out_s),
        'unsplit_nan_out_rows': nan_rows(out),
        'nan_grad_rows': [nan_rows(g) for g in grads_s],
        'unsplit_nan_grad_rows': [nan_rows(g) for g in grads],
    }
    if case['causal']:  # final states, on the unsplit one's reference
      kv, ref = np.asarray(final.kv), np.asarray(final.ref)
      kv_s, ref_s = np.asarray(final_s.kv[0]), np.asarray(final_s.ref[0])
      result['state'] = error(kv, kv_s * np.exp(ref_s - ref)[..., None, None])
    return result

  report = {case['name']: compare(case) for case in CASES}

  # Communication: every collective of the gradient program, as (op, result
  # shape, operand shapes); shapes are looked up by the operands' names.
  report['hlo'] = {}
  for length in HLO_LENGTHS:
    q, k, v, c = data(length)

    def shard_loss(q, k, v, c):
      out, _ = ops.favor_attention(q, k, v, projection, causal=True,
                                   block_size=128, sequence_axis='seq')
      return jax.lax.psum(jnp.sum(jnp.sin(out) * c), 'seq')

    sharded = jax.shard_map(shard_loss, mesh=mesh, in_specs=(seq,) * 4,
                            out_specs=P())
    text = jax.jit(jax.grad(sharded, argnums=(0, 1, 2))).lower(
        q, k, v, c).as_text(dialect='hlo')
    shapes = dict(re.findall(r'^\s*(?:ROOT )?([\w.-]+) = (\S+) ', text,
                             re.MULTILINE))
    ops_found = re.findall(
        r'= (\S+) (all-gather|all-reduce|reduce-scatter|collective-permute|'
        r'all-to-all)(?:-start)?\(([^)]*)\)', text)
    report['hlo'][str(length)] = sorted(
        (op, result, [shapes.get(name.strip()) for name in operands.split(',')])
        for result, op, operands in ops_found)
  return report


if __name__ == '__main__':
  sys.path.insert(0, REPO)
  print(json.dumps(_child_report()))
