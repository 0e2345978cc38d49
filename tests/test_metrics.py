"""The challenge EER against a direct transcription of the organisers' formula, and the other verification metrics."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from jaxface import metrics


def organisers_eer(y, score):
  """reference.md section 1, line by line."""
  fpr, tpr, thr = roc_curve(y, score)
  thr[0] = max(thr[1:]) + 1e-3
  fnr = 1 - tpr
  i = np.nanargmin(np.absolute(fnr - fpr))
  return fnr[i], thr[i]


def _random_case(seed, n, ties):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  labels[:2] = [0, 1]
  scores = rng.normal(size=n) + 0.8 * labels
  if ties:
    scores = np.round(scores, 1)  # ~50 distinct values for n up to 500: many tied runs, mixed labels
  return labels, scores


@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize('seed,n', [(0, 7), (1, 50), (2, 500), (3, 501)])
def test_challenge_eer_equals_organisers_formula(seed, n, ties):
  labels, scores = _random_case(seed, n, ties)
  expected_eer, expected_threshold = organisers_eer(labels, scores)
  assert metrics.challenge_eer(labels, scores) == expected_eer
  assert metrics.eer_threshold(labels, scores) == expected_threshold
  assert 0.0 <= expected_eer <= 1.0


def test_challenge_eer_all_tied_and_perfect():
  labels = np.array([0, 1, 0, 1, 1, 0])
  assert metrics.challenge_eer(labels, np.zeros(6)) == organisers_eer(labels, np.zeros(6))[0] == 1.0
  perfect = labels * 2.0 - 1.0
  assert metrics.challenge_eer(labels, perfect) == 0.0
  assert metrics.eer_threshold(labels, perfect) == 1.0
  assert metrics.challenge_eer(labels, -perfect) == 1.0


def test_challenge_eer_is_fnr_not_mean():
  # The closest ROC point has fnr 1/3 and fpr 1/4: the formula reports fnr, not their mean (7/24).
  labels = np.array([1, 1, 1, 0, 0, 0, 0])
  scores = np.array([0.9, 0.5, 0.2, 0.8, 0.4, 0.1, 0.0])
  fnr_expected, _ = organisers_eer(labels, scores)
  assert metrics.challenge_eer(labels, scores) == pytest.approx(fnr_expected)
  assert metrics.challenge_eer(labels, scores) == pytest.approx(1 / 3)


def test_tar_at_far():
  labels = np.array([1] * 4 + [0] * 10)
  scores = np.array([0.9, 0.8, 0.6, 0.3] + [0.85, 0.5, 0.4, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4])
  assert metrics.tar_at_far(labels, scores, 0.0) == 0.25  # above 0.85 only 0.9
  assert metrics.tar_at_far(labels, scores, 0.1) == 0.75  # one false accept allowed: threshold 0.6
  assert metrics.tar_at_far(labels, scores, 0.35) == 1.0


def test_eer_by_kind():
  labels = np.array([1, 1, 1, 0, 0, 0, 0])
  kinds = ['same', 'same', 'same', 'different', 'different', 'own_fake', 'own_fake']
  scores = np.array([0.8, 0.7, 0.6, 0.1, 0.2, 0.9, 0.95])
  by_kind = metrics.eer_by_kind(labels, scores, kinds)
  assert by_kind == {'different': 0.0, 'own_fake': 1.0}


def test_a_labels_files_own_kinds_get_their_own_figures_and_fake_named_ones_count_as_fakes():
  """labels.csv kinds outside the five known ones: an EER each, and a fake-in-pair AUC each (issue 33, item 6)."""
  from jaxface.inference import PairScores  # pylint: disable=import-outside-toplevel
  kinds = np.array(['same'] * 4 + ['same_glasses'] * 2 + ['different'] * 3 + ['fake_diffusion'] * 3 + ['blurry'] * 2,
                   dtype=object)
  labels = np.array([1] * 6 + [0] * 8)
  cosine = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.5, 0.1, 0.2, 0.55, 0.85, 0.4, 0.0, 0.65, -0.1])
  # The fake head sees the diffusion fakes (p 0.9) and nothing else (p 0.1); q = 1 - (1 - p0)(1 - p1).
  p1 = np.where(kinds == 'fake_diffusion', 0.9, 0.1)
  n = len(kinds)
  scores = PairScores(pair_ids=np.array([f'{i:08d}' for i in range(n)], dtype=object), cosine=cosine,
                      p_fake0=np.full(n, 0.1), p_fake1=p1, labels=labels, kinds=kinds,
                      is_fake0=np.full(n, -1), is_fake1=np.full(n, -1), face_found0=np.ones(n, bool),
                      face_found1=np.ones(n, bool))
  result = metrics.pair_metrics(scores, fuse_strength=1.0)
  cos = result['cosine']
  # Each negative kind against all six genuine pairs, known kinds first.
  assert list(cos['eer_by_kind']) == ['different', 'blurry', 'fake_diffusion']
  assert cos['eer_by_kind'] == {kind: metrics.challenge_eer(labels[keep], cosine[keep]) for kind, keep in
                                ((k, (labels == 1) | (kinds == k)) for k in ('different', 'blurry', 'fake_diffusion'))}
  # Genuine pairs in two kinds: each against every negative pair.
  assert set(cos['eer_by_genuine_kind']) == {'same', 'same_glasses'}
  keep = (kinds == 'same_glasses') | (labels == 0)
  assert cos['eer_by_genuine_kind']['same_glasses'] == metrics.challenge_eer(labels[keep], cosine[keep])
  # The diffusion pairs hold a fake ('fake' is one of their words); 'blurry' says nothing, so it stays out of the
  # pooled fake-in-pair AUC but gets its own row against the real pairs; a genuine pair is real whatever its kind.
  assert metrics.pair_has_fake(['fake_diffusion', 'diffusion-fake', 'blurry', 'same', 'own_fake']).tolist() == [
      1, 1, -1, 0, 1]
  assert metrics.pair_has_fake(['same_glasses', 'same_glasses'], labels=[1, 0]).tolist() == [0, -1]
  pooled = result['fake_detection_pair']
  assert (pooled['num_fake'], pooled['num_real'], pooled['auc']) == (3, 9, 1.0)
  by_kind = result['fake_detection_pair_by_kind']
  assert by_kind['fake_diffusion']['auc'] == 1.0 and by_kind['blurry']['auc'] == 0.5
  assert by_kind['blurry']['num_fake'] == 2 and 'same_glasses' not in by_kind and 'different' not in by_kind
  # The report evaluate prints has a line for each.
  from jaxface import evaluate  # pylint: disable=import-outside-toplevel
  table = evaluate.format_table(result)
  for line in ('EER same vs fake_diffusion', 'EER same vs blurry', 'EER same_glasses vs all negatives',
               'fake in pair, blurry vs real pairs: AUC 0.5000'):
    assert line in table, table


def test_detection_metrics_skips_unknown():
  is_fake = np.array([0, 0, 1, 1, -1, -1])
  p_fake = np.array([0.1, 0.6, 0.5, 0.9, 0.0, 1.0])
  result = metrics.detection_metrics(is_fake, p_fake)
  assert result['auc'] == 0.75
  assert result['num_real'] == 2 and result['num_fake'] == 2
  assert result['eer'] == organisers_eer(is_fake[:4], p_fake[:4])[0]
  assert metrics.detection_metrics(np.zeros(3), np.ones(3)) == {}


@pytest.mark.parametrize('labels,scores,message', [
    ([1, 1], [0.1, 0.2], 'both positive'),
    ([1, 0], [0.1, np.nan], 'NaN'),
    ([1, 0, 1], [0.1, 0.2], 'differ in length'),
])
def test_bad_inputs_say_why(labels, scores, message):
  with pytest.raises(ValueError, match=message):
    metrics.challenge_eer(labels, scores)
