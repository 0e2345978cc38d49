"""Scores test pairs with a trained model: the challenge submission, and with labels every metric and figure.

    python -m jaxface.evaluate --checkpoint workdir/default --data-dir ../shared/data/realfaces-dev --out eval/dev
    python -m jaxface.evaluate --checkpoint workdir/default --tfds-dir /data/tfds --split val --out eval/val

Photos come from a challenge-layout folder (`test_public/<pair_id>/{0,1}.jpg`, aligned on the fly by the aligner the
model was trained with, or `--aligner`) or from the TFDS `jaxface_faces` test/val split (already aligned; TensorFlow
is imported only for this path). Writes to `--out`:

- `submission.csv`: pair_id,similarity for every pair, sorted by pair_id (the challenge format), similarity being the
  fused score at the checkpoint's calibrated strength;
- `scores.csv`: per pair the fused score, cosine, both fake probabilities, label and kind;
- `metrics.json` (pair counts, fake detection) and `score_histograms.png`; with labels (`labels.csv` beside
  test_public/, `--labels`, or the split's own) also every metric below, `roc_det.png`, and a table on stdout.

Metrics: the challenge EER of the fused score and of the plain cosine; the EER of same-person pairs against each
negative kind alone; TAR at FAR 1e-2 and 1e-3; the threshold at the EER; fake-detection ROC AUC and EER per image
(where each photo's is_fake is known: the val split, or both photos of same/different pairs being real) and per pair
(does the pair hold a fake, scored by 1 - (1 - p0)(1 - p1)).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tqdm

from jaxface import metrics, pair_kinds, plots
from jaxface.inference import PairScores, score_pairs
from jaxface.verify import FaceVerifier, VerifyError

# ----------------------------------------------------------------------------------------------------------------------
# Scoring pairs from a challenge folder or from TFDS.


class UnreadablePhotos(VerifyError):
  """Photos of test pairs that cannot be read: `lines` holds one line per photo, naming it and what to do."""

  def __init__(self, lines: list[str], pairs_dir: pathlib.Path):
    self.lines = lines
    super().__init__(f'{pairs_dir}: {len(lines)} unreadable photo(s), listed above; fix or replace them (every pair '
                     'needs a score, so no submission was written)')


def _labels_for(pair_ids: Sequence[str], labels: dict | None) -> dict[str, np.ndarray]:
  """Label, kind and per-photo is_fake arrays for pairs, from read_labels' {pair_id: PairLabel}."""
  found = [labels.get(pair_id) if labels else None for pair_id in pair_ids]
  kinds = np.array([(entry.kind or '') if entry else '' for entry in found], dtype=object)
  is_fake = np.where(np.isin(kinds, pair_kinds.REAL_KINDS), 0, -1).astype(np.int64)
  return {'labels': np.array([entry.label if entry else -1 for entry in found], np.int64), 'kinds': kinds,
          'is_fake0': is_fake, 'is_fake1': is_fake.copy()}


