r"""A second opinion on what the label cleaner flags: the dlib peer's verdict on each flagged photo and merge candidate.

  python -m research.label_noise.peer_flags --data-dir ../shared/data/realfaces-train \
      --report runs/clean/report_clean_final --out runs/clean/peer_flags

The cleaner (`python -m jaxface.clean`) flags photos of a folder that do not match its identity and pairs of
folders that may hold one person. On data whose labels are already noisy, flags that no injected noise explains
count against its precision; this script asks an independent recogniser whether they are real. dlib's ResNet
(`jaxface.peers`, the `face_recognition` package's model) describes every real photo of each flagged folder and of
each merge candidate's two folders, on the raw photos with its own detector, and decides as `face_recognition` does:
two photos show one person when the descriptor distance is below 0.6.

- A flagged photo is "another person" for dlib when the median distance to the folder's unflagged real photos is
  0.6 or more; its unflagged photos are scored the same way against each other as the control.
- A merge candidate is "one person" for dlib when the median distance between the two folders' real photos is
  below 0.6.

Writes OUT/photos.csv, OUT/merges.csv and OUT/summary.json, and prints the summary. Needs the `peer` extra.
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # also run as a file, not only with python -m from the repository

from jaxface import peers  # noqa: E402  pylint: disable=g-import-not-at-top
from jaxface.data import challenge  # noqa: E402  pylint: disable=g-import-not-at-top

TOLERANCE = 0.6  # face_recognition.compare_faces' default
FLAG_KINDS = ('outlier', 'split')


def read_report(report_dir: pathlib.Path) -> tuple[dict[str, set[str]], list[tuple[str, str, float]]]:
  """report.csv -> ({folder: flagged photos}, [(folder, other folder, cleaner score)] of merge candidates)."""
  path = report_dir / 'report.csv'
  if not path.is_file():
    raise SystemExit(f'{path}: no report.csv (run python -m jaxface.clean first)')
  flagged: dict[str, set[str]] = collections.defaultdict(set)
  merges = []
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      if row['kind'] in FLAG_KINDS and row['photo']:
        flagged[row['folder']].add(row['photo'])
      elif row['kind'] == 'merge':
        merges.append((row['folder'], row['other'], float(row['score'])))
  return dict(flagged), merges


class Describer:
  """Caches dlib descriptors by photo key; a photo that cannot be read is reported once and left out."""

  def __init__(self, peer, data_dir: pathlib.Path):
    self.peer = peer
    self.images_dir = challenge.train_images_dir(data_dir)
    self.cache: dict[str, np.ndarray | None] = {}
    self.faceless = 0

  def __call__(self, key: str) -> np.ndarray | None:
    if key not in self.cache:
      try:
        descriptor, found = self.peer.describe(challenge.load_rgb(self.images_dir / key))
        self.faceless += int(not found)
      except challenge.ImageReadError as error:
        print(f'warning: {error}; left out', file=sys.stderr)
        descriptor = None
      self.cache[key] = descriptor
    return self.cache[key]

  def many(self, keys: Sequence[str]) -> np.ndarray:
    found = [d for d in (self(k) for k in keys) if d is not None]
    return np.stack(found) if found else np.zeros((0, 128), np.float32)


def _median_distance(one: np.ndarray, others: np.ndarray) -> float:
  if not len(others):
    return float('nan')
  return float(np.median(np.linalg.norm(others - one[None], axis=1)))


def judge_photos(describe: Describer, flagged: dict[str, set[str]], real_of: dict[str, list[str]]) -> list[dict]:
  rows = []
  for folder in sorted(flagged):
    core = [k for k in real_of.get(folder, []) if k not in flagged[folder]]
    core_desc = describe.many(core)
    for key in sorted(flagged[folder]):
      one = describe(key)
      distance = float('nan') if one is None else _median_distance(one, core_desc)
      rows.append({'folder': folder, 'photo': key, 'flagged': 1, 'core_photos': len(core_desc),
                   'median_distance': distance})
    for i, key in enumerate(core):  # the control: the photos the cleaner keeps
      if i < len(core_desc):
        distance = _median_distance(core_desc[i], np.delete(core_desc, i, axis=0))
        rows.append({'folder': folder, 'photo': key, 'flagged': 0, 'core_photos': len(core_desc) - 1,
                     'median_distance': distance})
  for row in rows:
    row['dlib_other_person'] = '' if np.isnan(row['median_distance']) else int(row['median_distance'] >= TOLERANCE)
  return rows


def judge_merges(describe: Describer, merges: list[tuple[str, str, float]], real_of: dict[str, list[str]]
                 ) -> list[dict]:
  rows = []
  for folder, other, score in merges:
    a, b = describe.many(real_of.get(folder, [])), describe.many(real_of.get(other, []))
    if len(a) and len(b):
      distance = float(np.median(np.linalg.norm(a[:, None] - b[None], axis=-1)))
    else:
      distance = float('nan')
    rows.append({'folder': folder, 'other': other, 'cleaner_score': score, 'photos': f'{len(a)}+{len(b)}',
                 'median_distance': distance,
                 'dlib_same_person': '' if np.isnan(distance) else int(distance < TOLERANCE)})
  return rows


def _share(rows: list[dict], column: str) -> dict:
  judged = [r[column] for r in rows if r[column] != '']
  return {'judged': len(judged), 'yes': int(sum(judged)), 'share': round(sum(judged) / len(judged), 4) if judged
          else None}


def summarise(photo_rows: list[dict], merge_rows: list[dict], faceless: int) -> dict:
  flagged = [r for r in photo_rows if r['flagged']]
  kept = [r for r in photo_rows if not r['flagged']]
  return {
      'tolerance': TOLERANCE,
      'flagged_photos_dlib_other_person': _share(flagged, 'dlib_other_person'),
      'kept_photos_dlib_other_person': _share(kept, 'dlib_other_person'),
      'merges_dlib_same_person': _share(merge_rows, 'dlib_same_person'),
      'photos_described': len({r['photo'] for r in photo_rows}),
      'photos_without_a_dlib_face': faceless,
  }


def _write(path: pathlib.Path, rows: list[dict]) -> None:
  if not rows:
    path.write_text('')
    return
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data-dir', required=True, help='challenge layout: train/meta.json, train/images/<person>/')
  parser.add_argument('--report', required=True, help="the cleaner's REPORT_DIR (holds report.csv)")
  parser.add_argument('--out', required=True)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  data_dir, out = pathlib.Path(args.data_dir), pathlib.Path(args.out)
  flagged, merges = read_report(pathlib.Path(args.report))
  real_of: dict[str, list[str]] = collections.defaultdict(list)
  for image in challenge.list_train_images(data_dir):
    if not image.is_fake:
      real_of[image.person_id].append(image.rel_path)
  try:
    describe = Describer(peers.build_peer('dlib'), data_dir)
  except peers.PeerError as error:
    raise SystemExit(f'error: {error}') from None
  photo_rows = judge_photos(describe, flagged, real_of)
  merge_rows = judge_merges(describe, merges, real_of)
  out.mkdir(parents=True, exist_ok=True)
  _write(out / 'photos.csv', photo_rows)
  _write(out / 'merges.csv', merge_rows)
  summary = summarise(photo_rows, merge_rows, describe.faceless)
  (out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
