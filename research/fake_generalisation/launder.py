"""Photo laundering (what a KYC flow does to a photo before it reaches us) and shortcut probes on photo files.

Laundering is applied to reals and fakes alike: the fixed test set of the generalisation benchmark (`LAUNDERINGS`:
resize x0.5 and x1.5, JPEG re-encoded at quality 50 and 75, Gaussian blur sigma 1, greyscale) and a random training
augmentation (`random_launder`: random JPEG quality, resize, blur, greyscale, noise). Every function takes and returns
(H, W, 3) uint8 RGB photos; a resize also returns the scale factor so landmarks can follow.

Shortcut probes (`probe_values`) are trivial detectors read off the original file: image side, colour saturation,
the JPEG luminance quantisation table and the file size. A fake detector whose held-out AUC a probe also reaches has
shown nothing (see `probe_auc`).

Numpy and Pillow only: no TensorFlow, no torch.
"""
from __future__ import annotations

import io
import os
import pathlib

import numpy as np
from PIL import Image, ImageFilter

from jaxface.metrics import roc_auc

PathLike = str | os.PathLike
LAUNDERINGS = ('resize_0.5', 'resize_1.5', 'jpeg_50', 'jpeg_75', 'blur_1', 'grey')
PROBES = ('side', 'saturation', 'jpeg_qtable', 'file_size')


def jpeg(photo: np.ndarray, quality: int) -> np.ndarray:
  """Re-encodes a photo as JPEG at `quality` (4:2:0, Pillow's default) and decodes it again."""
  buffer = io.BytesIO()
  Image.fromarray(photo).save(buffer, format='JPEG', quality=int(quality))
  return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert('RGB'))


def resize(photo: np.ndarray, factor: float) -> np.ndarray:
  """Resizes a photo by `factor` (bicubic, antialiased when shrinking, as most upload paths do)."""
  h, w = photo.shape[:2]
  size = (max(1, round(w * factor)), max(1, round(h * factor)))
  return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC))


def blur(photo: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian blur of standard deviation `sigma` pixels."""
  return np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(radius=float(sigma))))


def grey(photo: np.ndarray) -> np.ndarray:
  """Greyscale (ITU-R 601 luma), repeated to three channels."""
  luma = np.asarray(Image.fromarray(photo).convert('L'))
  return np.repeat(luma[:, :, None], 3, axis=2)


def launder(photo: np.ndarray, name: str) -> tuple[np.ndarray, float]:
  """One of `LAUNDERINGS` applied to a photo -> (laundered photo, scale of its pixel grid against the input)."""
  if name.startswith('resize_'):
    factor = float(name.split('_')[1])
    return resize(photo, factor), factor
  if name.startswith('jpeg_'):
    return jpeg(photo, int(name.split('_')[1])), 1.0
  if name.startswith('blur_'):
    return blur(photo, float(name.split('_')[1])), 1.0
  if name == 'grey':
    return grey(photo), 1.0
  raise ValueError(f'unknown laundering {name!r}: use one of {", ".join(LAUNDERINGS)}')


def random_launder(photo: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
  """A random chain of launderings, at least one: resize x[0.4, 1.6] (p 0.5), blur sigma [0.3, 1.5] (p 0.3), noise
  sigma [1, 4] grey levels (p 0.2), greyscale (p 0.15), then JPEG quality [30, 95] (p 0.6).

  Returns (photo, scale of its pixel grid against the input).
  """
  while True:
    steps = rng.random(5) < np.array([0.5, 0.3, 0.2, 0.15, 0.6])
    if steps.any():
      break
  scale = 1.0
  if steps[0]:
    scale = float(rng.uniform(0.4, 1.6))
    photo = resize(photo, scale)
  if steps[1]:
    photo = blur(photo, rng.uniform(0.3, 1.5))
  if steps[2]:
    noise = rng.normal(0.0, rng.uniform(1.0, 4.0), photo.shape)
    photo = np.clip(np.round(photo + noise), 0, 255).astype(np.uint8)
  if steps[3]:
    photo = grey(photo)
  if steps[4]:
    photo = jpeg(photo, int(rng.integers(30, 96)))
  return photo, scale


def read_photo(path: PathLike) -> np.ndarray:
  """A photo file as (H, W, 3) uint8 RGB."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def probe_values(path: PathLike) -> dict[str, float]:
  """The trivial detectors' readings of one photo file.

  side: sqrt(width * height) in pixels; saturation: mean over pixels of max - min of R, G, B (0 for grey photos);
  jpeg_qtable: sum of the luminance quantisation table (larger = lower quality; 0 for a file that is not a JPEG);
  file_size: bytes.
  """
  path = pathlib.Path(path)
  with Image.open(path) as image:
    width, height = image.size
    tables = getattr(image, 'quantization', None) or {}
    qtable = float(sum(tables[0])) if 0 in tables else 0.0
    rgb = np.asarray(image.convert('RGB'), np.int16)
  saturation = float((rgb.max(axis=2) - rgb.min(axis=2)).mean())
  return {'side': float(np.sqrt(width * height)), 'saturation': saturation, 'jpeg_qtable': qtable,
          'file_size': float(path.stat().st_size)}


def probe_auc(labels: np.ndarray, values: np.ndarray) -> float:
  """AUC of a trivial detector that thresholds `values`, in its better direction: max(AUC, 1 - AUC), in [0.5, 1]."""
  auc = roc_auc(np.asarray(labels), np.asarray(values, np.float64))
  return max(auc, 1.0 - auc)