def score_folder(verifier: FaceVerifier, data_dir, labels: dict | None = None, *, batch_pairs: int = 16,
                 progress: bool = True, limit: int | None = None) -> PairScores:
  """Scores every pair of `data_dir/test_public`, aligning photos with the verifier's aligner.

  Photos are read and aligned in a background thread while the network runs on the previous batch.

  Args:
    verifier: the model and its aligner.
    data_dir: a folder holding test_public/.
    labels: {pair_id: PairLabel} from `jaxface.data.challenge.read_labels`, or None.
    batch_pairs: pairs per network call (2x images).
    progress: show a tqdm bar with pairs per second.
    limit: score only the first `limit` pairs (quick checks).

  Raises:
    UnreadablePhotos: photos that cannot be read (all of them, one line each); the others are read and aligned first.
  """
  from jaxface.data import challenge  # pylint: disable=import-outside-toplevel

  pairs = challenge.list_test_pairs(data_dir)[:limit]
  if not pairs:
    raise VerifyError(f'{challenge.test_pairs_dir(data_dir)}: no pair folders found '
                      '(expected test_public/<pair_id>/0.jpg and 1.jpg)')

  unreadable: list[str] = []

  def prepare(chunk):
    paths = [pair.path0 for pair in chunk] + [pair.path1 for pair in chunk]
    photos = []
    for path in paths:
      try:
        photos.append(challenge.read_photo(path, verifier.max_photo_side)[0])
      except challenge.ImageReadError as error:
        unreadable.append(str(error))
    if len(photos) < len(paths):  # this chunk cannot be scored; the others are still read, to name every bad photo
      return chunk, None, None
    faces, found = verifier.align_with_flags(photos, aligned=False, names=[str(path) for path in paths])
    return chunk, faces, found

  chunks = [pairs[i:i + batch_pairs] for i in range(0, len(pairs), batch_pairs)]
  parts = []
  with concurrent.futures.ThreadPoolExecutor(1) as pool, \
      tqdm.tqdm(total=len(pairs), unit='pair', desc='scoring', disable=not progress, dynamic_ncols=True) as bar:
    pending = pool.submit(prepare, chunks[0])
    for index in range(len(chunks)):
      chunk, faces, found = pending.result()
      if index + 1 < len(chunks):
        pending = pool.submit(prepare, chunks[index + 1])
      count = len(chunk)
      bar.update(count)
      if faces is None or unreadable:
        continue
      pair_ids = [pair.pair_id for pair in chunk]
      parts.append(score_pairs(verifier, faces[:count], faces[count:], pair_ids=pair_ids,
                               face_found0=found[:count], face_found1=found[count:], **_labels_for(pair_ids, labels)))
  if unreadable:
    raise UnreadablePhotos(unreadable, challenge.test_pairs_dir(data_dir))
  return PairScores.concatenate(parts)


def score_tfds(verifier: FaceVerifier, config, source, split: str = 'test', *, batch_pairs: int = 16,
               progress: bool = True, limit: int | None = None) -> PairScores:
  """Scores the pairs of a `jaxface_faces` split ('test' or 'val'), sorted by pair_id (imports TensorFlow).

  Args:
    verifier: the model.
    config: the run's config (its `data` section, with tfds_dir replaced, and the model's input size).
    source: the folder holding the jaxface_faces TFDS dataset, or (tests) a tf.data.Dataset of pair feature dicts.
    split: 'test' or 'val'.
  """
  from jaxface.data import pipeline  # pylint: disable=import-outside-toplevel  (TensorFlow)

  pipeline.hide_gpus_from_tf()
  config = config.copy_and_resolve_references()
  if 'data' not in config:
    config.data = pipeline.default_data_config()
  if isinstance(source, (str, pathlib.Path)):
    config.data.tfds_dir = str(source)
    source = pipeline.open_prepared(source)  # ConfigError (one line) for a missing or old-layout dataset
  parts, seen = [], 0
  with tqdm.tqdm(unit='pair', desc=f'scoring {split}', disable=not progress, dynamic_ncols=True) as bar:
    for batch in pipeline.pairs_dataset(source, split, config, batch_pairs):
      count = len(batch['pair_id'])
      if limit is not None:
        count = min(count, limit - seen)
      take = lambda key: np.asarray(batch[key])[:count]
      parts.append(score_pairs(verifier, take('image0'), take('image1'), pair_ids=take('pair_id'),
                               labels=take('label'), kinds=take('kind'), is_fake0=take('is_fake0'),
                               is_fake1=take('is_fake1')))
      seen += count
      bar.update(count)
      if limit is not None and seen >= limit:
        break
  if not parts:
    raise VerifyError(f'{config.data.tfds_dir or "dataset"}: split {split!r} of jaxface_faces holds no pairs')
  return PairScores.concatenate(parts).sorted_by_id()


