"""blocking_pairs: the same-person pairs the first scorer rejects, which of them every scorer rejects."""
from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

from research.identity_gap import blocking_pairs


def _write_scores(path: pathlib.Path, rows: list[tuple[str, float, int, str]]) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['pair_id', 'similarity', 'label', 'kind'])
    writer.writerows(rows)


def test_finds_the_pairs_every_scorer_rejects(tmp_path, capsys):
  rng = np.random.default_rng(0)
  ids = [f'{i:08d}' for i in range(8)]
  for pair_id in ids:
    for j in range(2):
      folder = tmp_path / 'data' / 'test_public' / pair_id
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f'{j}.jpg')
  kinds = ['same'] * 4 + ['different'] * 4
  labels = [1] * 4 + [0] * 4
  # Scorer a: same pairs 0.9, 0.8, 0.1 (blocked), 0.05 (blocked); negatives 0.2..0.5.
  a = [0.9, 0.8, 0.1, 0.05, 0.2, 0.3, 0.4, 0.5]
  # Scorer b accepts pair 2 (0.95) but also rejects pair 3.
  b = [0.9, 0.8, 0.95, 0.05, 0.2, 0.3, 0.4, 0.5]
  _write_scores(tmp_path / 'a.csv', list(zip(ids, a, labels, kinds)))
  _write_scores(tmp_path / 'b.csv', list(zip(ids, b, labels, kinds)))
  out = tmp_path / 'out'
  assert blocking_pairs.main(['--data-dir', str(tmp_path / 'data'), '--scores', f'a={tmp_path / "a.csv"}',
                              '--scores', f'b={tmp_path / "b.csv"}', '--out', str(out)]) == 0
  printed = capsys.readouterr().out
  rows = list(csv.DictReader(open(out / 'blocking_same.csv')))
  blocked = {r['pair_id']: r for r in rows}
  assert set(blocked) == {ids[2], ids[3]}
  assert blocked[ids[2]]['b_accepts'] == '1' and blocked[ids[3]]['b_accepts'] == '0'
  assert '1 of them every scorer rejects' in printed and 'b accepts 1 of those 2' in printed
  assert Image.open(out / 'blocking_same.png').size[0] > 0
