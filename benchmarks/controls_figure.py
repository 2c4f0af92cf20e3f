"""The README's conditioning-controls figures, made by the sample tool on a trained workdir.

  .venv/bin/python benchmarks/controls_figure.py --workdir=workdirs/mnist_default \
      --out=docs/images

Writes OUT/controls_inputs/ (two MNIST test digits and a font-rendered dark-on-white "2" on a
slightly noisy light background, as a photo of a handwritten digit would be) and one PNG per
control, each through `tools/sample.make_variations` exactly as the command line runs it:
  controls_photo.png     the photo-like "2", inverted and centred automatically
  controls_photo_raw.png the same as given (--invert=no --preprocess=none)
  controls_combine.png   the two digits as one condition (--combine)
  controls_mix.png       blend of the two over alpha = 0, 1/4, 1/2, 3/4, 1 (--mix)
  controls_negative_plain.png  the first digit at w = 1 with the null condition
  controls_negative.png  the same steered away from the second digit (--negative, s = 1)
  controls_strength.png  the first digit from t0 = 0.2, 0.4, 0.6, 0.8, 1 (--strength)
  controls_guidance.png  the first digit at w = 0, 0.5, 1, 2, 4 (--guidance)
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def font_digit(text: str = "2", size: int = 160, seed: int = 0) -> np.ndarray:
    """uint8 [size, size, 3]: a dark digit on a light, slightly noisy background."""
    rng = np.random.default_rng(seed)
    page = Image.new("RGB", (size, size), (226, 222, 214))
    font = ImageFont.load_default(size=int(size * 0.7))
    ImageDraw.Draw(page).text((size * 0.3, size * 0.08), text, fill=(30, 30, 40), font=font)
    noisy = np.asarray(page, np.float64) + rng.normal(0, 6, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def main(argv=None) -> None:
    from semantica_jax import assets
    from semantica_jax import workdir as run_dir
    from semantica_jax.tools import sample

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "images"))
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--digits", default="0,1", help="indices into the MNIST test split")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    config = run_dir.load_config(args.workdir)
    images, _ = assets.load_split(config, config.data.eval_split)
    inputs = os.path.join(args.out, "controls_inputs")
    os.makedirs(inputs, exist_ok=True)
    a, b = (os.path.join(inputs, f"digit_{i}.png") for i in args.digits.split(","))
    for path, i in zip((a, b), args.digits.split(","), strict=True):
        Image.fromarray(images[int(i), ..., 0]).save(path)
    photo = os.path.join(inputs, "photo_2.png")
    Image.fromarray(font_digit()).save(photo)
    common = dict(num=args.num, seed=args.seed, scale=2, log=lambda m: print(m, flush=True))
    out = lambda name: os.path.join(args.out, f"controls_{name}.png")  # noqa: E731
    run = sample.make_variations
    run(args.workdir, [photo], out("photo"), **common)
    run(args.workdir, [photo], out("photo_raw"), invert="no", preprocess="none", **common)
    run(args.workdir, [a, b], out("combine"), combine=True, **common)
    run(args.workdir, [], out("mix"), mix=[a, b], **common)
    run(args.workdir, [a], out("negative_plain"), guidance=[1.0], **common)
    run(args.workdir, [a], out("negative"), negative=b, negative_scale=1.0, **common)
    run(args.workdir, [a], out("strength"), strength=[0.2, 0.4, 0.6, 0.8, 1.0], **common)
    run(args.workdir, [a], out("guidance"), guidance=[0.0, 0.5, 1.0, 2.0, 4.0], **common)


if __name__ == "__main__":
    main()
