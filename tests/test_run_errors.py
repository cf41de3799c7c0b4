"""Ordinary faults end a run with one line that names the cause: bad bindings,
a changed config on resume, a second writer, unwritable directories, bad
sampling flags, decoding past max_len. None of them starts training."""

import errno
import hashlib
import json
import logging
import os
import signal
import time

import gin
import jax
import numpy as np
import pytest
import trax_favor

from trax_favor import sample
from trax_favor import train
from trax_favor.models import performer
from trax_favor.run import cli
from trax_favor.run import configs
from trax_favor.run import distributed
from trax_favor.run import interrupts
from trax_favor.run import loop
from trax_favor.run import run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'gin', 'offline_default.gin')
SMALL = ['D_MODEL=32', 'SEQUENCE_LENGTH=64', 'N_LAYERS=1', 'BATCH_SIZE=4',
         'N_RANDOM_FEATURES=16', 'trax_favor.PerformerLM.d_ff=64']


def _error_line(capsys, main, argv):
  """Runs a CLI main in-process; returns its stderr (asserting exit 2)."""
  with pytest.raises(SystemExit) as done:
    main(argv)
  assert done.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and '\n' not in err, err
  return err


def _train_argv(output_dir, *bindings, config=CONFIG):
  return ([f'--config_file={config}', f'--output_dir={output_dir}']
          + [f'--config={b}' for b in bindings])


BAD_BINDINGS = [
    (['N_RANDOM_FEATURES=0'], 'n_random_features must be a positive int'),
    (['trax_favor.FavorSelfAttention.n_random_features=2.5'],
     'got 2.5'),
    (["trax_favor.FavorSelfAttention.feature_map='sofmax'"], "'sofmax'"),
    (['D_MODEL="32"'], "d_model must be a positive int, got '32'"),
    (['train.steps="ten"'], "train.steps must be a positive int, got 'ten'"),
    (['train.steps=='], 'cannot parse'),
    (['SEQUENCE_LENGTH=0'], 'sequence_length must be a positive int, got 0'),
]


@pytest.mark.parametrize('bindings,expected', BAD_BINDINGS)
def test_bad_bindings_end_with_one_line(tmp_path, capsys, bindings, expected):
  err = _error_line(capsys, train.main, _train_argv(tmp_path, *bindings))
  assert expected in err


def test_verbose_shows_the_traceback(tmp_path, capsys):
  with pytest.raises(ValueError, match='n_random_features'):
    train.main(_train_argv(tmp_path, 'N_RANDOM_FEATURES=0') + ['--verbose'])


def test_unwritable_places_and_missing_files_end_with_one_line(tmp_path,
                                                               capsys):
  regular_file = tmp_path / 'file'
  regular_file.write_text('')
  err = _error_line(capsys, train.main, _train_argv(regular_file / 'run'))
  assert f'--output_dir {regular_file / "run"} lies under a file' in err
  err = _error_line(capsys, train.main, _train_argv(regular_file))
  assert f'--output_dir {regular_file} is a file' in err
  err = _error_line(capsys, sample.main, ['--config_file', CONFIG,
                                          '--output_dir', str(regular_file)])
  assert f'--output_dir {regular_file} is a file' in err
  err = _error_line(capsys, train.main,
                    _train_argv(tmp_path, config=tmp_path / 'missing.gin'))
  assert 'config file not found' in err
  folder = os.path.join(REPO, 'gin')
  err = _error_line(capsys, train.main, _train_argv(tmp_path, config=folder))
  assert f'--config_file {folder} is a directory' in err
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/runs/x/ckpt')
  assert cli.user_error(full) == 'No space left on device: /runs/x/ckpt'
  assert cli.user_error(IndexError('internal')) is None  # a traceback


def test_a_second_training_on_a_run_stops_naming_the_holder(tmp_path, capsys):
  holder = run_dir.Lock(str(tmp_path))
  try:
    err = _error_line(capsys, train.main, _train_argv(tmp_path, *SMALL))
    assert f'in use by another training (PID {os.getpid()})' in err
  finally:
    holder.release()
  run_dir.Lock(str(tmp_path)).release()  # free again


def _config_text(*bindings):
  configs.parse_config([CONFIG], SMALL + list(bindings))
  return gin.config_str()


