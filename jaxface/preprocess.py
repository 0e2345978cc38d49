"""Aligns the challenge photos and writes the `jaxface_faces` TFDS dataset (train faces, val pairs, test pairs).

The dataset has two configs, OUT/jaxface_faces/faces/VERSION (train) and OUT/jaxface_faces/pairs/VERSION (val, test);
plain TFDS reads them (`tfds.load('jaxface_faces/faces', data_dir=OUT)`), training with --config.data.tfds_dir=OUT.
A dataset of the older one-config layout in OUT is rewritten with --overwrite, from the align cache.

    python -m jaxface.preprocess --data-dir /data/kryptonite --out /data/tfds --aligner dfa --preview 64
    jaxface-preprocess ...  or  python scripts/preprocess.py ...                     (the same command)

Resumable: aligned faces are cached under <out>/_align_cache; after an interruption the same command goes on where it
stopped. At the end it prints the counts of aligned, faceless, low-score and unreadable photos and writes them, with
the list of skipped photos, to <out>/preprocess_report.json.

Exit status: 0 when nothing was skipped, 1 when some photos (or test pairs) were skipped (the report says which),
2 for a user error (missing data folder, existing dataset, bad option, unwritable output), printed as one line,
130 when interrupted (rerun to resume).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads: keep its start-up chatter out

# Lists that can hold thousands of paths stay in the JSON file; the terminal gets the counts.
_LONG_FIELDS = ('skipped', 'faceless', 'low_score', 'unreadable', 'skipped_test_pairs')


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m jaxface.preprocess', description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--data-dir', required=True, help='challenge folder with train/, test_public/, labels.csv')
  parser.add_argument('--out', required=True,
                      help="TFDS data_dir to write (read back with tfds.load('jaxface_faces/faces', data_dir=OUT))")
  parser.add_argument('--aligner', default='mtcnn', choices=('dfa', 'mtcnn', 'retinaface', 'none'),
                      help='default mtcnn: configs/realfaces_mbf.py trained on its output scored the lowest test EER '
                           '(realfaces-train, 2026-12-03: fused 0.060 against 0.072 for retinaface, which is 7x '
                           'faster and misses fewer faces); dfa needs its downloaded snapshot (third_party/README.md)')
  parser.add_argument('--aligner-path', default=None, help='DFA snapshot folder or Hugging Face repo id; RetinaFace .pth file')
  parser.add_argument('--device', default=None, help="torch device of the aligner (default: CUDA if there is one)")
  parser.add_argument('--batch-size', type=int, default=32, help='photos per aligner call')
  parser.add_argument('--val-fraction', type=float, default=0.1, help='share of people held out for val pairs')
  parser.add_argument('--seed', type=int, default=0, help='picks the val people and pairs')
  parser.add_argument('--min-score', type=float, default=0.0,
                      help='faces scoring below count as low-score and are skipped like faceless photos')
  parser.add_argument('--keep-faceless', action='store_true',
                      help='keep faceless and low-score photos in train and val (as centre crops)')
  parser.add_argument('--labels', default=None, help='test pair labels CSV (default DATA_DIR/labels.csv if present)')
  parser.add_argument('--cache-dir', default=None, help='aligned-face cache (default OUT/_align_cache)')
  parser.add_argument('--max-photo-side', type=int, default=2048, help='larger photos are downscaled first')
  parser.add_argument('--workers', type=int, default=2, help='threads reading photos while the aligner runs')
  parser.add_argument('--preview', type=int, default=0, metavar='N',
                      help='write OUT/preview.png: N aligned faces with their landmarks')
  parser.add_argument('--overwrite', action='store_true', help='rebuild an existing dataset (from the cache)')
  parser.add_argument('--no-progress', action='store_true', help='no progress bar')
  parser.add_argument('--exclude', default=None, metavar='FILE',
                      help='train photos to leave out: one meta.json key ("<person_id>/<k>.jpg") a line, "#" starts '
                           'a comment; the exclude.txt that python -m jaxface.clean writes')
  return parser.parse_args(argv)


def write_preview(out: str, count: int) -> pathlib.Path:
  """OUT/preview.png: the first `count` train faces with their landmarks (the first pair faces if there is no train)."""
  from jaxface import plots  # pylint: disable=import-outside-toplevel
  from jaxface.data import prepared  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  dataset = prepared.open_prepared(out)
  split = next(name for name in ('train', 'val', 'test') if dataset.splits.get(name))
  examples = list(tfds.as_numpy(dataset.as_dataset(split, shuffle_files=False).take(count)))
  return plots.write_preview(examples, pathlib.Path(out) / 'preview.png')


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  from jaxface.data import builder, challenge  # pylint: disable=import-outside-toplevel  (TF loads here)
  exclude: tuple[str, ...] = ()
  if args.exclude:
    try:
      exclude = challenge.read_exclude(args.exclude, args.data_dir)
    except challenge.DataFormatError as error:
      print(f'error: {error}', file=sys.stderr)
      return 2
  options = builder.BuildOptions(
      aligner=args.aligner, aligner_path=args.aligner_path, device=args.device, batch_size=args.batch_size,
      val_fraction=args.val_fraction, seed=args.seed, min_score=args.min_score, keep_faceless=args.keep_faceless,
      cache_dir=args.cache_dir, labels_path=args.labels, max_photo_side=args.max_photo_side, workers=args.workers,
      progress=not args.no_progress, exclude=exclude)
  try:
    report = builder.prepare(args.data_dir, args.out, options, overwrite=args.overwrite)
    preview = write_preview(args.out, args.preview) if args.preview > 0 else None
  except (builder.PreprocessError, challenge.DataFormatError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  except OSError as error:  # an unwritable --out or --cache-dir, a full disk: the message names the file
    print(f'error: {error} (check that the folder is writable and has space)', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('interrupted: rerun the same command to resume (aligned faces are cached)', file=sys.stderr)
    return 130
  summary = {key: value for key, value in report.items() if key not in _LONG_FIELDS and key != 'options'}
  print(json.dumps(summary, indent=1, default=str))
  for item in report['skipped'][:10]:
    print(f'skipped: {item["path"]}: {item["reason"]}')
  if len(report['skipped']) > 10:
    print(f'... and {len(report["skipped"]) - 10} more skipped photos')
  for pair_id in report['skipped_test_pairs'][:10]:
    print(f'skipped test pair {pair_id}: a photo is unreadable')
  print(f'report: {os.path.join(args.out, builder.REPORT_NAME)}')
  if preview:
    print(f'preview: {preview}')
  return 1 if report['skipped'] or report['skipped_test_pairs'] else 0


if __name__ == '__main__':
  sys.exit(main())
