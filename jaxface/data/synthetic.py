"""Synthetic face data in the challenge layout: hard enough that it takes learning, deterministic for a seed.

    python -m jaxface.data.synthetic --out DIR [--people 50] [--photos-per-person 8] [--seed 0]
        [--fake-fraction 0.15] [--test-pairs 200] [--test-people N] [--size 112] [--overwrite] [--workers 1]

writes `train/images/<8-digit person>/<k>.jpg`, `train/meta.json`, `test_public/<8-digit pair>/{0,1}.jpg`,
`labels.csv` (pair_id,label,kind) and `synthetic.json` (settings, which identity each folder and pair shows, and the
generator traces of every fake). Two runs with the same arguments write byte-identical files.

Every photo is a face crop (the face fills most of the frame, as in the challenge) drawn procedurally with numpy.

What makes it hard:
- Identity lives in geometry, not in colour or pixels at fixed places. Each person has stable traits (face width and
  height, jaw taper, eye spacing, height and size, eyebrow gap, arch, tilt and thickness, nose length and width, mouth
  height, width and lips, hairline height, curve and widow's peak, hair volume and length, a mole, a beard, skin, hair
  and iris colour) drawn from narrow ranges, so two people differ by a few pixels here and there.
- Every photo moves and re-lights the face: rotation, yaw (features shift and foreshorten), scale, position, shading
  from a random light, a brightness gradient across the frame, exposure and colour cast, expression (smile, open
  mouth, raised eyebrows, half-closed eyes, gaze), a random background (colour, blotches, stripes) and clothes, blur,
  sensor noise and JPEG quality 75-95. The per-photo variation is larger than the difference between people, so an
  untrained measure (cosine of raw pixels, colour histograms) scores the test pairs near chance
  (tests/test_synthetic.py checks EER > 0.3).
- Fakes (default 15% of the training photos, marked 1 in meta.json, in the person's own folder) render that person's
  traits, so a model that only learned identity accepts them. Each carries one or two generator traces, subtle but
  strong enough to survive JPEG: `seam` (the inner face blended in with a colour and brightness mismatch and a soft
  edge), `smooth` (no skin texture and little sensor noise inside the face while the rest stays noisy), `checker`
  (rendered at half resolution, upsampled by repetition, plus a periodic 2x2 transposed-convolution pattern) and
  `spectral` (a faint high-frequency periodic pattern: peaks in the spectrum).
- Test people are disjoint from training people; test pairs are `same` (label 1), `different`, `own_fake` (a real
  photo and a fake of the same person) and `other_fake` (a real photo and a fake of someone else), in equal shares.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import io
import json
import math
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

TRACE_KINDS = ('seam', 'smooth', 'checker', 'spectral')
PAIR_KINDS = ('same', 'different', 'own_fake', 'other_fake')

# Random streams, one per purpose, so adding draws to one never shifts another.
_PERSON, _TRAIN_PHOTO, _TEST_PHOTO, _FAKE_SLOTS, _PAIRS = range(5)

_SKIN_LIGHT = np.array([0.93, 0.78, 0.67])
_SKIN_DARK = np.array([0.42, 0.28, 0.20])
_HAIR = np.array([[0.07, 0.06, 0.06], [0.20, 0.13, 0.08], [0.38, 0.25, 0.15], [0.74, 0.60, 0.38],
                  [0.52, 0.24, 0.11], [0.60, 0.59, 0.57]])
_HAIR_P = np.array([0.3, 0.25, 0.2, 0.12, 0.06, 0.07])
_IRIS = np.array([[0.30, 0.18, 0.10], [0.15, 0.09, 0.05], [0.30, 0.45, 0.65], [0.30, 0.45, 0.30], [0.45, 0.48, 0.50]])
# 2x2 transposed-convolution fingerprints (zero mean); rows and columns both carry energy so JPEG keeps some of it.
_CHECKER = np.array([[[1.0, 0.1], [-0.2, -0.9]], [[0.8, 0.6], [-0.7, -0.7]], [[0.9, -0.9], [0.3, -0.3]]])


# ----------------------------------------------------------------------------------------------------------------------
# Random draws: who a person is, and how one photo of them was taken.


def person_traits(seed: int, identity: int) -> dict[str, float | np.ndarray]:
  """The stable traits of one person (scalars in face units of about half a head width, colours (3,) in [0, 1])."""
  rng = np.random.default_rng([seed, _PERSON, identity])
  u = rng.uniform
  tone = u(0, 1)
  skin = np.clip(_SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone + rng.normal(0, 0.025, 3), 0, 1)
  hair = np.clip(_HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] + rng.normal(0, 0.025, 3), 0, 1)
  nose_y = u(0.13, 0.25)
  return dict(
      face_w=u(0.52, 0.63), face_h=u(0.70, 0.80), jaw=u(0.05, 0.35),
      eye_dx=u(0.19, 0.26), eye_y=u(-0.10, 0.0), eye_w=u(0.065, 0.095), eye_h=u(0.028, 0.042),
      brow_gap=u(0.07, 0.12), brow_arch=u(0.0, 0.05), brow_thick=u(0.018, 0.035), brow_tilt=u(-0.03, 0.03),
      brow_w=u(0.08, 0.12),
      nose_y=nose_y, nose_w=u(0.045, 0.08),
      mouth_y=nose_y + u(0.12, 0.20), mouth_w=u(0.13, 0.21), lip=u(0.012, 0.03),
      hairline=u(-0.48, -0.22), hair_curve=u(0.0, 0.35), hair_peak=u(0.0, 0.08), hair_volume=u(1.03, 1.14),
      hair_length=u(-0.3, 0.9),
      mole=float(u() < 0.35), mole_u=u(-0.55, 0.55), mole_v=u(-0.1, 0.5),
      beard=max(0.0, u(-0.8, 0.5)),
      skin=skin, hair=hair,
      iris=np.clip(_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 0.03, 3), 0, 1),
      lips=np.clip(skin * np.array([0.92, 0.62, 0.62]) + rng.normal(0, 0.02, 3), 0, 1),
  )


def photo_settings(rng: np.random.Generator, is_fake: bool) -> dict[str, float | np.ndarray]:
  """How one photo is taken: pose, light, expression, background, camera; and its generator traces if fake."""
  u = rng.uniform
  settings = dict(
      angle=float(np.clip(rng.normal(0, 0.1), -0.26, 0.26)), scale=u(0.88, 1.06),
      shift_x=u(-0.06, 0.06), shift_y=u(-0.04, 0.07), yaw=u(-0.35, 0.35),
      light=np.array([u(-0.8, 0.8), u(-0.8, 0.5), u(0.5, 1.0)]), ambient=u(0.5, 0.8),
      gradient=u(0.0, 0.45), gradient_angle=u(0, 2 * math.pi), exposure=u(0.7, 1.2),
      cast=np.exp(rng.normal(0, 0.09, 3)),
      smile=u(-0.3, 1.0), mouth_open=max(0.0, u(-0.6, 1.0)) * 0.06, brow_raise=u(0.0, 0.035),
      eye_open=u(0.55, 1.1), gaze=np.array([u(-0.3, 0.3), u(-0.2, 0.2)]),
      background=np.clip(u(0.15, 0.85) + u(-0.25, 0.25, 3), 0.02, 0.98), blotches=u(0.0, 0.3),
      stripes=u(0.0, 0.12) * (u() < 0.35),
      stripe_freq=u(2, 10), stripe_angle=u(0, math.pi), clothes=u(0.05, 0.9, 3),
      blur=u(0.0, 1.1), noise=u(1.5, 5.0) / 255, skin_texture=u(0.008, 0.02), quality=int(rng.integers(75, 96)),
      noise_seed=int(rng.integers(2**62)),
  )
  traces = np.zeros(len(TRACE_KINDS))
  if is_fake:
    chosen = rng.choice(len(TRACE_KINDS), size=1 + int(u() < 0.4), replace=False)
    traces[chosen] = 1

  def sign() -> float:
    return 1.0 if u() < 0.5 else -1.0

  settings.update(
      traces=traces,
      seam_gain=np.array([sign() * u(0.05, 0.12) for _ in range(3)]), seam_offset=sign() * u(0.03, 0.07),
      checker=_CHECKER[rng.integers(len(_CHECKER))] * u(4.0, 6.0) / 255,
      spectral_amp=u(2.0, 3.5) / 255, spectral_period=float(rng.choice([4.0, 5.0, 6.0, 8.0])),
      spectral_angle=float(rng.choice([0.0, 0.5, 0.25, 0.75])) * math.pi, spectral_phase=u(0, 2 * math.pi),
  )
  return settings


# ----------------------------------------------------------------------------------------------------------------------
# Rendering a batch of photos with numpy (every array op covers the whole batch).


def _stack(dicts: list[dict], key: str) -> np.ndarray:
  """Per-photo values, shaped to broadcast: (B,) -> (B, 1, 1); colours (B, 3) -> (B, 3, 1, 1); float32."""
  values = np.asarray([d[key] for d in dicts], np.float32)
  return values.reshape(len(dicts), *values.shape[1:], 1, 1)


def _rgb(red: float, green: float, blue: float) -> np.ndarray:
  return np.array([red, green, blue], np.float32)[:, None, None]


# Images are channels-first (B, 3, S, S) while drawing: numpy broadcasts far faster over a last axis of S than of 3.


def _paint(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
  """In place: image (B, 3, S, S) <- alpha (B, S, S) over colour (B, 3, 1, 1), (3, 1, 1) or (B, 3, S, S)."""
  image += alpha[:, None] * (colour - image)


def _blur(image: np.ndarray, sigma: np.ndarray) -> np.ndarray:
  """Separable Gaussian blur of (B, C, S, S) with a per-photo sigma (B,) in pixels (at most about 1.2)."""
  radius = 2
  taps = np.arange(-radius, radius + 1, dtype=np.float32)
  sigma = np.maximum(np.asarray(sigma, np.float32), 1e-3)[:, None]
  weights = np.exp(-0.5 * (taps[None] / sigma) ** 2)
  weights = (weights / weights.sum(1, keepdims=True))[:, :, None, None, None]
  size = image.shape[-1]
  padded = np.pad(image, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode='edge')
  rows = sum(weights[:, i] * padded[:, :, i:i + size] for i in range(2 * radius + 1))
  padded = np.pad(rows, ((0, 0), (0, 0), (0, 0), (radius, radius)), mode='edge')
  return sum(weights[:, i] * padded[..., i:i + size] for i in range(2 * radius + 1))


def _upsample_matrix(size: int, cells: int) -> np.ndarray:
  """(size, cells) bilinear interpolation weights from a coarse grid of cells to pixels."""
  position = np.clip((np.arange(size) + 0.5) / size * cells - 0.5, 0, cells - 1)
  low = np.minimum(np.floor(position).astype(int), cells - 2)
  frac = position - low
  matrix = np.zeros((size, cells), np.float32)
  matrix[np.arange(size), low] = 1 - frac
  matrix[np.arange(size), low + 1] = frac
  return matrix


def render_faces(traits: list[dict], photos: list[dict], size: int = 112) -> np.ndarray:
  """Draws one photo per (traits, settings) pair.

  Args:
    traits: per photo, the person's traits from `person_traits`.
    photos: per photo, the settings from `photo_settings`.
    size: output side in pixels (even).

  Returns:
    (B, size, size, 3) uint8 RGB, before JPEG.
  """
  batch = len(photos)
  t = {key: _stack(traits, key) for key in traits[0]}
  p = {key: _stack(photos, key) for key in photos[0] if key not in ('noise_seed', 'quality', 'checker', 'traces')}
  noise_rngs = [np.random.default_rng(photo['noise_seed']) for photo in photos]
  traces = np.asarray([photo['traces'] for photo in photos]) > 0
  fake = {kind: np.flatnonzero(traces[:, i]) for i, kind in enumerate(TRACE_KINDS)}

  coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
  x, y = coords[None, None, :], coords[None, :, None]
  cos, sin = np.cos(p['angle']), np.sin(p['angle'])
  dx, dy = x - p['shift_x'], y - p['shift_y']
  u = (cos * dx + sin * dy) / p['scale']  # face coordinates: u right, v down, head centre at 0
  v = (-sin * dx + cos * dy) / p['scale']
  pixel = 2.0 / size / p['scale']  # one pixel in face units

  def fill(distance, feather=1.0):  # soft inside-mask (B, S, S) from a signed distance (negative inside)
    return np.clip(0.5 - distance / (feather * pixel), 0, 1)

  flat = {key: p[key].reshape(batch) for key in ('angle', 'scale', 'shift_x', 'shift_y')}

  def window(centre_u, centre_v, radius, margin=4):
    """Pixel rows and columns that hold, in every photo of the batch, a feature of `radius` around a centre."""
    centre_u = np.broadcast_to(centre_u, (batch, 1, 1)).reshape(batch)
    centre_v = np.broadcast_to(centre_v, (batch, 1, 1)).reshape(batch)
    cos, sin, scale = np.cos(flat['angle']), np.sin(flat['angle']), flat['scale']
    column = (flat['shift_x'] + scale * (cos * centre_u - sin * centre_v) + 1) * size / 2 - 0.5
    row = (flat['shift_y'] + scale * (sin * centre_u + cos * centre_v) + 1) * size / 2 - 0.5
    reach = np.max(np.broadcast_to(radius, (batch, 1, 1)).reshape(batch) * scale) * size / 2 + margin

    def span(values):
      return slice(int(np.clip(np.floor(values.min() - reach), 0, size)),
                   int(np.clip(np.ceil(values.max() + reach) + 1, 0, size)))
    return span(row), span(column)

  yaw = p['yaw']
  centre = yaw * 0.05
  width = t['face_w'] * (1 - 0.12 * np.abs(yaw))
  height = t['face_h']
  tapered = width * (1 - t['jaw'] * np.clip(v / height, 0, 1) ** 2)
  nx, ny = (u - centre) / tapered, v / height
  head_r = np.sqrt(nx ** 2 + ny ** 2)
  head = fill((head_r - 1) * width)

  # Background: colour, soft blotches, sometimes stripes.
  cells = 6
  coarse = np.stack([rng.standard_normal((4, cells, cells), np.float32) for rng in noise_rngs])
  coarse = coarse[:, :1] + 0.35 * coarse[:, 1:]  # mostly brightness, a little colour
  matrix = _upsample_matrix(size, cells)
  blotches = matrix @ coarse @ matrix.T  # (B, 3, S, S)
  stripe_dir = x * np.cos(p['stripe_angle']) + y * np.sin(p['stripe_angle'])
  stripes = np.sin(2 * np.pi * p['stripe_freq'] * stripe_dir) * p['stripes']
  image = p['background'] * (1 + p['blotches'][:, None] * blotches + stripes[:, None])

  # Hair behind the head (long hair), neck, clothes.
  hair_w, hair_h = width * t['hair_volume'], height * t['hair_volume']
  hair_r = np.sqrt(((u - centre) / hair_w) ** 2 + ((v + 0.03) / hair_h) ** 2)
  strands = 1 + 0.08 * np.sin(55 * (u - centre) + 6 * v)
  hair_colour = t['hair'] * strands[:, None]
  back_hair = np.maximum((hair_r - 1.04) * hair_w, v - t['hair_length'])
  _paint(image, fill(back_hair), hair_colour * 0.8)
  neck = np.maximum(np.abs(u - centre * 0.6) - t['face_w'] * 0.55, 0.3 - v)
  _paint(image, fill(neck), t['skin'] * 0.75)
  clothes = (0.95 + 0.35 * (u - centre * 0.5) ** 2) - v
  _paint(image, fill(clothes), p['clothes'])

  # Skin, lit like a sphere from the photo's light.
  light = p['light'] / np.sqrt((p['light'] ** 2).sum(1, keepdims=True))  # (B, 3, 1, 1)
  nz = np.sqrt(np.clip(1 - head_r ** 2, 0, 1))
  lambert = np.clip(nx * light[:, 0] + ny * light[:, 1] + nz * light[:, 2], 0, 1)
  shade = (p['ambient'] + (1 - p['ambient']) * 1.25 * lambert)[:, None]  # (B, 1, S, S)
  skin = t['skin'] * shade
  _paint(image, head, skin)
  if t['beard'].any():
    beard = np.maximum((head_r - 1) * width, t['nose_y'] + 0.07 - v)
    _paint(image, fill(beard) * t['beard'], hair_colour * 0.9)
  if t['mole'].any():
    rows, cols = window(centre + t['mole_u'] * width, t['mole_v'], 0.02)
    mole = np.sqrt((u[:, rows, cols] - centre - t['mole_u'] * width) ** 2 + (v[:, rows, cols] - t['mole_v']) ** 2)
    _paint(image[:, :, rows, cols], fill(mole - 0.012) * t['mole'] * 0.8, skin[:, :, rows, cols] * 0.45)

  # Front hair above the hairline.
  du = (u - centre) / width
  hairline = t['hairline'] + t['hair_curve'] * du ** 2 + t['hair_peak'] * np.exp(-(du / 0.12) ** 2)
  _paint(image, fill(np.maximum((hair_r - 1) * hair_w, v - hairline)), hair_colour)

  # Eyes and eyebrows; yaw moves them sideways and shrinks the far one.
  eye_open = t['eye_h'] * p['eye_open']
  for side in (-1.0, 1.0):
    fore = 1 - 0.3 * yaw * side
    eye_u = centre + yaw * 0.1 + side * t['eye_dx'] * fore
    eye_w = t['eye_w'] * fore
    rows, cols = window(eye_u, t['eye_y'] - 0.08, 0.24)
    u_, v_, out = u[:, rows, cols], v[:, rows, cols], image[:, :, rows, cols]
    shade_, skin_ = shade[:, :, rows, cols], skin[:, :, rows, cols]
    socket = np.sqrt(((u_ - eye_u) / (eye_w * 1.5)) ** 2 + ((v_ - t['eye_y']) / (t['eye_h'] * 2.0)) ** 2) - 1
    _paint(out, fill(socket * eye_w, feather=6.0) * 0.25, skin_ * 0.7)
    eye_r = np.sqrt(((u_ - eye_u) / eye_w) ** 2 + ((v_ - t['eye_y']) / eye_open) ** 2)
    sclera = fill((eye_r - 1) * eye_open)
    _paint(out, sclera, _rgb(0.93, 0.91, 0.88) * shade_)
    iris_u = eye_u + p['gaze'][:, 0] * eye_w
    iris_v = t['eye_y'] + p['gaze'][:, 1] * t['eye_h']
    iris_d = np.sqrt((u_ - iris_u) ** 2 + (v_ - iris_v) ** 2)
    _paint(out, sclera * fill(iris_d - t['eye_h'] * 1.05), t['iris'] * shade_)
    _paint(out, sclera * fill(iris_d - t['eye_h'] * 0.45), _rgb(0.03, 0.03, 0.03))
    _paint(out, fill(np.abs(eye_r - 1) * eye_open - 0.004 - 0.3 * pixel) * 0.8, skin_ * 0.3)
    brow_t = (u_ - eye_u) / (t['brow_w'] * fore)
    brow_v = (t['eye_y'] - t['brow_gap'] - p['brow_raise'] - t['brow_arch'] * (1 - brow_t ** 2)
              + t['brow_tilt'] * side * brow_t)
    thickness = t['brow_thick'] * (1 - 0.2 * (side * brow_t + 1))
    brow = np.maximum(np.abs(v_ - brow_v) - thickness / 2, (np.abs(brow_t) - 1) * t['brow_w'] * fore)
    _paint(out, fill(brow) * 0.9, t['hair'] * 0.8)

  # Nose: bridge shadow on the side away from the light, tip, nostrils, shadow under it.
  nose_u = centre + yaw * 0.2
  bridge_u = nose_u - 0.035 * np.sign(light[:, 0] + 1e-3)
  rows, cols = window(nose_u, (t['eye_y'] + t['nose_y']) / 2 + 0.055, 0.2, margin=8)
  u_, v_, out, skin_ = u[:, rows, cols], v[:, rows, cols], image[:, :, rows, cols], skin[:, :, rows, cols]
  bridge = np.maximum(np.maximum(np.abs(u_ - bridge_u) - 0.008, t['eye_y'] + 0.05 - v_), v_ - t['nose_y'])
  _paint(out, fill(bridge, feather=3.0) * 0.3, skin_ * 0.6)
  tip = np.sqrt(((u_ - nose_u) / t['nose_w']) ** 2 + ((v_ - t['nose_y']) / (t['nose_w'] * 0.6)) ** 2) - 1
  _paint(out, fill(tip * t['nose_w'], feather=3.0) * 0.35, np.minimum(skin_ * 1.15, 1))
  under = np.sqrt(((u_ - nose_u) / t['nose_w']) ** 2 + ((v_ - t['nose_y'] - 0.04) / 0.02) ** 2) - 1
  _paint(out, fill(under * 0.02, feather=3.0) * 0.25, skin_ * 0.6)
  for side in (-1.0, 1.0):
    nostril = np.sqrt(((u_ - nose_u - side * t['nose_w'] * 0.55) / (t['nose_w'] * 0.28)) ** 2
                      + ((v_ - t['nose_y'] - t['nose_w'] * 0.25) / (t['nose_w'] * 0.16)) ** 2) - 1
    _paint(out, fill(nostril * t['nose_w'] * 0.16) * 0.85, skin_ * 0.3)

  # Mouth: lips around a line that curves up with a smile, dark opening with teeth when open.
  mouth_u = centre + yaw * 0.12
  mouth_w = t['mouth_w'] * (1 - 0.2 * np.abs(yaw))
  rows, cols = window(mouth_u, t['mouth_y'], mouth_w + 0.03)
  u_, v_, out, shade_ = u[:, rows, cols], v[:, rows, cols], image[:, :, rows, cols], shade[:, :, rows, cols]
  mt = (u_ - mouth_u) / mouth_w
  line = t['mouth_y'] + p['smile'] * 0.03 * (1 - mt ** 2) - p['smile'] * 0.01
  envelope = np.sqrt(np.clip(1 - mt ** 2, 0, 1))
  opening = p['mouth_open'] * envelope
  lips = np.maximum(np.maximum(line - opening / 2 - t['lip'] * envelope - v_,
                               v_ - line - opening / 2 - 1.3 * t['lip'] * envelope), (np.abs(mt) - 1) * mouth_w)
  _paint(out, fill(lips) * 0.85, t['lips'] * shade_)
  inside = fill(np.maximum(np.abs(v_ - line) - opening / 2 - 0.003, (np.abs(mt) - 0.97) * mouth_w))
  _paint(out, inside * 0.9, _rgb(0.25, 0.07, 0.07) * shade_)
  teeth = inside * fill(v_ - (line - opening / 2 + 0.35 * opening)) * (p['mouth_open'] > 0.01)
  _paint(out, teeth * 0.9, _rgb(0.9, 0.88, 0.8) * shade_)

  # The whole photo: light gradient across the frame, exposure, colour cast.
  gradient = 1 + p['gradient'] * (x * np.cos(p['gradient_angle']) + y * np.sin(p['gradient_angle']))
  image *= (gradient * p['exposure'])[:, None] * p['cast']

  # The inner face, where face swaps paste their output.
  inner = np.sqrt(((u - centre - yaw * 0.05) / (width * 0.86)) ** 2 + ((v - 0.1) / (height * 0.8)) ** 2) - 1
  inner = fill(inner * width, feather=1.5)

  # Generator traces touch only the fakes that carry them.
  seam = fake['seam']
  if seam.size:  # the inner face pasted with a colour and brightness mismatch and a soft edge
    part, mask = image[seam], inner[seam, None]
    part += mask * (part * p['seam_gain'][seam] + p['seam_offset'][seam, None])
    edge = 4 * mask * (1 - mask)
    image[seam] = part + edge * (_blur(part, np.full(seam.size, 1.2)) - part)

  image = _blur(image, p['blur'][:, 0, 0])

  checker = fake['checker']
  if checker.size:  # half-resolution render, upsampled by repetition, plus a transposed-convolution fingerprint
    half = image[checker].reshape(checker.size, 3, size // 2, 2, size // 2, 2).mean(axis=(3, 5))
    upsampled = np.repeat(np.repeat(half, 2, axis=2), 2, axis=3)
    fingerprint = np.tile(np.asarray([photos[i]['checker'] for i in checker], np.float32), (1, size // 2, size // 2))
    image[checker] = upsampled + fingerprint[:, None]

  skin_noise = np.stack([rng.standard_normal((size, size), np.float32) for rng in noise_rngs])
  texture = head * skin_noise * p['skin_texture']
  smooth = fake['smooth']
  texture[smooth] = 0  # generators over-smooth skin
  image += texture[:, None]
  if smooth.size:
    part = image[smooth]
    image[smooth] = part + inner[smooth, None] * (_blur(part, np.full(smooth.size, 1.0)) - part)

  spectral = fake['spectral']
  if spectral.size:  # a faint periodic pattern: peaks in the spectrum
    column = np.arange(size, dtype=np.float32)[None, None, :]
    row = np.arange(size, dtype=np.float32)[None, :, None]
    angle, period = p['spectral_angle'][spectral], p['spectral_period'][spectral]
    wave = (column * np.cos(angle) + row * np.sin(angle)) / period
    image[spectral] += (p['spectral_amp'][spectral] * np.cos(2 * np.pi * wave + p['spectral_phase'][spectral]))[:, None]

  sensor = np.stack([rng.standard_normal((3, size, size), np.float32) for rng in noise_rngs])
  noise = np.broadcast_to(p['noise'], inner.shape).copy()
  noise[smooth] *= 1 - 0.85 * inner[smooth]  # the face of an over-smoothed fake stays quiet
  image += sensor * noise[:, None]
  image *= 255
  np.rint(image, out=image)
  np.clip(image, 0, 255, out=image)
  return image.astype(np.uint8).transpose(0, 2, 3, 1)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
  """(H, W, 3) uint8 -> JPEG bytes (deterministic for a given Pillow)."""
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format='JPEG', quality=int(quality))
  return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------------------
# The dataset.


def _fake_slots(seed: int, people: int, photos_per_person: int, fake_fraction: float) -> set[tuple[int, int]]:
  """Which (person, k) photos are fakes: exactly round(fraction * total), never a person's last two real photos."""
  rng = np.random.default_rng([seed, _FAKE_SLOTS])
  eligible = []
  for person in range(people):
    order = rng.permutation(photos_per_person)
    eligible.extend((person, int(k)) for k in order[2:])  # two photos of each person stay real
  wanted = min(int(round(fake_fraction * people * photos_per_person)), len(eligible))
  chosen = rng.choice(len(eligible), size=wanted, replace=False) if wanted else []
  return {eligible[i] for i in chosen}


