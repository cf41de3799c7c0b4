"""Sample from a trained model: `python -m trax_favor.sample` / `trax-favor-sample`.

Text (PG-19 or the offline default), continuing a prompt:

    python -m trax_favor.sample --config_file=gin/offline_default.gin \
        --output_dir=runs/default --prompt='def main(' --length=200

Images (ImageNet64 configs), completing the lower rows of a PNG or sampling
from scratch, written as a PNG:

    python -m trax_favor.sample --config_file=gin/imagenet64/performer_6l.gin \
        --output_dir=runs/i64 --image=cat.png --prompt_rows=32 --png=out.png

The model runs in predict mode: the prompt in one call, then one token per
step, with a constant-size state per sequence.
"""

import argparse
import sys

from trax_favor import cli


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m trax_favor.sample',
      description='Sample from a trained trax_favor model (predict mode).')
  cli.add_config_flags(parser, 'the training run directory (its checkpoint);'
                         ' give the config files and bindings it was '
                         'trained with')
  parser.add_argument('--prompt', default='', help='text: prompt to continue')
  parser.add_argument('--length', type=int, default=256,
                      help='text: bytes to generate')
  parser.add_argument('--image', default=None,
                      help='image: PNG whose top rows prompt the model')
  parser.add_argument('--prompt_rows', type=int, default=0,
                      help='image: rows of --image to keep')
  parser.add_argument('--png', default='sample.png',
                      help='image: where to write the result')
  parser.add_argument('--temperature', type=float, default=1.0,
                      help='0 takes the most likely token')
  parser.add_argument('--seed', type=int, default=0)
  cli.add_verbose_flag(parser)
  return parser.parse_args(argv)


def check_flags(args, image_size):
  """One line for flags that do not apply to the config's data."""
  # pylint: disable-next=g-import-not-at-top
  from trax_favor import configs
  if image_size is None and (args.image or args.prompt_rows):
    raise configs.RunError('--image and --prompt_rows apply to image configs; '
                           'this config is text: use --prompt and --length.')
  if image_size is not None and args.prompt:
    raise configs.RunError('--prompt applies to text configs; this config is '
                           'images: use --image and --prompt_rows.')
  if image_size is None and args.length < 1:
    raise configs.RunError(f'--length must be at least 1, got {args.length}.')


def _read_png(path, image_size):
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from trax_favor.data import tfds_data  # pylint: disable=g-import-not-at-top
  pixels = matplotlib.image.imread(path)  # (h, w, c) floats in [0, 1] for PNG
  pixels = np.round(pixels[..., :3] * 255).astype(np.uint8)
  return tfds_data.resized_image(pixels, image_size)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  cli.quiet_start()
  # pylint: disable=g-import-not-at-top
  from trax_favor import checkpoints
  from trax_favor import configs
  from trax_favor import decoding
  # pylint: enable=g-import-not-at-top

  def run():
    configs.parse_config(args.config_file, args.config)
    image_size = configs.configured_image_size()
    check_flags(args, image_size)
    model = checkpoints.restore(args.output_dir, mode='predict')
    try:
      sample(model, image_size)
    except ValueError as e:  # a bad prompt, length or image: one line
      raise configs.RunError(str(e)) from e

  def sample(model, image_size):
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
    print(f'wrote {args.png} ({"prompt | completion" if prompt is not None else "sample"})')
  cli.main_guard(run, verbose=args.verbose)


if __name__ == '__main__':
  main()
