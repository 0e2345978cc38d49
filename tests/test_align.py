"""Tests for jaxface.align: template warp, the none aligner, DFA loading, MTCNN on real photos."""
from __future__ import annotations

import numpy as np
import pytest

from jaxface.align import base, template


def _photo_with_landmarks(points: np.ndarray, shape=(300, 400)) -> np.ndarray:
  """A photo with a bright 3x3 dot centred on each integer landmark, on a dark noisy background."""
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 40, shape + (3,), dtype=np.uint8)
  for x, y in np.rint(points).astype(int):
    photo[y - 1:y + 2, x - 1:x + 2] = 255
  return photo


def _dot_centres(face: np.ndarray) -> np.ndarray:
  """Brightness-weighted centre of the dot nearest each template point: (5, 2)."""
  grey = face.astype(np.float64).mean(-1)
  grey = np.where(grey > 128, grey, 0.0)
  ys, xs = np.mgrid[0:face.shape[0], 0:face.shape[1]]
  centres = []
  for tx, ty in template.ARCFACE_TEMPLATE:
    near = (np.abs(xs - tx) < 6) & (np.abs(ys - ty) < 6)
    w = grey * near
    centres.append([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
  return np.array(centres)


@pytest.mark.parametrize('angle,scale', [(0.0, 1.0), (0.35, 1.0), (-0.6, 1.0)])
def test_warp_puts_landmarks_on_template(angle, scale):
  # Landmarks: the template rotated, scaled and moved into a bigger photo.
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  points = np.rint((template.ARCFACE_TEMPLATE - 56) @ rot.T * scale + [210, 140])
  photo = _photo_with_landmarks(points)
  matrix = template.similarity_transform(points, template.ARCFACE_TEMPLATE)
  mapped = template.apply_transform(matrix, points)
  assert np.abs(mapped - template.ARCFACE_TEMPLATE).max() < 1.0
  face = template.warp_face(photo, matrix)
  assert face.shape == (112, 112, 3) and face.dtype == np.uint8
  assert np.abs(_dot_centres(face) - mapped).max() < 1.0


def test_warp_from_large_photo_is_antialiased_and_placed():
  # A 4x larger photo: the warp reduces first; the dots (now 12 px wide) must still land within 1 px.
  points = (template.ARCFACE_TEMPLATE - 56) * 4 + [800, 600]
  rng = np.random.default_rng(1)
  photo = rng.integers(0, 40, (1200, 1600, 3), dtype=np.uint8)
  for x, y in np.rint(points).astype(int):
    photo[y - 6:y + 6, x - 6:x + 6] = 255
  matrix = template.similarity_transform(points, template.ARCFACE_TEMPLATE)
  face = template.warp_face(photo, matrix)
  assert np.abs(_dot_centres(face) - template.ARCFACE_TEMPLATE).max() < 1.0


def test_similarity_transform_never_reflects():
  src = template.ARCFACE_TEMPLATE.astype(np.float64)
  mirrored = src * [-1, 1]
  matrix = template.similarity_transform(src, mirrored)
  assert np.linalg.det(matrix[:, :2]) > 0


def test_none_aligner_shapes_and_bad_inputs():
  aligner = base.make_aligner('none')
  photos = [np.full((250, 250, 3), 90, np.uint8), np.full((40, 30), 7, np.uint8), np.zeros((1, 1, 3), np.uint8)]
  result = aligner.align(photos)
  assert result.faces.shape == (3, 112, 112, 3) and result.faces.dtype == np.uint8
  assert result.landmarks.shape == (3, 5, 2) and result.landmarks.dtype == np.float32
  np.testing.assert_allclose(result.crop_landmarks[0], template.ARCFACE_TEMPLATE)
  np.testing.assert_allclose(result.landmarks[0], (template.ARCFACE_TEMPLATE + 0.5) * 250 / 112 - 0.5, atol=1e-3)
  assert result.found.tolist() == [True] * 3 and result.scores.tolist() == [1.0] * 3
  assert int(result.faces[1].mean()) == 7
  with pytest.raises(ValueError, match='unknown aligner'):
    base.make_aligner('nope')
