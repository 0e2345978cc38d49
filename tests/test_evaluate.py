"""Evaluation: metrics of scored pairs, and the whole run on a small challenge folder and on TFDS-style pairs."""
from __future__ import annotations

import csv
import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxface import checkpoints, evaluate, metrics, scoring
from jaxface.inference import PairScores, build_inference_model
from jaxface.testing import random_variables
from jaxface.verify import FaceVerifier

STRENGTH, THRESHOLD = 1.5, 0.2


# ----------------------------------------------------------------------------------------------------------------------
# Metrics of scored pairs (no model).


def _synthetic_scores(seed=0, n=300) -> PairScores:
  """Same-person pairs, different people and own fakes (high cosine, one photo likely fake), as a model gives them."""
  rng = np.random.default_rng(seed)
  kinds = np.array(['same'] * n + ['different'] * n + ['own_fake'] * n, dtype=object)
  labels = (kinds == 'same').astype(np.int64)
  cosine = np.clip(np.concatenate([rng.normal(0.6, 0.12, n), rng.normal(0.1, 0.12, n), rng.normal(0.65, 0.12, n)]),
                   -1, 1)
  p_fake0 = rng.beta(1.5, 12, 3 * n)
  p_fake1 = np.concatenate([rng.beta(1.5, 12, 2 * n), rng.beta(8, 1.5, n)])
  is_fake1 = np.concatenate([np.zeros(2 * n, np.int64), np.ones(n, np.int64)])  # known, as in the val split
  return PairScores(
      pair_ids=np.array([f'{i:08d}' for i in range(3 * n)], dtype=object), cosine=cosine, p_fake0=p_fake0,
      p_fake1=p_fake1, labels=labels, kinds=kinds, is_fake0=np.zeros(3 * n, np.int64), is_fake1=is_fake1,
      face_found0=np.ones(3 * n, bool), face_found1=np.ones(3 * n, bool))


def test_pair_metrics_on_own_fakes():
  scores = _synthetic_scores()
  strength, _ = metrics.calibrate_strength(scores.cosine, scores.p_fake0, scores.p_fake1, scores.labels)
  result = metrics.pair_metrics(scores, strength, threshold=0.3)
  fused, cosine = result['fused'], result['cosine']
  assert fused['eer'] < 0.06 and cosine['eer'] > 0.3  # the cosine is fooled by own fakes, the fused score is not
  assert fused['eer'] == metrics.challenge_eer(scores.labels, scores.fused(strength))
  assert set(fused['eer_by_kind']) == {'different', 'own_fake'}
  assert cosine['eer_by_kind']['own_fake'] > 0.5 > 0.05 > cosine['eer_by_kind']['different']
  assert fused['tar_at_far_0.01'] >= fused['tar_at_far_0.001']
  assert result['oracle']['fuse_strength'] == strength
  assert result['pairs_by_kind'] == {'different': 300, 'own_fake': 300, 'same': 300}
  accuracy = np.mean((scores.fused(strength) >= 0.3) == (scores.labels == 1))
  assert fused['accuracy_at_stored_threshold'] == pytest.approx(accuracy)
  # Per photo: 1500 real photos, 300 fakes (all in slot 1 of own-fake pairs); per pair: 600 clean, 300 with a fake.
  image = result['fake_detection_image']
  assert (image['num_real'], image['num_fake']) == (1500, 300) and image['auc'] > 0.95
  assert (result['fake_detection_pair']['num_real'], result['fake_detection_pair']['num_fake']) == (600, 300)
  table = evaluate.format_table(result)
  assert 'EER same vs own_fake' in table and f'{fused["eer"]:.4f}' in table


def test_pair_metrics_without_labels():
  scores = _synthetic_scores(n=20)
  scores.labels[:] = -1
  scores.kinds[:] = ''
  result = metrics.pair_metrics(scores, 1.0)
  assert 'fused' not in result and result['labelled_pairs'] == 0
  assert result['fake_detection_pair'] == {}


