"""Tests for jaxface.data.synthetic: layout, determinism, fake share, pair kinds, disjoint test people, hardness for
untrained measures, and generator traces that survive JPEG."""
from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_curve

from jaxface.data import challenge, check, render, synthetic


def _challenge_eer(labels: np.ndarray, scores: np.ndarray) -> float:
  """The challenge's EER, written out here so this test does not depend on jaxface.metrics."""
  fpr, tpr, thresholds = roc_curve(labels, scores)
  thresholds[0] = max(thresholds[1:]) + 1e-3
  fnr = 1 - tpr
  return float(fnr[np.nanargmin(np.abs(fnr - fpr))])


def _files(root: pathlib.Path) -> dict[str, bytes]:
  return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob('*')) if path.is_file()}


def test_layout_and_checker(synthetic_data_dir, synthetic_settings):
  report = check.check(synthetic_data_dir)
  assert report.problems == []
  people = synthetic_settings['people']
  images = challenge.list_train_images(synthetic_data_dir)
  assert len(images) == people * synthetic_settings['photos_per_person']
  assert sorted({image.person_id for image in images}) == [f'{i:08d}' for i in range(people)]
  rgb = challenge.load_rgb(images[0].path)
  assert rgb.shape == (synthetic_settings['size'], synthetic_settings['size'], 3)
  assert rgb.std() > 20  # a picture, not a flat field
  pairs = challenge.list_test_pairs(synthetic_data_dir)
  assert [pair.pair_id for pair in pairs] == [f'{i:08d}' for i in range(synthetic_settings['test_pairs'])]


def test_fake_fraction_and_every_person_keeps_real_photos(synthetic_data_dir, synthetic_settings, tmp_path):
  meta = challenge.read_meta(synthetic_data_dir)
  assert abs(np.mean(list(meta.values())) - synthetic_settings['fake_fraction']) < 0.01
  summary = synthetic.generate(tmp_path / 'more_fakes', people=10, photos_per_person=5, fake_fraction=0.3,
                               test_pairs=0, size=32)
  meta = challenge.read_meta(tmp_path / 'more_fakes')
  assert summary['fake_images'] == sum(meta.values()) == 15
  for person in range(10):
    assert sum(1 - meta[f'{person:08d}/{k}.jpg'] for k in range(5)) >= 2
  assert not (tmp_path / 'more_fakes' / 'test_public').exists()


def test_pairs_of_every_kind_with_consistent_labels(synthetic_data_dir, synthetic_settings):
  labels = challenge.read_labels(challenge.default_labels_path(synthetic_data_dir))
  record = json.loads((synthetic_data_dir / 'synthetic.json').read_text())
  kinds = [label.kind for label in labels.values()]
  for kind in synthetic.PAIR_KINDS:
    assert kinds.count(kind) == synthetic_settings['test_pairs'] // 4
  for pair_id, label in labels.items():
    info = record['test_pairs'][pair_id]
    assert label.label == int(label.kind == 'same') and info['kind'] == label.kind
    same_person = info['identity0'] == info['identity1']
    assert same_person == (label.kind in ('same', 'own_fake'))
    assert info['is_fake0'] + info['is_fake1'] == int(label.kind in ('own_fake', 'other_fake'))
    for side in '01':  # fakes carry traces, real photos none
      assert bool(info[f'traces{side}']) == bool(info[f'is_fake{side}'])


def test_test_people_are_disjoint_from_training_people(synthetic_data_dir, synthetic_settings):
  record = json.loads((synthetic_data_dir / 'synthetic.json').read_text())
  train = set(record['train_identities'].values())
  test = {info[f'identity{side}'] for info in record['test_pairs'].values() for side in '01'}
  assert len(train) == synthetic_settings['people'] and len(test) >= 2
  assert not train & test
  # Distinct identities really are different people.
  seed = synthetic_settings['seed']
  for identity in test:
    test_traits = synthetic.person_traits(seed, identity)
    for other in train:
      assert test_traits['eye_dx'] != synthetic.person_traits(seed, other)['eye_dx']


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
  settings = dict(people=3, photos_per_person=3, test_pairs=8, test_people=3, fake_fraction=0.3, size=64)
  synthetic.generate(tmp_path / 'a', seed=5, **settings)
  synthetic.generate(tmp_path / 'b', seed=5, workers=2, **settings)
  synthetic.generate(tmp_path / 'c', seed=6, **settings)
  a, b, c = (_files(tmp_path / name) for name in 'abc')
  assert len(a) == 3 * 3 + 2 * 8 + 3  # photos, pair photos, meta.json, labels.csv, synthetic.json
  assert a == b
  assert a.keys() == c.keys()
  photos = [name for name in a if name.endswith('.jpg')]
  assert sum(a[name] != c[name] for name in photos) == len(photos)


