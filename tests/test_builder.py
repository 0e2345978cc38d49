"""The jaxface_faces TFDS builder on tiny synthetic challenge data (aligner 'none', 64x64 photos).

A dataset is written once per module and read back with prepared.open_prepared(...).as_dataset: split counts, labels,
held-out people, test labels, metadata; and by plain TFDS in a Python that cannot import jaxface. A marker aligner
(the 'none' aligner that calls uniform photos faceless and magenta-cornered photos low-score) checks how faceless and
low-score photos are counted, skipped or kept. An old-layout dataset is refused with one line, then rewritten.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxface.align import base, template
from jaxface.config import ConfigError
from jaxface.data import builder, challenge, plan, prepared, synthetic

import tensorflow_datasets as tfds  # noqa: E402  (after jaxface.data.builder hid the GPUs)


def _options(**kw) -> builder.BuildOptions:
  return builder.BuildOptions(**{'aligner': 'none', 'batch_size': 8, 'val_fraction': 0.25, 'progress': False, **kw})


def _read(out: pathlib.Path, split: str) -> list[dict]:
  return list(tfds.as_numpy(prepared.open_prepared(out).as_dataset(split)))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp('challenge')
  synthetic.generate(root, people=8, photos_per_person=4, test_pairs=12, size=64)
  return root


@pytest.fixture(scope='module')
def written(data_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp('tfds')
  report = builder.prepare(data_dir, out, _options())
  return out, report


def test_train_split_holds_every_photo_of_the_train_people(data_dir, written):
  out, report = written
  examples = _read(out, 'train')
  dataset = prepared.open_prepared(out)
  val_people = set(dataset.metadata['val_people'])
  images = challenge.list_train_images(data_dir)
  expected = {image.rel_path: image for image in images if image.person_id not in val_people}
  assert len(examples) == len(expected) == report['splits']['train'] > 0
  classes = sorted({image.person_id for image in expected.values()})
  assert dataset.num_classes == len(classes) == 6 and dataset.class_names == classes
  assert dataset.num_train_examples == len(examples)
  seen = set()
  for example in examples:
    source = example['source'].decode()
    rel_path = source.removeprefix('train/images/')
    image = expected[rel_path]
    seen.add(rel_path)
    assert example['person_id'].decode() == image.person_id
    assert example['label'] == classes.index(image.person_id)
    assert example['is_fake'] == image.is_fake
    assert example['image'].shape == (112, 112, 3) and example['image'].dtype == np.uint8
    assert example['face_score'] == pytest.approx(1.0)
    np.testing.assert_allclose(example['landmarks'], template.ARCFACE_TEMPLATE, atol=1e-4)
  assert seen == set(expected)
  assert sorted(examples[0]) == sorted(prepared.TRAIN_KEYS)
  # The stored face is the photo's centre crop (JPEG q95 of a 64->112 upscale stays within a few grey levels).
  photo = challenge.load_rgb(data_dir / examples[0]['source'].decode())
  crop, _ = template.centre_crop_face(photo)
  assert np.abs(examples[0]['image'].astype(int) - crop.astype(int)).mean() < 4


def test_val_pairs_come_only_from_held_out_people(data_dir, written):
  out, report = written
  meta = challenge.read_meta(data_dir)
  val_people = set(prepared.open_prepared(out).metadata['val_people'])
  train_people = {example['person_id'].decode() for example in _read(out, 'train')}
  assert len(val_people) == 2 and not val_people & train_people
  pairs = _read(out, 'val')
  assert len(pairs) == report['splits']['val'] == sum(report['val_kinds'].values()) > 0
  kinds = collections.Counter()
  for pair in pairs:
    rel0, rel1 = (pair[k].decode().removeprefix('train/images/') for k in ('source0', 'source1'))
    person0, person1 = rel0.split('/')[0], rel1.split('/')[0]
    assert {person0, person1} <= val_people
    assert (pair['is_fake0'], pair['is_fake1']) == (meta[rel0], meta[rel1])
    kind = pair['kind'].decode()
    kinds[kind] += 1
    assert pair['label'] == (1 if kind == 'same' else 0)
    assert pair['is_fake0'] == 0  # the first photo of a pair is always real
    assert (person0 == person1) == (kind in ('same', 'own_fake'))
    assert pair['is_fake1'] == (1 if kind in ('own_fake', 'other_fake') else 0)
    assert rel0 != rel1
  assert kinds['same'] > 0 and kinds['different'] > 0
  assert dict(kinds) == report['val_kinds']
  # Deterministic: the same seed gives the same pairs from the same photos.
  held_out = [image for image in challenge.list_train_images(data_dir) if image.person_id in val_people]
  again = plan.make_val_pairs(held_out, seed=0, pairs_per_person=2)
  assert sorted(p.pair_id for p in again) == sorted(p['pair_id'].decode() for p in pairs)
  assert {p.pair_id: p.kind for p in again} == {p['pair_id'].decode(): p['kind'].decode() for p in pairs}


def test_test_pairs_match_labels_csv(data_dir, written):
  out, report = written
  labels = challenge.read_labels(data_dir / 'labels.csv')
  pairs = _read(out, 'test')
  assert len(pairs) == len(labels) == len(challenge.list_test_pairs(data_dir)) == 12
  for pair in pairs:
    pair_id = pair['pair_id'].decode()
    assert pair['label'] == labels[pair_id].label
    assert pair['kind'].decode() == labels[pair_id].kind
    assert (pair['is_fake0'], pair['is_fake1']) == (-1, -1)
    assert pair['source0'].decode() == f'test_public/{pair_id}/0.jpg'
    assert pair['image1'].shape == (112, 112, 3)
  assert sorted(pairs[0]) == sorted(prepared.PAIR_KEYS)
  assert report['counts'] == {'aligned': 32 + 24, 'faceless': 0, 'low_score': 0, 'unreadable': 0, 'images': 56,
                              'skipped': 0, 'skipped_test_pairs': 0}


def test_metadata_records_aligner_and_options(written):
  out, report = written
  dataset = prepared.open_prepared(out)
  metadata = dataset.metadata
  assert dataset.aligner['name'] == 'none' and dataset.aligner['max_photo_side'] == 2048
  assert dataset.builders['pairs'].info.metadata == metadata  # both configs carry it
  assert metadata['aligner']['settings'] == base.make_aligner('none').settings()
  assert metadata['options']['val_fraction'] == 0.25 and metadata['options']['batch_size'] == 8
  assert metadata['options']['cache_dir'] == str(out / '_align_cache')
  assert len(metadata['class_names']) == metadata['num_classes'] == 6
  on_disk = json.loads((out / builder.REPORT_NAME).read_text())
  assert on_disk['splits'] == report['splits'] == dataset.splits


def test_split_people_is_seeded_and_keeps_same_pair_people_apart():
  images = [challenge.TrainImage(f'{p:08d}', f'{p:08d}/{k}.jpg', pathlib.Path(f'/x/{p}/{k}.jpg'), int(k == 9))
            for p in range(40) for k in range(10 if p < 20 else 1)]
  train, held = plan.split_people(images, 0.1, seed=3)
  assert plan.split_people(images, 0.1, seed=3) == (train, held)
  assert plan.split_people(images, 0.1, seed=4) != (train, held)
  assert len(held) == 4 and sum(int(p) < 20 for p in held) == 2  # 10% of each group: with and without same pairs
  assert sorted(train + held) == sorted({image.person_id for image in images}) and not set(train) & set(held)
  assert plan.split_people(images, 0.0, seed=3) == (sorted({i.person_id for i in images}), [])


def test_test_pairs_without_labels_are_unknown(data_dir):
  pairs = plan.make_test_pairs(data_dir, None)
  assert len(pairs) == 12
  assert {(p.label, p.kind, p.is_fake0, p.is_fake1) for p in pairs} == {(-1, '', -1, -1)}


class MarkerAligner(base.NoneAligner):
  """The 'none' aligner, except uniform photos have no face and photos with a magenta top-left corner score 0.2."""
  name = 'test-marker'

  def _align_batch(self, photos):
    result = super()._align_batch(photos)
    found = np.array([photo.std() > 1.0 for photo in photos])
    magenta = np.array([np.abs(photo[:8, :8].reshape(-1, 3).mean(0) - (255, 0, 255)).max() < 40 for photo in photos])
    result.found = found
    result.scores = np.where(found, np.where(magenta, 0.2, 0.9), 0.0).astype(np.float32)
    return result


def _marker_data(root: pathlib.Path) -> dict[str, str]:
  """4 people x 3 photos, person 3's photos: one uniform grey (faceless), one magenta-cornered (low score)."""
  rng = np.random.default_rng(0)
  meta, kinds = {}, {}
  for person in range(4):
    folder = root / 'train' / 'images' / f'{person:08d}'
    folder.mkdir(parents=True)
    for k in range(3):
      photo = rng.integers(0, 256, (80, 70, 3), dtype=np.uint8)
      rel = f'{person:08d}/{k}.jpg'
      kinds[rel] = 'aligned'
      if person == 3 and k == 0:
        photo[:] = 128
        kinds[rel] = 'faceless'
      if person == 3 and k == 1:
        photo[:16, :16] = (255, 0, 255)
        kinds[rel] = 'low_score'
      Image.fromarray(photo).save(folder / f'{k}.jpg', quality=95)
      meta[rel] = 0
  (root / 'train' / 'meta.json').write_text(json.dumps(meta))
  return kinds


