"""identity_gap on hand-made scores: which pairs every scorer rejects, and AS-norm's arithmetic."""
import csv
import json

import numpy as np

from research.identity_gap import identity_gap as gap


def _write(path, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=['pair_id', 'similarity', 'cosine', 'label', 'kind'])
    writer.writeheader()
    writer.writerows(rows)
  return str(path)


def test_pairs_every_scorer_rejects_are_found_and_dropping_them_lowers_the_eer(tmp_path, capsys):
  rng = np.random.default_rng(0)
  rows = {name: [] for name in ('model', 'peer')}
  for i in range(60):
    kind = ('same', 'different', 'fake')[i % 3]
    for name in rows:
      value = rng.normal(0.7 if kind == 'same' else 0.1, 0.05)
      if i in (0, 3):  # two "mislabelled" same pairs that both scorers put far below everything
        value = -0.5
      rows[name].append({'pair_id': f'{i:04d}', 'similarity': value, 'cosine': value, 'label': int(kind == 'same'),
                         'kind': kind})
  model, peer = _write(tmp_path / 'm.csv', rows['model']), _write(tmp_path / 'p.csv', rows['peer'])
  assert gap.main(['--scores', model, '--others', f'peer={peer}', '--drop', '1']) == 0
  report = json.loads(capsys.readouterr().out)
  assert report['same_pairs_all_reject'] == ['0000', '0003']
  assert report['model']['similarity']['all'] > 0 and report['without_all_rejected']['model']['all'] == 0.0
  assert report['model']['perfect_fake_head']['vs_fake'] == 0.0


def test_as_norm_standardises_each_side_by_its_top_cohort():
  rng = np.random.default_rng(1)
  e0, e1, cohort = rng.normal(size=(4, 8)), rng.normal(size=(4, 8)), rng.normal(size=(20, 8))
  got = gap.as_norm(e0, e1, cohort, k=5)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  score = (unit(e0) * unit(e1)).sum(1)
  top0 = np.sort(unit(e0) @ unit(cohort).T, axis=1)[:, -5:]
  top1 = np.sort(unit(e1) @ unit(cohort).T, axis=1)[:, -5:]
  want = 0.5 * ((score - top0.mean(1)) / top0.std(1) + (score - top1.mean(1)) / top1.std(1))
  np.testing.assert_allclose(got, want, rtol=1e-6)
