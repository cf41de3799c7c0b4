"""The benchmarks: the model benchmark's step and decoding measurements,
timing helpers, records that resume only with the same settings, the
attention and XLA-option benchmarks end to end."""

import argparse
import json
import math
import os
import subprocess

import jax
import numpy as np
import pytest

import gin_helpers
from benchmarks import attention as attention_bench
from benchmarks import block_sizes as block_sizes_bench
from benchmarks import cpu_speedups as speedups_bench
from benchmarks import distributed as distributed_bench
from benchmarks import harness
from benchmarks import model
from benchmarks import model_bench
from benchmarks import rpe as rpe_bench
from trax_favor.ops import cpu_speedups
from trax_favor.run import memory

# benchmarks/model.py at tiny widths: ImageNet64 at 8x8x3 (its axial
# positions a tuple binding), one layer. In --width_bindings, as the
# interleaved steps take those only (not --imagenet64_bindings).
TINY_WIDTH = ['D_MODEL=16', 'D_FF=32', 'N_HEADS=2', 'D_HEAD=8', 'N_LAYERS=1',
              'N_RANDOM_FEATURES=8', 'POS_D_AXIAL_EMBS=(6,6,4)',
              'SEQUENCE_LENGTH=192', 'POS_AXIAL_SHAPE=(8,8,3)',
              'FF_CHUNK_SIZE=64']


@pytest.mark.slow
def test_model_benchmark_steps_interleaves_and_decodes(tmp_path, in_repo,
                                                       monkeypatch):
  """One run of the model benchmark (what accelerator.sh runs): a Performer
  step in a fresh process, the Performer and identity steps alternating in
  another, four decoders in this one; then the memory figures where the
  device reports allocator statistics."""
  del in_repo
  out = str(tmp_path / 'model')
  model.main([f'--out={out}', f'--width_bindings={",".join(TINY_WIDTH)}',
              '--models=performer', '--interleave=performer,identity',
              '--pg19_length=0', '--depths=', '--steps=2', '--batch=2',
              '--prefixes=8,64', '--decode_tokens=4',
              '--decode_width=16,32,2,1'])
  record = harness.load_json(out + '.json')
  assert record['machine']['git_sha'] and os.path.getsize(out + '.png') > 0
  # Reversible training's step of a fresh process, whose resident set before
  # the model is its own baseline.
  assert list(record['steps']) == ['imagenet64/performer']
  performer = record['steps']['imagenet64/performer']
  assert (performer['length'], performer['n_layers'], performer['batch']) == (
      192, 1, 2)
  # Two warm-up and two timed steps of Adam from a uniform-ish start: the
  # loss is near log(256).
  assert abs(performer['loss'] - math.log(256)) < 0.5
  assert performer['seconds'] > 0
  assert 0 < performer['model_peak_bytes'] <= performer['peak_bytes']
  # The same two models with their steps alternating in one process; the
  # identity baseline keeps FAVOR+'s weights (only the core differs).
  both = record['interleaved']
  assert set(both) == {'imagenet64/performer', 'imagenet64/identity'}
  for result in both.values():
    assert result['n_params'] == performer['n_params']
    assert len(result['step_seconds']) == 2
    assert result['seconds'] == np.median(result['step_seconds']) > 0
  # Decoding: the FAVOR+ state is constant in the prefix, the key/value
  # cache grows with it.
  found = record['decoding']
  assert sorted(found) == sorted(f'{k}/{p}' for k in ('performer',
                                                      'transformer')
                                 for p in (8, 64))
  assert (found['performer/8']['state_bytes'] ==
          found['performer/64']['state_bytes'])
  assert (found['transformer/64']['state_bytes'] >
          found['transformer/8']['state_bytes'])
  for result in found.values():
    assert len(result['token_seconds']) == 4
    assert result['seconds_per_token'] == np.median(result['token_seconds'])
  # Ratios of interleaved decoders pair the tokens of one round.
  per_token = 'decode performer: per-token time at prefix 64 / 8'
  assert record['ratios'][per_token] == harness.paired_ratio(
      found['performer/64']['token_seconds'],
      found['performer/8']['token_seconds'])
  found['performer/8']['token_seconds'] = [1.0, 2.0, 4.0, 8.0]
  found['performer/64']['token_seconds'] = [3.0, 2.0, 4.0, 16.0]
  assert model_bench.ratios({'decoding': found})[per_token] == 1.5

  # On a device with allocator statistics (GPU, TPU) a step's memory is
  # the device's (model_peak_bytes = peak - bytes in use before the model:
  # measure_step), never the host's resident set.
  stats = {'bytes_in_use': 1000, 'peak_bytes_in_use': 5000}
  monkeypatch.setattr(memory, 'device_memory_stats', lambda: dict(stats))
  assert (harness.memory_in_use_bytes(), harness.peak_memory_bytes()) == (
      1000, 5000)
  monkeypatch.setattr(memory, 'device_memory_stats', dict)  # CPU: none
  assert harness.memory_in_use_bytes() == pytest.approx(
      memory.process_memory_bytes('VmRSS'), rel=0.05)


