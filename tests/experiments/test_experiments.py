"""The experiments: the depth ladder resumes instead of starting over and
pairs n with 2n layers, the approximation sweep, the exact-to-FAVOR+
transfer."""

import math
import os
import json

import jax
import numpy as np
import pytest

from experiments import approximation
from experiments import ladder
from experiments import positions
from experiments import rpe_quality
from experiments import transfer
from trax_favor import train
from trax_favor.run import checkpoints


def _train_in_this_process(monkeypatch):
  """ladder.train_cli without a fresh interpreter: the same training CLI
  (`trax_favor.train`'s main, the same flags) in this process, saving an
  import of trax per run. The ladder's test runs a real child."""
  def train_cli(config_files, bindings, rung_dir, name, log_every=10):
    del name
    train.main([*[f'--config_file={c}' for c in config_files],
                f'--output_dir={rung_dir}', f'--log_every={log_every}']
               + [f'--config={b}' for b in bindings])
  monkeypatch.setattr(ladder, 'train_cli', train_cli)

@pytest.mark.slow
def test_ladder_resumes_a_partial_ladder_and_reports(tmp_path, in_repo,
                                                     capsys, monkeypatch):
  del in_repo
  work, out = str(tmp_path / 'runs'), str(tmp_path / 'ladder')
  first = ladder.run_ladder('smoke', work, out, stop_after=1)  # a child
  printed = capsys.readouterr().out
  assert '[pg19_performer_6l] done: step 4/4' in printed  # its echoed line
  assert list(first['rungs']) == ['pg19_performer_6l']
  done_dir = os.path.join(work, 'pg19_performer_6l')
  mtime = os.path.getmtime(checkpoints.latest(done_dir))

  _train_in_this_process(monkeypatch)  # the second rung: no second child
  second = ladder.run_ladder('smoke', work, out)
  printed = capsys.readouterr().out
  assert '[pg19_performer_6l] done earlier (step 4), skipping' in printed
  assert '[pg19_reformer_6l] trained in' in printed
  assert os.path.getmtime(checkpoints.latest(done_dir)) == mtime
  with open(out + '.json') as f:
    assert json.load(f)['rungs'].keys() == second['rungs'].keys()
  for name, rung in second['rungs'].items():
    assert rung['step'] == 4, name
    # Evals at steps 1, 2 and 4: the last one too, which trax's checkpoint
    # history lacks.
    assert [s for s, _ in rung['eval_loss']] == [1, 2, 4]
    for (_, loss), (_, bpd) in zip(rung['eval_loss'],
                                   rung['eval_bits_per_dim']):
      assert bpd == pytest.approx(loss / math.log(2), rel=1e-5)
    seconds = rung['train_seconds_at_eval']
    assert seconds == sorted(seconds) and seconds[-1] > 0
    assert rung['n_params'] > 0 and rung['peak_memory_bytes'] > 0
  # 1 layer each (the smoke preset cuts depth): FAVOR+ has separate q and k
  # projections, LSH shares them: 2 * d_model * d_head more weights.
  gap = (second['rungs']['pg19_performer_6l']['n_params'] -
         second['rungs']['pg19_reformer_6l']['n_params'])
  assert gap == 16 * 8 * 2
  table = open(out + '.md').read()
  assert 'pg19_performer_6l' in table and 'pg19_reformer_6l' in table
  assert os.path.getsize(out + '.png') > 0


def _rung(attention, depth, bits_per_dim):
  return {'attention': attention, 'depth': depth,
          'eval_bits_per_dim': [(1, 8.0), (100, bits_per_dim)]}


def test_ladder_compares_n_performer_layers_with_2n_reformer_layers():
  rungs = {f'{a}_{d}': _rung(a, d, bpd) for a, d, bpd in [
      ('performer', 6, 3.00), ('reformer', 6, 3.10),
      ('performer', 12, 2.95), ('reformer', 12, 2.90),
      ('performer', 24, 2.80), ('reformer', 24, 2.85)]}
  found = ladder.compare(rungs)
  assert [(c['performer_layers'], c['reformer_layers']) for c in found] == [
      (6, 12), (12, 24)]
  assert found[0]['gap_bits_per_dim'] == pytest.approx(3.00 - 2.90)
  assert not found[0]['matches']  # 0.10 bits/dim worse
  assert found[1]['gap_bits_per_dim'] == pytest.approx(2.95 - 2.85)
  rungs['reformer_24'] = _rung('reformer', 24, 2.94)
  assert ladder.compare(rungs)[1]['matches']  # 0.01 <= MATCH_TOLERANCE


def test_approximation_error_falls_with_m_and_ratios_are_paired():
  rows = approximation.attention_sweep([8, 128], [0.5], length=128,
                                       n_seeds=4)
  small, large = rows
  for name in ('positive_orthogonal', 'positive_iid', 'positive_sqrt_d'):
    assert large['errors'][name][0] < 0.5 * small['errors'][name][0], name
    assert np.isfinite(large['errors'][name][1])
  # A paired ratio is the mean of per-seed ratios, recomputed here.
  per_seed = [approximation.seed_errors(128, 0.5, seed, length=128)
              for seed in range(4)]
  ratios = [e['positive_iid'] / e['positive_orthogonal'] for e in per_seed]
  assert large['ratios']['positive_iid'][0] == pytest.approx(
      np.mean(ratios), rel=1e-6)
  assert large['ratios']['positive_iid'][1] == pytest.approx(
      2 * np.std(ratios, ddof=1) / 2, rel=1e-6)


