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

Every kind of pair gets its own figures, the five known kinds and any kind a labels.csv names (`jaxface.pair_kinds`:
a kind whose words include `fake` counts as holding a fake). This module imports neither TensorFlow nor PyTorch, and
nothing of `jaxface.data`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as sk_metrics

from jaxface import pair_kinds, scoring

FARS = (1e-2, 1e-3)  # the false accept rates pair_metrics reports TAR at
# Strengths tried by `calibrate_strength`: 1e-3 .. 1e3, 10 per decade.
DEFAULT_STRENGTHS = np.geomspace(1e-3, 1e3, 61)


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


def eer_by_kind(labels, scores, kinds: Sequence[str | None], genuine: bool = False) -> dict[str, float]:
  """Challenge EER of each kind of pair on its own: each negative kind against every genuine pair, or (genuine=True)
  each genuine kind against every negative pair.

  Args:
    labels: (N,) 0/1.
    scores: (N,) similarities.
    kinds: (N,) pair kinds (the known ones of `jaxface.pair_kinds` or a labels.csv's own; None if unknown).
    genuine: report the genuine kinds instead of the negative ones.

  Returns:
    {kind: EER} for each kind present on that side (known kinds first, in NEGATIVE_KINDS order, then the others sorted),
    alongside at least one pair of the other side.
  """
  labels, scores = _check(labels, scores)
  kinds = np.array([kind or '' for kind in kinds], dtype=object)
  if kinds.shape != labels.shape:
    raise ValueError(f'kinds and labels differ in length: {kinds.shape[0]} vs {labels.shape[0]}')
  side = labels == (1 if genuine else 0)
  result = {}
  for kind in pair_kinds.report_order(kinds[side]):
    keep = ~side | ((kinds == kind) & side)
    result[kind] = challenge_eer(labels[keep], scores[keep])
  return result


def calibrate_strength(cosine, p_fake0, p_fake1, labels,
                       strengths: Sequence[float] | None = None) -> tuple[float, float]:
  """Picks the fuse strength with the lowest challenge EER on validation pairs, by grid search.

  The EER is a step function of the strength, so several strengths often tie; the middle one of the tied set is
  taken, which stays furthest from the steps on either side.

  Args:
    cosine: (N,) cosines of validation pairs.
    p_fake0: (N,) fake probabilities of photo 0.
    p_fake1: (N,) fake probabilities of photo 1.
    labels: (N,) 1 for two real photos of one person, else 0.
    strengths: candidates (> 0), ascending; DEFAULT_STRENGTHS (1e-3 .. 1e3) if None.

  Returns:
    (strength, EER of the fused score at that strength).
  """
  strengths = np.asarray(DEFAULT_STRENGTHS if strengths is None else strengths, dtype=np.float64)
  if strengths.size == 0 or np.any(strengths <= 0):
    raise ValueError('fuse strengths must be positive')
  eers = np.array([challenge_eer(labels, scoring.fused_score_np(cosine, p_fake0, p_fake1, s)) for s in strengths])
  best = np.flatnonzero(eers == eers.min())
  chosen = best[len(best) // 2]
  return float(strengths[chosen]), float(eers[chosen])


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
  has_fake = pair_has_fake(kinds, labels) == 1
  with_fakes = has_fake | (labels == 1)
  result = {
      'eer': challenge_eer(labels, values),
      'eer_threshold': eer_threshold(labels, values),
      'auc': roc_auc(labels, values),
      'eer_by_kind': eer_by_kind(labels, values, list(kinds)),
      # A labels.csv may split the genuine pairs too (same_glasses, ...): each against every negative pair.
      'eer_by_genuine_kind': ({} if len(set(kinds[labels == 1])) < 2
                              else eer_by_kind(labels, values, list(kinds), genuine=True)),
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
      (`calibrate_strength`), as training validation does to choose the checkpoint's.
    threshold: a stored decision threshold on the fused score; its accuracy is reported.

  Returns:
    A JSON-able dict: pair counts; 'fused' and 'cosine' with EER, threshold at the EER, AUC, EER by negative kind (and
    by genuine kind when there are several), EER on the pairs with fakes, TAR at each FAR; 'oracle' (the best strength
    for these labels); 'fake_detection_image' (photos whose is_fake is known), 'fake_detection_pair' (the
    fake-in-pair AUC of the module docstring) and 'fake_detection_pair_by_kind' (the same AUC for each kind that is
    not two real photos, against the real pairs).
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
    strength, eer = calibrate_strength(scores.cosine[known], scores.p_fake0[known], scores.p_fake1[known],
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
  has_fake, q = pair_has_fake(all_kinds, scores.labels), either_fake(scores.p_fake0, scores.p_fake1)
  result['fake_detection_pair'] = detection_metrics(has_fake, q)
  real = has_fake == 0
  by_kind = {kind: detection_metrics(np.where(all_kinds == kind, 1, np.where(real, 0, -1)), q)
             for kind in pair_kinds.report_order(all_kinds[~real])}
  result['fake_detection_pair_by_kind'] = {kind: found for kind, found in by_kind.items() if found}
  return result


def pair_has_fake(kinds, labels=None) -> np.ndarray:
  """(N,) kinds -> (N,) int: 1 a kind holding a fake, 0 two real photos, -1 unknown (`pair_kinds.holds_fake`).

  With labels (N,), a genuine pair (label 1) is two real photos whatever its kind says: only two real photos of one
  person are labelled 1.
  """
  found = np.array([pair_kinds.holds_fake(str(kind)) for kind in np.asarray(kinds).reshape(-1)], np.int64)
  return found if labels is None else np.where(np.asarray(labels).reshape(-1) == 1, 0, found)


def either_fake(p_fake0, p_fake1) -> np.ndarray:
  """The probability that at least one photo of a pair is fake, 1 - (1 - p0)(1 - p1): what ranks pairs for the
  fake-in-pair AUC."""
  return 1.0 - (1.0 - np.asarray(p_fake0, np.float64)) * (1.0 - np.asarray(p_fake1, np.float64))