def test_model_bench_repeats_keep_each_run_and_report_medians(monkeypatch):
  """measure_step_repeated: one fresh process per repeat, the medians of
  the measured fields over them, each run kept; a failure as it is."""
  runs = iter([{'seconds': s, 'peak_bytes': p, 'model_peak_bytes': p - 1,
                'n_params': 7} for s, p in ((3.0, 30), (1.0, 50), (2.0, 40))])
  calls = []

  def child(*args):
    calls.append(args)
    return next(runs)

  monkeypatch.setattr(model_bench, 'measure_step_in_child', child)
  found = model_bench.measure_step_repeated('pg19', 'performer', ['A=1'], 2,
                                            1, 3)
  assert calls == [('pg19', 'performer', ['A=1'], 2, 1)] * 3
  assert (found['seconds'], found['peak_bytes'], found['model_peak_bytes'],
          found['steps_per_s'], found['n_params']) == (2.0, 40, 39, 0.5, 7)
  assert found['runs'] == [
      {'seconds': 3.0, 'peak_bytes': 30, 'model_peak_bytes': 29},
      {'seconds': 1.0, 'peak_bytes': 50, 'model_peak_bytes': 49},
      {'seconds': 2.0, 'peak_bytes': 40, 'model_peak_bytes': 39}]
  failed = {'model': 'performer', 'failed': ['MemoryError']}
  monkeypatch.setattr(model_bench, 'measure_step_in_child',
                      lambda *args: failed)
  assert model_bench.measure_step_repeated('pg19', 'performer', [], 1, 1,
                                           2) == failed


def test_model_bench_plot_draws_the_panels_that_have_data(tmp_path):
  machine = {'platform': 'test', 'cpu_count': 2}
  runs = [{'seconds': 1.9, 'model_peak_bytes': 2**30},  # fresh processes
          {'seconds': 2.1, 'model_peak_bytes': 2**30 + 2**20}]
  steps = {'imagenet64/performer': {'seconds': 2.0, 'model_peak_bytes': 2**30,
                                    'runs': runs},
           'imagenet64/identity': {'seconds': 1.0, 'model_peak_bytes': 2**29}}
  record = {'machine': machine, 'steps': steps,
            'interleaved': {'imagenet64/performer': {'seconds': 2.5}},
            'depth': {}, 'decoding': {}}
  path = tmp_path / 'steps_only.png'
  assert model_bench.plot(record, str(path)) == ['training step',
                                                 'step memory']
  assert path.stat().st_size > 0
  record.update(
      depth={'performer/6': {'model_peak_bytes': 1.0},
             'reformer/12': {'model_peak_bytes': 2.0}},
      decoding={'performer/128': {'seconds_per_token': 0.004},
                'transformer/8192': {'failed': ['MemoryError']}})
  assert model_bench.plot(record, str(tmp_path / 'all.png')) == [
      'training step', 'step memory', 'memory against depth', 'decoding']
  failed_only = {'machine': machine,
                 'steps': {'imagenet64/exact': {'failed': ['MemoryError']}},
                 'interleaved': {'imagenet64/exact': {'failed': ['Killed']}}}
  assert model_bench.plot(failed_only, str(tmp_path / 'none.png')) == []
  assert not (tmp_path / 'none.png').exists()


@pytest.mark.slow
def test_model_bench_child_failure_is_the_error_line(in_repo):
  del in_repo
  failed = model_bench.measure_step_repeated(
      'pg19', 'performer', ['N_RANDOM_FEATURES=0'], 1, 1, 2)['failed']
  # The exception's line, not gin's "In call to configurable" lines after it.
  assert failed == ['trax_favor.checks.ConfigError: n_random_features must '
                    'be a positive int, got 0.']


