"""One process of tests/test_distributed.py: joins the job (unless alone),
trains the shrunk offline default, and saves its weights after every step
and its training losses at the end.

    python tests/distributed_child.py OUTPUT_DIR DUMP_DIR STEPS \
        [COORDINATOR NUM_PROCESSES PROCESS_ID]
"""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from trax_favor.run import cli
cli.quiet_start()
import jax
import numpy as np
from trax.supervised import callbacks
from trax_favor.run import configs
from trax_favor.run import distributed
from trax_favor.run import training
# pylint: enable=g-import-not-at-top,wrong-import-position

LOSS = 'metrics/WeightedCategoryCrossEntropy'  # the training loss, per eval
SHRINK = [
    'D_MODEL=32', 'SEQUENCE_LENGTH=32', 'N_LAYERS=1', 'BATCH_SIZE=4',
    'N_RANDOM_FEATURES=16', 'train.eval_frequency=1', 'train.eval_steps=1',
    'train.checkpoints_at=[2]', 'trax_favor.PerformerLM.d_ff=64',
    'trax_favor.PerformerLM.d_qk=16', 'trax_favor.PerformerLM.d_v=16',
    'trax_favor.PerformerLM.n_heads=2',
    'trax_favor.FavorSelfAttention.chunk_size=16',
]


def main():
  output_dir, dump_dir, steps = sys.argv[1:4]
  index = 0
  if len(sys.argv) > 4:
    coordinator, n_processes, index = sys.argv[4], *map(int, sys.argv[5:7])
    assert distributed.initialize(coordinator, n_processes, index)
  configs.parse_config([os.path.join(REPO, 'gin', 'offline_default.gin')],
                       SHRINK + [f'train.steps={steps}',
                                 'multifactor.steps_per_cycle=8'])

  class Dump(callbacks.TrainingStepCallback):
    def call_at(self, step):
      return True

    def on_step_begin(self, step):
      pass

    def on_step_end(self, step):
      leaves = jax.tree_util.tree_leaves(self._loop.model.weights)
      np.save(os.path.join(dump_dir, f'p{index}_step{step}.npy'),
              np.concatenate([np.asarray(x).ravel() for x in leaves]))

  loop = training.train(output_dir, log_every=1, callbacks=[Dump])
  with open(os.path.join(dump_dir, f'p{index}_losses_{steps}.json'), 'w') as f:
    json.dump([(int(s), float(v))
               for s, v in loop.history.get('train', LOSS)], f)


if __name__ == '__main__':
  main()