@pytest.mark.parametrize('change,shown', [
    (['N_RANDOM_FEATURES=8'],
     'FavorSelfAttention.n_random_features: 16 -> 8'),
    (["trax_favor.FavorSelfAttention.feature_map='relu'"],
     "feature_map: unset -> 'relu'"),
    (['D_MODEL=64'], 'PerformerLM.d_model: 32 -> 64'),
    # No train parameter reaches LayerNorm: a model binding, flag or not.
    (['LayerNorm.epsilon=1e-3'], 'LayerNorm.epsilon: unset -> 0.001'),
])
def test_a_changed_model_is_refused_and_the_saved_config_kept(
    tmp_path, change, shown):
  saved = _config_text()
  (tmp_path / run_dir.CONFIG).write_text(saved)
  with pytest.raises(configs.RunError, match='shapes the model') as refused:
    run_dir.check_config(str(tmp_path), _config_text(*change),
                         allow_changes=True)
  assert shown in str(refused.value)
  assert (tmp_path / run_dir.CONFIG).read_text() == saved


def test_other_changes_need_the_flag_and_steps_never_do(tmp_path):
  (tmp_path / run_dir.CONFIG).write_text(_config_text())
  steps = run_dir.check_config(str(tmp_path), _config_text('train.steps=9'))
  assert steps == 'train.steps: 600 -> 9'
  rate = _config_text('multifactor.constant=0.1')
  with pytest.raises(configs.RunError, match='allow_config_change'):
    run_dir.check_config(str(tmp_path), rate)
  assert 'multifactor.constant: 0.003 -> 0.1' in run_dir.check_config(
      str(tmp_path), rate, allow_changes=True)
  # How a layer computes, not what: taken without the flag.
  assert run_dir.check_config(
      str(tmp_path), _config_text('FavorSelfAttention.block_size=32')) == (
          'FavorSelfAttention.block_size: unset -> 32')


@pytest.mark.slow  # a training
def test_a_checkpoint_refuses_another_model_without_config_gin(tmp_path,
                                                               capsys):
  """The checkpoint records the operative model bindings (defaults
  included): with config.gin deleted and --allow_config_change, a run
  trained with softmax features does not resume with ReLU ones."""
  train.main(_train_argv(tmp_path, *SMALL, 'train.steps=1',
                         'train.eval_frequency=100'))
  capsys.readouterr()
  os.remove(tmp_path / run_dir.CONFIG)
  before = _tree_digest(tmp_path)
  err = _error_line(capsys, train.main, _train_argv(
      tmp_path, *SMALL, 'train.steps=2',
      "trax_favor.FavorSelfAttention.feature_map='relu'") + [
          '--allow_config_change'])
  assert ("was trained with another model: FavorSelfAttention.feature_map: "
          "'softmax' -> 'relu'") in err
  assert _tree_digest(tmp_path) == before


def test_the_cli_refuses_a_changed_model_before_touching_the_run(
    tmp_path, capsys):
  (tmp_path / run_dir.CONFIG).write_text(_config_text())
  err = _error_line(capsys, train.main,
                    _train_argv(tmp_path, *SMALL, 'N_RANDOM_FEATURES=8'))
  assert 'n_random_features: 16 -> 8' in err
  assert sorted(os.listdir(tmp_path)) == [run_dir.LOCK, run_dir.CONFIG]


def test_sampling_flags_that_do_not_apply_end_with_one_line(tmp_path, capsys):
  for flags, expected in [(['--image=x.png'], '--image and --prompt_rows'),
                          (['--prompt_rows=3'], '--image and --prompt_rows'),
                          (['--length=0'], '--length must be at least 1')]:
    err = _error_line(capsys, sample.main, _train_argv(tmp_path) + flags)
    assert expected in err


def test_sampling_a_run_without_whole_checkpoint_names_the_file(tmp_path,
                                                                capsys):
  err = _error_line(capsys, sample.main, _train_argv(tmp_path, *SMALL))
  assert 'no checkpoint in' in err
  step = tmp_path / 'checkpoints' / 'step_00000003'
  step.mkdir(parents=True)
  (step / 'model.weights.npy.gz').write_bytes(b'')
  (step / 'manifest.json').write_text(
      '{"files": {"model.weights.npy.gz": {"bytes": 10, "sha256": "0"}}}')
  err = _error_line(capsys, sample.main, _train_argv(tmp_path, *SMALL))
  assert 'no whole checkpoint' in err and 'model.weights.npy.gz: 0 bytes' in err


