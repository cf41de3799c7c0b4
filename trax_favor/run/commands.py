"""What the command lines do once their flags are parsed: `train`, `sample`
and `trax_trainer` (the entry modules `python -m trax_favor.train`, ...
only parse flags, call `cli.quiet_start` and then one of these)."""

import math
import sys

from trax_favor import decoding
from trax_favor import safe_pickle
from trax_favor.run import checkpoints
from trax_favor.run import cli
from trax_favor.run import configs
from trax_favor.run import distributed
from trax_favor.run import sequence_parallel
from trax_favor.run import training
from trax_favor.run.errors import RunError

_FLOAT32_MAX = 3.4028234663852886e38


def train(args):
  """Joins a multi-process job if asked, parses the config, trains."""

  def run():
    check_train_flags(args)
    # Before anything starts the backend (importing trax does not).
    distributed.initialize(
        args.coordinator_address, args.num_processes, args.process_id,
        timeout=getattr(args, 'distributed_timeout', 120),
        several_devices=getattr(args, 'sequence_parallel', None) is not None)
    configs.parse_config(args.config_file, args.config)
    training.train(args.output_dir, n_devices=args.n_devices,
                   log_every=args.log_every,
                   allow_config_change=args.allow_config_change,
                   start_afresh=getattr(args, 'start_afresh', False),
                   sequence_parallel=getattr(args, 'sequence_parallel', None))
  cli.main_guard(run, verbose=args.verbose)


def _check_output_dir(output_dir):
  if not output_dir or not output_dir.strip():
    raise RunError('--output_dir is empty: name the run directory, e.g. '
                   '--output_dir=runs/default.')


def check_train_flags(args):
  """One line for training flags out of range (before anything is read)."""
  _check_output_dir(args.output_dir)
  if args.log_every < 1:
    raise RunError(f'--log_every must be at least 1, got {args.log_every}.')
  sequence_parallel.check_flags(getattr(args, 'sequence_parallel', None))


def check_sample_flags(args, image_size):
  """One line for flags that do not apply to the config's data."""
  _check_output_dir(args.output_dir)
  # Decoding divides float32 logits by it: past float32's range it is inf.
  if (not math.isfinite(args.temperature) or args.temperature < 0
      or args.temperature > _FLOAT32_MAX):
    raise RunError('--temperature must be a finite number >= 0 (0: the most '
                   f'likely token), got {args.temperature}.')
  if not -2**63 <= args.seed < 2**63:  # JAX's seeds are int64
    raise RunError('--seed must fit in 64 bits (-2**63 .. 2**63 - 1), got '
                   f'{args.seed}.')
  if image_size is None and (args.image or args.prompt_rows):
    raise RunError('--image and --prompt_rows apply to image configs; '
                   'this config is text: use --prompt and --length.')
  if image_size is not None and args.prompt:
    raise RunError('--prompt applies to text configs; this config is '
                   'images: use --image and --prompt_rows.')
  if image_size is None and args.length < 1:
    raise RunError(f'--length must be at least 1, got {args.length}.')


def _read_png(path, image_size):
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from trax_favor.data import tfds_data  # pylint: disable=g-import-not-at-top
  pixels = matplotlib.image.imread(path)  # (h, w, c) floats in [0, 1] for PNG
  pixels = np.round(pixels[..., :3] * 255).astype(np.uint8)
  return tfds_data.resized_image(pixels, image_size)


def _write_sample(args, model, image_size):
  if image_size is None:
    text = decoding.complete_text(model, args.prompt, args.length,
                                  args.temperature, args.seed)
    sys.stdout.write(args.prompt + text + '\n')
    return
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  prompt = _read_png(args.image, image_size) if args.image else None
  image = decoding.complete_image(model, image_size, prompt,
                                  args.prompt_rows, args.temperature,
                                  args.seed)
  panels = [image] if prompt is None else [prompt, image]
  matplotlib.image.imsave(args.png, np.concatenate(panels, axis=1))
  print(f'wrote {args.png} '
        f'({"prompt | completion" if prompt is not None else "sample"})')


def sample(args):
  """Restores the run's newest whole checkpoint in predict mode (read-only:
  the run directory is not changed) and samples text or an image."""

  def run():
    configs.parse_config(args.config_file, args.config)
    image_size = configs.configured_image_size()
    check_sample_flags(args, image_size)
    model = checkpoints.restore(args.output_dir, mode='predict')
    try:
      _write_sample(args, model, image_size)
    except ValueError as e:  # a bad prompt, length or image: one line
      raise RunError(str(e)) from e
  cli.main_guard(run, verbose=args.verbose)


def trax_trainer():
  """trax's own trainer `main` under absl, on current JAX (see
  trax_favor.trax_trainer)."""
  # pylint: disable=g-import-not-at-top
  from absl import app
  from trax_favor import compat
  # pylint: enable=g-import-not-at-top
  trainer = compat.import_trainer()
  if any(arg in ('-h', '--help', '--helpshort', '-?') for arg in sys.argv[1:]):
    # absl lists only the main module's flags (none here) and exits 1.
    from absl import flags  # pylint: disable=g-import-not-at-top
    print(f'{sys.modules["__main__"].__doc__ or ""}\nflags (trax.trainer\'s):'
          f'\n{flags.FLAGS.module_help("trax.trainer_flags")}')
    sys.exit(0)

  def run(argv):
    try:
      with compat.trax_jit_options(), compat.safe_unpickling():
        trainer.main(argv)
    except safe_pickle.UnsafeCheckpoint as e:  # one line, gin's context too
      print(f'error: {cli.user_error(e)}', file=sys.stderr)
      sys.exit(2)
  app.run(run)
