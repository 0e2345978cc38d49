"""The 112x112 five-point face template, the similarity transform onto it, and the warp.

Numpy and Pillow only: importable without torch, so readers of cached crops never pull in the aligners.

Pixel convention (as OpenCV's warpAffine and the ArcFace template): integer coordinates are pixel centres, (x, y)
with x to the right and y down.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# The side of an aligned face crop, everywhere: preprocessing writes FACE_SIZE x FACE_SIZE faces, models read them.
FACE_SIZE = 112

# Left eye, right eye, nose tip, left mouth corner, right mouth corner, as seen in the photo (x, y) in a 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963],
     [73.5318, 51.5014],
     [56.0252, 71.7366],
     [41.5493, 92.3655],
     [70.7299, 92.2041]], dtype=np.float32)


def template_for_size(size: int) -> np.ndarray:
  """The ArcFace template scaled to a `size` x `size` crop: (5, 2) float32."""
  return (ARCFACE_TEMPLATE * (size / 112.0)).astype(np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src onto dst.

  Umeyama (1991), as skimage's SimilarityTransform.estimate.

  Args:
    src: (N, 2) points, N >= 2, e.g. landmarks in photo pixels.
    dst: (N, 2) points, e.g. ARCFACE_TEMPLATE.
  Returns:
    (2, 3) float64 matrix M with dst ~= M[:, :2] @ src + M[:, 2].
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
    raise ValueError(f'similarity_transform needs two (N, 2) arrays of equal shape, got {src.shape} and {dst.shape}')
  src_mean, dst_mean = src.mean(0), dst.mean(0)
  src_c, dst_c = src - src_mean, dst - dst_mean
  cov = dst_c.T @ src_c / len(src)
  u, s, vt = np.linalg.svd(cov)
  d = np.ones(2)
  if np.linalg.det(cov) < 0:  # the best fit would be a reflection: flip the weakest axis instead.
    d[1] = -1.0
  rotation = u @ np.diag(d) @ vt
  src_var = (src_c ** 2).sum() / len(src)
  scale = (s * d).sum() / src_var if src_var > 0 else 1.0
  matrix = np.zeros((2, 3))
  matrix[:, :2] = scale * rotation
  matrix[:, 2] = dst_mean - scale * rotation @ src_mean
  return matrix


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Maps (N, 2) points through a (2, 3) affine matrix; returns (N, 2) float64."""
  points = np.asarray(points, np.float64)
  return points @ np.asarray(matrix, np.float64)[:, :2].T + matrix[:, 2]


def invert_transform(matrix: np.ndarray) -> np.ndarray:
  """The inverse of a (2, 3) affine matrix, as (2, 3) float64."""
  full = np.eye(3)
  full[:2] = matrix
  return np.linalg.inv(full)[:2]


def _as_rgb(photo: np.ndarray) -> np.ndarray:
  photo = np.asarray(photo)
  if photo.ndim == 2:
    photo = photo[:, :, None]
  if photo.ndim != 3 or photo.shape[2] not in (1, 3, 4) or photo.shape[0] < 1 or photo.shape[1] < 1:
    raise ValueError(f'expected an (H, W, 3) RGB photo, got shape {photo.shape}')
  if photo.shape[2] == 1:
    photo = np.repeat(photo, 3, axis=2)
  elif photo.shape[2] == 4:
    photo = photo[:, :, :3]
  if photo.dtype != np.uint8:
    photo = np.clip(photo, 0, 255).astype(np.uint8)
  return photo