def test_predict_past_max_len_is_one_clear_error():
  configs.parse_config([CONFIG], SMALL + ['SEQUENCE_LENGTH=8'])
  model = configs.configured_model_fn()(mode='predict')
  from trax import shapes  # pylint: disable=g-import-not-at-top
  model.init(shapes.ShapeDtype((1, 1), np.int32))
  model(np.zeros((1, 6), np.int32))
  with pytest.raises(Exception, match='6 tokens fed before and 3 in this call '
                     'exceed max_len=8'):
    model(np.zeros((1, 3), np.int32))
  assert isinstance(model.sublayers[3].sublayers[1],
                    performer.PositionalEncoding)


def test_includes_found_on_a_later_search_path_log_no_errors(
    tmp_path, monkeypatch, caplog):
  monkeypatch.chdir(tmp_path)
  with caplog.at_level(logging.INFO):
    configs.parse_config([os.path.join(REPO, 'gin', 'pg19',
                                       'performer_6l.gin')])
  assert not [r for r in caplog.records if 'Path not found' in r.getMessage()]


def test_a_masked_layer_given_one_input_names_the_cause():
  layer = trax_favor.FavorSelfAttention(n_heads=2, d_qk=8, d_v=8, masked=True,
                                        n_random_features=8)
  with pytest.raises(Exception, match=r'masked=True\) takes two inputs'):
    layer(np.zeros((1, 4, 16), np.float32))


def test_multi_process_runs_need_a_seed_and_a_divisible_batch(monkeypatch):
  configs.parse_config([CONFIG], SMALL + ['train.random_seed=None'])
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  with pytest.raises(configs.RunError, match='needs train.random_seed'):
    loop.train_args()
  batches = iter([(np.arange(6), np.arange(6))])
  assert [b[0].tolist() for b in distributed.process_rows(batches, 2, 1)] == [
      [3, 4, 5]]
  with pytest.raises(configs.RunError, match='does not split over 4'):
    next(distributed.process_rows(iter([(np.arange(6),)]), 4, 0))


def _tree_digest(path):
  """{relative path: bytes} of every file under path but the lock (whose
  PID a refused run may rewrite): a refusal must leave the rest as it was."""
  found = {}
  for root, _, names in os.walk(path):
    for name in names:
      full = os.path.join(root, name)
      if name != run_dir.LOCK:
        with open(full, 'rb') as f:
          found[os.path.relpath(full, path)] = f.read()
  return found


@pytest.mark.parametrize('flags,expected', [
    (['--log_every=0'], '--log_every must be at least 1, got 0'),
    (['--output_dir='], '--output_dir is empty'),
], ids=['log_every_0', 'empty_output_dir'])
def test_training_flags_out_of_range_end_with_one_line(tmp_path, capsys,
                                                       flags, expected):
  (tmp_path / run_dir.CONFIG).write_text('# a run\n')
  before = _tree_digest(tmp_path)
  err = _error_line(capsys, train.main, _train_argv(tmp_path, *SMALL) + flags)
  assert expected in err
  assert _tree_digest(tmp_path) == before


@pytest.mark.parametrize('temperature', ['nan', 'inf', '-1', '1e308'])
def test_a_temperature_that_is_no_number_ends_with_one_line(
    tmp_path, capsys, temperature):
  err = _error_line(capsys, sample.main, _train_argv(tmp_path, *SMALL)
                    + [f'--temperature={temperature}'])
  assert '--temperature must be a finite number >= 0' in err
  assert os.listdir(tmp_path) == []


def test_a_truncated_eval_history_ends_with_one_line(tmp_path, capsys):
  (tmp_path / run_dir.EVAL_HISTORY).write_text('{"loss": [[4, 1.5], [8')
  before = _tree_digest(tmp_path)
  err = _error_line(capsys, train.main, _train_argv(tmp_path, *SMALL))
  assert 'eval_history.json is damaged' in err
  assert _tree_digest(tmp_path) == before


def _checkpoint(base, step, manifest_text):
  directory = base / 'checkpoints' / run_dir.step_name(step)
  directory.mkdir(parents=True)
  (directory / 'model.pkl.gz').write_bytes(b'x')
  (directory / run_dir.MANIFEST).write_text(manifest_text)
  return directory