def test_faceless_and_low_score_are_counted_then_skipped_or_kept(tmp_path):
  kinds = _marker_data(tmp_path / 'data')
  options = _options(val_fraction=0.0, min_score=0.5, cache_dir=str(tmp_path / 'cache'))
  report = builder.prepare(tmp_path / 'data', tmp_path / 'skip', options, aligner=MarkerAligner())
  expected = collections.Counter(kinds.values())
  assert {k: report['counts'][k] for k in expected} == dict(expected) == {'aligned': 10, 'faceless': 1,
                                                                         'low_score': 1}
  assert report['counts']['skipped'] == 2 and report['splits'] == {'train': 10}
  assert [pathlib.Path(p).name for p in report['faceless']] == ['0.jpg']
  assert report['low_score'][0]['score'] == pytest.approx(0.2)
  sources = {e['source'].decode() for e in _read(tmp_path / 'skip', 'train')}
  assert 'train/images/00000003/2.jpg' in sources and 'train/images/00000003/0.jpg' not in sources

  # Kept on request; the cache (shared here) already holds every face, so nothing is aligned again.
  kept = builder.prepare(tmp_path / 'data', tmp_path / 'keep', dataclasses.replace(options, keep_faceless=True),
                         aligner=MarkerAligner())
  assert kept['splits'] == {'train': 12} and kept['counts']['skipped'] == 0
  assert (kept['aligned_now'], kept['from_cache']) == (0, 12)
  scores = {e['source'].decode(): float(e['face_score']) for e in _read(tmp_path / 'keep', 'train')}
  assert scores['train/images/00000003/0.jpg'] == 0.0
  assert scores['train/images/00000003/1.jpg'] == pytest.approx(0.2)



