"""The synthetic face renderer: a batch of (person traits, photo settings) -> RGB photos, drawn with numpy.

`jaxface.data.synthetic` draws the traits and settings and writes the challenge layout; this module only paints.
Every array op covers the whole batch. A fake's generator traces (TRACE_KINDS, flagged in its settings' `traces`) are
painted here too: `seam`, `smooth`, `checker` and `spectral` (see the synthetic module's docstring).
"""
from __future__ import annotations

import numpy as np

TRACE_KINDS = ('seam', 'smooth', 'checker', 'spectral')


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
