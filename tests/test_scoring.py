"""Fused score properties, its calibration on synthetic own-fake pairs, cosine and flip fusion."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxface import metrics, scoring


def test_fused_equals_cosine_when_both_real_and_bottom_when_fake_certain():
  cosine = np.array([-1.0, -0.3, 0.0, 0.5, 0.99])
  zeros, ones = np.zeros(5), np.ones(5)
  for strength in (0.01, 1.0, 50.0):
    np.testing.assert_allclose(scoring.fused_score(cosine, zeros, zeros, strength), cosine, atol=1e-6)
    np.testing.assert_allclose(scoring.fused_score(cosine, ones, zeros, strength), -ones, atol=1e-6)
    np.testing.assert_allclose(scoring.fused_score(cosine, zeros, ones, strength), -ones, atol=1e-6)
    np.testing.assert_allclose(scoring.fused_score_np(cosine, zeros, ones, strength), -ones, atol=1e-12)
  # The documented formula with p = 1 - (1 - p0)(1 - p1).
  p0, p1 = np.array([0.2]), np.array([0.5])
  expected = -1 + (1 + 0.7) * (1 - (1 - (1 - 0.2) * (1 - 0.5))) ** 2.0
  assert float(scoring.fused_score(np.array([0.7]), p0, p1, 2.0)[0]) == pytest.approx(expected, abs=1e-6)


def test_fused_is_monotone():
  probabilities = np.linspace(0, 0.9, 41)
  for strength in (0.1, 1.0, 10.0):
    down = scoring.fused_score_np(np.full(41, 0.6), probabilities, np.full(41, 0.3), strength)
    assert np.all(np.diff(down) < 0)  # falls as either fake probability rises
    down1 = scoring.fused_score_np(np.full(41, 0.6), np.full(41, 0.3), probabilities, strength)
    np.testing.assert_allclose(down, down1)  # symmetric in the two photos
    up = scoring.fused_score_np(np.linspace(-1, 1, 41), np.full(41, 0.4), np.full(41, 0.1), strength)
    assert np.all(np.diff(up) > 0)  # rises with the cosine
    assert np.all((up >= -1) & (up <= 1))


def test_fused_jits():
  jitted = jax.jit(scoring.fused_score)
  result = jitted(np.array([0.5, 0.5], np.float32), np.array([0.0, 0.9], np.float32), np.zeros(2, np.float32), 1.0)
  np.testing.assert_allclose(result, [0.5, -1 + 1.5 * 0.1], atol=1e-6)


def _synthetic_pairs(seed=0, n=400):
  """Genuine pairs (cos ~0.6, low p), different people (cos ~0.1), own fakes (cos ~0.65, high p on one photo)."""
  rng = np.random.default_rng(seed)
  kinds = np.array(['same'] * n + ['different'] * n + ['own_fake'] * n)
  labels = (kinds == 'same').astype(np.int64)
  cosine = np.concatenate([rng.normal(0.6, 0.12, n), rng.normal(0.1, 0.12, n), rng.normal(0.65, 0.12, n)])
  cosine = np.clip(cosine, -1, 1)
  # The detector is good but not perfect: fakes p ~ Beta(8, 1.5), reals p ~ Beta(1.5, 12).
  real_p = lambda size: rng.beta(1.5, 12, size)
  p0 = np.concatenate([real_p(n), real_p(n), real_p(n)])
  p1 = np.concatenate([real_p(n), real_p(n), rng.beta(8, 1.5, n)])
  return cosine, p0, p1, labels, kinds


def test_fused_beats_cosine_on_own_fakes_and_calibrates():
  cosine, p0, p1, labels, kinds = _synthetic_pairs(seed=0)
  cosine_eer = metrics.challenge_eer(labels, cosine)
  strength, fused_eer_val = metrics.calibrate_strength(cosine, p0, p1, labels)
  assert cosine_eer > 0.3  # own fakes look like the same person to the cosine
  assert fused_eer_val < 0.06
  assert fused_eer_val == metrics.challenge_eer(labels, scoring.fused_score_np(cosine, p0, p1, strength))
  # The strength chosen on validation pairs carries to fresh pairs of the same kind.
  cosine, p0, p1, labels, kinds = _synthetic_pairs(seed=1)
  fused = scoring.fused_score_np(cosine, p0, p1, strength)
  assert metrics.challenge_eer(labels, fused) < 0.06 < 0.3 < metrics.challenge_eer(labels, cosine)
  # Against different people alone the fused score loses little; against own fakes it gains most.
  assert metrics.eer_by_kind(labels, fused, kinds)['different'] < 0.06
  assert metrics.eer_by_kind(labels, fused, kinds)['own_fake'] < 0.06


def test_calibrate_prefers_small_strength_without_fakes():
  rng = np.random.default_rng(3)
  labels = np.repeat([1, 0], 200)
  cosine = np.clip(np.where(labels == 1, 0.5, 0.1) + rng.normal(0, 0.15, 400), -1, 1)
  p = rng.uniform(0, 0.9, (2, 400))  # fake probabilities carry no information here
  strength, eer = metrics.calibrate_strength(cosine, p[0], p[1], labels)
  assert strength <= 0.1
  assert eer <= metrics.challenge_eer(labels, cosine) + 0.01
  with pytest.raises(ValueError, match='positive'):
    metrics.calibrate_strength(cosine, p[0], p[1], labels, strengths=[0.0, 1.0])


def test_cosine_and_flip_fuse():
  a = np.array([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
  b = np.array([[6.0, 8.0, 0.0], [0.0, 2.0, 0.0]])
  np.testing.assert_allclose(scoring.cosine_similarity(a, b), [1.0, 0.0], atol=1e-6)
  # Norm weighting: the long embedding dominates the fused direction.
  emb = np.array([[10.0, 0.0]])
  flipped = np.array([[0.0, 1.0]])
  fused = np.asarray(scoring.flip_fuse(emb, flipped))
  np.testing.assert_allclose(fused, [[10 / np.sqrt(101), 1 / np.sqrt(101)]], rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(fused, axis=-1), 1.0, rtol=1e-6)


def test_sigmoid_np_is_stable():
  np.testing.assert_allclose(scoring.sigmoid_np([-1000.0, 0.0, 1000.0, 2.0]), [0.0, 0.5, 1.0, 1 / (1 + np.exp(-2))])
