"""Pseudo-fakes: the pipeline's own fake factory, in TensorFlow ops so it runs inside tf.data.

Three kinds, each a pure function of (aligned face, seed) built on `tf.random.stateless_*`, so a seed fixes the result:

- `self_blend`: a real face blended with a slightly changed copy of itself (colour, sharpness, scale and shift)
  through a soft face mask (after Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images", CVPR 2022):
  seams and statistics mismatches, no identity change.
- `swap`: the inner face of one real person pasted onto another's aligned face, colour-matched inside the mask
  (per-channel mean and std), through a feathered mask: a cheap face swap of the target.
- `trace`: generator traces inside the face of a real photo: 2x resampling with a checkerboard (transposed
  convolution-like) pattern, a faint periodic high-frequency (spectral) pattern, or over-smoothing.

Every kind changes pixels only through `face_mask`, a random ellipse or hull around the eyes, nose and mouth of the
landmarks (the ArcFace template for an aligned face), randomly dilated and Gaussian-feathered with a kernel of fixed
radius. Pixels farther than that radius from the largest possible hull are returned bit-identical (`face_region`
gives that set). Whole-image generator traces (diffusion faces) are left to the recorded fakes in the data.

Inputs and outputs are (H, W, 3) uint8 faces; seeds are (2,) int32/int64 tensors as for `tf.random.stateless_uniform`.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from jaxface.align.template import ARCFACE_TEMPLATE
from jaxface.data.augment import affine, blur_reflect, gaussian_blur

KINDS = ('self_blend', 'swap', 'trace')
TRACES = ('checkerboard', 'spectral', 'smooth')

# Mask geometry, in units of the eye-to-mouth distance (about 41 px in a 112 crop); the upper ends bound face_region.
_ELLIPSE_U = (1.25, 1.6)   # half-width as a multiple of half the eye distance
_ELLIPSE_V = (1.35, 1.7)   # half-height as a multiple of half the eye-to-mouth distance
_BROW_OUT, _BROW_UP = (0.15, 0.35), (0.35, 0.55)
_MOUTH_OUT, _MOUTH_DOWN = (0.1, 0.3), (0.1, 0.3)
_CHIN_DOWN = (0.2, 0.4)
# Feather sigma in pixels of a 112 crop. The kernel is cut at 3 sigma of the largest sigma, so the mask is exactly
# zero beyond that radius from the hull.
_FEATHER_SIGMA = (1.5, 4.0)


def template_landmarks(size: int) -> tf.Tensor:
  """The ArcFace template for a size x size aligned face: (5, 2) float32 (x, y) pixels."""
  return tf.constant(ARCFACE_TEMPLATE * (size / 112.0), tf.float32)


def feather_radius(size: int) -> int:
  """Radius in pixels beyond which the feathered mask is exactly zero, for a size x size face."""
  return int(math.ceil(3.0 * _FEATHER_SIGMA[1] * size / 112.0))


def _seeds(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
  return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), n))


def _uniform(seed: tf.Tensor, lo: float, hi: float, shape=()) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, seed, lo, hi, dtype=tf.float32)


def _face_frame(landmarks: tf.Tensor):
  """Unit axes along the eyes (u) and down the face (v), eye and mouth midpoints, eye and eye-mouth distances."""
  left_eye, right_eye, _, left_mouth, right_mouth = tf.unstack(landmarks)
  eye_mid = 0.5 * (left_eye + right_eye)
  mouth_mid = 0.5 * (left_mouth + right_mouth)
  eye_dist = tf.norm(right_eye - left_eye)
  u = (right_eye - left_eye) / eye_dist
  v = tf.stack([-u[1], u[0]])  # u turned a quarter towards +y (down the image)
  return u, v, eye_mid, mouth_mid, eye_dist, tf.norm(mouth_mid - eye_mid)


def _pixel_grid(height: int, width: int) -> tf.Tensor:
  ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing='ij')
  return tf.stack([xs, ys], axis=-1)  # (H, W, 2) as (x, y)


def _ellipse(grid, landmarks, ku, kv):
  u, v, eye_mid, mouth_mid, eye_dist, face_len = _face_frame(landmarks)
  centre = 0.5 * (eye_mid + mouth_mid) - 0.05 * face_len * v  # a little up so the brows are reached
  axes = tf.stack([u / (0.5 * eye_dist * ku), v / (0.5 * face_len * kv)], axis=1)  # (2, 2)
  p = tf.einsum('hwc,ck->hwk', grid, axes) - tf.linalg.matvec(axes, centre, transpose_a=True)
  pu, pv = p[..., 0], p[..., 1]
  return tf.cast(pu * pu + pv * pv <= 1.0, tf.float32)


def _hull(grid, landmarks, brow_out, brow_up, mouth_out, mouth_down, chin_down):
  u, v, _, mouth_mid, _, face_len = _face_frame(landmarks)
  left_eye, right_eye, _, left_mouth, right_mouth = tf.unstack(landmarks)
  d = face_len
  corners = tf.stack([
      left_eye - brow_out * d * u - brow_up * d * v,
      right_eye + brow_out * d * u - brow_up * d * v,
      right_mouth + mouth_out * d * u + mouth_down * d * v,
      mouth_mid + chin_down * d * v,
      left_mouth - mouth_out * d * u + mouth_down * d * v])  # (5, 2), convex by symmetry of the offsets
  edges = tf.roll(corners, -1, axis=0) - corners
  # The edge cross products are affine in the pixel position: one small matrix product for all five edges.
  normals = tf.stack([-edges[:, 1], edges[:, 0]])  # (2, 5)
  cross = tf.einsum('hwc,ck->hwk', grid, normals) - tf.reduce_sum(tf.transpose(normals) * corners, -1)
  inside = tf.logical_or(tf.reduce_all(cross >= 0, -1), tf.reduce_all(cross <= 0, -1))
  return tf.cast(inside, tf.float32)


def face_mask(size: int, seed: tf.Tensor, landmarks: tf.Tensor | None = None) -> tf.Tensor:
  """A random soft mask over the inner face: (size, size, 1) float32 in [0, 1], exactly 0 outside `face_region`.

  An ellipse or a hull (brows, mouth corners, chin) around the landmarks with random dilation, feathered by a
  Gaussian of random sigma, then scaled by a random blend strength in [0.6, 1] (1 half of the time).
  """
  landmarks = template_landmarks(size) if landmarks is None else tf.cast(landmarks, tf.float32)
  s = _seeds(seed, 11)
  grid = _pixel_grid(size, size)
  ellipse = lambda: _ellipse(grid, landmarks, _uniform(s[1], *_ELLIPSE_U), _uniform(s[2], *_ELLIPSE_V))
  hull = lambda: _hull(grid, landmarks, _uniform(s[3], *_BROW_OUT), _uniform(s[4], *_BROW_UP),
                       _uniform(s[5], *_MOUTH_OUT), _uniform(s[6], *_MOUTH_DOWN), _uniform(s[7], *_CHIN_DOWN))
  # Both shapes are cheap; selecting avoids a tf.cond, whose branch functions make every pipeline build slower.
  hard = tf.where(_uniform(s[0], 0, 1) < 0.5, ellipse(), hull())
  scale = size / 112.0
  sigma = _uniform(s[8], *_FEATHER_SIGMA) * scale
  soft = gaussian_blur(hard[:, :, None], sigma, feather_radius(size))
  # Where the hard mask is solid the blur keeps it at 1 only deep inside; renormalise so the centre is fully pasted.
  soft = tf.clip_by_value(soft * 1.25, 0.0, 1.0)
  strength = tf.where(_uniform(s[9], 0, 1) < 0.5, 1.0, _uniform(s[10], 0.6, 1.0))
  return soft * strength


def face_region(size: int, landmarks: np.ndarray | None = None) -> np.ndarray:
  """Every pixel a pseudo-fake may change, for a size x size face: (size, size) bool.

  The union of the largest ellipse and hull `face_mask` can draw, dilated by the feather radius.
  """
  lm = template_landmarks(size) if landmarks is None else tf.constant(landmarks, tf.float32)
  grid = _pixel_grid(size, size)
  hard = tf.maximum(_ellipse(grid, lm, _ELLIPSE_U[1], _ELLIPSE_V[1]),
                    _hull(grid, lm, _BROW_OUT[1], _BROW_UP[1], _MOUTH_OUT[1], _MOUTH_DOWN[1], _CHIN_DOWN[1]))
  r = feather_radius(size)
  grown = tf.nn.max_pool2d(hard[None, :, :, None], 2 * r + 1, 1, 'SAME')[0, :, :, 0]
  return grown.numpy() > 0


def _small_affine(image: tf.Tensor, seed: tf.Tensor, max_scale: float, max_shift: float, max_angle_deg: float):
  s = _seeds(seed, 3)
  size_scale = image.shape[0] / 112.0
  return affine(image, _uniform(s[0], 1.0 - max_scale, 1.0 + max_scale),
                 _uniform(s[1], -max_shift, max_shift, [2]) * size_scale,
                 _uniform(s[2], -max_angle_deg, max_angle_deg) * math.pi / 180.0)


def _sharpness(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Randomly blurs, sharpens (unsharp mask) or keeps a (H, W, 3) float32 image."""
  s = _seeds(seed, 3)
  radius = max(2, int(math.ceil(3 * 1.2 * image.shape[0] / 112.0)))
  sigma = _uniform(s[1], 0.5, 1.2) * image.shape[0] / 112.0
  blurred = blur_reflect(image, sigma, radius)
  amount = _uniform(s[2], 0.3, 0.8)
  choice = _uniform(s[0], 0, 3)
  return tf.where(choice < 1, blurred, tf.where(choice < 2, image + amount * (image - blurred), image))


