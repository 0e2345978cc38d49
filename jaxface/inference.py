"""The network at inference, one path for every caller: aligned faces -> embeddings and fake logits -> pair scores.

Training validation (`jaxface.train`), `jaxface.evaluate` and `jaxface.verify` all run the model through `Network`
and score pairs with `score_pairs`; `jaxface.metrics.pair_metrics` turns the scores into every reported figure.

    network = Network(build_inference_model(config.model), variables, input_size=112)
    embeddings, fake_logits = network.infer(faces)              # (B, 112, 112, 3) uint8 or float32 in [-1, 1]
    scores = score_pairs(network, faces0, faces1, labels=..., kinds=...)

The network runs under `jax.jit` on batches padded to a few fixed sizes (powers of two up to `batch_size`), so a stream
of odd-sized requests compiles at most log2(batch_size) + 1 programs. Imports neither TensorFlow nor torch.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import scoring
from jaxface.align.template import FACE_SIZE

ALIGNED_SIZE = FACE_SIZE  # the side of an aligned face crop


def to_model_input(faces, size: int) -> jax.Array:
  """Aligned faces -> the model's input, as the training input pipeline makes it (jit-compatible).

  Args:
    faces: (B, H, W, 3) uint8 RGB aligned faces (H = W = 112 usually), or float32 already in [-1, 1].
    size: the model's input side (config.model.input_size, 112 or 56).

  Returns:
    (B, size, size, 3) float32 in [-1, 1].
  """
  faces = jnp.asarray(faces)
  if faces.dtype == jnp.uint8:
    faces = faces.astype(jnp.float32) / 127.5 - 1.0
  faces = faces.astype(jnp.float32)
  if faces.shape[1:3] != (size, size):
    # Antialiased bilinear, as the pipeline's tf.image.resize(antialias=True) shrinks its 112 crops (same numbers).
    faces = jax.image.resize(faces, (faces.shape[0], size, size, faces.shape[3]), method='linear', antialias=True)
  return jnp.clip(faces, -1.0, 1.0)


def build_inference_model(model_config):
  """FaceModel for inference from config.model: no cross-device BatchNorm axis (there is no pmap here)."""
  from jaxface.models.face_model import build_model  # pylint: disable=import-outside-toplevel

  model_config = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
  model_config['bn_axis_name'] = None
  return build_model(model_config)


def forward_fn(model, flip_tta: bool, input_size: int):
  """(variables, faces (B, H, W, 3) uint8 or float32) -> (embedding (B, D), fake_logit (B,)) float32, not jitted.

  The embedding is un-normalised; with `flip_tta` it is the sum of the embeddings of the face and its mirror image
  (each view weighted by its norm, its quality, as AdaFace validates) and the fake logit is the mean of both views'.
  A fresh function each call: `compiled_forward` jits it once per model, `jaxface.export` traces it anew.
  """

  def forward(variables, faces):
    images = to_model_input(faces, input_size)
    outputs = model.apply(variables, images, train=False)
    embedding, fake_logit = outputs['embedding'], outputs['fake_logit']
    if flip_tta:
      flipped = model.apply(variables, images[:, :, ::-1, :], train=False)
      embedding = embedding + flipped['embedding']
      fake_logit = 0.5 * (fake_logit + flipped['fake_logit'])
    return embedding.astype(jnp.float32), fake_logit.astype(jnp.float32)

  return forward


@functools.lru_cache(maxsize=8)
def compiled_forward(model, flip_tta: bool, input_size: int):
  """`forward_fn` under jax.jit, cached per (model, flip_tta, input_size): Flax modules compare by their fields, so
  networks of one architecture (a validation in training, an evaluation and a verification in one process, tests)
  share compiled programs."""
  return jax.jit(forward_fn(model, flip_tta, input_size))


def bucket(count: int, batch_size: int) -> int:
  """The padded batch size for `count` images: the next power of two, at most `batch_size`."""
  return min(batch_size, 1 << max(count - 1, 0).bit_length())


class Network:
  """A FaceModel with its variables, run on aligned faces in padded fixed-size batches.

  Args:
    model: the FaceModel (`build_inference_model`, or the training model: its BatchNorm uses the running statistics).
    variables: its {'params', 'batch_stats'}.
    input_size: the model's input side (112 or 56).
    batch_size: the largest batch the network sees.
    flip_tta: also embed mirrored faces (see `compiled_forward`).
  """

  def __init__(self, model, variables: dict, *, input_size: int = ALIGNED_SIZE, batch_size: int = 32,
               flip_tta: bool = False):
    self.model = model
    self.variables = jax.device_put(variables)
    self.input_size = int(input_size)
    self.batch_size = int(batch_size)
    self.flip_tta = bool(flip_tta)
    self._forward = compiled_forward(model, self.flip_tta, self.input_size)

  def infer(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs the network on aligned faces.

    Args:
      faces: (B, H, W, 3) uint8 aligned faces, or float32 in [-1, 1] (resized to the input size if needed).

    Returns:
      (embeddings (B, D) float32 un-normalised, fake logits (B,) float32).
    """
    faces = np.asarray(faces)
    embeddings, logits = [], []
    for start in range(0, len(faces), self.batch_size):
      chunk = faces[start:start + self.batch_size]
      if chunk.dtype != np.uint8:
        chunk = chunk.astype(np.float32)
      count = len(chunk)
      padded = np.zeros((bucket(count, self.batch_size), *chunk.shape[1:]), chunk.dtype)
      padded[:count] = chunk
      embedding, fake_logit = self._forward(self.variables, padded)
      embeddings.append(np.asarray(embedding)[:count])
      logits.append(np.asarray(fake_logit)[:count])
    if not embeddings:
      return np.zeros((0, 0), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(embeddings), np.concatenate(logits)


@dataclasses.dataclass
class PairScores:
  """Network outputs and labels of N pairs (arrays (N,); label -1, kind '', is_fake -1 where unknown)."""
  pair_ids: np.ndarray
  cosine: np.ndarray
  p_fake0: np.ndarray
  p_fake1: np.ndarray
  labels: np.ndarray
  kinds: np.ndarray
  is_fake0: np.ndarray
  is_fake1: np.ndarray
  face_found0: np.ndarray
  face_found1: np.ndarray

  def fused(self, strength: float) -> np.ndarray:
    """(N,) fused similarities in float64."""
    return scoring.fused_score_np(self.cosine, self.p_fake0, self.p_fake1, strength)

  @classmethod
  def concatenate(cls, parts: Sequence[PairScores]) -> PairScores:
    return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)})

  def sorted_by_id(self) -> PairScores:
    order = np.argsort(self.pair_ids.astype(str), kind='stable')
    return PairScores(**{f.name: getattr(self, f.name)[order] for f in dataclasses.fields(PairScores)})