def test_benchmark_timing_interleaves_compiled_steps():
  x = jax.numpy.arange(12.0).reshape(3, 4)
  run, peak = harness.compile_step(lambda x: (x @ x.T).sum(axis=0), x)
  np.testing.assert_allclose(run(), (x @ x.T).sum(axis=0))
  assert peak >= x.nbytes  # the argument is part of the planned peak
  calls = []
  times = harness.time_interleaved(
      {name: (lambda i, name=name: calls.append((i, name))) for name in 'ab'},
      3)
  # One call of each per round, in turn: drift hits both sides alike; each
  # round starts one further on, so neither always follows the other.
  assert calls == [(0, 'a'), (0, 'b'), (1, 'b'), (1, 'a'), (2, 'a'),
                   (2, 'b')]
  assert [len(t) for t in times.values()] == [3, 3]


@pytest.mark.slow
def test_attention_benchmark_resumes_finished_lengths(tmp_path, in_repo):
  del in_repo
  bench = attention_bench
  out = str(tmp_path / 'attention')
  tiny = ['--out', out, '--d_model=16', '--n_heads=2',
          '--n_random_features=8', '--repeats=2', '--product_rounds=1',
          '--exact_max_len=64', '--lsh_max_len=0', '--core_max_len=64',
          '--unblocked_max_len=0', '--favor_extra_lengths=']
  bench.main(tiny + ['--lengths=64'])
  first = harness.load_json(out + '.json')
  assert first['finished'] == ['64']
  assert first['machine']['git_sha'] and os.path.getsize(out + '.png') > 0
  assert len(first['layers']['favor_bidir']['64']['round_seconds']) == 2
  # Rerun with one more length: 64 is kept as measured, only 128 is new.
  bench.main(tiny + ['--lengths=64', '--favor_extra_lengths=128'])
  second = harness.load_json(out + '.json')
  assert second['finished'] == ['64', '128']
  assert second['layers']['favor_bidir']['64'] == (
      first['layers']['favor_bidir']['64'])
  assert set(second['paired']['128']) == {'bidir_over_identity',
                                          'causal_over_bidir'}
  # Other settings: the earlier record is not mixed in.
  bench.main(tiny[:3] + ['--n_random_features=4'] + tiny[4:] +
             ['--lengths=', '--favor_extra_lengths=128'])
  assert harness.load_json(out + '.json')['finished'] == ['128']


def test_benchmark_records_resume_only_with_the_same_settings(tmp_path,
                                                            monkeypatch):
  path = str(tmp_path / 'bench.json')
  assert harness.earlier_record(path, {}, ()) is None  # nothing yet
  harness.save_json({'config': {'width': 8, 'steps': 3}, 'machine': {
      'git_sha': 'an older commit', 'xla_flags': 'a --b'},
                    'steps': {'a': 1}}, path)
  monkeypatch.setenv('XLA_FLAGS', 'a --b')
  # Precision settings (steps) may change; measured ones (width) may not.
  assert harness.earlier_record(path, {'width': 8, 'steps': 5},
                               ('width',))['steps'] == {'a': 1}
  assert harness.earlier_record(path, {'width': 16, 'steps': 3},
                               ('width',)) is None
  assert harness.earlier_record(path, {'width': 8, 'steps': 3}, ('width',),
                               same_code=True) is None
  monkeypatch.setenv('XLA_FLAGS', 'a')  # XLA's settings shape every number
  assert harness.earlier_record(path, {'width': 8, 'steps': 3},
                               ('width',)) is None


def test_records_name_the_checkout_when_installed_outside_it(tmp_path,
                                                           monkeypatch):
  """machine_info's git SHA: from the checkout the package is installed in,
  else (a virtualenv elsewhere, e.g. Colab's) from the current directory's."""
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True,
                        text=True, check=True,
                        cwd=gin_helpers.REPO).stdout.strip()
  monkeypatch.setattr(harness, '__file__',
                      str(tmp_path / 'site' / 'harness.py'))
  (tmp_path / 'site').mkdir()
  monkeypatch.chdir(gin_helpers.REPO)
  assert harness.machine_info()['git_sha'] == head
  monkeypatch.chdir(tmp_path)  # neither is a checkout
  assert harness.git_sha() == 'unknown'