def format_table(result: dict[str, Any]) -> str:
  """The metrics as a fixed-width text table (fused vs cosine columns)."""
  rows = [f'pairs {result["pairs"]} ({result["labelled_pairs"]} labelled: '
          + ', '.join(f'{k} {n}' for k, n in result['pairs_by_kind'].items()) + f'); fuse strength '
          f'{result["fuse_strength"]:.4g}; faces not found {result["faces_not_found"]}']
  if 'fused' in result:
    fused, cosine = result['fused'], result['cosine']
    line = lambda name, a, b: f'{name:<34}{a:>10}{b:>10}'
    number = lambda value: '-' if value is None else f'{value:.4f}'
    rows.append(line('metric', 'fused', 'cosine'))
    rows.append(line('EER (challenge formula)', number(fused['eer']), number(cosine['eer'])))
    for kind in fused['eer_by_kind']:
      rows.append(line(f'EER same vs {kind}', number(fused['eer_by_kind'][kind]),
                       number(cosine['eer_by_kind'].get(kind))))
    for kind in fused.get('eer_by_genuine_kind', {}):
      rows.append(line(f'EER {kind} vs all negatives', number(fused['eer_by_genuine_kind'][kind]),
                       number(cosine['eer_by_genuine_kind'].get(kind))))
    for far in metrics.FARS:
      key = f'tar_at_far_{far:g}'
      rows.append(line(f'TAR @ FAR {far:g}', number(fused[key]), number(cosine[key])))
    rows.append(line('ROC AUC', number(fused['auc']), number(cosine['auc'])))
    rows.append(line('threshold at EER', number(fused['eer_threshold']), number(cosine['eer_threshold'])))
    if 'stored_threshold' in result:
      rows.append(line(f'accuracy at stored thr {result["stored_threshold"]:.3f}',
                       number(fused['accuracy_at_stored_threshold']), '-'))
    rows.append(f'oracle fuse strength on these labels: {result["oracle"]["fuse_strength"]:.4g} '
                f'(EER {result["oracle"]["eer"]:.4f}, optimistic)')
  found_by = [('fake detection per photo', result.get('fake_detection_image')),
              ('fake in pair', result.get('fake_detection_pair'))]
  by_kind = result.get('fake_detection_pair_by_kind', {})
  if len(by_kind) > 1:  # with one kind it is the line above
    found_by += [(f'fake in pair, {kind} vs real pairs', found) for kind, found in by_kind.items()]
  for name, found in found_by:
    if found:
      rows.append(f'{name}: AUC {found["auc"]:.4f}, EER {found["eer"]:.4f} '
                  f'({found["num_real"]} real, {found["num_fake"]} fake)')
  return '\n'.join(rows)


# ----------------------------------------------------------------------------------------------------------------------
# Outputs.


def write_submission(path, pair_ids: Sequence[str], similarity: np.ndarray) -> pathlib.Path:
  """Writes pair_id,similarity rows sorted by pair_id (the challenge's submission format)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  order = np.argsort(np.asarray(pair_ids, dtype=str), kind='stable')
  with path.open('w', newline='') as handle:
    writer = csv.writer(handle)
    writer.writerow(['pair_id', 'similarity'])
    for index in order:
      writer.writerow([pair_ids[index], f'{similarity[index]:.8f}'])
  return path


def write_outputs(scores: PairScores, result: dict[str, Any], out_dir, fuse_strength: float) -> list[pathlib.Path]:
  """Writes submission.csv, scores.csv, the plots (ROC/DET only with labels) and last metrics.json.

  `result['outputs']` is set to the files written, metrics.json included.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  fused = scores.fused(fuse_strength)
  written = [write_submission(out_dir / 'submission.csv', list(scores.pair_ids), fused)]
  with (out_dir / 'scores.csv').open('w', newline='') as handle:
    writer = csv.writer(handle)
    writer.writerow(['pair_id', 'similarity', 'cosine', 'p_fake0', 'p_fake1', 'label', 'kind'])
    for row in zip(scores.pair_ids, fused, scores.cosine, scores.p_fake0, scores.p_fake1, scores.labels, scores.kinds):
      writer.writerow([row[0], *(f'{value:.8f}' for value in row[1:5]), int(row[5]), row[6]])
  written.append(out_dir / 'scores.csv')
  known = scores.labels >= 0
  if 'fused' in result:
    curves = {'fused': fused[known], 'cosine': scores.cosine[known]}
    written.append(plots.roc_det_plot(scores.labels[known], curves, out_dir / 'roc_det.png'))
    thresholds = {'fused': result['fused']['eer_threshold'], 'cosine': result['cosine']['eer_threshold']}
    written.append(plots.score_histograms(curves, list(scores.kinds[known]), out_dir / 'score_histograms.png',
                                          thresholds=thresholds))
  else:
    written.append(plots.score_histograms({'fused': fused, 'cosine': scores.cosine}, list(scores.kinds),
                                          out_dir / 'score_histograms.png'))
  written.append(out_dir / 'metrics.json')
  result['outputs'] = [str(path) for path in written]
  (out_dir / 'metrics.json').write_text(json.dumps(result, indent=2, sort_keys=True) + '\n')
  return written