def test_plain_tfds_download_and_prepare_with_manual_dir(tmp_path):
  _marker_data(tmp_path / 'data')
  out = tmp_path / 'tfds'
  for config in ('faces', 'pairs'):  # the second config takes every face from the cache the first one filled
    tfds_builder = tfds.builder(f'{builder.NAME}/{config}', data_dir=str(out), options=_options(val_fraction=0.0))
    tfds_builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / 'data'), compute_stats=tfds.download.ComputeStatsMode.SKIP))
    assert tfds_builder.align_report['counts']['aligned'] == 12  # the 'none' aligner sees a face in every photo
  assert tfds_builder.align_report['from_cache'] == 12
  assert len(list((out / builder.DEFAULT_CACHE_NAME).glob('none-*/*/*.npz'))) == 12
  assert len(_read(out, 'train')) == 12 and prepared.open_prepared(out).num_classes == 4
  assert prepared.open_prepared(out).splits == {'train': 12}


# Run by a Python that cannot import jaxface: -I -S (no site, so no editable-install hook), a cwd outside the repo,
# and only the site-packages folder on sys.path.
_PLAIN_TFDS_READER = """
import sys
sys.path += sys.argv[2:]
try:
  import jaxface
except ImportError:
  pass
else:
  raise SystemExit('jaxface is importable here: ' + jaxface.__file__)
import tensorflow_datasets as tfds
out = sys.argv[1]
counts = {}
for config, splits in (('faces', ('train',)), ('pairs', ('val', 'test'))):
  directory = tfds.builder_from_directory(f'{out}/jaxface_faces/{config}/2.0.0')
  assert directory.info.metadata['num_classes'] == 6, directory.info.metadata
  for split in splits:
    examples = list(tfds.as_numpy(directory.as_dataset(split=split)))
    loaded = list(tfds.as_numpy(tfds.load(f'jaxface_faces/{config}', data_dir=out, split=split)))
    assert len(examples) == len(loaded) > 0, split
    image = examples[0]['image' if split == 'train' else 'image1']
    assert image.shape == (112, 112, 3) and image.std() > 0, split
    counts[split] = len(examples)
assert 'jaxface' not in sys.modules
print(counts)
"""


