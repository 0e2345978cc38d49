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
`pair_metrics` is the one place that turns scored pairs into figures (training validation, `jaxface.evaluate`). Its
**fake-in-pair AUC** ('fake_detection_pair') asks whether the fake head finds the pairs that hold a fake: pairs of a
fake kind (positive) against pairs of two real photos (negative), each pair scored by the probability that at least
one of its photos is fake, 1 - (1 - p0)(1 - p1) (the same q the fused score uses; see `jaxface.scoring`).

This module imports neither TensorFlow nor PyTorch (the pair-kind vocabulary comes from `jaxface.data.challenge`,
which needs only Pillow and NumPy).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as sk_metrics

from jaxface import scoring
from jaxface.data.challenge import FAKE_KINDS, NEGATIVE_KINDS, REAL_KINDS

FARS = (1e-2, 1e-3)  # the false accept rates pair_metrics reports TAR at


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


def _score_metrics(labels: np.ndarray, values: np.ndarray, kinds: np.ndarray) -> dict:
  has_fake = np.isin(kinds, FAKE_KINDS)
  with_fakes = has_fake | (labels == 1)
  result = {
      'eer': challenge_eer(labels, values),
      'eer_threshold': eer_threshold(labels, values),
      'auc': roc_auc(labels, values),
      'eer_by_kind': eer_by_kind(labels, values, list(kinds)),
      # The pairs a fake can break: genuine pairs against every pair holding a fake.
      'eer_fake_pairs': (challenge_eer(labels[with_fakes], values[with_fakes])
                         if has_fake.any() and (labels == 1).any() else float('nan')),
  }
  for far in FARS:
    result[f'tar_at_far_{far:g}'] = tar_at_far(labels, values, far)
  return result


def pair_metrics(scores, fuse_strength: float | None = None, threshold: float | None = None) -> dict:
  """Every figure of scored pairs (only pairs with a known label count for the verification figures).

  Args:
    scores: a `jaxface.inference.PairScores`.
    fuse_strength: the strength of the fused score (a checkpoint's); None calibrates it on these very pairs
      (`scoring.calibrate_strength`), as training validation does to choose the checkpoint's.
    threshold: a stored decision threshold on the fused score; its accuracy is reported.

  Returns:
    A JSON-able dict: pair counts; 'fused' and 'cosine' with EER, threshold at the EER, AUC, EER by negative kind, EER
    on the pairs with fakes, TAR at each FAR; 'oracle' (the best strength for these labels); 'fake_detection_image'
    (photos whose is_fake is known) and 'fake_detection_pair' (the fake-in-pair AUC of the module docstring).
    Missing labels (or a single class) give the counts and the detection figures only.
  """
  known = scores.labels >= 0
  labels, kinds = scores.labels[known], np.asarray(scores.kinds[known]).astype(str)
  result: dict = {
      'pairs': int(len(scores.pair_ids)),
      'labelled_pairs': int(known.sum()),
      'pairs_by_kind': {str(k or 'unknown'): int(n) for k, n in zip(*np.unique(kinds, return_counts=True))},
      'faces_not_found': int((~scores.face_found0).sum() + (~scores.face_found1).sum()),
  }
  if known.any() and 0 < labels.sum() < labels.size:
    strength, eer = scoring.calibrate_strength(scores.cosine[known], scores.p_fake0[known], scores.p_fake1[known],
                                               labels)
    result['oracle'] = {'fuse_strength': strength, 'eer': eer}
    fuse_strength = strength if fuse_strength is None else fuse_strength
    fused = scores.fused(fuse_strength)[known]
    result['fused'] = _score_metrics(labels, fused, kinds)
    result['cosine'] = _score_metrics(labels, scores.cosine[known], kinds)
    if threshold is not None:
      result['stored_threshold'] = float(threshold)
      result['fused']['accuracy_at_stored_threshold'] = float(np.mean((fused >= threshold) == (labels == 1)))
  result['fuse_strength'] = float(1.0 if fuse_strength is None else fuse_strength)
  result['fake_detection_image'] = detection_metrics(
      np.concatenate([scores.is_fake0, scores.is_fake1]), np.concatenate([scores.p_fake0, scores.p_fake1]))
  all_kinds = np.asarray(scores.kinds).astype(str)
  pair_has_fake = np.where(np.isin(all_kinds, FAKE_KINDS), 1, np.where(np.isin(all_kinds, REAL_KINDS), 0, -1))
  result['fake_detection_pair'] = detection_metrics(pair_has_fake, either_fake(scores.p_fake0, scores.p_fake1))
  return result


def either_fake(p_fake0, p_fake1) -> np.ndarray:
  """The probability that at least one photo of a pair is fake, 1 - (1 - p0)(1 - p1): what ranks pairs for the
  fake-in-pair AUC."""
  return 1.0 - (1.0 - np.asarray(p_fake0, np.float64)) * (1.0 - np.asarray(p_fake1, np.float64))
