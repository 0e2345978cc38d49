"""Recovers an align cache written before content keys, after the photos' modification times changed.

    python scripts/rekey_align_cache.py --tfds-dir runs/rt-mtcnn --data-dir ../shared/data/realfaces-train \
        --out runs/clean/_align_cache

Until 2026-12-03 `jaxface.align.cache` keyed a face by the photo's absolute path, size and modification time; it now
keys it by the photo's bytes, and still finds an old entry while the path and mtime hold. When a data folder was
copied again before its cache was read with content keys (realfaces-train was, on 2026-12-03 11:29: every mtime
changed), every lookup of the old cache misses and 15k photos would be aligned again (9.8 min of MTCNN). This script
finds each photo's old entry by the face it holds: the TFDS dataset that was written from the cache stores the exact
JPEG bytes of every train face and of every val and test pair face, next to the photo's path, so an entry whose JPEG
matches is that photo's. Matched entries are hard-linked (no copy) under the photo's content key in a new cache root
(`--out`), with the same settings folder, so `scripts/preprocess.py --cache-dir OUT` and `python -m
jaxface.clean --cache-dir OUT` read them and align only the photos left over (faceless photos and the held-out
val people's photos that are in no val pair).

Needs TensorFlow (reads the TFRecords); prints the counts and exits 0, or 2 with one line on a user error.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import pathlib
import sys
from collections.abc import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402  (after the TF log level)

from jaxface.align import cache as cache_lib  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--tfds-dir', required=True, help='TFDS data_dir written by scripts/preprocess.py (holds the '
                      'old cache in _align_cache unless --old-cache is given)')
  parser.add_argument('--data-dir', required=True, help='the challenge folder, spelt as later tools will be given it')
  parser.add_argument('--out', required=True, help='new cache root to fill with hard links')
  parser.add_argument('--old-cache', default=None, help='old cache root (default TFDS_DIR/_align_cache)')
  return parser.parse_args(argv)


def _faces_by_jpeg(tfds_dir: pathlib.Path) -> dict[str, set[str]]:
  """sha1 of each stored face JPEG -> the photos' paths relative to the data folder, over all splits.

  One face can name several photos: the test pairs reuse a photo as a file in several pair folders.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], 'GPU')
  # jaxface_faces/<config>/<version>/ (2.0.0) or jaxface_faces/<version>/ (1.0.0)
  files = sorted(glob.glob(str(tfds_dir / 'jaxface_faces' / '**' / '*.tfrecord*'), recursive=True))
  if not files:
    raise FileNotFoundError(f'{tfds_dir}: no jaxface_faces TFRecords (give the --out of scripts/preprocess.py)')
  found: dict[str, set[str]] = {}
  for record in tf.data.TFRecordDataset(files):
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    for image_key, source_key in (('image', 'source'), ('image0', 'source0'), ('image1', 'source1')):
      jpeg, source = feature[image_key].bytes_list.value, feature[source_key].bytes_list.value
      if jpeg and jpeg[0] and source and source[0]:
        found.setdefault(hashlib.sha1(jpeg[0]).hexdigest(), set()).add(source[0].decode('utf-8'))
  return found


def rekey(tfds_dir: pathlib.Path, data_dir: pathlib.Path, out: pathlib.Path, old_root: pathlib.Path) -> dict[str, int]:
  """Hard-links every old entry whose face the TFDS dataset names under its photo's current key; returns counts."""
  settings_files = sorted(old_root.glob('*/settings.json'))
  if len(settings_files) != 1:
    raise FileNotFoundError(f'{old_root}: expected one cache folder with a settings.json, found {len(settings_files)} '
                            '(give --old-cache the cache root)')
  stored = json.loads(settings_files[0].read_text(encoding='utf-8'))
  old_dir = settings_files[0].parent
  new_cache = cache_lib.AlignCache(out, stored['aligner'], stored['settings'])
  if new_cache.dir.name != old_dir.name:
    raise RuntimeError(f'{new_cache.dir}: settings hash differs from {old_dir.name} (the cache format changed)')
  sources = _faces_by_jpeg(tfds_dir)
  counts = {'old_entries': 0, 'matched': 0, 'linked': 0, 'already': 0, 'photo_missing': 0}
  data_dir = data_dir.absolute()
  for entry in sorted(old_dir.glob('*/*.npz')):
    counts['old_entries'] += 1
    with np.load(entry, allow_pickle=False) as npz:
      digest = hashlib.sha1(npz['jpeg'].tobytes()).hexdigest()
    if digest not in sources:
      continue
    counts['matched'] += 1
    for source in sorted(sources[digest]):
      photo = data_dir / source
      if not photo.exists():
        counts['photo_missing'] += 1
        continue
      target = new_cache.entry_path(photo)
      if target.exists():
        counts['already'] += 1
        continue
      target.parent.mkdir(parents=True, exist_ok=True)
      os.link(entry, target)
      counts['linked'] += 1
  counts['photos_in_tfds'] = sum(len(names) for names in sources.values())
  return counts


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  tfds_dir = pathlib.Path(args.tfds_dir)
  old_root = pathlib.Path(args.old_cache) if args.old_cache else tfds_dir / '_align_cache'
  try:
    counts = rekey(tfds_dir, pathlib.Path(args.data_dir), pathlib.Path(args.out), old_root)
  except (OSError, RuntimeError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(json.dumps(counts))
  return 0


if __name__ == '__main__':
  sys.exit(main())
