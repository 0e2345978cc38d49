"""Heads on the shared embedding: the AdaFace class head (training only) and the deepfake head."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models.layers import Conv, batch_norm
from jaxface.scoring import l2_normalize


# AdaFace's l2_norm adds no eps; this one only guards all-zero rows in training.
_EPS = 1e-5


class AdaFaceHead(nn.Module):
  """Class weights W (D, C) of the AdaFace head; returns cosines to every class centre.

  Lives outside FaceModel: only training needs it. The margin, scale and EMA norm statistics are in
  `jaxface.losses.adaface_loss`, which takes these cosines. Official key: `head.kernel` (512, C).
  """
  num_classes: int

  @nn.compact
  def __call__(self, embedding: jax.Array) -> jax.Array:
    """(B, D) embedding, normalised or not -> (B, C) float32 cosine (W column-normalised), unclipped."""
    kernel = self.param('kernel', nn.initializers.normal(1.0), (embedding.shape[-1], self.num_classes), jnp.float32)
    return l2_normalize(embedding.astype(jnp.float32), eps=_EPS) @ l2_normalize(kernel, axis=0, eps=_EPS)


def mean_std_pool(feature_map: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, 2C) float32: per-channel spatial mean and standard deviation.

  The standard deviation keeps the energy of high-frequency generation traces that a mean alone averages away.
  """
  x = feature_map.astype(jnp.float32)
  mean = jnp.mean(x, axis=(1, 2))
  std = jnp.sqrt(jnp.var(x, axis=(1, 2)) + 1e-5)
  return jnp.concatenate([mean, std], axis=-1)


class FakeHead(nn.Module):
  """Deepfake head: one logit per image, positive = fake.

  mode 'traces' (the default): two conv3x3-BN-ReLU (stride 1, then 2) on the stem output, the backbone's
  full-resolution map, next to the photo's noise residual (`face_model.high_pass`, folded like the input; 'residual'
  in stages), pooled four ways: the plain mean of the first convolution's linear responses (content cancels, a
  periodic pattern adds up), mean+std over the face after ReLU (std keeps the energy of high-frequency residue), the
  mean over a 4x4 grid of face regions (a seam or over-smoothed skin is confined to the inner face and stands out
  against the border), and mean+std of the stage-2 map; concatenated with the L2-normalised embedding (gradient
  stopped), LayerNorm, MLP -> 1.
  mode 'features': one conv3x3-BN-ReLU on the stage-1 map (half resolution), mean+std pooled, with the stage-2 map and
  the embedding as above. On the synthetic fakes it stayed at chance where 'traces' learned (see configs/default.py).
  mode 'embedding': the same MLP on the normalised embedding alone.
  """
  mode: str = 'traces'
  hidden: int = 256
  trace_channels: int = 64
  train: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, embedding: jax.Array, stages: dict[str, jax.Array]) -> jax.Array:
    """embedding (B, D), stages {'stem', 'residual' (optional), 'stage1', 'stage2', ...} (B, h, w, c) -> (B,) logit."""
    # The identity embedding must not be bent to serve fake detection; the fake head reads it, the push-away loss and
    # the identity loss shape it.
    parts = [jax.lax.stop_gradient(l2_normalize(embedding.astype(jnp.float32), eps=_EPS))]
    if self.mode == 'features':
      trace = Conv(self.trace_channels, 3, 1, 1, dtype=self.dtype, name='trace_conv')(stages['stage1'])
      trace = nn.relu(batch_norm(self.train, self.bn_axis_name, self.dtype, name='trace_bn')(trace))
      parts += [mean_std_pool(trace), mean_std_pool(stages['stage2'])]
    elif self.mode == 'traces':
      # Full-resolution trace branch on the stem output: two convolutions, then the energy of the responses pooled
      # globally (mean and std) and over a 4x4 grid of face regions, so that a trace confined to the inner face
      # (a seam, over-smoothed skin) stands out against the rest of the photo.
      t = stages['stem']
      if 'residual' in stages and stages['residual'].shape[1:3] == t.shape[1:3]:
        # The photo's noise residual as well: the stem is shaped by the identity loss too, which smooths traces away.
        # BatchNorm brings it (a few hundredths in [-1, 1] units) to the stem's scale.
        residual = batch_norm(self.train, self.bn_axis_name, self.dtype, name='residual_bn')(stages['residual'])
        t = jnp.concatenate([residual.astype(t.dtype), t], axis=-1)
      for k, stride in enumerate((1, 2)):
        t = Conv(self.trace_channels // 2, 3, stride, 1, dtype=self.dtype, name=f'trace_conv{k}')(t)
        if k == 0:
          # The plain mean of the linear filter responses: image content averages out, a periodic generator pattern
          # (an up-sampling checkerboard, which space_to_depth folds into a constant) adds up. After ReLU it would not.
          parts.append(jnp.mean(t.astype(jnp.float32), axis=(1, 2)))
        t = nn.relu(batch_norm(self.train, self.bn_axis_name, self.dtype, name=f'trace_bn{k}')(t))
      t = t.astype(jnp.float32)
      b, h, w, c = t.shape
      grid = t[:, :h - h % 4, :w - w % 4].reshape(b, 4, (h - h % 4) // 4, 4, (w - w % 4) // 4, c).mean(axis=(2, 4))
      parts += [mean_std_pool(t), grid.reshape(b, -1), mean_std_pool(stages['stage2'])]
    elif self.mode != 'embedding':
      raise ValueError(f"fake head mode {self.mode!r} is not 'traces', 'features' or 'embedding'")
    x = nn.LayerNorm(name='norm')(jnp.concatenate(parts, axis=-1))
    x = nn.relu(nn.Dense(self.hidden, name='hidden')(x))
    return nn.Dense(1, name='logit')(x)[:, 0]
