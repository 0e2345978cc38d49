"""What every aligner is and returns: the Aligner interface, AlignResult, and the warp from landmarks they share.

Numpy and Pillow only. The aligners (`dfa`, `mtcnn`, `retinaface`, and `base.NoneAligner`) build on it;
`base.make_aligner` picks one by name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from jaxface.align import template



@dataclasses.dataclass
class AlignResult:
  """Aligned faces for a batch of B photos.

  faces: (B, 112, 112, 3) uint8 RGB, the photo warped so its landmarks sit on the ArcFace template.
  landmarks: (B, 5, 2) float32 (x, y) in photo pixels: left eye, right eye, nose, left mouth, right mouth.
  crop_landmarks: (B, 5, 2) float32 the same points in crop pixels.
  scores: (B,) float32 face score in [0, 1] (0 where no face was found).
  found: (B,) bool; False means `faces` holds a centre-crop of the photo instead of an aligned face.
  """
  faces: np.ndarray
  landmarks: np.ndarray
  crop_landmarks: np.ndarray
  scores: np.ndarray
  found: np.ndarray

  def __len__(self) -> int:
    return len(self.faces)

  @classmethod
  def concatenate(cls, results: Sequence[AlignResult]) -> AlignResult:
    """Joins results of consecutive batches into one."""
    if not results:
      return empty_result()
    return cls(**{f.name: np.concatenate([getattr(r, f.name) for r in results])
                  for f in dataclasses.fields(cls)})


def empty_result(size: int = 112) -> AlignResult:
  return AlignResult(faces=np.zeros((0, size, size, 3), np.uint8), landmarks=np.zeros((0, 5, 2), np.float32),
                     crop_landmarks=np.zeros((0, 5, 2), np.float32), scores=np.zeros((0,), np.float32),
                     found=np.zeros((0,), bool))


def as_rgb_photo(photo: np.ndarray) -> np.ndarray:
  """Any (H, W), (H, W, 1|3|4) array as an (H, W, 3) uint8 RGB photo; raises ValueError on other shapes."""
  return template._as_rgb(photo)  # pylint: disable=protected-access


def fallback_face(photo: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A centre-crop for a photo with no face found: (face (size, size, 3), landmarks in photo, template in crop).

  The landmarks are where the template would fall in the photo, so downstream code always gets numbers.
  """
  face, matrix = template.centre_crop_face(photo, size)
  crop_points = template.template_for_size(size)
  photo_points = template.apply_transform(template.invert_transform(matrix), crop_points)
  return face, photo_points.astype(np.float32), crop_points


def _usable_landmarks(points: np.ndarray) -> bool:
  """False for landmarks no similarity can use: non-finite or collapsed to (nearly) one point."""
  points = np.asarray(points, np.float64)
  return bool(np.isfinite(points).all() and np.linalg.norm(points - points.mean(0), axis=1).max() > 0.5)


def faces_from_landmarks(photos: Sequence[np.ndarray], landmarks: np.ndarray, scores: np.ndarray,
                         found: np.ndarray, size: int = 112) -> AlignResult:
  """Warps each full-resolution photo so its 5 landmarks land on the template; centre-crops where found is False.

  Args:
    photos: B photos, (H, W, 3) uint8 RGB, any sizes.
    landmarks: (B, 5, 2) landmarks in photo pixels (ignored where not found).
    scores: (B,) face scores.
    found: (B,) bool; landmarks that are non-finite or collapsed to one point also count as not found.
  Returns:
    AlignResult with (B, size, size, 3) faces.
  """
  dst = template.template_for_size(size)
  found = np.array(found, bool)
  faces, photo_points, crop_points = [], [], []
  for i, (photo, points) in enumerate(zip(photos, landmarks)):
    if found[i]:
      found[i] = _usable_landmarks(points)
    if found[i]:
      matrix = template.similarity_transform(points, dst)
      faces.append(template.warp_face(photo, matrix, size))
      photo_points.append(np.asarray(points, np.float32))
      crop_points.append(template.apply_transform(matrix, points).astype(np.float32))
    else:
      face, in_photo, in_crop = fallback_face(photo, size)
      faces.append(face)
      photo_points.append(in_photo)
      crop_points.append(in_crop)
  return AlignResult(faces=np.stack(faces).astype(np.uint8), landmarks=np.stack(photo_points).astype(np.float32),
                     crop_landmarks=np.stack(crop_points).astype(np.float32),
                     scores=np.where(found, np.asarray(scores, np.float32), 0.0).astype(np.float32), found=found)


class Aligner:
  """Turns photos of any size into aligned 112x112 faces.

  Subclasses set `name` and implement `_align_batch`; `align` splits long lists into batches of `batch_size`.
  """
  name: str = ''
  batch_size: int = 32

  def settings(self) -> dict[str, Any]:
    """JSON-able description of everything that changes the output (used as a cache key)."""
    return {'name': self.name}

  def align(self, photos: Sequence[np.ndarray]) -> AlignResult:
    """Aligns B photos.

    Args:
      photos: B arrays (H, W, 3) uint8 RGB, any sizes (grey (H, W) is accepted and repeated to RGB).
    Returns:
      AlignResult with faces (B, 112, 112, 3) uint8, landmarks (B, 5, 2), crop_landmarks (B, 5, 2), scores (B,),
      found (B,).
    """
    photos = [as_rgb_photo(p) for p in photos]
    if not photos:
      return empty_result()
    results = [self._align_batch(photos[i:i + self.batch_size]) for i in range(0, len(photos), self.batch_size)]
    return AlignResult.concatenate(results)

  def _align_batch(self, photos: list[np.ndarray]) -> AlignResult:
    raise NotImplementedError

  def __repr__(self) -> str:
    return f'{type(self).__name__}({self.settings()})'
