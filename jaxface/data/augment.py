"""Training augmentation: random flip, whole-pixel shift, crop and scale, colour, blur, downscale, JPEG, in TensorFlow
ops so it runs inside tf.data (`jaxface.data.pipeline`); and the image operations it shares with the pseudo-fakes
(`jaxface.data.pseudofakes`): a banded Gaussian blur and an affine warp.

Every random choice is a stateless function of the example's seed, so a seed fixes the result.

Augmentations that erase fake traces. Blur, downscaling and JPEG re-compression remove the high-frequency traces
(blending seams, checkerboard and spectral patterns) a detector relies on, and so does any geometric augmentation that
resamples the image (scale, rotation, sub-pixel shift: bilinear interpolation is a low-pass filter). Measured on the
synthetic data at 112x112 with a hand-made 2x2 checkerboard detector (AUC over all photos, 0.68 with no augmentation):
scale-and-rotate on every photo 0.51, blur 0.56, downscale 0.58, JPEG 0.68, flip and colour 0.68-0.73. So translation
is done in whole pixels (`augment.shift`), and the resampling `crop_scale` is kept rare. We apply blur, downscaling
and JPEG to fakes with the same probability as to real photos by default (`augment.fake_degrade_scale = 1.0`): with
lower probability for fakes the model would learn the shortcut "sharp and clean -> fake", which flags clean real
photos at test time, and test photos are JPEGs anyway. To keep most traces visible, the strengths stay mild (JPEG
quality >= 60, blur sigma <= 1.2 px, downscale >= 0.6) and the probabilities low; lower `fake_degrade_scale` to shield
fakes further.
"""
from __future__ import annotations

import math

import ml_collections
import tensorflow as tf


def _blur_matrix(n: int, sigma: tf.Tensor, radius: int) -> tf.Tensor:
  """(n + 2 radius, n) Gaussian band: column v weights padded samples v .. v + 2 radius, exactly 0 elsewhere."""
  offset = tf.range(n + 2 * radius, dtype=tf.float32)[:, None] - tf.range(n, dtype=tf.float32)[None] - radius
  weights = tf.exp(-0.5 * tf.square(offset / tf.maximum(tf.cast(sigma, tf.float32), 1e-3)))
  weights = tf.where(tf.abs(offset) <= radius, weights, 0.0)
  return weights / tf.reduce_sum(weights, axis=0, keepdims=True)


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, radius: int, mode: str = 'CONSTANT') -> tf.Tensor:
  """Separable Gaussian blur cut at `radius`: (H, W, C) float32 -> (H, W, C) float32.

  Written as two small matrix products with banded matrices: on CPU this is several times faster than
  depthwise_conv2d for face-sized images. `mode` pads the borders: 'CONSTANT' (zeros) or 'REFLECT'.
  """
  h, w = image.shape[0], image.shape[1]
  padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode=mode)
  rows = tf.einsum('pwc,ph->hwc', padded, _blur_matrix(h, sigma, radius))
  return tf.einsum('hpc,pw->hwc', rows, _blur_matrix(w, sigma, radius))


