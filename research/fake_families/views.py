"""What a detector is shown of a photo: the aligned face, or a patch of the photo at its own resolution.

- `aligned`: the 112x112 face on the ArcFace template (`jaxface.align.template.warp_face`, bilinear), JPEG-encoded
  at quality 95 4:4:4 as preprocessing stores it: exactly what the product's model reads.
- `native`: a NATIVE_PX square of the photo centred on the five landmarks, cut without resampling (reflected where it
  leaves the photo): the pixels as the generator or the camera left them. Big faces show their centre, small ones
  the whole head.

Laundering (the benchmark's test conditions, applied to the photo file before either view is cut, reals and fakes
alike): `LAUNDERINGS`, with landmarks scaled with the photo. `t2i_look` brings a photo to the look of the
text-to-image fakes (see `catalog`): its face scaled so the eyes are T2I_EYE_PX apart (only ever downscaled: no
real photo here has a face that small... see the function), then JPEG quality 95.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from jaxface.align import template

NATIVE_PX = 96
FACE_JPEG = 95
LAUNDERINGS = ('jpeg_75', 'jpeg_50', 'resize_0.5', 'resize_1.5', 'blur_1', 'grey')


def read_rgb(path: str) -> np.ndarray:
  """A photo file as (H, W, 3) uint8 RGB."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def read_bytes(data: bytes) -> np.ndarray:
  """An encoded image as (H, W, 3) uint8 RGB."""
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert('RGB'))


def jpeg(photo: np.ndarray, quality: int, subsampling: int = -1) -> np.ndarray:
  """Re-encoded as JPEG at `quality` (Pillow's default 4:2:0 unless `subsampling` says otherwise) and decoded."""
  buffer = io.BytesIO()
  Image.fromarray(photo).save(buffer, format='JPEG', quality=int(quality), subsampling=subsampling)
  return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert('RGB'))


def resize(photo: np.ndarray, factor: float) -> np.ndarray:
  """Resized by `factor`, bicubic (Pillow antialiases when shrinking, as upload paths do)."""
  h, w = photo.shape[:2]
  size = (max(1, round(w * factor)), max(1, round(h * factor)))
  return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC))


def launder(photo: np.ndarray, landmarks: np.ndarray, name: str | None) -> tuple[np.ndarray, np.ndarray]:
  """One of LAUNDERINGS (None: unchanged) -> (photo, its landmarks)."""
  if name is None:
    return photo, landmarks
  if name.startswith('jpeg_'):
    return jpeg(photo, int(name.split('_')[1])), landmarks
  if name.startswith('resize_'):
    factor = float(name.split('_')[1])
    out = resize(photo, factor)
    return out, landmarks * np.array([out.shape[1] / photo.shape[1], out.shape[0] / photo.shape[0]], np.float32)
  if name.startswith('blur_'):
    return np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(float(name.split('_')[1])))), landmarks
  if name == 'grey':
    return np.repeat(np.asarray(Image.fromarray(photo).convert('L'))[:, :, None], 3, axis=2), landmarks
  raise ValueError(f'unknown laundering {name!r}: use one of {", ".join(LAUNDERINGS)}')


T2I_EYE_PX = 28.0


def eye_px(landmarks: np.ndarray) -> float:
  return float(np.linalg.norm(landmarks[1] - landmarks[0]))


def t2i_look(photo: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The photo scaled so its eyes are T2I_EYE_PX apart (downscaling only; a smaller face is kept as it is), then
  JPEG 95 once more, as the text-to-image tiles were made (cut from figures, downscaled, JPEG 95)."""
  factor = min(1.0, T2I_EYE_PX / max(eye_px(landmarks), 1e-6))
  if factor < 1.0:
    out = resize(photo, factor)
    landmarks = landmarks * np.array([out.shape[1] / photo.shape[1], out.shape[0] / photo.shape[0]], np.float32)
    photo = out
  return jpeg(photo, 95), landmarks


def aligned(photo: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
  """The (size, size, 3) uint8 face on the ArcFace template, JPEG 95 4:4:4 as the prepared datasets store it."""
  matrix = template.similarity_transform(landmarks, template.template_for_size(size))
  return jpeg(template.warp_face(photo, matrix, size), FACE_JPEG, subsampling=0)


def native(photo: np.ndarray, landmarks: np.ndarray, px: int = NATIVE_PX) -> np.ndarray:
  """The (px, px, 3) uint8 square of the photo centred on the landmarks' mean, no resampling, reflected borders."""
  cx, cy = np.round(landmarks.mean(axis=0)).astype(int)
  h, w = photo.shape[:2]
  pad = px
  padded = np.pad(photo, ((pad, pad), (pad, pad), (0, 0)), mode='reflect' if min(h, w) > pad else 'edge')
  top, left = cy - px // 2 + pad, cx - px // 2 + pad
  top = int(np.clip(top, 0, padded.shape[0] - px))
  left = int(np.clip(left, 0, padded.shape[1] - px))
  return np.ascontiguousarray(padded[top:top + px, left:left + px])