def _bilinear(photo: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
  """Samples an (H, W, 3) photo at float pixel coordinates; outside the photo is black (as warpAffine's default)."""
  h, w = photo.shape[:2]
  x0 = np.floor(xs).astype(np.int64)
  y0 = np.floor(ys).astype(np.int64)
  fx = (xs - x0).astype(np.float32)[..., None]
  fy = (ys - y0).astype(np.float32)[..., None]
  padded = np.zeros((h + 2, w + 2, 3), np.float32)
  padded[1:-1, 1:-1] = photo
  # Shift by one into the zero border; clip so far-away samples read zeros.
  x0p = np.clip(x0 + 1, 0, w + 1)
  x1p = np.clip(x0 + 2, 0, w + 1)
  y0p = np.clip(y0 + 1, 0, h + 1)
  y1p = np.clip(y0 + 2, 0, h + 1)
  top = padded[y0p, x0p] * (1 - fx) + padded[y0p, x1p] * fx
  bottom = padded[y1p, x0p] * (1 - fx) + padded[y1p, x1p] * fx
  return top * (1 - fy) + bottom * fy


def warp_face(photo: np.ndarray, matrix: np.ndarray, size: int = 112) -> np.ndarray:
  """Warps a photo by a (2, 3) photo->crop matrix into a square crop, bilinear.

  Only the part of the photo the crop covers is read. Where the crop shrinks the photo by 2x or more, that part is
  first reduced by an integer box filter, so a full-resolution photo gives a sharp crop without aliasing.

  Args:
    photo: (H, W, 3) uint8 RGB (grey (H, W) or (H, W, 1) is repeated to RGB).
    matrix: (2, 3) affine mapping photo pixels to crop pixels, e.g. from similarity_transform.
    size: crop side in pixels.
  Returns:
    (size, size, 3) uint8 RGB; parts of the crop outside the photo are black.
  """
  photo = _as_rgb(photo)
  matrix = np.asarray(matrix, np.float64)
  inverse = invert_transform(matrix)
  grid_v, grid_u = np.mgrid[0:size, 0:size].astype(np.float64)
  xs = inverse[0, 0] * grid_u + inverse[0, 1] * grid_v + inverse[0, 2]
  ys = inverse[1, 0] * grid_u + inverse[1, 1] * grid_v + inverse[1, 2]
  h, w = photo.shape[:2]
  x_lo, x_hi = max(0, int(np.floor(xs.min())) - 1), min(w, int(np.ceil(xs.max())) + 2)
  y_lo, y_hi = max(0, int(np.floor(ys.min())) - 1), min(h, int(np.ceil(ys.max())) + 2)
  if x_lo >= x_hi or y_lo >= y_hi:
    return np.zeros((size, size, 3), np.uint8)
  region = photo[y_lo:y_hi, x_lo:x_hi]
  xs, ys = xs - x_lo, ys - y_lo
  scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))  # crop pixels per photo pixel
  factor = int(np.floor(1.0 / (2.0 * scale))) if scale > 0 else 1
  factor = max(1, min(factor, min(region.shape[:2])))
  if factor > 1:
    region = np.asarray(Image.fromarray(np.ascontiguousarray(region)).reduce(factor))
    # Box k of the reduced photo averages pixels [k*f, (k+1)*f): its centre is at k*f + (f-1)/2.
    xs, ys = (xs + 0.5) / factor - 0.5, (ys + 0.5) / factor - 0.5
  out = _bilinear(region, xs, ys)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_photo(photo: np.ndarray, width: int, height: int, box: tuple[float, float, float, float] | None = None
                 ) -> np.ndarray:
  """Resizes (a box of) a photo with Pillow's antialiased bicubic filter: (height, width, 3) uint8."""
  image = Image.fromarray(np.ascontiguousarray(_as_rgb(photo)))
  return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC, box=box))


def centre_crop_matrix(height: int, width: int, size: int = 112) -> np.ndarray:
  """The (2, 3) photo->crop matrix that maps the central square of an (height, width) photo onto a size x size crop."""
  side = min(height, width)
  scale = size / side
  left, top = (width - side) / 2, (height - side) / 2
  # Pixel edges map to pixel edges: crop edge 0 is photo edge `left`, so centres shift by half a pixel each side.
  return np.array([[scale, 0.0, (0.5 - left) * scale - 0.5], [0.0, scale, (0.5 - top) * scale - 0.5]])


def centre_crop_face(photo: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
  """The central square of a photo resized to size x size (antialiased), and its (2, 3) photo->crop matrix."""
  photo = _as_rgb(photo)
  h, w = photo.shape[:2]
  side = min(h, w)
  left, top = (w - side) / 2, (h - side) / 2
  face = resize_photo(photo, size, size, box=(left, top, left + side, top + side))
  return face, centre_crop_matrix(h, w, size)