# ----------------------------------------------------------------------------------------------------------------------
# The whole run on a tiny model.


def _config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      arch='small_cnn', width=0.25, input_size=56, embedding_dim=64, dropout=0.0, fake_head='features',
      dtype='float32', bn_axis_name='batch'))
  config.data = ml_collections.ConfigDict(dict(aligner='none', aligner_path='', tfds_dir=''))
  return config


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A training workdir with a best checkpoint of a tiny random model."""
  config = _config()
  path = tmp_path_factory.mktemp('run')
  checkpoints.save_config(path, config)
  manager = checkpoints.best_manager(path)
  variables = random_variables(build_inference_model(config.model), 56)
  checkpoints.save(manager, 3, variables, {'step': 3, 'scoring': {'fuse_strength': STRENGTH, 'threshold': THRESHOLD}},
                   force=True)
  manager.close()
  return path


KINDS = ['same', 'different', 'own_fake', 'same', 'fake', 'different', 'same', 'other_fake', 'same', 'different']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A challenge folder: 10 pairs of photos of assorted sizes, pair ids written out of order, labels.csv."""
  root = tmp_path_factory.mktemp('data')
  rng = np.random.default_rng(1)
  rows = []
  for index in (7, 2, 9, 0, 4, 1, 8, 3, 6, 5):
    pair_dir = root / 'test_public' / f'{index:08d}'
    pair_dir.mkdir(parents=True)
    base = rng.integers(0, 256, (130, 110, 3))
    for side in range(2):
      photo = base if KINDS[index] == 'same' else rng.integers(0, 256, (130, 110, 3))
      photo = np.clip(photo + rng.integers(-20, 20, photo.shape), 0, 255).astype(np.uint8)
      Image.fromarray(photo[: 120 + 10 * side]).save(pair_dir / f'{side}.jpg', quality=95)
    rows.append(f'{index:08d},{int(KINDS[index] == "same")},{KINDS[index]}')
  (root / 'labels.csv').write_text('pair_id,label,kind\n' + '\n'.join(rows) + '\n')
  return root


def _read_csv(path):
  with open(path, newline='') as handle:
    return list(csv.reader(handle))


def test_eval_script_on_a_folder(workdir, data_dir, tmp_path, capsys):
  out = tmp_path / 'out'
  assert evaluate.main(['--checkpoint', str(workdir), '--data-dir', str(data_dir), '--out', str(out),
                        '--batch-pairs', '4', '--no-progress']) == 0
  printed = capsys.readouterr().out
  assert 'EER (challenge formula)' in printed and 'pairs/s' in printed

  submission = _read_csv(out / 'submission.csv')
  assert submission[0] == ['pair_id', 'similarity']
  assert [row[0] for row in submission[1:]] == [f'{i:08d}' for i in range(10)]
  rows = _read_csv(out / 'scores.csv')[1:]
  assert [row[1] for row in rows] == [row[1] for row in submission[1:]]
  cosine, p0, p1, fused = (np.array([float(row[k]) for row in rows]) for k in (2, 3, 4, 1))
  np.testing.assert_allclose(fused, scoring.fused_score_np(cosine, p0, p1, STRENGTH), atol=1e-7)
  labels = np.array([int(row[5]) for row in rows])
  assert [row[6] for row in rows] == KINDS

  result = json.loads((out / 'metrics.json').read_text())
  assert result['pairs'] == result['labelled_pairs'] == 10
  assert result['fused']['eer'] == pytest.approx(metrics.challenge_eer(labels, fused), abs=1e-6)
  assert result['cosine']['eer'] == pytest.approx(metrics.challenge_eer(labels, cosine), abs=1e-6)
  assert set(result['fused']['eer_by_kind']) == {'different', 'own_fake', 'other_fake', 'fake'}
  assert result['stored_threshold'] == THRESHOLD and result['faces_not_found'] == 0
  # Same/different pairs give 12 photos known to be real and no known fake: no per-photo detection, but per pair.
  assert result['fake_detection_image'] == {}
  assert result['fake_detection_pair']['num_fake'] == 3
  for name in ('roc_det.png', 'score_histograms.png'):
    with Image.open(out / name) as image:
      assert image.format == 'PNG' and image.size[0] > 400

  # The pairs' numbers are what FaceVerifier gives for the same photos.
  verifier = FaceVerifier.load(workdir)
  pair = data_dir / 'test_public' / '00000004'
  direct = verifier.compare(pair / '0.jpg', pair / '1.jpg', aligned=False)
  assert direct.cosine == pytest.approx(cosine[4], abs=1e-5)
  assert direct.similarity == pytest.approx(fused[4], abs=1e-5)