def _colour_shift(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Small contrast, brightness and per-channel shifts of a (H, W, 3) float32 [0, 255] image."""
  s = _seeds(seed, 3)
  mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
  contrast = _uniform(s[0], 0.9, 1.1)
  brightness = _uniform(s[1], -10.0, 10.0)
  channel = _uniform(s[2], -8.0, 8.0, [3])
  return (image - mean) * contrast + mean + brightness + channel


def _blend(target: tf.Tensor, source: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """target * (1 - mask) + source * mask, rounded to uint8. Where mask == 0 the target comes back bit-identical."""
  out = target * (1.0 - mask) + source * mask
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def _check(image: tf.Tensor) -> tf.Tensor:
  image = tf.convert_to_tensor(image)
  if image.shape.rank != 3 or image.shape[-1] != 3 or image.shape[0] != image.shape[1]:
    raise ValueError(f'pseudo-fakes need a square (S, S, 3) aligned face, got shape {image.shape}')
  return tf.cast(image, tf.float32)


def _self_blend_source(target: tf.Tensor, s: list[tf.Tensor]) -> tf.Tensor:
  """The changed copy a self-blend pastes: colour, sharpness, scale and shift (seeds s[0:3])."""
  source = _colour_shift(target, s[0])
  source = _sharpness(source, s[1])
  return _small_affine(source, s[2], max_scale=0.04, max_shift=2.0, max_angle_deg=2.0)


def self_blend(image: tf.Tensor, seed: tf.Tensor, landmarks: tf.Tensor | None = None,
               mask: tf.Tensor | None = None) -> tf.Tensor:
  """A self-blended fake of a real aligned face: (S, S, 3) uint8 -> (S, S, 3) uint8, same identity.

  `mask` ((S, S, 1) float32, from face_mask) replaces the one drawn from the seed.
  """
  target = _check(image)
  s = _seeds(seed, 4)
  mask = face_mask(target.shape[0], s[3], landmarks) if mask is None else mask
  return _blend(target, _self_blend_source(target, s), mask)


def _masked_stats(image, weight):
  total = tf.reduce_sum(weight) + 1e-6
  mean = tf.reduce_sum(image * weight, axis=[0, 1]) / total
  var = tf.reduce_sum(tf.square(image - mean) * weight, axis=[0, 1]) / total
  return mean, tf.sqrt(var + 1e-6)


def _swap_source(target_f: tf.Tensor, donor_f: tf.Tensor, s: list[tf.Tensor], mask: tf.Tensor) -> tf.Tensor:
  """The donor face a swap pastes: slightly misaligned, colour-matched to the target inside the mask, maybe softened."""
  donor_f = _small_affine(donor_f, s[1], max_scale=0.05, max_shift=3.0, max_angle_deg=3.0)
  weight = tf.cast(mask > 0.5, tf.float32)
  t_mean, t_std = _masked_stats(target_f, weight)
  d_mean, d_std = _masked_stats(donor_f, weight)
  # A bounded contrast ratio: a hat or a beard inside the target's mask must not stretch the donor's face garishly.
  donor_f = (donor_f - d_mean) * tf.clip_by_value(t_std / d_std, 0.75, 1.33) + t_mean
  size = target_f.shape[0]
  sigma = _uniform(s[2], 0.0, 1.0) * size / 112.0
  soft = blur_reflect(donor_f, sigma, max(2, int(math.ceil(3 * size / 112.0))))
  return tf.where(_uniform(s[3], 0, 1) < 0.5, soft, donor_f)


def swap(target: tf.Tensor, donor: tf.Tensor, seed: tf.Tensor, landmarks: tf.Tensor | None = None,
         mask: tf.Tensor | None = None) -> tf.Tensor:
  """The donor's inner face pasted onto the target's aligned face: (S, S, 3) uint8 x2 -> (S, S, 3) uint8.

  Both faces are aligned to the same template, so the donor only gets a small misalignment; its colours are matched
  to the target's inside the mask (per-channel mean and std), and swap networks' slight softness is imitated by an
  optional light blur.
  """
  target_f, donor_f = _check(target), _check(donor)
  s = _seeds(seed, 4)
  mask = face_mask(target_f.shape[0], s[0], landmarks) if mask is None else mask
  return _blend(target_f, _swap_source(target_f, donor_f, s, mask), mask)


def _checkerboard(image, seed, pattern: bool = True):
  """2x down then nearest (or bilinear) up, plus (with `pattern`) the fixed 2x2 pattern a transposed convolution
  leaves."""
  s = _seeds(seed, 3)
  size = image.shape[0]
  half = tf.nn.avg_pool2d(image[None], 2, 2, 'VALID')
  nearest = tf.image.resize(half, [size, size], method='nearest')[0]
  bilinear = tf.image.resize(half, [size, size], method='bilinear')[0]
  up = tf.where(_uniform(s[0], 0, 1) < 0.5, nearest, bilinear)
  if not pattern:
    return up
  ys, xs = tf.meshgrid(tf.range(size), tf.range(size), indexing='ij')
  parity = tf.cast((ys + xs) % 2, tf.float32) * 2.0 - 1.0  # +-1 checkerboard
  row = tf.cast(ys % 2, tf.float32) - 0.5
  pattern = parity + _uniform(s[2], -1.0, 1.0) * row
  return up + _uniform(s[1], 1.0, 3.0) * pattern[:, :, None]


def _spectral(image, seed):
  """A faint periodic pattern at a high spatial frequency (period 2 to 4 pixels), as upsampling layers leave."""
  s = _seeds(seed, 5)
  size = image.shape[0]
  ys, xs = tf.meshgrid(tf.range(size, dtype=tf.float32), tf.range(size, dtype=tf.float32), indexing='ij')
  fx = _uniform(s[0], 0.25, 0.5) * tf.sign(_uniform(s[3], -1, 1))
  fy = _uniform(s[1], 0.25, 0.5)
  phase = _uniform(s[2], 0.0, 2 * math.pi)
  wave = tf.cos(2 * math.pi * (fx * xs + fy * ys) + phase)
  amplitude = _uniform(s[4], 1.5, 4.0)
  return image + amplitude * wave[:, :, None]


def _smooth(image, seed):
  """Over-smoothing: generators lose skin texture and sensor noise."""
  size = image.shape[0]
  sigma = _uniform(seed, 0.8, 1.8) * size / 112.0
  return blur_reflect(image, sigma, max(2, int(math.ceil(3 * 1.8 * size / 112.0))))


def _trace_source(face: tf.Tensor, s: list[tf.Tensor], kind: int | tf.Tensor | None, pattern: bool = True
                  ) -> tf.Tensor:
  """The traced copy a trace pastes (`kind` of TRACES, None: drawn from s[0]); without `pattern`, the same change
  with the generator pattern left out (checkerboard: the resampling alone, spectral: the face itself)."""
  if kind is None:
    kind = tf.random.stateless_uniform([], s[0], 0, len(TRACES), dtype=tf.int32)
  # All three are cheap at face size; indexing them avoids a switch_case's per-branch tracing cost.
  return tf.stack([_checkerboard(face, s[1], pattern), _spectral(face, s[1]) if pattern else face,
                   _smooth(face, s[1])])[kind]


def trace(image: tf.Tensor, seed: tf.Tensor, landmarks: tf.Tensor | None = None,
          kind: int | tf.Tensor | None = None, mask: tf.Tensor | None = None) -> tf.Tensor:
  """Generator traces inside the face of a real aligned face: (S, S, 3) uint8 -> (S, S, 3) uint8.

  `kind` indexes TRACES (checkerboard, spectral, smooth); None picks one at random from the seed.
  """
  face = _check(image)
  s = _seeds(seed, 3)
  mask = face_mask(face.shape[0], s[2], landmarks) if mask is None else mask
  return _blend(face, _trace_source(face, s, kind), mask)


def real_twin(kind: str, target: tf.Tensor, seed: tf.Tensor, donor: tf.Tensor | None = None,
              landmarks: tf.Tensor | None = None, trace_kind: int | tf.Tensor | None = None) -> tf.Tensor:
  """The seamless real counterpart of `kind`'s pseudo-fake with the same arguments: (S, S, 3) uint8.

  A pseudo-fake changes the inner face only: a self-blend's copy is recoloured, resharpened and resampled, a swap's
  donor is resampled and maybe softened, a trace resamples or smooths. Each of these also changes how sharp the face
  looks, so with the untouched photo as the only real, "softer inner face" separates pseudo-fakes from reals, and a
  head that learns it calls every sharp generator face real. The twin is the same change applied to the whole photo
  (a trace's generator pattern left out: that is the fake's evidence): no seam, no pattern, a real photo taken
  through a softer lens, or (swap) the donor's own photo. Inside the mask's core (mask 1) it equals the pseudo-fake.
  """
  if kind not in KINDS:
    raise ValueError(f'pseudo-fake kind {kind!r} is not one of {", ".join(KINDS)}')
  face = _check(target)
  size = face.shape[0]
  if kind == 'self_blend':
    s = _seeds(seed, 4)
    changed = _self_blend_source(face, s)
  elif kind == 'swap':
    if donor is None:
      raise ValueError('the real twin of a swap needs its donor face')
    s = _seeds(seed, 4)
    changed = _swap_source(face, _check(donor), s, face_mask(size, s[0], landmarks))
  else:
    changed = _trace_source(face, _seeds(seed, 3), trace_kind, pattern=False)
  return _blend(face, changed, tf.ones([size, size, 1], tf.float32))


def pseudo_fake(target: tf.Tensor, donor: tf.Tensor, same_person: tf.Tensor, seed: tf.Tensor,
                weights: tuple[float, float, float], landmarks: tf.Tensor | None = None
                ) -> tuple[tf.Tensor, tf.Tensor]:
  """One pseudo-fake of a random kind: (S, S, 3) uint8 target and donor -> ((S, S, 3) uint8, kind index int32).

  Args:
    target: the real face the fake is made of.
    donor: another real face, used only by `swap`.
    same_person: bool scalar; a swap between two photos of one person is no fake, so it becomes a self-blend.
    seed: (2,) int seed.
    weights: relative probabilities of KINDS (self_blend, swap, trace).
  """
  if len(weights) != len(KINDS) or min(weights) < 0 or sum(weights) <= 0:
    raise ValueError(f'pseudo-fake weights must be {len(KINDS)} non-negative numbers for {KINDS}, got {weights}')
  s = _seeds(seed, 3)
  logits = tf.math.log(tf.constant([weights], tf.float32))
  kind = tf.random.stateless_categorical(logits, 1, s[0], dtype=tf.int32)[0, 0]
  kind = tf.where(tf.logical_and(kind == 1, same_person), 0, kind)
  mask = face_mask(int(target.shape[0]), s[2], landmarks)
  image = tf.switch_case(kind, [lambda: self_blend(target, s[1], landmarks, mask),
                                lambda: swap(target, donor, s[1], landmarks, mask),
                                lambda: trace(target, s[1], landmarks, mask=mask)])
  return tf.ensure_shape(image, target.shape), kind