@pytest.mark.slow  # an isolated interpreter importing TensorFlow
def test_plain_tfds_reads_every_split_without_jaxface(written, tmp_path):
  out, report = written
  site_packages = str(pathlib.Path(tfds.__file__).parents[1])
  result = subprocess.run([sys.executable, '-I', '-S', '-c', _PLAIN_TFDS_READER, str(out), site_packages],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={'PATH': os.environ.get('PATH', ''), 'TF_CPP_MIN_LOG_LEVEL': '2'})
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == str(report['splits'])


def test_a_dataset_of_the_old_layout_is_refused_then_rewritten(data_dir, tmp_path):
  out = tmp_path / 'tfds'
  old = out / builder.NAME / '1.0.0'
  old.mkdir(parents=True)
  (old / 'dataset_info.json').write_text('{"name": "jaxface_faces", "version": "1.0.0"}')
  with pytest.raises(ConfigError) as info:
    prepared.open_prepared(out)
  message = str(info.value)
  assert message.startswith(f'{old}: ') and 'older layout' in message and '\n' not in message
  assert 'rerun scripts/preprocess.py' in message and '--overwrite' in message
  assert not prepared.is_current(out) and prepared.old_layout_dirs(out) == [old]
  with pytest.raises(builder.PreprocessError, match='already exists'):
    builder.prepare(data_dir, out, _options())
  builder.prepare(data_dir, out, _options(), overwrite=True)
  assert not old.exists() and prepared.is_current(out) and prepared.open_prepared(out).num_classes == 6
  with pytest.raises(ConfigError, match='no prepared jaxface_faces dataset here'):
    prepared.open_prepared(tmp_path / 'empty')


def test_a_copied_folder_finds_its_faces_and_a_legacy_cache_is_rekeyed(data_dir, written, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  from jaxface.align import cache as cache_lib  # pylint: disable=import-outside-toplevel
  out, report = written
  photos = report['counts']['images']
  copy = tmp_path / 'copy'
  shutil.copytree(data_dir, copy, copy_function=shutil.copy)  # new modification times, like a fresh copy
  again = builder.prepare(copy, tmp_path / 'again', _options(cache_dir=str(out / builder.DEFAULT_CACHE_NAME)))
  assert (again['aligned_now'], again['from_cache']) == (0, photos)

  # A cache written before content keys (entries under path-and-mtime keys) whose photos were copied again since.
  [entries] = list((out / builder.DEFAULT_CACHE_NAME).glob('none-*'))
  legacy = tmp_path / 'legacy' / entries.name
  shutil.copytree(entries, legacy)
  for entry in legacy.glob('*/*.npz'):
    entry.unlink()
  for photo in sorted(copy.rglob('*.jpg')):
    key = cache_lib.legacy_source_key(photo)
    (legacy / key[:2]).mkdir(exist_ok=True)
    shutil.copy(entries / cache_lib.source_key(photo)[:2] / f'{cache_lib.source_key(photo)}.npz',
                legacy / key[:2] / f'{key}.npz')
    os.utime(photo, ns=(10**18, 10**18))  # the old keys no longer match
  import rekey_align_cache as rekey  # pylint: disable=import-outside-toplevel  (scripts/, on sys.path: conftest.py)
  counts = rekey.rekey(out, copy, tmp_path / 'rekeyed', tmp_path / 'legacy')
  assert counts['matched'] == counts['old_entries'] > 0 and counts['photo_missing'] == 0
  third = builder.prepare(copy, tmp_path / 'third', _options(cache_dir=str(tmp_path / 'rekeyed')))
  assert (third['aligned_now'], third['from_cache']) == (0, photos)
