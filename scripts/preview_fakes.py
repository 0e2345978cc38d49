"""Writes a PNG grid of pseudo-fakes made from realfaces-dev photos, to check by eye that they look plausible.

  python scripts/preview_fakes.py --out grid.png [--data ../shared/data/realfaces-dev] [--rows 6] [--seed 0]

Rows are real LFW photos (roughly aligned to the ArcFace template with fixed LFW landmark positions); columns are
the real face, a self-blend, a swap (donor: the next row's face), the three generator traces, and the self-blend's
absolute difference from the real face (x4) to show where the mask reaches.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
from PIL import Image

# Typical 5-point positions of the face in a 250x250 LFW photo (the LFW crops centre the detected face).
_LFW_LANDMARKS = np.array([[106.0, 113.0], [145.0, 113.0], [125.5, 136.0], [110.0, 158.0], [141.0, 158.0]])


def _lfw_faces(data_dir: pathlib.Path, count: int) -> list[np.ndarray]:
  from jaxface.align.template import ARCFACE_TEMPLATE, similarity_transform, warp_face
  train = data_dir / 'train'
  sources = json.loads((train / 'sources.json').read_text())
  people = sorted(p for p, s in sources.items() if s == 'lfw_real')
  matrix = similarity_transform(_LFW_LANDMARKS, ARCFACE_TEMPLATE)
  faces = []
  for person in people[::max(1, len(people) // count)][:count]:
    photo = sorted((train / 'images' / person).glob('*.jpg'))[0]
    faces.append(warp_face(np.asarray(Image.open(photo).convert('RGB')), matrix, 112))
  return faces


def preview_grid(faces: list[np.ndarray], seed: int = 0) -> np.ndarray:
  """One row per face: real, self_blend, swap, checkerboard, spectral, smooth, |self_blend - real| x4.

  Args:
    faces: list of (112, 112, 3) uint8 aligned faces (at least 2, for the swap donors).
  Returns:
    (rows * 112, 7 * 112, 3) uint8 grid.
  """
  from jaxface.data import pipeline
  pipeline.hide_gpus_from_tf()
  import tensorflow as tf
  from jaxface.data import pseudofakes
  rows = []
  for i, face in enumerate(faces):
    donor = faces[(i + 1) % len(faces)]
    s = tf.constant([seed, i], tf.int64)
    blend = pseudofakes.self_blend(face, s).numpy()
    cells = [face, blend, pseudofakes.swap(face, donor, s).numpy()]
    cells += [pseudofakes.trace(face, s, kind=k).numpy() for k in range(len(pseudofakes.TRACES))]
    diff = np.abs(blend.astype(np.int32) - face.astype(np.int32)) * 4
    cells.append(np.clip(diff, 0, 255).astype(np.uint8))
    rows.append(np.concatenate(cells, axis=1))
  return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='PNG file to write')
  parser.add_argument('--data', default=str(pathlib.Path(__file__).resolve().parents[2] / 'shared/data/realfaces-dev'))
  parser.add_argument('--rows', type=int, default=6)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--zoom', type=int, default=2, help='integer upscaling of the grid for viewing')
  args = parser.parse_args(argv)
  data_dir = pathlib.Path(args.data)
  if not (data_dir / 'train' / 'sources.json').is_file():
    print(f'{data_dir}: no train/sources.json (pass --data pointing at realfaces-dev)', file=sys.stderr)
    return 2
  faces = _lfw_faces(data_dir, max(2, args.rows))
  grid = preview_grid(faces, args.seed)
  image = Image.fromarray(grid)
  if args.zoom > 1:
    image = image.resize((grid.shape[1] * args.zoom, grid.shape[0] * args.zoom), Image.Resampling.NEAREST)
  image.save(args.out)
  print(f'wrote {args.out}: {len(faces)} rows x 7 columns')
  return 0


if __name__ == '__main__':
  sys.exit(main())
