"""One model, two heads: backbone -> shared embedding -> (identity via AdaFace in the trainer, fake logit here).

    images (B, S, S, 3) in [-1, 1]
      -> backbone (IR-ResNet or a baseline)            variables['params']['backbone'], ['batch_stats']['backbone']
      -> embedding (B, 512), un-normalised: its norm is AdaFace's image-quality signal, so it is kept
      -> fake head -> fake_logit (B,)                  variables['params']['fake_head']

The AdaFace class weights are not part of FaceModel: they live in `jaxface.models.heads.AdaFaceHead`, which the
trainer owns next to the model, so inference and checkpoints for verification need no class weights. Pretrained
backbones from `jaxface.convert.load_converted` graft in at `params['backbone']` and `batch_stats['backbone']`.

What the fake head sees ('traces', the default): the photo's noise residual (the photo minus its 3x3 local mean, a
fixed high-pass filter in the spirit of forensic SRM filters), the stem's full-resolution map and the stage-2 (S/4)
map, as well as the normalised embedding. Generation traces (blending seams, up-sampling checkerboards, missing skin
texture, noise statistics) are low-level, and an embedding trained by AdaFace to ignore nuisances such as blur,
lighting and compression is trained to ignore exactly these too; the early maps still hold them, and the residual
holds them whatever the identity loss does to the stem. Two conv3x3-BN-ReLU on the residual and the stem map learn
trace filters of their own; the plain mean of the first one's linear responses is kept (content cancels, a periodic
pattern adds up); their responses are pooled over the face (mean and std: std keeps the energy of high-frequency
residue) and over a 4x4 grid of face regions (a seam or smoothed skin sits in the inner face), then with the pooled
stage-2 map and the embedding go through LayerNorm and a 2-layer MLP to one logit. The fake loss's gradient flows into
the backbone's stem and first two stages (they learn to keep traces) but is stopped at the embedding, which stays
shaped by the identity and push-away losses only. 'features' reads the half-resolution stage-1 map instead of the stem
and no residual (on the synthetic fakes it stayed at chance); 'embedding' reads the embedding alone (cheaper, weaker
on traces); 'none' returns a zero logit.

`space_to_depth` (CPU-sized models): the 112x112 face is folded into a 56x56 map of 12 channels (each 2x2 pixel
block becomes one position) before the backbone, so the network runs at the cost of a 56x56 model but still sees every
pixel. Resizing the face to 56 instead averages away exactly the 1-2 pixel traces generators leave (up-sampling
checkerboards, spectral peaks, missing skin texture). Not for pretrained IR weights, whose stem reads 3 channels.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models.baselines import ResNet18, SmallCNN
from jaxface.models.heads import FakeHead
from jaxface.models.iresnet import IR_UNITS, IResNet
from jaxface.models.layers import dtype_from_name
from jaxface.models.mobilefacenet import EMBEDDING_DIM as MOBILEFACENET_DIM, MobileFaceNet

ARCHS = (*IR_UNITS, 'mobilefacenet', 'resnet_18', 'small_cnn')
INPUT_NORMS = ('unit', 'imagenet')
# ImageNet mean / std of RGB in [0, 1], what torchvision's Normalize gives foamliu's MobileFaceNet.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_backbone(arch: str, width: float = 1.0, embedding_dim: int = 512, dropout: float = 0.4,
                   bn_axis_name: str | None = None, dtype: Any = jnp.float32, name: str | None = None) -> nn.Module:
  """The backbone module for `arch` in ir_18|ir_34|ir_50|ir_101|mobilefacenet|resnet_18|small_cnn.

  Its __call__(images (B, S, S, 3), train) returns (embedding (B, embedding_dim) float32, {'stage1'..'stage4': maps}).
  """
  kwargs = dict(width=width, embedding_dim=embedding_dim, dropout=dropout, bn_axis_name=bn_axis_name, dtype=dtype,
                name=name)
  if arch in IR_UNITS:
    return IResNet(IR_UNITS[arch], **kwargs)
  if arch == 'mobilefacenet':
    return MobileFaceNet(**kwargs)
  if arch == 'resnet_18':
    return ResNet18(**kwargs)
  if arch == 'small_cnn':
    return SmallCNN(**kwargs)
  raise ValueError(f'unknown arch {arch!r}: use one of {", ".join(ARCHS)}')


class FaceModel(nn.Module):
  """Backbone plus deepfake head; see the module docstring."""
  arch: str = 'ir_50'
  width: float = 1.0
  embedding_dim: int = 512
  dropout: float = 0.4
  fake_head: str = 'traces'
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  space_to_depth: bool = False
  input_norm: str = 'unit'

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Embeds faces and scores them as fake.

    Args:
      images: (B, S, S, 3) float32 RGB in [-1, 1], S = 112 or 56.
      train: BatchNorm batch statistics and dropout on (needs mutable=['batch_stats'] and a 'dropout' rng).

    Returns:
      {'embedding': (B, embedding_dim) float32 un-normalised, 'fake_logit': (B,) float32}.
    """
    backbone = build_backbone(self.arch, self.width, self.embedding_dim, self.dropout, self.bn_axis_name, self.dtype,
                              name='backbone')
    # Noise residual for the trace head: the photo minus its 3x3 local mean, a fixed high-pass filter (as forensic
    # detectors' SRM filters): face content mostly cancels, generator traces (checkerboards, periodic patterns,
    # missing sensor noise) are what is left.
    residual = high_pass(images.astype(jnp.float32)) if self.fake_head == 'traces' else None
    if self.space_to_depth:
      images = fold_pixels(images)
      residual = None if residual is None else fold_pixels(residual)
    embedding, stages = backbone(normalize_input(images, self.input_norm), train=train)
    if residual is not None and residual.shape[1] == 2 * stages['stem'].shape[1]:
      # MobileFaceNet's stem is already at half resolution (stride-2 conv1): fold the residual 2x2 (112x112x3 ->
      # 56x56x12) rather than resize it, so the head still sees every pixel's 1-2 pixel traces.
      residual = fold_pixels(residual)
    if residual is not None:
      stages = {**stages, 'residual': residual}
    if self.fake_head == 'none':
      fake_logit = jnp.zeros(embedding.shape[:1], jnp.float32)
    else:
      fake_logit = FakeHead(self.fake_head, train=train, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                            name='fake_head')(embedding, stages)
    return {'embedding': embedding.astype(jnp.float32), 'fake_logit': fake_logit.astype(jnp.float32)}