def test_refuses_a_non_empty_folder_without_overwrite(tmp_path):
  synthetic.generate(tmp_path / 'd', people=2, photos_per_person=2, test_pairs=0, size=32)
  with pytest.raises(ValueError, match='not empty'):
    synthetic.generate(tmp_path / 'd', people=1, photos_per_person=2, test_pairs=0, size=32)
  synthetic.generate(tmp_path / 'd', people=1, photos_per_person=2, test_pairs=0, size=32, overwrite=True)
  assert check.check(tmp_path / 'd').problems == []
  assert synthetic.main(['--out', str(tmp_path / 'd'), '--people', '1', '--size', '33']) == 2


@pytest.fixture(scope='module')
def hard_data_dir(tmp_path_factory) -> pathlib.Path:
  """150 training people x 6 photos and 160 test pairs of 40 other people (about 6 s)."""
  root = tmp_path_factory.mktemp('hard') / 'data'
  synthetic.generate(root, people=150, photos_per_person=6, test_pairs=160, test_people=40, seed=1)
  return root


def _small_grey(path: pathlib.Path) -> np.ndarray:
  """(32 * 32 * 3,) float64: downscaled pixels, mean-centred and scaled to unit variance."""
  pixels = np.asarray(Image.fromarray(challenge.load_rgb(path)).resize((32, 32), Image.BILINEAR), np.float64)
  pixels -= pixels.mean()
  return (pixels / (pixels.std() + 1e-6)).ravel()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _colour_histogram(photo: np.ndarray) -> np.ndarray:
  bins = (photo // 32).astype(np.int64)
  counts = np.bincount((bins[..., 0] * 64 + bins[..., 1] * 8 + bins[..., 2]).ravel(), minlength=512)
  return counts / counts.sum()


def _test_pairs(root: pathlib.Path) -> tuple[list[challenge.TestPair], np.ndarray, np.ndarray]:
  labels = challenge.read_labels(challenge.default_labels_path(root))
  pairs = challenge.list_test_pairs(root)
  return (pairs, np.array([labels[pair.pair_id].label for pair in pairs]),
          np.array([labels[pair.pair_id].kind for pair in pairs]))


def test_untrained_measures_score_near_chance(hard_data_dir):
  """Cosine of raw downscaled pixels and colour-histogram overlap cannot tell the pairs apart."""
  pairs, y, _ = _test_pairs(hard_data_dir)
  assert y.sum() == 40
  pixel_scores = [_cosine(_small_grey(pair.path0), _small_grey(pair.path1)) for pair in pairs]
  histogram_scores = [np.minimum(_colour_histogram(challenge.load_rgb(pair.path0)),
                                 _colour_histogram(challenge.load_rgb(pair.path1))).sum() for pair in pairs]
  pixel_eer = _challenge_eer(y, np.array(pixel_scores))
  histogram_eer = _challenge_eer(y, np.array(histogram_scores))
  assert pixel_eer > 0.3, pixel_eer
  assert histogram_eer > 0.3, histogram_eer


def test_identity_is_learnable(hard_data_dir):
  """A linear model fitted on the training people (PCA + LDA on pixels) separates same from different people far
  better than raw pixels, yet still accepts fakes of the same person: identity takes learning, fakes take more."""
  from sklearn.decomposition import PCA
  from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
  images = [image for image in challenge.list_train_images(hard_data_dir) if not image.is_fake]
  features = np.stack([_small_grey(image.path) for image in images])
  pca = PCA(60, random_state=0).fit(features)
  lda = LinearDiscriminantAnalysis().fit(pca.transform(features), [image.person_id for image in images])
  pairs, y, kinds = _test_pairs(hard_data_dir)
  raw, learned = [], []
  for pair in pairs:
    both = np.stack([_small_grey(pair.path0), _small_grey(pair.path1)])
    raw.append(_cosine(*both))
    learned.append(_cosine(*lda.transform(pca.transform(both))))
  raw, learned = np.array(raw), np.array(learned)
  people = (kinds == 'same') | (kinds == 'different')
  raw_eer, learned_eer = _challenge_eer(y[people], raw[people]), _challenge_eer(y[people], learned[people])
  assert learned_eer < 0.25 and learned_eer < 0.6 * raw_eer, (learned_eer, raw_eer)
  own_fake = (kinds == 'same') | (kinds == 'own_fake')
  assert _challenge_eer(y[own_fake], learned[own_fake]) > 0.3  # identity alone does not catch own fakes


def _jpeg_round_trip(rgb: np.ndarray, quality: int = 75) -> np.ndarray:
  buffer = io.BytesIO(synthetic.encode_jpeg(rgb, quality))
  return np.asarray(Image.open(buffer).convert('RGB'), np.float64)


def _render_pairs(kind: str, count: int = 8) -> tuple[np.ndarray, np.ndarray, list[dict]]:
  """The same photos rendered real and with one trace, both through JPEG at quality 75: (N, S, S, 3) float64 each."""
  traits = [synthetic.person_traits(0, 1000 + i) for i in range(count)]
  photos = [synthetic.photo_settings(np.random.default_rng([7, i]), is_fake=True) for i in range(count)]
  real = [dict(photo, traces=np.zeros(4)) for photo in photos]
  fake = [dict(photo, traces=np.eye(4)[synthetic.TRACE_KINDS.index(kind)]) for photo in photos]
  real_rgb = np.stack([_jpeg_round_trip(rgb) for rgb in render.render_faces(traits, real)])
  fake_rgb = np.stack([_jpeg_round_trip(rgb) for rgb in render.render_faces(traits, fake)])
  return real_rgb, fake_rgb, fake


def _high_pass(grey: np.ndarray) -> np.ndarray:
  """(N, S, S) minus its 3x3 box mean."""
  padded = np.pad(grey, ((0, 0), (1, 1), (1, 1)), mode='edge')
  size = grey.shape[1]
  box = sum(padded[:, i:i + size, j:j + size] for i in range(3) for j in range(3)) / 9
  return grey - box


def test_spectral_trace_survives_jpeg():
  real, fake, photos = _render_pairs('spectral')
  size = real.shape[1]
  rows, columns = np.mgrid[:size, :size]
  for index, photo in enumerate(photos):
    angle, period = photo['spectral_angle'], photo['spectral_period']
    wave = (columns * np.cos(angle) + rows * np.sin(angle)) / period
    pattern = np.cos(2 * np.pi * wave + photo['spectral_phase'])
    difference = (fake[index] - real[index]).mean(-1)  # grey levels
    surviving = (difference * pattern).sum() / (pattern ** 2).sum()  # least-squares amplitude of the pattern
    assert surviving > 0.5 * photo['spectral_amp'] * 255, (index, surviving, photo['spectral_amp'] * 255)


def test_checker_trace_survives_jpeg():
  real, fake, photos = _render_pairs('checker')
  size = real.shape[1]
  for index, photo in enumerate(photos):
    pattern = np.tile(photo['checker'], (size // 2, size // 2))
    difference = (fake[index] - real[index]).mean(-1) / 255  # also holds the detail lost at half resolution
    surviving = (difference * pattern).sum() / (pattern ** 2).sum()  # share of the fingerprint left after JPEG
    assert surviving > 0.5, (index, surviving)


def test_smooth_trace_quiets_the_face_and_seam_shifts_its_colour():
  real, fake, _ = _render_pairs('smooth')
  centre = slice(45, 67)  # the middle of the face in every photo
  real_texture = _high_pass(real.mean(-1))[:, centre, centre].std(axis=(1, 2))
  fake_texture = _high_pass(fake.mean(-1))[:, centre, centre].std(axis=(1, 2))
  assert np.all(fake_texture < 0.75 * real_texture), (fake_texture, real_texture)
  real, fake, photos = _render_pairs('seam')
  shift = np.abs(fake[:, centre, centre] - real[:, centre, centre]).mean(axis=(1, 2, 3))
  assert np.all(shift > 4), shift
