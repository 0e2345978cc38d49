"""Label cleaning (jaxface.clean) on synthetic embeddings (its noise measurement: research/label_noise).

Embeddings are made directly (128-d like MobileFaceNet's; a random unit centre per person plus noise: two photos of
one person have cosine about 0.5, of two people about 0), so no network runs; the command line runs on a tiny
synthetic challenge folder with a hand-made embeddings file. The exclude list goes through preprocessing's
reader and the builder's align stage ('none' aligner). Real-data figures come from `research/label_noise`
(its README), not from here: they need the align cache of realfaces-train and 5 minutes of embedding.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest

from jaxface import clean, preprocess
from jaxface.data import challenge


def _people(counts: dict[str, int], seed: int = 0, dim: int = 128
            ) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
  """Keys and embeddings of folders named by `counts` (photos each), with each folder's identity centre."""
  rng = np.random.default_rng(seed)
  centres = {name: rng.standard_normal(dim) for name in counts}
  keys, rows = [], []
  for name, count in counts.items():
    for k in range(count):
      keys.append(f'{name}/{k}.jpg')
      rows.append(_photo(centres[name], rng))
  return keys, np.stack(rows).astype(np.float32), centres


def _photo(centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  centre = centre / np.linalg.norm(centre)
  vector = centre + rng.standard_normal(centre.shape) / np.sqrt(len(centre))
  return vector / np.linalg.norm(vector)


def test_intruders_are_outliers_and_a_second_person_is_a_proposed_split():
  keys, embeddings, centres = _people({'a': 8, 'b': 6, 'c': 5, 'd': 7})
  rng = np.random.default_rng(1)
  # Folder a receives one photo of c; folder d receives three photos of b (a second person, connected).
  keys += ['a/8.jpg', 'd/7.jpg', 'd/8.jpg', 'd/9.jpg']
  embeddings = np.concatenate([embeddings, np.stack([_photo(centres['c'], rng)] +
                                                    [_photo(centres['b'], rng) for _ in range(3)])])
  result = clean.analyse(keys, embeddings, np.zeros(len(keys)), duplicates=False)
  assert result.exclude == ['a/8.jpg', 'd/7.jpg', 'd/8.jpg', 'd/9.jpg']
  kinds = {(f.kind, f.folder, f.photo) for f in result.findings if f.kind in ('outlier', 'split', 'mixed')}
  assert kinds == {('outlier', 'a', 'a/8.jpg'), ('mixed', 'd', ''), ('split', 'd', 'd/7.jpg'),
                   ('split', 'd', 'd/8.jpg'), ('split', 'd', 'd/9.jpg')}
  assert len(result.folder_results['d'].parts) == 1 and len(result.folder_results['d'].core) == 7


def test_fakes_are_never_flagged_and_an_unmatched_pair_is_unresolved():
  keys, embeddings, centres = _people({'a': 5, 'p': 2})
  rng = np.random.default_rng(2)
  # A fake of nobody in folder a, and folder p's two photos made to show two different people.
  keys.append('a/5.jpg')
  embeddings = np.concatenate([embeddings, _photo(rng.standard_normal(128), rng)[None]])
  embeddings[keys.index('p/1.jpg')] = _photo(rng.standard_normal(128), rng)
  is_fake = np.zeros(len(keys))
  is_fake[-1] = 1
  result = clean.analyse(keys, embeddings, is_fake, duplicates=False)
  assert result.exclude == []
  assert [(f.kind, f.folder) for f in result.findings if f.kind != 'merge'] == [('unresolved', 'p')]


def test_a_third_photo_unlike_both_of_a_weak_pair_is_still_found():
  """No edge in the folder (own photos below `edge`), but the closest pair holds and the intruder is flagged."""
  params = clean.CleanParams(edge=0.9, outlier=0.2)
  keys, embeddings, _ = _people({'a': 2})
  rng = np.random.default_rng(3)
  keys.append('a/2.jpg')
  embeddings = np.concatenate([embeddings, _photo(rng.standard_normal(128), rng)[None]])
  result = clean.analyse(keys, embeddings, np.zeros(3), params, duplicates=False)
  assert result.exclude == ['a/2.jpg']


def test_split_folders_are_merge_candidates_and_others_are_not():
  counts = {f'{i:03d}': 6 for i in range(60)}
  keys, embeddings, _ = _people(counts, seed=4)
  # Folder 000 is split: its last three photos move to folder 999.
  keys = [key.replace('000/3', '999/3').replace('000/4', '999/4').replace('000/5', '999/5') for key in keys]
  result = clean.analyse(keys, embeddings, np.zeros(len(keys)), duplicates=False)
  assert [tuple(sorted(m[:2])) for m in result.merges] == [('000', '999')]


def test_near_duplicates_inside_and_across_folders():
  keys, embeddings, _ = _people({'a': 4, 'b': 4})
  keys += ['a/4.jpg', 'b/4.jpg']
  embeddings = np.concatenate([embeddings, embeddings[[0, 1]]])  # a/0 again in a, a/1 again in b
  result = clean.analyse(keys, embeddings, np.zeros(len(keys)))
  found = {(f.kind, f.photo, f.other) for f in result.findings if f.kind.startswith('duplicate')}
  assert found == {('duplicate', 'a/0.jpg', 'a/4.jpg'), ('duplicate_across', 'a/1.jpg', 'b/4.jpg')}


def test_ivf_index_is_exact_when_small_and_close_to_exact_when_large():
  rng = np.random.default_rng(5)
  centres = rng.standard_normal((300, 32))
  vectors = centres[rng.integers(0, 300, 6000)] + 0.5 * rng.standard_normal((6000, 32))
  vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
  exact = np.argsort(-(vectors[:500] @ vectors.T), axis=1)[:, :10]
  small = clean.IVFIndex(vectors, exact_below=10**9)
  assert small.cells == 1
  np.testing.assert_array_equal(np.sort(small.search(vectors[:500], 10)[1], axis=1), np.sort(exact, axis=1))
  index = clean.IVFIndex(vectors, probe=8)
  assert index.cells == 77
  found = index.search(vectors[:500], 10)[1]
  recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
  assert recall >= 0.9, recall






def test_exclude_list_round_trip_and_one_line_errors(tmp_path):
  path = clean.write_exclude(tmp_path, ['a/1.jpg', 'b/2.jpg'], header='made by a test\nsecond line')
  assert challenge.read_exclude(path) == ('a/1.jpg', 'b/2.jpg')
  (tmp_path / 'bad.txt').write_text('a/1.jpg\nnot-a-key\n', encoding='utf-8')
  with pytest.raises(challenge.DataFormatError, match=r'bad.txt: line 2 .*not "<person_id>/<file>"'):
    challenge.read_exclude(tmp_path / 'bad.txt')
  data = tmp_path / 'data'
  challenge.train_images_dir(data).mkdir(parents=True)
  challenge.meta_path(data).write_text('{"a/1.jpg": 0}', encoding='utf-8')
  with pytest.raises(challenge.DataFormatError, match=r'1 keys are not in .*meta.json.*another data folder'):
    challenge.read_exclude(path, data)
  with pytest.raises(challenge.DataFormatError, match='cannot read the exclude list'):
    challenge.read_exclude(tmp_path / 'missing.txt')


def test_command_line_writes_report_exclude_list_and_sheets(synthetic_data_dir, tmp_path):
  meta = challenge.read_meta(synthetic_data_dir)
  keys = sorted(meta)
  rng = np.random.default_rng(0)
  people = sorted({key.split('/')[0] for key in keys})
  centres = {person: rng.standard_normal(128) for person in people}
  embeddings = np.stack([_photo(centres[key.split('/')[0]], rng) for key in keys])
  intruder = next(key for key in keys if key.startswith(people[0] + '/') and not meta[key])
  embeddings[keys.index(intruder)] = _photo(centres[people[1]], rng)
  npz = tmp_path / 'given.npz'
  clean.save_embeddings(npz, keys, embeddings, [meta[key] for key in keys], [], {})
  out = tmp_path / 'report'
  assert clean.main([str(synthetic_data_dir), '--embeddings', str(npz), '--out', str(out), '--no-progress']) == 0
  assert challenge.read_exclude(out / clean.EXCLUDE_NAME, synthetic_data_dir) == (intruder,)
  with (out / clean.REPORT_NAME).open(encoding='utf-8') as handle:
    rows = list(csv.DictReader(handle))
  assert [(row['kind'], row['photo']) for row in rows] == [('outlier', intruder)]
  assert float(rows[0]['score']) < float(rows[0]['threshold']) == clean.CleanParams().outlier
  assert [path.name for path in (out / clean.SHEETS_DIR).iterdir()] == [f'outliers_{people[0]}.png']


def test_command_line_errors_are_one_line(tmp_path, capsys):
  assert clean.main([str(tmp_path / 'nowhere'), '--checkpoint', 'x', '--out', str(tmp_path / 'o')]) == 2
  assert capsys.readouterr().err.strip().count('\n') == 0
  (tmp_path / 'bad.npz').write_bytes(b'not a zip')
  challenge.train_images_dir(tmp_path / 'd').mkdir(parents=True)
  challenge.meta_path(tmp_path / 'd').write_text('{}', encoding='utf-8')
  assert clean.main([str(tmp_path / 'd'), '--embeddings', str(tmp_path / 'bad.npz'), '--out', str(tmp_path / 'o')]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'bad.npz: cannot read embeddings' in err and err.strip().count('\n') == 0


def test_preprocess_leaves_excluded_photos_out(synthetic_data_dir, tmp_path):
  from jaxface.data import builder  # pylint: disable=import-outside-toplevel
  images = challenge.list_train_images(synthetic_data_dir)
  dropped = (images[0].rel_path, images[7].rel_path)
  options = builder.BuildOptions(aligner='none', progress=False, exclude=dropped)
  aligned = builder.align_challenge(synthetic_data_dir, options, builder.make_aligner(options), tmp_path / 'cache')
  assert [image.rel_path for image in aligned.images] == [image.rel_path for image in images
                                                          if image.rel_path not in dropped]
  assert not {image.path for image in images if image.rel_path in dropped} & set(aligned.statuses)


def test_preprocess_refuses_an_exclude_list_of_another_folder_in_one_line(synthetic_data_dir, tmp_path, capsys):
  (tmp_path / 'exclude.txt').write_text('# from elsewhere\n99999999/0.jpg\n', encoding='utf-8')
  code = preprocess.main(['--data-dir', str(synthetic_data_dir), '--out', str(tmp_path / 'out'), '--aligner', 'none',
                          '--exclude', str(tmp_path / 'exclude.txt'), '--no-progress'])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith('error: ') and 'exclude.txt: 1 keys are not in' in err
  assert err.strip().count('\n') == 0 and not (tmp_path / 'out').exists()






