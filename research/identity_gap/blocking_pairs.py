r"""The labelled pairs that keep an EER up, side by side for several scorers, with a contact sheet to look at.

  python -m research.identity_gap.blocking_pairs --data-dir ../shared/data/realfaces-train \
      --scores jaxface=runs/realfaces_mbf/eval/scores.csv --scores dlib=runs/peer_rt/peer_dlib/scores.csv \
      --out runs/blocking

Each scores CSV needs `pair_id`, `label`, `kind` and a score column (`similarity` for jaxface's evaluate and for the
peers). For the first scorer, the `same` pairs scoring below its EER threshold are the ones that block a lower EER;
for each such pair every scorer's score is printed with whether it, at its own EER threshold, accepts it. Pairs that
every scorer rejects are candidates for label noise (two people under one identity, the wrong face in a group photo):
the sheet (OUT/blocking_same.png) shows them, so a person can judge. Writes OUT/blocking_same.csv too.
"""
from __future__ import annotations

import argparse
import csv
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # also run as a file, not only with python -m from the repository

from jaxface import metrics  # noqa: E402  pylint: disable=g-import-not-at-top


def read_scores(path: str) -> dict[str, dict]:
  with open(path, newline='') as f:
    return {row['pair_id']: row for row in csv.DictReader(f)}


def eer_threshold(rows: dict[str, dict], column: str = 'similarity') -> float:
  labels = np.array([int(r['label']) for r in rows.values()])
  values = np.array([float(r[column]) for r in rows.values()])
  return float(metrics.eer_threshold(labels, values))


def contact_sheet(data_dir: pathlib.Path, pair_ids: list[str], notes: list[str], out: pathlib.Path,
                  side: int = 112) -> None:
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  from jaxface.data import challenge  # pylint: disable=import-outside-toplevel
  columns = 3
  rows = (len(pair_ids) + columns - 1) // columns
  sheet = Image.new('RGB', (columns * 2 * side, rows * (side + 14)), 'white')
  draw = ImageDraw.Draw(sheet)
  for i, (pair_id, note) in enumerate(zip(pair_ids, notes)):
    x, y = (i % columns) * 2 * side, (i // columns) * (side + 14)
    for j in range(2):
      photo = Image.fromarray(challenge.load_rgb(data_dir / 'test_public' / pair_id / f'{j}.jpg')).resize((side, side))
      sheet.paste(photo, (x + j * side, y))
    draw.text((x + 2, y + side), f'{pair_id} {note}', fill='black')
  sheet.save(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data-dir', required=True, help='the challenge folder the pairs come from (test_public/)')
  parser.add_argument('--scores', action='append', required=True, help='NAME=scores.csv (repeatable; first is ranked)')
  parser.add_argument('--out', required=True)
  parser.add_argument('--max-sheet', type=int, default=36)
  args = parser.parse_args(argv)
  scorers = {}
  for item in args.scores:
    name, _, path = item.partition('=')
    if not path or not pathlib.Path(path).is_file():
      parser.error(f'--scores {item}: expected NAME=PATH to an existing scores CSV')
    scorers[name] = read_scores(path)
  thresholds = {name: eer_threshold(rows) for name, rows in scorers.items()}
  first = next(iter(scorers))
  common = set.intersection(*(set(rows) for rows in scorers.values()))
  same = [p for p in common if scorers[first][p]['kind'] == 'same']
  blocking = sorted((p for p in same if float(scorers[first][p]['similarity']) < thresholds[first]),
                    key=lambda p: float(scorers[first][p]['similarity']))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  rejected_by_all = [p for p in blocking
                     if all(float(rows[p]['similarity']) < thresholds[n] for n, rows in scorers.items())]
  with open(out / 'blocking_same.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['pair_id', *[f'{n}_similarity' for n in scorers], *[f'{n}_accepts' for n in scorers]])
    for p in blocking:
      writer.writerow([p, *[scorers[n][p]['similarity'] for n in scorers],
                       *[int(float(scorers[n][p]['similarity']) >= thresholds[n]) for n in scorers]])
  print(f'{len(same)} same pairs; EER thresholds ' + ', '.join(f'{n} {t:.4f}' for n, t in thresholds.items()))
  print(f'{len(blocking)} same pairs {first} rejects at its EER threshold; {len(rejected_by_all)} of them every '
        f'scorer rejects')
  for name in scorers:
    if name != first:
      accepted = sum(float(scorers[name][p]['similarity']) >= thresholds[name] for p in blocking)
      print(f'  {name} accepts {accepted} of those {len(blocking)}')
  shown = rejected_by_all[:args.max_sheet]
  if shown:
    notes = [' '.join(f'{n[:5]} {float(scorers[n][p]["similarity"]):.2f}' for n in scorers) for p in shown]
    contact_sheet(pathlib.Path(args.data_dir), shown, notes, out / 'blocking_same.png')
    print(f'wrote {out / "blocking_same.csv"} and {out / "blocking_same.png"} '
          f'({len(shown)} pairs every scorer rejects)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
