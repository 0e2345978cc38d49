r"""The KYC figure: how many fakes of the pair's own scene does a verifier accept at its operating threshold?

    python research/fake_families/kyc.py split --out runs/kyc            # exclude.txt: the held-out zoo folders
    python research/fake_families/kyc.py build --out runs/kyc            # runs/kyc/data: a challenge-layout pair set
    jaxface-evaluate --checkpoint CKPT --data-dir runs/kyc/data --out runs/kyc/eval-CKPT
    python research/fake_families/kyc.py report --scores runs/kyc/eval-CKPT/scores.csv --checkpoint CKPT \
        [--val-scores VAL_SCORES_CSV] [--peer runs/kyc/dlib/scores.csv --peer-threshold T]

The held-out folders are fakes-zoo's test split of `catalog.split_of(seed=0)` (30% of folders); `split` writes them
as an exclude file for `scripts/preprocess.py --exclude`, so the product never trains on them. The pair set (photos are
symbolic links into ../shared, never copies):

    video_swap   a DFDC real frame (0.jpg) against the fake made from its video (1.jpg): another, similar-looking
                 actor's face swapped into the same scene (label 0)
    reenact_own  an FF++ Face2Face fake (the identity kept, the expression driven) against the FF++ real photo of the
                 same person: its nearest FF++ real by the pretrained MobileFaceNet cosine, kept when that cosine is
                 at least --same-cosine (the original video's frame; the zoo does not record which one it is)
    same, different   realfaces-train's test pairs of those kinds, for the EER and the threshold's context

`report` gives, per kind, the share of pairs accepted (score >= threshold): by the fused score at the checkpoint's
stored threshold, by the cosine alone at the cosine's own EER threshold on the checkpoint's validation pairs, and by a
peer's scores at its threshold.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a file: the repository root, for `research` and `jaxface`

from research.fake_families import catalog  # noqa: E402  pylint: disable=wrong-import-position

SEED = 0


def held_out(photos: list[catalog.Photo]) -> list[catalog.Photo]:
  return [p for p in photos if p.dataset == 'fakes-zoo' and catalog.split_of(p, SEED) == 'test']


def write_split(out: pathlib.Path) -> pathlib.Path:
  """out/exclude.txt: the meta.json keys ('<folder>/<k>.jpg') of every held-out zoo photo."""
  out.mkdir(parents=True, exist_ok=True)
  photos = held_out(catalog.list_photos(datasets=('fakes-zoo',)))
  keys = sorted('/'.join(pathlib.Path(p.path).parts[-2:]) for p in photos)
  path = out / 'exclude.txt'
  path.write_text('# fakes-zoo folders held out for the KYC figure (research/fake_families/kyc.py split)\n' +
                  '\n'.join(keys) + '\n')
  return path


def _embed(paths: list[str], checkpoint: str) -> np.ndarray:
  """(N, D) unit embeddings of raw photos (aligned by MTCNN; a faceless photo is embedded from its centre crop, as
  evaluation scores it)."""
  from jaxface import scoring  # pylint: disable=import-outside-toplevel
  from jaxface.verify import FaceVerifier  # pylint: disable=import-outside-toplevel
  verifier = FaceVerifier.load(checkpoint, aligner='mtcnn')
  out = []
  for start in range(0, len(paths), 64):
    faces, _ = verifier.align_with_flags(paths[start:start + 64], aligned=False)
    out.append(np.asarray(scoring.l2_normalize(verifier.infer(faces)[0])))
  return np.concatenate(out)


def build(out: pathlib.Path, same_cosine: float, pairing_checkpoint: str) -> dict[str, int]:
  """Writes out/data (test_public/<pair>/{0,1}.jpg as symbolic links, labels.csv, pairs.json); returns counts."""
  photos = catalog.list_photos()
  test = held_out(photos)
  pairs = []  # (kind, path0, path1)
  for photo in test:
    if photo.source == 'dfdc_real':
      pairs.append(('video_swap', photo.path, photo.path[:-len('0.jpg')] + '1.jpg'))
  f2f = [p.path for p in test if p.source == 'ffpp_face2face']
  reals = [p.path for p in photos if p.source == 'ffpp_youtube']
  emb_f, emb_r = _embed(f2f, pairing_checkpoint), _embed(reals, pairing_checkpoint)
  cos = emb_f @ emb_r.T
  best = cos.argmax(axis=1)
  kept = 0
  for index, path in enumerate(f2f):
    if cos[index, best[index]] >= same_cosine:
      pairs.append(('reenact_own', reals[best[index]], path))
      kept += 1
  train_dir = catalog.SHARED / 'data' / 'realfaces-train'
  with open(train_dir / 'labels.csv', newline='') as handle:
    for row in csv.DictReader(handle):
      if row['kind'] in ('same', 'different'):
        folder = train_dir / 'test_public' / row['pair_id']
        pairs.append((row['kind'], str(folder / '0.jpg'), str(folder / '1.jpg')))
  data = out / 'data'
  rng = np.random.default_rng(SEED)
  rows = []
  for number, (kind, path0, path1) in enumerate(pairs):
    if rng.random() < 0.5:
      path0, path1 = path1, path0
    folder = data / 'test_public' / f'{number:08d}'
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in (('0.jpg', path0), ('1.jpg', path1)):
      link = folder / name
      if link.is_symlink() or link.exists():
        link.unlink()
      os.symlink(os.path.abspath(target), link)
    rows.append((f'{number:08d}', 1 if kind == 'same' else 0, kind))
  with open(data / 'labels.csv', 'w', newline='') as handle:
    writer = csv.writer(handle)
    writer.writerow(['pair_id', 'label', 'kind'])
    writer.writerows(rows)
  counts = {kind: sum(1 for p in pairs if p[0] == kind) for kind in ('video_swap', 'reenact_own', 'same', 'different')}
  counts['face2face_fakes_held_out'] = len(f2f)
  counts['face2face_pair_cosine_quantiles'] = [round(float(q), 3) for q in
                                               np.quantile(cos.max(axis=1), [0.1, 0.25, 0.5, 0.75, 0.9])]
  (data / 'pairs.json').write_text(json.dumps({'counts': counts, 'same_cosine': same_cosine,
                                                'pairing_checkpoint': pairing_checkpoint}, indent=1))
  return counts


def _read_scores(path: pathlib.Path) -> list[dict[str, str]]:
  with open(path, newline='') as handle:
    return list(csv.DictReader(handle))


def accept_shares(rows: list[dict[str, str]], column: str, threshold: float) -> dict[str, float]:
  """{kind: share of that kind's pairs with rows[column] >= threshold}."""
  out = {}
  for kind in sorted({r['kind'] for r in rows}):
    values = np.array([float(r[column]) for r in rows if r['kind'] == kind])
    out[kind] = float(np.mean(values >= threshold))
  return out


def report(args) -> dict:
  from jaxface import metrics  # pylint: disable=import-outside-toplevel
  from jaxface import checkpoints  # pylint: disable=import-outside-toplevel
  rows = _read_scores(args.scores)
  threshold = args.threshold
  if threshold is None:
    threshold = checkpoints.load_inference(args.checkpoint)[2]['threshold']
  result = {'fused_threshold': threshold, 'fused': accept_shares(rows, 'similarity', threshold)}
  if args.val_scores:
    val = _read_scores(args.val_scores)
    labels = np.array([int(r['label']) for r in val])
    cos_threshold = metrics.eer_threshold(labels, np.array([float(r['cosine']) for r in val]))
    result['cosine_threshold'] = cos_threshold
    result['cosine'] = accept_shares(rows, 'cosine', cos_threshold)
  if args.peer:
    result['peer_threshold'] = args.peer_threshold
    result['peer'] = accept_shares(_read_scores(args.peer), 'similarity', args.peer_threshold)
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('split')
  p.add_argument('--out', type=pathlib.Path, required=True)
  p = sub.add_parser('build')
  p.add_argument('--out', type=pathlib.Path, required=True)
  p.add_argument('--same-cosine', type=float, default=0.5)
  p.add_argument('--pairing-checkpoint', default='runs/mbf_ms1m_init',
                 help='the converted MobileFaceNet that pairs each Face2Face fake with its person\'s real photo')
  p = sub.add_parser('report')
  p.add_argument('--scores', type=pathlib.Path, required=True, help="jaxface.evaluate's scores.csv on the pair set")
  p.add_argument('--checkpoint', required=True)
  p.add_argument('--threshold', type=float, default=None, help='the fused threshold (default: the stored one)')
  p.add_argument('--val-scores', type=pathlib.Path, help="scores.csv of the checkpoint's val split (cosine threshold)")
  p.add_argument('--peer', type=pathlib.Path, help="a peer's scores.csv on the same pairs")
  p.add_argument('--peer-threshold', type=float, default=None)
  args = parser.parse_args(argv)
  if args.command == 'split':
    print(write_split(args.out))
  elif args.command == 'build':
    print(json.dumps(build(args.out, args.same_cosine, args.pairing_checkpoint), indent=1))
  else:
    print(json.dumps(report(args), indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
