"""Trivial detectors: what a fake-detection figure must beat. Each reads one number off a test photo; its AUC is
taken in its better direction (max(AUC, 1 - AUC)), so a probe at 0.5 knows nothing and one near the detector's AUC
means the detector may be reading the same shortcut.

    side            sqrt(width x height) of the photo
    file_size       bytes of its file (of the JPEG a change wrote, for a changed photo)
    jpeg_qtable     sum of the file's luminance quantisation table (0 for a file that is not a JPEG)
    saturation      mean over pixels of max - min of R, G, B
    face_px         eye distance in photo pixels
    sharpness       log variance of the Laplacian over the aligned face's middle half
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

NAMES = ('side', 'file_size', 'jpeg_qtable', 'saturation', 'face_px', 'sharpness')


def sharpness(face: np.ndarray) -> float:
  grey = face.astype(np.float64).mean(-1)
  lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
  s = lap.shape[0]
  return float(np.log(lap[s // 4:s - s // 4, s // 4:s - s // 4].var() + 1e-3))


def read(photo: np.ndarray, landmarks: np.ndarray, data: bytes, aligned_face: np.ndarray | None) -> dict[str, float]:
  """The probes' readings of one test photo (its pixels, landmarks and file bytes; its aligned face if at hand)."""
  with Image.open(io.BytesIO(data)) as image:
    tables = getattr(image, 'quantization', None) or {}
  if aligned_face is None:
    from research.fake_families.views import aligned  # pylint: disable=import-outside-toplevel
    aligned_face = aligned(photo, landmarks)
  rgb = photo.astype(np.int16)
  return {'side': float(np.sqrt(photo.shape[0] * photo.shape[1])), 'file_size': float(len(data)),
          'jpeg_qtable': float(sum(tables[0])) if 0 in tables else 0.0,
          'saturation': float((rgb.max(axis=2) - rgb.min(axis=2)).mean()),
          'face_px': float(np.linalg.norm(landmarks[1] - landmarks[0])), 'sharpness': sharpness(aligned_face)}


def table(readings: list[dict[str, float]], labels: np.ndarray) -> dict:
  """{probe: AUC in its better direction, 'best': the highest, 'best_name': its probe}."""
  from jaxface.metrics import roc_auc  # pylint: disable=import-outside-toplevel
  out = {}
  for name in NAMES:
    values = np.array([r[name] for r in readings], np.float64)
    value = roc_auc(labels, values) if np.ptp(values) > 0 else 0.5
    out[name] = max(value, 1.0 - value)
  out['best_name'] = max(NAMES, key=out.get)
  out['best'] = out[out['best_name']]
  return out
