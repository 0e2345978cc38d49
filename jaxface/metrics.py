"""Verification metrics: the challenge EER, its threshold, EER per negative pair kind, TAR at a FAR, ROC AUC.

`challenge_eer` is the Kryptonite challenge's own formula, transcribed exactly (reference.md section 1):

    fpr, tpr, thr = sklearn.metrics.roc_curve(y, score)
    thr[0] = max(thr[1:]) + 1e-3
    fnr = 1 - tpr
    i = nanargmin(|fnr - fpr|)
    EER = fnr[i]

It reports the miss rate at the ROC point where misses and false accepts are closest, not their mean, and it depends on
which points `roc_curve` keeps (`drop_intermediate=True`, the default), so nothing here re-derives it another way.

Labels are 1 for a genuine pair (two real photos of one person) and 0 otherwise; higher scores mean "same person".
This module imports neither TensorFlow, PyTorch nor the data readers.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as sk_metrics

# Negative pair kinds, in the order reports list them. `fake` is a fake pair whose finer kind is unknown.
NEGATIVE_KINDS = ('different', 'own_fake', 'other_fake', 'fake')
FAKE_KINDS = ('own_fake', 'other_fake', 'fake')


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  if labels.shape != scores.shape:
    raise ValueError(f'labels and scores differ in length: {labels.shape[0]} vs {scores.shape[0]}')
  if not np.all(np.isfinite(scores)):
    raise ValueError(f'{int(np.sum(~np.isfinite(scores)))} scores are NaN or infinite (check the model outputs)')
  labels = labels.astype(np.int64)
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError('labels must be 0 or 1')
  if labels.min(initial=1) == labels.max(initial=0):
    raise ValueError('an EER needs both positive (1) and negative (0) pairs; got only one class')
  return labels, scores


def challenge_roc(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The challenge's ROC: sklearn's `roc_curve` with the first (infinite) threshold replaced by max + 1e-3.

  Args:
    labels: (N,) 0/1, 1 for a genuine pair.
    scores: (N,) similarities, higher means more likely genuine.

  Returns:
    (fpr, tpr, thresholds), each (K,) float64.
  """
  labels, scores = _check(labels, scores)
  fpr, tpr, thresholds = sk_metrics.roc_curve(labels, scores)
  thresholds = np.array(thresholds, dtype=np.float64)
  thresholds[0] = np.max(thresholds[1:]) + 1e-3
  return fpr, tpr, thresholds


def _eer_index(fpr: np.ndarray, tpr: np.ndarray) -> int:
  return int(np.nanargmin(np.absolute((1 - tpr) - fpr)))


def challenge_eer(labels, scores) -> float:
  """The challenge's EER: the false-reject rate at the ROC point where it is closest to the false-accept rate.

  Args:
    labels: (N,) 0/1, 1 for a genuine pair.
    scores: (N,) similarities, higher means more likely genuine.

  Returns:
    EER in [0, 1].
  """
  fpr, tpr, _ = challenge_roc(labels, scores)
  return float(1 - tpr[_eer_index(fpr, tpr)])


def eer_threshold(labels, scores) -> float:
  """The score threshold at the challenge EER's ROC point: pairs scoring >= it are called genuine.

  Args:
    labels: (N,) 0/1.
    scores: (N,) similarities.
  """
  fpr, tpr, thresholds = challenge_roc(labels, scores)
  return float(thresholds[_eer_index(fpr, tpr)])


def tar_at_far(labels, scores, far: float) -> float:
  """True-accept rate at the strictest ROC point whose false-accept rate is at most `far` (no interpolation).

  With fewer than 1/far negatives this is the TAR at zero false accepts.

  Args:
    labels: (N,) 0/1.
    scores: (N,) similarities.
    far: the allowed false-accept rate, e.g. 1e-3.
  """
  labels, scores = _check(labels, scores)
  fpr, tpr, _ = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
  return float(np.max(tpr[fpr <= far]))


def roc_auc(labels, scores) -> float:
  """Area under the ROC curve. labels (N,) 0/1, scores (N,) higher for label 1."""
  labels, scores = _check(labels, scores)
  return float(sk_metrics.roc_auc_score(labels, scores))


def eer_by_kind(labels, scores, kinds: Sequence[str | None]) -> dict[str, float]:
  """Challenge EER of the genuine pairs against each kind of negative pair on its own.

  Args:
    labels: (N,) 0/1.
    scores: (N,) similarities.
    kinds: (N,) pair kinds ('same', 'different', 'own_fake', 'other_fake', 'fake'; None if unknown).

  Returns:
    {kind: EER} for each negative kind present, alongside at least one genuine pair.
  """
  labels, scores = _check(labels, scores)
  kinds = np.array([kind or '' for kind in kinds], dtype=object)
  if kinds.shape != labels.shape:
    raise ValueError(f'kinds and labels differ in length: {kinds.shape[0]} vs {labels.shape[0]}')
  genuine = labels == 1
  result = {}
  present = [kind for kind in NEGATIVE_KINDS if np.any((kinds == kind) & ~genuine)]
  present += sorted(set(kinds[~genuine]) - set(NEGATIVE_KINDS) - {''})
  for kind in present:
    keep = genuine | ((kinds == kind) & ~genuine)
    result[kind] = challenge_eer(labels[keep], scores[keep])
  return result


def detection_metrics(is_fake, p_fake) -> dict[str, float]:
  """Fake-detection quality per image: ROC AUC and challenge-formula EER with 'fake' as the positive class.

  Args:
    is_fake: (M,) 1 for a generated photo, 0 for a real one, -1 for unknown (ignored).
    p_fake: (M,) predicted probabilities that the photo is generated.

  Returns:
    {'auc', 'eer', 'num_real', 'num_fake'}, or {} when either class is missing.
  """
  is_fake = np.asarray(is_fake).reshape(-1)
  p_fake = np.asarray(p_fake, dtype=np.float64).reshape(-1)
  known = is_fake >= 0
  is_fake, p_fake = is_fake[known], p_fake[known]
  num_fake = int(np.sum(is_fake == 1))
  num_real = int(np.sum(is_fake == 0))
  if num_fake == 0 or num_real == 0:
    return {}
  return {'auc': roc_auc(is_fake, p_fake), 'eer': challenge_eer(is_fake, p_fake),
          'num_real': num_real, 'num_fake': num_fake}