def score_pairs(network, faces0: np.ndarray, faces1: np.ndarray, *, pair_ids=None, labels=None, kinds=None,
                is_fake0=None, is_fake1=None, face_found0=None, face_found1=None) -> PairScores:
  """Scores N pairs of aligned faces, both sides in one network call (fewer, fuller batches).

  Args:
    network: anything with `infer(faces) -> (embeddings, fake_logits)` (a `Network`, a `FaceVerifier`).
    faces0, faces1: (N, H, W, 3) aligned faces.
    pair_ids, labels, kinds, is_fake0, is_fake1, face_found0, face_found1: (N,) arrays; missing ones are unknown
      (pair ids '0'..'N-1', label -1, kind '', is_fake -1, face found).
  """
  count = len(faces0)
  embeddings, logits = network.infer(np.concatenate([faces0, faces1]))
  p_fake = scoring.sigmoid_np(logits)
  cosine = np.asarray(scoring.cosine_similarity(embeddings[:count], embeddings[count:]), np.float64)
  unknown = np.full(count, -1, np.int64)
  given = lambda value, default: default if value is None else np.asarray(value)
  return PairScores(
      pair_ids=_text(pair_ids if pair_ids is not None else [str(i) for i in range(count)]),
      cosine=cosine, p_fake0=p_fake[:count], p_fake1=p_fake[count:],
      labels=given(labels, unknown).astype(np.int64), kinds=_text(kinds if kinds is not None else [''] * count),
      is_fake0=given(is_fake0, unknown).astype(np.int64), is_fake1=given(is_fake1, unknown).astype(np.int64),
      face_found0=given(face_found0, np.ones(count, bool)).astype(bool),
      face_found1=given(face_found1, np.ones(count, bool)).astype(bool))


def _text(values) -> np.ndarray:
  """(N,) object array of str (TFDS gives bytes)."""
  return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