# ----------------------------------------------------------------------------------------------------------------------
# The whole run.


def evaluate(checkpoint, out_dir, *, data_dir=None, tfds_dir=None, split: str = 'test', labels_path=None,
             aligner: str | None = None, aligner_path: str | None = None, batch_pairs: int = 16,
             flip_tta: bool | None = None, progress: bool = True, limit: int | None = None) -> dict[str, Any]:
  """Loads a checkpoint, scores the pairs of a folder or a TFDS split, writes the outputs; returns the metrics.

  Exactly one of `data_dir` (a challenge folder with test_public/) and `tfds_dir` (a jaxface_faces TFDS folder) is
  given. Labels come from `labels_path`, else data_dir/labels.csv if present, else (TFDS) the split's own.
  """
  from jaxface import checkpoints  # pylint: disable=import-outside-toplevel
  from jaxface.data import challenge  # pylint: disable=import-outside-toplevel

  if (data_dir is None) == (tfds_dir is None):
    raise ValueError('give exactly one of data_dir and tfds_dir')
  if pathlib.Path(checkpoint).suffix == '.onnx':  # an exported model (python -m jaxface.export), run by onnxruntime
    import ml_collections  # pylint: disable=import-outside-toplevel
    verifier = FaceVerifier.load(checkpoint, aligner=aligner, aligner_path=aligner_path, batch_size=2 * batch_pairs,
                                 flip_tta=flip_tta)
    config = ml_collections.ConfigDict()
  else:
    config, variables, scoring_params = checkpoints.load_inference(checkpoint)
    verifier = FaceVerifier.from_inference(config, variables, scoring_params, aligner=aligner,
                                           aligner_path=aligner_path, batch_size=2 * batch_pairs, flip_tta=flip_tta)
  start = time.perf_counter()
  if data_dir is not None:
    labels_path = labels_path or challenge.default_labels_path(data_dir)
    labels = challenge.read_labels(labels_path) if pathlib.Path(labels_path).is_file() else None
    scores = score_folder(verifier, data_dir, labels, batch_pairs=batch_pairs, progress=progress, limit=limit)
  else:
    scores = score_tfds(verifier, config, tfds_dir, split, batch_pairs=batch_pairs, progress=progress, limit=limit)
    if labels_path:
      extra = _labels_for(list(scores.pair_ids), challenge.read_labels(labels_path))
      scores = dataclasses.replace(scores, **extra)
  seconds = time.perf_counter() - start
  result = metrics.pair_metrics(scores, verifier.fuse_strength, verifier.threshold)
  result.update({'checkpoint': str(checkpoint), 'source': str(data_dir or f'{tfds_dir}:{split}'),
                 'aligner': verifier.aligner_name if data_dir is not None else 'tfds (pre-aligned)',
                 'flip_tta': verifier.flip_tta, 'seconds': seconds,
                 'pairs_per_second': len(scores.pair_ids) / max(seconds, 1e-9)})
  if data_dir is not None:
    pairs_dir = challenge.test_pairs_dir(data_dir)
    result['faceless_photos'] = [str(pairs_dir / pair_id / f'{side}.jpg') for side, found in enumerate(
        (scores.face_found0, scores.face_found1)) for pair_id in np.asarray(scores.pair_ids)[~found]]
  write_outputs(scores, result, out_dir, verifier.fuse_strength)
  return result


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m jaxface.evaluate', description=__doc__.split('\n\n')[0])
  parser.add_argument('--checkpoint', required=True, help='a training workdir (its best checkpoint) or one checkpoint')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--data-dir', help='a folder holding test_public/ (and optionally labels.csv)')
  source.add_argument('--tfds-dir', help='the folder holding the jaxface_faces TFDS dataset')
  parser.add_argument('--split', default='test', choices=('test', 'val'), help='TFDS split (with --tfds-dir)')
  parser.add_argument('--labels', default=None, help='pair labels CSV (default: DATA_DIR/labels.csv if present)')
  parser.add_argument('--out', required=True, help='folder for submission.csv, metrics.json and the plots')
  parser.add_argument('--aligner', default=None, help='dfa | mtcnn | retinaface | none (default: the one the model trained with)')
  parser.add_argument('--aligner-path', default=None, help='aligner weights (DFA snapshot folder, RetinaFace .pth)')
  parser.add_argument('--batch-pairs', type=int, default=16, help='pairs per network call')
  parser.add_argument('--flip-tta', action=argparse.BooleanOptionalAction, default=None,
                      help='also embed mirrored faces, fused by embedding norm (default: as the checkpoint was '
                      'calibrated, config.flip_tta)')
  parser.add_argument('--limit', type=int, default=None, help='score only the first N pairs (quick checks)')
  parser.add_argument('--no-progress', action='store_true', help='no progress bar')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """The CLI; returns the exit code (0 done, 2 bad input)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads (--tfds-dir): no start-up chatter
  args = _parse_args(argv)
  from jaxface.checkpoints import CheckpointError  # pylint: disable=import-outside-toplevel
  from jaxface.config import ConfigError  # pylint: disable=import-outside-toplevel
  from jaxface.data.challenge import DataFormatError  # pylint: disable=import-outside-toplevel

  if args.data_dir is not None and not (pathlib.Path(args.data_dir) / 'test_public').is_dir():
    print(f'error: {args.data_dir}: no test_public/ folder here (give the folder that holds test_public/)',
          file=sys.stderr)
    return 2
  if args.tfds_dir is not None and not (pathlib.Path(args.tfds_dir) / 'jaxface_faces').is_dir():
    print(f'error: {args.tfds_dir}: no jaxface_faces dataset here (write one with scripts/preprocess.py)',
          file=sys.stderr)
    return 2
  try:
    result = evaluate(args.checkpoint, args.out, data_dir=args.data_dir, tfds_dir=args.tfds_dir, split=args.split,
                      labels_path=args.labels, aligner=args.aligner, aligner_path=args.aligner_path,
                      batch_pairs=args.batch_pairs, flip_tta=args.flip_tta, progress=not args.no_progress,
                      limit=args.limit)
  except (VerifyError, DataFormatError, CheckpointError, ConfigError) as error:  # ConfigError: an old dataset layout
    for line in getattr(error, 'lines', []):
      print(f'error: {line}', file=sys.stderr)
    print(f'error: {error}', file=sys.stderr)
    return 2
  for path in result.get('faceless_photos', []):
    print(f'warning: {path}: no face found, scored from its centre crop (check the photo)', file=sys.stderr)
  print(format_table(result))
  print(f'{result["pairs"]} pairs in {result["seconds"]:.1f} s ({result["pairs_per_second"]:.1f} pairs/s); '
        f'wrote {", ".join(pathlib.Path(p).name for p in result["outputs"])} to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