def normalize_input(images: jax.Array, input_norm: str) -> jax.Array:
  """(B, H, W, C) RGB in [-1, 1] -> what the backbone's weights expect: 'unit' as is, 'imagenet' (x - mean) / std of
  RGB in [0, 1]. Callers keep feeding [-1, 1]; the norm is recorded with converted weights (convert.json)."""
  if input_norm == 'unit':
    return images
  if input_norm != 'imagenet':
    raise ValueError(f'input_norm {input_norm!r} is not one of {", ".join(INPUT_NORMS)}')
  if images.shape[-1] != 3:
    raise ValueError(f"input_norm 'imagenet' needs 3 RGB channels, got {images.shape[-1]} (turn space_to_depth off)")
  mean, std = jnp.asarray(IMAGENET_MEAN, images.dtype), jnp.asarray(IMAGENET_STD, images.dtype)
  return ((images + 1) * 0.5 - mean) / std


def high_pass(images: jax.Array) -> jax.Array:
  """(B, H, W, C) -> the same minus its 3x3 box mean (edge-replicated), per channel."""
  # The edge rows and columns concatenated by hand: `jnp.pad(mode='edge')` also emits zero-width copies for the unpadded
  # axes, which ONNX export (jax2onnx, onnxruntime) rejects. Same values.
  padded = jnp.concatenate([images[:, :1], images, images[:, -1:]], axis=1)
  padded = jnp.concatenate([padded[:, :, :1], padded, padded[:, :, -1:]], axis=2)
  h, w = images.shape[1:3]
  local = sum(padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
  return images - local


def fold_pixels(images: jax.Array, block: int = 2) -> jax.Array:
  """(B, H, W, C) -> (B, H/block, W/block, block*block*C): each block x block patch becomes one position."""
  b, h, w, c = images.shape
  if h % block or w % block:
    raise ValueError(f'space_to_depth needs a side divisible by {block}, got {h}x{w}')
  x = images.reshape(b, h // block, block, w // block, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // block, w // block, block * block * c)


def build_model(cfg) -> FaceModel:
  """FaceModel from `config.model` (ml_collections.ConfigDict or dict).

  Fields: arch, width (1.0 = official), input_size (112 | 56; the model adapts to the input, the field is for the data
  and the converter), embedding_dim (512), dropout (0.4), fake_head ('traces' | 'features' | 'embedding' | 'none'),
  dtype ('float32' | 'bfloat16'), bn_axis_name (None or the pmap axis, e.g. 'batch'), space_to_depth (False; True
  folds a 112 input into 56x56x12 before the backbone), input_norm ('unit' = the backbone reads [-1, 1] as given;
  'imagenet' = ImageNet mean/std, what the converted MobileFaceNet expects; `jaxface.convert` records it),
  MobileFaceNet's embedding size is the backbone's (128): an absent embedding_dim means 128, any other value fails
  with one line (the trainer sizes the AdaFace head from config.model.embedding_dim, so it must say 128).
  """
  get = cfg.get
  arch = get('arch', 'ir_50')
  if arch not in ARCHS:
    raise ValueError(f'config.model.arch {arch!r} is not one of {", ".join(ARCHS)}')
  if get('input_size', 112) not in (112, 56):
    raise ValueError(f"config.model.input_size {get('input_size')!r} is not 112 or 56")
  embedding_dim = int(get('embedding_dim', MOBILEFACENET_DIM if arch == 'mobilefacenet' else 512))
  if arch == 'mobilefacenet' and embedding_dim != MOBILEFACENET_DIM:
    raise ValueError(f'config.model.embedding_dim {embedding_dim}: mobilefacenet embeds in {MOBILEFACENET_DIM} '
                     f'dimensions; set --config.model.embedding_dim={MOBILEFACENET_DIM}')
  if get('fake_canonical_px', 0):  # measured and not taken (research/fake_generalisation); old configs hold a 0
    raise ValueError(f"config.model.fake_canonical_px={get('fake_canonical_px')} was removed from the model on "
                     '2026-12-07 (research/fake_generalisation/README.md); train without it')
  if get('input_norm', 'unit') not in INPUT_NORMS:
    raise ValueError(f"config.model.input_norm {get('input_norm')!r} is not one of {', '.join(INPUT_NORMS)}")
  return FaceModel(arch=arch, width=float(get('width', 1.0)), embedding_dim=embedding_dim,
                   dropout=float(get('dropout', 0.4)), fake_head=get('fake_head', 'traces'),
                   bn_axis_name=get('bn_axis_name', None), dtype=dtype_from_name(get('dtype', 'float32')),
                   space_to_depth=bool(get('space_to_depth', False)), input_norm=get('input_norm', 'unit'))
