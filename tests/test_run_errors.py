"""Ordinary faults end a run with one line that names the cause: bad bindings,
a changed config on resume, a second writer, unwritable directories, bad
sampling flags, decoding past max_len. None of them starts training."""

import errno
import logging
import os

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
  assert 'Not a directory' in err or 'File exists' in err
  err = _error_line(capsys, train.main,
                    _train_argv(tmp_path, config=tmp_path / 'missing.gin'))
  assert 'config file not found' in err
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