def test_eval_without_labels_still_writes_the_submission(workdir, data_dir, tmp_path):
  out = tmp_path / 'out'
  result = evaluate.evaluate(workdir, out, data_dir=data_dir, labels_path=tmp_path / 'none.csv', progress=False,
                             limit=3)
  assert 'fused' not in result and result['pairs'] == 3
  assert len(_read_csv(out / 'submission.csv')) == 4
  assert (out / 'score_histograms.png').is_file() and not (out / 'roc_det.png').exists()


def test_eval_errors_are_one_line(workdir, tmp_path, capsys):
  assert evaluate.main(['--checkpoint', str(workdir), '--data-dir', str(tmp_path), '--out', str(tmp_path / 'o')]) == 2
  assert 'no test_public/ folder here' in capsys.readouterr().err
  (tmp_path / 'test_public').mkdir()
  assert evaluate.main(['--checkpoint', str(tmp_path / 'nowhere'), '--data-dir', str(tmp_path),
                        '--out', str(tmp_path / 'o')]) == 2
  assert 'checkpoint not found' in capsys.readouterr().err
  assert evaluate.main(['--checkpoint', str(workdir), '--tfds-dir', str(tmp_path), '--out', str(tmp_path / 'o')]) == 2
  assert 'no jaxface_faces dataset here' in capsys.readouterr().err


def test_tfds_pairs_score_like_photos(workdir):
  """Pairs from the TF input pipeline (val split, per-photo is_fake known) score as the same faces do directly."""
  tf = pytest.importorskip('tensorflow')
  config, variables, scoring_params = checkpoints.load_inference(workdir)
  verifier = FaceVerifier.from_inference(config, variables, scoring_params, batch_size=8)
  rng = np.random.default_rng(2)
  faces = rng.integers(0, 256, (2, 6, 112, 112, 3)).astype(np.uint8)
  features = {
      'pair_id': [f'{i:08d}' for i in (5, 3, 1, 0, 2, 4)], 'image0': faces[0], 'image1': faces[1],
      'label': np.array([1, 0, 0, 1, 0, 0]), 'kind': ['same', 'different', 'own_fake', 'same', 'other_fake', 'own_fake'],
      'is_fake0': np.zeros(6, np.int64), 'is_fake1': np.array([0, 0, 1, 0, 1, 1]),
  }
  dataset = tf.data.Dataset.from_tensor_slices(features)  # decoded uint8 faces, as the builder's features give them
  scores = evaluate.score_tfds(verifier, config, dataset, 'val', batch_pairs=4, progress=False)
  assert list(scores.pair_ids) == [f'{i:08d}' for i in range(6)]
  order = np.argsort([5, 3, 1, 0, 2, 4])
  embeddings, logits = verifier.infer(np.concatenate([faces[0], faces[1]]))
  cosine = np.asarray(scoring.cosine_similarity(embeddings[:6], embeddings[6:]))
  np.testing.assert_allclose(scores.cosine, cosine[order], atol=1e-4)
  np.testing.assert_allclose(scores.p_fake1, scoring.sigmoid_np(logits[6:])[order], atol=1e-4)
  result = metrics.pair_metrics(scores, STRENGTH)
  assert result['fake_detection_image']['num_fake'] == 3 and result['fake_detection_image']['num_real'] == 9
