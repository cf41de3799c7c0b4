"""trax's stock training CLI on current JAX: `python -m trax_favor.trax_trainer`.

    python -m trax_favor.trax_trainer --config_file=gin/offline_default.gin \
        --output_dir=runs/stock

It takes exactly `python -m trax.trainer`'s flags (absl flags: --config_file,
--config, --output_dir, --log_level, ...) and runs trax's own `main`, after
three things `python -m trax.trainer` cannot do for itself on jax 0.10:
importing `trax.trainer` at all (`compat.import_trainer`: its first line
imports a module jax no longer has), applying the trax fixes before trax
runs, and compiling trax's steps with `cpu_speedups.compiler_options()`.
trax's checkpoint readers (resume, `--config='train.init_checkpoint=...'`)
load through `trax_favor.safe_pickle` (`compat.safe_unpickling`): a
checkpoint that would run code ends the run with one line, exit 2. gin's
`include` lines resolve against the working directory, as in trax: run it
from the repository root for the configs in gin/.
"""

import sys

from trax_favor import cli


def main():
  cli.quiet_start()
  # pylint: disable=g-import-not-at-top
  from absl import app
  from trax_favor import compat
  from trax_favor import cpu_speedups
  from trax_favor import safe_pickle
  # pylint: enable=g-import-not-at-top
  trainer = compat.import_trainer()

  def run(argv):
    try:
      with cpu_speedups.trax_jit_options(), compat.safe_unpickling():
        trainer.main(argv)
    except safe_pickle.UnsafeCheckpoint as e:  # one line, gin's context too
      print(f'error: {cli.user_error(e)}', file=sys.stderr)
      sys.exit(2)
  app.run(run)


if __name__ == '__main__':
  main()
