"""The noise injection and its scoring (label_noise) and the peer's second opinion (peer_flags), on synthetic
embeddings and painted photos: no network runs."""
from __future__ import annotations

import json

import numpy as np

from jaxface import clean
from research.label_noise import label_noise, peer_flags


def test_injected_noise_follows_the_rules_and_is_seeded():
  meta = {f'{p:04d}/{k}.jpg': 0 for p in range(200) for k in range(1 + p % 4)}
  meta.update({f'{p:04d}/0.jpg': 1 for p in range(200, 220)})  # fake-only folders
  plan = label_noise.inject(meta, seed=7)
  assert plan == label_noise.inject(meta, seed=7) and plan != label_noise.inject(meta, seed=8)
  assert len(plan.photos) == len(meta)
  assert sorted(source for source, _ in plan.photos.values()) == sorted(meta)
  targets = {key.split('/')[0] for key in plan.intruders}
  assert len(targets) == round(0.1 * 220) and len(plan.splits) == round(0.02 * 220)
  for target in targets:
    own = [k for k, (source, _) in plan.photos.items() if k.startswith(target + '/') and k not in plan.intruders]
    moved_in = [k for k in plan.intruders if k.startswith(target + '/')]
    assert 1 <= len(moved_in) <= 3 and len(moved_in) < len(own)
    assert all(plan.photos[k][0].split('/')[0] == plan.intruders[k] != target for k in moved_in)
  split_folders = {name for pair in plan.splits for name in pair}
  assert not split_folders & targets


def test_cleaner_finds_injected_noise_in_synthetic_embeddings():
  """Issue 22, item 3, on synthetic data: precision and recall of flagged photos and merge candidates."""
  keys, embeddings, is_fake = label_noise.synthetic_embeddings(folders=500, photos=6, seed=0)
  plan = label_noise.inject({key: 0 for key in keys}, seed=0)
  noisy_keys, noisy_embeddings, noisy_fake = label_noise.noisy_view(keys, embeddings, is_fake, plan)
  result = clean.analyse(noisy_keys, noisy_embeddings, noisy_fake, duplicates=False)
  photos = label_noise.score_photos(set(result.exclude), set(plan.intruders), set())
  merges = label_noise.score_merges({tuple(sorted(m[:2])) for m in result.merges},
                                    {tuple(sorted(s)) for s in plan.splits}, set(), {})
  assert photos['truth'] >= 50 and merges['truth'] == 10
  assert photos['precision'] >= 0.95 and photos['recall'] >= 0.95, photos
  assert merges['precision'] >= 0.9 and merges['recall'] >= 0.9, merges


class _PeerByColour:
  """Stands in for dlib: a photo's descriptor is its mean colour, so photos painted alike are one person."""

  def describe(self, rgb):
    return np.full(128, rgb.mean() / 255.0 * 2.0, np.float32) / np.sqrt(128), True


def test_peer_second_opinion_on_flags_and_peer_confirmed_precision(tmp_path):
  from PIL import Image
  people = {'p0': [40, 40, 40, 200], 'p1': [200], 'p2': [205]}  # p0/3.jpg is another person; p1 and p2 one person
  meta = {}
  for person, shades in people.items():
    for k, shade in enumerate(shades):
      path = tmp_path / 'data' / 'train' / 'images' / person / f'{k}.jpg'
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.new('RGB', (32, 32), (shade,) * 3).save(path, quality=95)
      meta[f'{person}/{k}.jpg'] = 0
  (tmp_path / 'data' / 'train' / 'meta.json').write_text(json.dumps(meta))
  report = tmp_path / 'report'
  report.mkdir()
  (report / 'report.csv').write_text(
      'kind,folder,photo,other,score,threshold,detail\n'
      'outlier,p0,p0/3.jpg,,0.01,0.25,does not match the folder\n'
      'outlier,p0,p0/0.jpg,,0.20,0.25,does not match the folder\n'
      'merge,p1,,p2,0.5,0.25,same person in two folders?\n')
  describe = peer_flags.Describer(_PeerByColour(), tmp_path / 'data')
  flagged, merges = peer_flags.read_report(report)
  real_of = {'p0': [f'p0/{k}.jpg' for k in range(4)], 'p1': ['p1/0.jpg'], 'p2': ['p2/0.jpg']}
  photo_rows = peer_flags.judge_photos(describe, flagged, real_of)
  verdict = {(r['photo'], r['flagged']): r['dlib_other_person'] for r in photo_rows}
  assert verdict[('p0/3.jpg', 1)] == 1 and verdict[('p0/0.jpg', 1)] == 0  # the peer backs one flag, not the other
  assert verdict[('p0/1.jpg', 0)] == 0 and verdict[('p0/2.jpg', 0)] == 0
  merge_rows = peer_flags.judge_merges(describe, merges, real_of)
  assert merge_rows[0]['dlib_same_person'] == 1 and merge_rows[0]['photos'] == '1+1'
  summary = peer_flags.summarise(photo_rows, merge_rows, describe.faceless)
  assert summary['flagged_photos_dlib_other_person'] == {'judged': 2, 'yes': 1, 'share': 0.5}

  out = tmp_path / 'peer'
  out.mkdir()
  peer_flags._write(out / 'photos.csv', photo_rows)  # pylint: disable=protected-access
  peer_flags._write(out / 'merges.csv', merge_rows)  # pylint: disable=protected-access
  verdicts = label_noise.read_peer_verdicts(out)
  assert verdicts == {'photos': {'p0/3.jpg'}, 'merges': {('p1', 'p2')}}
  # 4 flags: 2 injected, 2 flagged on the clean copy too, of which the peer confirms 1 -> 3 of 4 count as true.
  scores = label_noise.score_photos({'a', 'b', 'p0/3.jpg', 'p0/0.jpg'}, {'a', 'b'}, {'p0/3.jpg', 'p0/0.jpg'},
                                    confirmed={'p0/3.jpg'})
  assert (scores['precision'], scores['precision_peer_confirmed'], scores['preexisting_peer_confirmed']) == (
      0.5, 0.75, 1)