TINY_TEXT = [  # the offline default at a few seconds per run
    'D_MODEL=16', 'SEQUENCE_LENGTH=32', 'N_LAYERS=1', 'BATCH_SIZE=2',
    'STEPS=4', 'train.eval_frequency=2', 'train.eval_steps=1',
    'trax_favor.PerformerLM.d_ff=32', 'trax_favor.PerformerLM.d_qk=8',
    'trax_favor.PerformerLM.d_v=8', 'trax_favor.PerformerLM.n_heads=2',
    'trax_favor.FavorSelfAttention.chunk_size=8']


@pytest.mark.slow
def test_transfer_measures_the_gap_and_fine_tunes_resumably(tmp_path, in_repo):
  del in_repo
  # The weights of one step: FAVOR+ nears any exact model as m grows.
  loop = transfer.train_exact(str(tmp_path / 'exact'), TINY_TEXT + ['STEPS=1'])
  assert loop.step == 1
  weights = loop.model.weights
  batches = transfer.eval_batches(TINY_TEXT, 2)
  rows = transfer.gap_by_m(weights, [4, 1024], batches, TINY_TEXT)
  # One exact model for every m; FAVOR+ loads its weights unchanged and
  # comes closer to it with more features.
  assert rows[0]['accuracy_exact'] == rows[1]['accuracy_exact']
  assert 0 < rows[1]['mean_kl'] < rows[0]['mean_kl']
  history, tuned = transfer.fine_tune(weights, str(tmp_path / 'tune'), 4, 2,
                                      TINY_TEXT)
  assert [s for s, _ in history['accuracy']] == [1, 2, 4]
  again, tuned_again = transfer.fine_tune(weights, str(tmp_path / 'tune'), 4,
                                          2, TINY_TEXT)  # resumed: no steps
  assert again == history
  for a, b in zip(jax.tree_util.tree_leaves(tuned),
                  jax.tree_util.tree_leaves(tuned_again)):
    np.testing.assert_array_equal(a, b)



# The offline default shrunk for the experiments' tests.
SMALL_OFFLINE = ['D_MODEL=16', 'N_LAYERS=1', 'BATCH_SIZE=2',
                 'N_RANDOM_FEATURES=8', 'trax_favor.PerformerLM.d_ff=32',
                 'trax_favor.PerformerLM.d_qk=8',
                 'trax_favor.PerformerLM.d_v=8',
                 'trax_favor.PerformerLM.n_heads=2', 'train.eval_steps=1']


@pytest.mark.slow
def test_rpe_quality_trains_the_variants_and_sweeps(tmp_path, in_repo,
                                                   monkeypatch):
  del in_repo
  _train_in_this_process(monkeypatch)
  out = str(tmp_path / 'rq')
  small = SMALL_OFFLINE + ['SEQUENCE_LENGTH=32']
  variants = ['favor_rpe']  # every variant: the same code path
  rpe_quality.main([f'--out={out}', f'--work_dir={tmp_path / "runs"}',
                    f'--variants={",".join(variants)}', '--steps=20',
                    '--sweep_steps=20', '--learning_rates=0.003',
                    *[f'--config={b}' for b in small]])
  with open(out + '.json') as f:
    record = json.load(f)
  assert list(record['quality']) == variants
  for variant, quality in record['quality'].items():
    assert [s for s, _ in quality['curve']] == [1, 20], variant
    assert math.isfinite(quality['last'])
    assert record['stability'][variant]['runs']['0.003']['last'] == (
        quality['last'])  # the offline default's rate: the same run
  assert 'highest stable rate' in open(out + '.md').read()


@pytest.mark.slow
def test_positions_trains_the_variants_and_extrapolates(tmp_path, in_repo,
                                                       monkeypatch):
  del in_repo
  _train_in_this_process(monkeypatch)
  out = str(tmp_path / 'pos')
  small = SMALL_OFFLINE  # the length comes from --length
  # Absolute positions cannot extrapolate; RoPE + relative composes every
  # other variant's bindings.
  variants = ['absolute', 'rope_relative']
  record = positions.run(positions.argparse.Namespace(
      out=out, work_dir=str(tmp_path / 'runs'), variants=','.join(variants),
      steps=1, length=32, seeds=1,
      eval_lengths='32,64', eval_bytes=128, error_seeds=1, config=small,
      max_relative_distance=4))
  assert list(record['quality']) == variants
  for variant, quality in record['quality'].items():
    assert len(quality['per_seed']) == 1 and math.isfinite(quality['mean'])
    at = record['extrapolation'][variant]
    assert math.isfinite(at['32'])
    # Absolute positions have no weights past their table; the others do.
    assert (at['64'] is None) == (variant == 'absolute'), variant
  assert record['extrapolation']['absolute']['32'] == pytest.approx(
      positions.bits_at_length(str(tmp_path / 'runs' / 'absolute_s0'),
                               ['train.random_seed=0',
                                'trax_favor.local_text_inputs.seed=0'],
                               small, 32, 128))
  errors = record['approximation_error']
  assert 0 < errors['plain']['mean'] < 1 and 0 < errors['rope']['mean'] < 1
  assert os.path.exists(out + '.png')
