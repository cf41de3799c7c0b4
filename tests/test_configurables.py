"""Every gin config parses, shrinks with gin.bind_parameter, builds and
trains one step (datasets mocked), with the depth its name says."""

import re

import gin
import numpy as np
import pytest

import gin_helpers
from trax_favor.run import configs
from trax_favor.run import training

CONFIGS = gin_helpers.runnable_configs()


def test_the_config_ladder_is_complete():
  names = set(CONFIGS)
  for family in ('imagenet64', 'pg19'):
    for kind in ('performer', 'reformer'):
      for depth in ('6l', '12l', '24l', 'tiny'):
        assert f'gin/{family}/{kind}_{depth}.gin' in names
    for depth in ('6l', '12l', '24l', 'tiny'):  # relative, rotary positions
      assert f'gin/{family}/rpe_{depth}.gin' in names
      assert f'gin/{family}/rope_{depth}.gin' in names
  for kind in ('performer', 'exact', 'performer_tiny', 'exact_tiny'):
    assert f'gin/pg19_mlm/{kind}.gin' in names
  assert 'gin/offline_default.gin' in names
  assert 'gin/offline_default_rpe.gin' in names
  assert 'gin/offline_default_rope.gin' in names
  pairs = gin_helpers.twin_pairs()
  assert len(pairs) == 10  # 4 per causal family, 2 masked-LM
  assert all(twin in names for _, twin in pairs)


@pytest.mark.parametrize('config', CONFIGS)
def test_config_has_the_depth_its_name_says(config):
  gin_helpers.parse(config, shrink=False)
  depth = re.search(r'_(\d+)l\.gin$', config)
  if depth:
    assert gin.query_parameter('N_LAYERS/macro.value') == int(depth.group(1))
  assert 'mode' not in gin.config_str().replace('model', '')  # never bound


# Shrunk to one layer, a family's 6-, 12- and 24-layer configs are one
# program, and its tiny config the same program at other widths (every
# config parses and builds in test_equivalence's default-run tests): one
# config per family and attention trains.
TRAINED = [c for c in CONFIGS if not re.search(r'(_12l|_24l|tiny)\.gin$', c)]


@pytest.mark.slow  # a training run per config
@pytest.mark.parametrize('config', TRAINED)
def test_config_trains_one_step(config, tmp_path):
  gin_helpers.parse(config, n_layers=1)
  vocab_size = configs.configured_value('trax_favor.PerformerLM.vocab_size')
  gin.bind_parameter('train.steps', 1)
  gin.bind_parameter('train.eval_frequency', 1)
  gin.bind_parameter('train.eval_steps', 1)
  with gin_helpers.mocked_tfds():
    loop = training.train(str(tmp_path), log_every=1)
  assert loop.step == 1
  losses = loop.history.get('eval', 'metrics/loss')
  bits = loop.history.get('eval', 'metrics/bits_per_dim')
  # One step from a uniform-ish start: about log(vocab) nats per token.
  assert abs(losses[0][1] - np.log(vocab_size)) < 1.0, (losses, vocab_size)
  np.testing.assert_allclose(bits[0][1], losses[0][1] / np.log(2), rtol=1e-5)
  for name in ('config.gin', 'operative_config.gin',
               'checkpoints/step_00000001/model.pkl.gz'):
    assert (tmp_path / name).exists(), name
  assert 'PerformerLM' in (tmp_path / 'operative_config.gin').read_text()