def _render_chunk(chunk: list[tuple[pathlib.Path, dict, dict]], size: int) -> None:
  images = render_faces([job[1] for job in chunk], [job[2] for job in chunk], size)
  for (path, _, photo), rgb in zip(chunk, images):
    path.write_bytes(encode_jpeg(rgb, photo['quality']))


def _render_and_write(jobs: list[tuple[pathlib.Path, dict, dict]], size: int, workers: int,
                      batch_size: int = 32) -> None:
  for folder in sorted({job[0].parent for job in jobs}):
    folder.mkdir(parents=True, exist_ok=True)
  # Batches do not depend on `workers`, so the bytes written do not either.
  chunks = [jobs[start:start + batch_size] for start in range(0, len(jobs), batch_size)]
  if workers <= 1:
    for chunk in chunks:
      _render_chunk(chunk, size)
    return
  with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
    list(pool.map(_render_chunk, chunks, [size] * len(chunks)))


def _trace_names(photo: dict) -> list[str]:
  return [kind for kind, on in zip(TRACE_KINDS, photo['traces']) if on]


def generate(out_dir, people: int = 50, photos_per_person: int = 8, seed: int = 0, fake_fraction: float = 0.15,
             test_pairs: int = 200, test_people: int | None = None, size: int = 112,
             overwrite: bool = False, workers: int = 1) -> dict:
  """Writes a synthetic dataset in the challenge layout; see the module docstring.

  Args:
    out_dir: folder to write (created; must be empty unless overwrite, which replaces what a previous run wrote).
    people: training identities (folders 00000000..).
    photos_per_person: photos per training identity, fakes included.
    seed: everything follows from it; the same arguments give byte-identical files.
    fake_fraction: share of training photos that are fakes.
    test_pairs: pairs in test_public/, kinds in equal shares.
    test_people: identities used by the test pairs (disjoint from training); default max(4, test_pairs // 4).
    size: image side in pixels (even, >= 32).
    overwrite: replace what a previous run wrote in out_dir.
    workers: rendering processes; the files do not depend on it.

  Returns:
    A summary: counts of people, real and fake photos, pairs by kind, the output folder and the seconds taken.

  Raises:
    ValueError: bad arguments or a non-empty out_dir without overwrite (one line).
  """
  start = time.perf_counter()
  out_dir = pathlib.Path(out_dir)
  if people < 1 or photos_per_person < 2:
    raise ValueError(f'need at least 1 person and 2 photos per person, got {people} and {photos_per_person}')
  if size < 32 or size % 2:
    raise ValueError(f'--size must be even and at least 32, got {size}')
  if not 0 <= fake_fraction < 1:
    raise ValueError(f'--fake-fraction must be in [0, 1), got {fake_fraction}')
  if test_pairs < 0:
    raise ValueError(f'--test-pairs must be >= 0, got {test_pairs}')
  test_people = max(4, test_pairs // 4) if test_people is None else test_people
  if test_pairs and test_people < 2:
    raise ValueError(f'--test-people must be at least 2 for different-person pairs, got {test_people}')
  written = [out_dir / name for name in ('train', 'test_public', 'labels.csv', 'synthetic.json')]
  if out_dir.exists() and any(out_dir.iterdir()):
    if not overwrite:
      raise ValueError(f'{out_dir}: not empty (choose an empty folder or pass --overwrite)')
    for path in written:
      if path.is_dir():
        shutil.rmtree(path)
      elif path.exists():
        path.unlink()

  traits = {}

  def traits_of(identity: int) -> dict:
    if identity not in traits:
      traits[identity] = person_traits(seed, identity)
    return traits[identity]

  # Training photos: identity i lives in folder i.
  fakes = _fake_slots(seed, people, photos_per_person, fake_fraction)
  meta, fake_traces, jobs = {}, {}, []
  for person in range(people):
    for k in range(photos_per_person):
      is_fake = (person, k) in fakes
      photo = photo_settings(np.random.default_rng([seed, _TRAIN_PHOTO, person, k]), is_fake)
      key = f'{person:08d}/{k}.jpg'
      meta[key] = int(is_fake)
      if is_fake:
        fake_traces[key] = _trace_names(photo)
      jobs.append((out_dir / 'train' / 'images' / key, traits_of(person), photo))

  # Test pairs: identities people..people+test_people-1, never seen in training.
  rng = np.random.default_rng([seed, _PAIRS])
  kinds = rng.permutation(np.resize(np.array(PAIR_KINDS), test_pairs)) if test_pairs else []
  labels, pair_info = [], {}
  for index, kind in enumerate(kinds):
    first = people + int(rng.integers(test_people))
    other = people + (first - people + 1 + int(rng.integers(test_people - 1))) % test_people
    second = first if kind in ('same', 'own_fake') else other
    fake_side = int(rng.integers(2)) if kind in ('own_fake', 'other_fake') else -1
    identities = (first, second) if fake_side != 0 else (second, first)
    pair_id = f'{index:08d}'
    info = dict(kind=str(kind), identity0=identities[0], identity1=identities[1])
    for side in (0, 1):
      photo = photo_settings(np.random.default_rng([seed, _TEST_PHOTO, index, side]), side == fake_side)
      info[f'is_fake{side}'] = int(side == fake_side)
      info[f'traces{side}'] = _trace_names(photo)
      jobs.append((out_dir / 'test_public' / pair_id / f'{side}.jpg', traits_of(identities[side]), photo))
    pair_info[pair_id] = info
    labels.append(f'{pair_id},{int(kind == "same")},{kind}')

  out_dir.mkdir(parents=True, exist_ok=True)
  _render_and_write(jobs, size, workers)
  (out_dir / 'train' / 'meta.json').write_text(json.dumps(meta, indent=0) + '\n')
  if test_pairs:
    (out_dir / 'labels.csv').write_text('pair_id,label,kind\n' + '\n'.join(labels) + '\n')
  settings = dict(people=people, photos_per_person=photos_per_person, seed=seed, fake_fraction=fake_fraction,
                  test_pairs=test_pairs, test_people=test_people, size=size)
  record = dict(settings=settings, train_identities={f'{i:08d}': i for i in range(people)},
                fake_traces=fake_traces, test_pairs=pair_info)
  (out_dir / 'synthetic.json').write_text(json.dumps(record, indent=1) + '\n')
  by_kind = {kind: int(sum(1 for k in kinds if k == kind)) for kind in PAIR_KINDS}
  return dict(out_dir=str(out_dir), people=people, train_images=len(meta), fake_images=len(fakes),
              real_images=len(meta) - len(fakes), test_people=test_people if test_pairs else 0,
              test_pairs=test_pairs, pairs_by_kind=by_kind, seconds=round(time.perf_counter() - start, 2))


def _keep_freed_memory() -> None:
  """Asks glibc to reuse freed memory instead of returning it to the kernel.

  Every batch allocates the same few-megabyte numpy temporaries; by default each one is fresh mmapped memory, and the
  page faults of zeroing it took about a quarter of a 1000-person run. Only the command line does this: it changes
  the allocator for the whole process. A no-op where glibc is absent.
  """
  try:
    libc = ctypes.CDLL('libc.so.6')
    libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: serve blocks up to 32 MiB from the heap
    libc.mallopt(-1, 256 * 2**20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of freed heap
  except (OSError, AttributeError):
    pass


def main(argv: Sequence[str] | None = None) -> int:
  """Command line: writes the dataset and prints the summary as JSON; returns 2 with one line on bad input."""
  parser = argparse.ArgumentParser(prog='python -m jaxface.data.synthetic',
                                   description='Write a synthetic face dataset in the challenge layout.')
  parser.add_argument('--out', required=True, help='output folder (empty, or use --overwrite)')
  parser.add_argument('--people', type=int, default=50)
  parser.add_argument('--photos-per-person', type=int, default=8)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--fake-fraction', type=float, default=0.15)
  parser.add_argument('--test-pairs', type=int, default=200)
  parser.add_argument('--test-people', type=int, default=None, help='default max(4, test_pairs // 4)')
  parser.add_argument('--size', type=int, default=112)
  parser.add_argument('--overwrite', action='store_true', help='replace what a previous run wrote in --out')
  parser.add_argument('--workers', type=int, default=1, help='rendering processes (same files for any number)')
  args = parser.parse_args(argv)
  _keep_freed_memory()
  try:
    summary = generate(args.out, people=args.people, photos_per_person=args.photos_per_person, seed=args.seed,
                       fake_fraction=args.fake_fraction, test_pairs=args.test_pairs, test_people=args.test_people,
                       size=args.size, overwrite=args.overwrite, workers=args.workers)
  except (ValueError, OSError) as error:
    print(f'error: {" ".join(str(error).split())}', file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


if __name__ == '__main__':
  sys.exit(main())
