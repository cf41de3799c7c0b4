"""trax's stock training CLI on current JAX: `python -m trax_favor.trax_trainer`.

    python -m trax_favor.trax_trainer --config_file=gin/offline_default.gin \
        --output_dir=runs/stock

It takes exactly `python -m trax.trainer`'s flags (absl flags: --config_file,
--config, --output_dir, --log_level, ...) and runs trax's own `main`, after
three things `python -m trax.trainer` cannot do for itself on jax 0.10:
importing `trax.trainer` at all (`compat.import_trainer`: its first line
imports a module jax no longer has), applying the trax fixes before trax
runs, and compiling trax's steps with the CPU speed-ups' compiler options
(`compat.trax_jit_options`).
trax's checkpoint readers (resume, `--config='train.init_checkpoint=...'`)
load through `trax_favor.safe_pickle` (`compat.safe_unpickling`): a
checkpoint that would run code ends the run with one line, exit 2. gin's
`include` lines resolve against the working directory, as in trax: run it
from the repository root for the configs in gin/.
"""

from trax_favor.run import cli


def main():
  cli.quiet_start()
  from trax_favor.run import commands  # pylint: disable=g-import-not-at-top
  commands.trax_trainer()


if __name__ == '__main__':
  main()