def blur_reflect(image: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
  """Gaussian blur with reflected borders (no dark rim): (H, W, C) float32 -> (H, W, C) float32."""
  return gaussian_blur(image, sigma, radius, mode='REFLECT')


def affine(image: tf.Tensor, scale, shift, angle) -> tf.Tensor:
  """Scales and rotates about the centre and shifts, bilinear, reflected borders: (H, W, 3) float32."""
  h, w = image.shape[0], image.shape[1]
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
  # Output pixel (x, y) reads input (a0 x + a1 y + a2, b0 x + b1 y + b2): the inverse of the forward map.
  tx = cx - cos * (cx + shift[0]) + sin * (cy + shift[1])
  ty = cy - sin * (cx + shift[0]) - cos * (cy + shift[1])
  transform = tf.stack([cos, -sin, tx, sin, cos, ty, 0.0, 0.0])[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=tf.cast(transform, tf.float32), output_shape=tf.constant([h, w], tf.int32),
      fill_value=0.0, interpolation='BILINEAR', fill_mode='REFLECT')
  return out[0]


def _maybe(u: tf.Tensor, p, fn, image: tf.Tensor) -> tf.Tensor:
  return tf.cond(u < tf.cast(p, tf.float32), lambda: fn(image), lambda: image)


def augment(image: tf.Tensor, seed: tf.Tensor, aug: ml_collections.ConfigDict, is_fake: tf.Tensor | int = 0
            ) -> tf.Tensor:
  """Random flip, crop and scale, colour jitter, blur, downscale, JPEG: (S, S, 3) uint8 -> (S, S, 3) float32 [0, 255].

  Each with its probability in `aug`; blur, downscale and JPEG use `aug.fake_degrade_scale` times their probability
  on fakes (is_fake == 1). JPEG comes last, as in the photos the model will see.
  """
  s = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 16))
  u = tf.random.stateless_uniform([8], s[0])
  size = image.shape[0]
  scale = size / 112.0
  degrade = tf.where(tf.cast(is_fake, tf.bool), float(aug.fake_degrade_scale), 1.0)
  x = tf.cast(image, tf.float32)
  x = _maybe(u[0], aug.flip, lambda im: tf.reverse(im, [1]), x)

  def shift(im):
    # Whole pixels, reflected at the border: no resampling, so 1-2 pixel traces survive intact.
    m = max(1, int(round(aug.max_shift * size)))
    offset = tf.random.stateless_uniform([2], s[11], 0, 2 * m + 1, dtype=tf.int32)
    padded = tf.pad(im, [[m, m], [m, m], [0, 0]], mode='REFLECT')
    return tf.ensure_shape(tf.slice(padded, [offset[0], offset[1], 0], [size, size, 3]), [size, size, 3])

  def crop_scale(im):
    zoom = tf.random.stateless_uniform([], s[1], 1.0 - aug.max_scale, 1.0 + aug.max_scale)
    shift = tf.random.stateless_uniform([2], s[2], -aug.max_shift, aug.max_shift) * size
    angle = tf.random.stateless_uniform([], s[3], -aug.max_angle, aug.max_angle) * math.pi / 180.0
    return affine(im, zoom, shift, angle)

  def colour(im):
    im = im / 255.0
    im = im + tf.random.stateless_uniform([], s[4], -aug.brightness, aug.brightness)
    im = tf.image.adjust_contrast(im, tf.random.stateless_uniform([], s[5], 1 - aug.contrast, 1 + aug.contrast))
    im = tf.image.adjust_saturation(tf.clip_by_value(im, 0.0, 1.0),
                                    tf.random.stateless_uniform([], s[6], 1 - aug.saturation, 1 + aug.saturation))
    im = tf.image.adjust_hue(im, tf.random.stateless_uniform([], s[7], -aug.hue, aug.hue))
    return tf.clip_by_value(im, 0.0, 1.0) * 255.0

  def blur(im):
    sigma = tf.random.stateless_uniform([], s[8], aug.blur_sigma[0], aug.blur_sigma[1]) * scale
    return blur_reflect(im, sigma, max(1, int(math.ceil(3 * aug.blur_sigma[1] * scale))))

  def downscale(im):
    factor = tf.random.stateless_uniform([], s[9], aug.min_downscale, 1.0)
    small = tf.cast(tf.round(factor * size), tf.int32)
    im = tf.image.resize(im, [small, small], method='area')
    return tf.ensure_shape(tf.image.resize(im, [size, size], method='bilinear'), [size, size, 3])

  def jpeg(im):
    quality = tf.random.stateless_uniform([], s[10], aug.jpeg_quality[0], aug.jpeg_quality[1] + 1, dtype=tf.int32)
    encoded = tf.cast(tf.clip_by_value(tf.round(im), 0, 255), tf.uint8)
    return tf.cast(tf.ensure_shape(tf.image.adjust_jpeg_quality(encoded, quality), [size, size, 3]), tf.float32)

  x = _maybe(u[6], aug.shift, shift, x)
  x = _maybe(u[1], aug.crop_scale, crop_scale, x)
  x = _maybe(u[2], aug.color, colour, x)
  x = _maybe(u[3], aug.blur * degrade, blur, x)
  x = _maybe(u[4], aug.downscale * degrade, downscale, x)
  x = _maybe(u[5], aug.jpeg * degrade, jpeg, x)
  return tf.clip_by_value(x, 0.0, 255.0)