GOOD_FILES = json.dumps({'files': {'model.pkl.gz': {
    'bytes': 1, 'sha256': hashlib.sha256(b'x').hexdigest()}}})
WRONG_MANIFESTS = {
    'a_list': '[1, 2]',
    'no_files': '{"step": 8}',
    'size_as_text': ('{"files": {"model.pkl.gz": {"bytes": "1", '
                     '"sha256": "0"}}}'),
    'entry_not_object': '{"files": {"model.pkl.gz": 7}}',
    'path_outside': ('{"files": {"../model.pkl.gz": {"bytes": 1, '
                     '"sha256": "0"}}}'),
    'step_negative': GOOD_FILES[:-1] + ', "step": -3}',
    'model_config_not_texts': GOOD_FILES[:-1] + ', "model_config": {"a.b": 1}}',
}


@pytest.mark.parametrize('text', WRONG_MANIFESTS.values(),
                         ids=WRONG_MANIFESTS.keys())
def test_a_manifest_of_the_wrong_shape_is_damaged_and_passed_over(tmp_path,
                                                                  text):
  whole = _checkpoint(tmp_path, 4, GOOD_FILES)
  _checkpoint(tmp_path, 8, text)
  before = _tree_digest(tmp_path)
  reader = run_dir.RunDir(str(tmp_path), read_only=True)
  assert reader.latest_checkpoint()[0] == str(whole)
  assert len(reader.passed_over) == 1
  assert 'manifest.json: not a manifest' in reader.passed_over[0]
  assert _tree_digest(tmp_path) == before  # a reader changes nothing
  writer = run_dir.RunDir(str(tmp_path))
  assert writer.latest_checkpoint()[0] == str(whole)
  assert writer.damaged_checkpoints() == ['step_00000008.damaged']


def test_only_damaged_checkpoints_left_refuses_every_rerun(tmp_path, capsys):
  aside = tmp_path / 'checkpoints' / 'step_00000004.damaged'
  aside.mkdir(parents=True)
  (aside / 'model.pkl.gz').write_bytes(b'cut')
  before = _tree_digest(tmp_path)
  for _ in range(2):
    err = _error_line(capsys, train.main, _train_argv(tmp_path, *SMALL))
    assert 'only damaged ones (step_00000004.damaged)' in err
    assert '--start_afresh' in err
    assert _tree_digest(tmp_path) == before


def test_start_afresh_moves_what_is_left_and_refuses_a_whole_checkpoint(
    tmp_path, capsys):
  whole = _checkpoint(tmp_path, 4, GOOD_FILES)
  before = _tree_digest(tmp_path)
  err = _error_line(capsys, train.main,
                    _train_argv(tmp_path, *SMALL) + ['--start_afresh'])
  assert f'{whole} is a whole checkpoint: rerun without --start_afresh' in err
  assert _tree_digest(tmp_path) == before
  (whole / 'model.pkl.gz').write_bytes(b'y')  # now damaged
  for expected in ('before_afresh', 'before_afresh.1'):
    (tmp_path / run_dir.EVAL_HISTORY).write_text('{"loss": [[4, 1.5]]}')
    moved = run_dir.RunDir(str(tmp_path)).start_afresh()
    assert moved == str(tmp_path / expected)
    assert not (tmp_path / 'checkpoints').exists()
    assert not (tmp_path / run_dir.EVAL_HISTORY).exists()
  assert os.listdir(tmp_path / 'before_afresh' / 'checkpoints') == [
      'step_00000004.damaged']
  assert (tmp_path / 'before_afresh' / run_dir.EVAL_HISTORY).exists()
  assert run_dir.RunDir(str(tmp_path / 'new')).start_afresh() is None
  assert not (tmp_path / 'new' / 'before_afresh').exists()