@pytest.mark.slow
def test_speedups_benchmark_compares_children_of_either_setting(
    tmp_path, in_repo, monkeypatch):
  del in_repo
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  monkeypatch.delenv(cpu_speedups.ENV, raising=False)
  bench = speedups_bench
  out = str(tmp_path / 'speedups')
  bench.main([f'--out={out}', '--lengths=64', '--pairs=1', '--repeats=1',
              '--d_model=16', '--n_heads=2', '--n_random_features=4'])
  record = harness.load_json(out + '.json')
  on, off = record['runs']['on'][0], record['runs']['off'][0]
  assert on['machine']['compiler_options'] == {
      cpu_speedups.YNN_OPTION: ''}  # trax_favor's CPU default: fusions off
  assert off['machine']['compiler_options'] == {}  # XLA's default
  assert on['machine']['cpu_speedups'] and not off['machine']['cpu_speedups']
  for layer in ('favor_bidir', 'favor_causal', 'identity'):
    assert record['off_over_on']['64'][layer] == pytest.approx(
        off['layers'][layer]['64']['seconds'] /
        on['layers'][layer]['64']['seconds'])
  assert record['paired'] == {'on': on['paired'], 'off': off['paired']}
  monkeypatch.setenv('XLA_FLAGS',
                     f'--{cpu_speedups.YNN_OPTION}=individual_dot')
  with pytest.raises(SystemExit):  # both children would run one setting
    bench.main([f'--out={out}'])


def test_benchmark_list_options_are_checked_by_argparse(capsys):
  parser = argparse.ArgumentParser(prog='bench')
  parser.add_argument('--lengths', default='64,128',
                      type=harness.comma_list_arg(int))
  args = parser.parse_args([])
  assert args.lengths == '64,128'  # kept as given, for the JSON config
  assert harness.comma_list(args.lengths, int) == [64, 128]
  with pytest.raises(SystemExit):
    parser.parse_args(['--lengths=64,4k'])
  assert ("argument --lengths: invalid comma-separated int value: '64,4k'"
          in capsys.readouterr().err)


@pytest.mark.slow  # a benchmark script run end to end
def test_rpe_benchmark_writes_times_memory_and_growth(tmp_path, in_repo):
  del in_repo
  out = str(tmp_path / 'rpe')
  rpe_bench.main([f'--out={out}', '--lengths=32,64', '--exact_max_len=32',
                      '--rounds=1', '--d=8', '--m=8', '--n_heads=2',
                      '--max_relative_distance=4', '--decode_prefixes=8,40',
                      '--decode_tokens=3'])
  with open(out + '.json') as f:
    record = json.load(f)
  assert set(record['lengths']['32']) == {
      'rpe_bidir', 'rpe_causal', 'favor_bidir', 'favor_causal', 'exact_bidir',
      'exact_causal'}
  assert 'exact_bidir' not in record['lengths']['64']
  assert all(v['seconds'] > 0 and v['peak_bytes'] > 0
             for v in record['lengths']['64'].values())
  assert os.path.exists(out + '.png')
  ratios = record['rpe_over_favor']['64']
  row = record['lengths']['64']
  assert ratios['causal_time'] == (row['rpe_causal']['seconds']
                                   / row['favor_causal']['seconds'])
  assert set(record['decode_seconds_per_token']) == {'8', '40'}
  assert all(t > 0 for t in record['decode_seconds_per_token'].values())


@pytest.mark.slow
def test_block_size_benchmark_rates_each_size_against_the_default(tmp_path,
                                                                  in_repo):
  del in_repo
  out = str(tmp_path / 'blocks')
  block_sizes_bench.main([f'--out={out}', '--lengths=96', '--rounds=2',
                          '--block_sizes=32,96,0', '--d=8', '--m=8',
                          '--n_heads=2'])
  with open(out + '.json') as f:
    results = json.load(f)['results']['96']
  assert set(results) == {'bidir', 'causal', 'rpe_bidir'}
  for rows in results.values():
    assert set(rows) == {'512', '32', '0'}  # 96 >= the length: as None
    assert rows['512']['time_over_default'] == 1.0
    assert rows['512']['memory_over_default'] == 1.0
    assert all(r['seconds'] > 0 and r['peak_bytes'] > 0
               for r in rows.values())


@pytest.mark.slow
def test_distributed_benchmark_runs_one_and_two_processes(tmp_path, in_repo):
  del in_repo
  out = str(tmp_path / 'dist')
  distributed_bench.main([
      f'--out={out}', '--steps=6', '--rounds=1',
      '--bindings=D_MODEL=16,SEQUENCE_LENGTH=32,N_LAYERS=1,BATCH_SIZE=4,'
      'N_RANDOM_FEATURES=8,train.eval_frequency=100,train.eval_steps=1'])
  with open(out + '.json') as f:
    record = json.load(f)
  rates = record['runs'][0]['steps_per_s']
  assert set(rates) == {'1', '2'} and all(r > 0 for r in rates.values())
  assert record['ratio_median'] == pytest.approx(rates['2'] / rates['1'])
