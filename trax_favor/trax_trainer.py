"""trax's stock training CLI on current JAX: `python -m trax_favor.trax_trainer`.

    python -m trax_favor.trax_trainer --config_file=gin/offline_default.gin \
        --output_dir=runs/stock

It takes exactly `python -m trax.trainer`'s flags (absl flags: --config_file,
--config, --output_dir, --log_level, ...) and runs trax's own `main`, after
three things `python -m trax.trainer` cannot do for itself on jax 0.10:
importing `trax.trainer` at all (`compat.import_trainer`: its first line
imports a module jax no longer has), applying the trax fixes before trax
runs, and compiling trax's steps with `cpu_speedups.compiler_options()`. gin's
`include` lines resolve against the working directory, as in trax: run it
from the repository root for the configs in gin/.
"""

from trax_favor import cli


def main():
  cli.quiet_start()
  # pylint: disable=g-import-not-at-top
  from absl import app
  from trax_favor import compat
  from trax_favor import cpu_speedups
  # pylint: enable=g-import-not-at-top
  trainer = compat.import_trainer()

  def run(argv):
    with cpu_speedups.trax_jit_options():
      trainer.main(argv)
  app.run(run)


if __name__ == '__main__':
  main()