def test_a_signal_during_start_up_is_one_line_and_its_exit_code(
    tmp_path, capsys, monkeypatch):
  def interrupted():
    raise KeyboardInterrupt

  def terminated():  # SIGTERM during start-up (trax's import)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # the handler raises here, at once

  for start, code, name in ((interrupted, 130, 'SIGINT'),
                            (terminated, 143, 'SIGTERM')):
    monkeypatch.setattr(cli, 'quiet_start', start)
    with pytest.raises(SystemExit) as done:
      train.main(_train_argv(tmp_path, *SMALL))
    assert done.value.code == code
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'stopped by {name} before any checkpoint was saved')
    assert '\n' not in err and os.listdir(tmp_path) == []
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
  saved = interrupts.Interrupted(signal.SIGTERM)
  saved.saved = True  # the run said where its checkpoint is: no more lines
  with pytest.raises(SystemExit) as done:
    cli.main_guard(lambda: (_ for _ in ()).throw(saved))
  assert done.value.code == 143 and capsys.readouterr().err == ''


def test_a_config_gin_that_is_no_text_ends_with_one_line(tmp_path, capsys):
  (tmp_path / run_dir.CONFIG).write_bytes(b'\xbe\xef\xff binary')
  _checkpoint(tmp_path, 4, GOOD_FILES)  # whole: the sampler reads config.gin
  before = _tree_digest(tmp_path)
  for main in (train.main, sample.main):
    err = _error_line(capsys, main, _train_argv(tmp_path, *SMALL))
    assert 'config.gin is damaged (not text' in err
    assert _tree_digest(tmp_path) == before


def test_a_checkpoints_path_that_is_no_directory_is_refused(tmp_path,
                                                           capsys):
  """Not a run without checkpoints: training would start at step 0 and
  fail at its first save, having written over the run's progress."""
  (tmp_path / run_dir.CHECKPOINTS).write_text('not a directory')
  (tmp_path / run_dir.PROGRESS).write_text('{"step": 1, "seconds": 2.0}\n')
  before = _tree_digest(tmp_path)
  for main in (train.main, sample.main):
    err = _error_line(capsys, main, _train_argv(tmp_path, *SMALL))
    assert 'checkpoints is not a directory' in err
    assert _tree_digest(tmp_path) == before


def test_progress_lines_that_are_no_records_are_skipped(tmp_path):
  (tmp_path / run_dir.PROGRESS).write_bytes(
      b'{"step": 1, "seconds": 2.0, "steps_per_s": null}\n[1, 2]\n"text"\n'
      b'{"step": "2", "seconds": 1}\n{"step": 3}\n{"step": [4], "seconds": 1}\n'
      b'{"step": 5, "seconds": NaN}\n\xff\xfe\n{"step": 6, "seconds": 7}\n'
      b'{"step": 7, "se')
  assert run_dir.RunDir(str(tmp_path)).read_progress() == [
      {'step': 1, 'seconds': 2.0, 'steps_per_s': None},
      {'step': 6, 'seconds': 7}]


@pytest.mark.parametrize('timeout', ['-1', '0', 'nan', 'inf'])
def test_a_distributed_timeout_out_of_range_ends_with_one_line(
    tmp_path, capsys, timeout):
  err = _error_line(capsys, train.main, _train_argv(tmp_path, *SMALL) + [
      f'--distributed_timeout={timeout}', '--num_processes=2',
      '--process_id=0', '--coordinator_address=localhost:1'])
  assert '--distributed_timeout must be a finite number of seconds > 0' in err
  assert os.listdir(tmp_path) == []


def test_a_manifest_key_that_is_no_key_of_this_loop_is_damaged():
  """A key word past uint32 (OverflowError) or a key of another length
  (JAX's TypeError) made tracebacks at resume: now the checkpoint is
  damaged and passed over."""
  streams = {'train': [object()], 'eval': [object()]}
  data = {'train': [3], 'eval': [5]}
  assert loop._resume_record_ok({'rng': [1, 2], 'data': data}, streams, 2)
  for rng in ([2**40, 5], [1, 2, 3], [1], [-1, 2], [1.0, 2]):
    assert not loop._resume_record_ok({'rng': rng, 'data': data}, streams, 2)


@pytest.mark.parametrize('seed', [str(2**63), str(-2**63 - 1), '9' * 23])
def test_a_seed_past_64_bits_ends_with_one_line(tmp_path, capsys, seed):
  """JAX's OverflowError came after the checkpoint was loaded."""
  err = _error_line(capsys, sample.main, _train_argv(tmp_path, *SMALL)
                    + [f'--seed={seed}'])
  assert '--seed must fit in 64 bits' in err
  assert os.listdir(tmp_path) == []
