"""Pair scores: cosine similarity, flip test-time augmentation, and the fused identity + deepfake score.

A pair must score "same person" only when both photos show the same real person, so the score combines the cosine of
the two embeddings with the two fake probabilities:

    q     = (1 - p0) (1 - p1)                   probability that neither photo is fake (p = 1 - q: at least one is)
    fused = -1 + (1 + cos) * q ** strength

Why this form:
- q = 1 (both photos look real): fused = cos, so a model with a silent fake head scores exactly as a plain one.
- q -> 0 (a fake is certain): fused = -1, the bottom of the cosine scale, whatever the cosine. An own-fake pair (a
  deepfake of the same person) has a high cosine by construction, so only a push this strong ranks it below genuine
  pairs.
- fused rises with cos (1 + cos >= 0 multiplies a positive factor) and falls as p0 or p1 rises (q falls), so ranking
  is never inverted.
- log(1 + fused) = log(1 + cos) + strength * log q: a linear fusion of the two pieces of evidence in log space, with
  one weight. `strength` trades identity against fake evidence; `jaxface.metrics.calibrate_strength` picks it on
  validation pairs by the challenge EER and the checkpoint stores it (scoring['fuse_strength']).

The log of q is computed as log1p(-p0) + log1p(-p1) so that probabilities near 0 keep their precision.
This module imports neither TensorFlow, PyTorch nor the data readers.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def cosine_similarity(embedding0, embedding1):
  """Row-wise cosine similarity.

  Args:
    embedding0: (B, D) embeddings, any norm.
    embedding1: (B, D) embeddings, any norm.

  Returns:
    (B,) cosines in [-1, 1].
  """
  embedding0 = jnp.asarray(embedding0)
  embedding1 = jnp.asarray(embedding1)
  dot = jnp.sum(embedding0 * embedding1, axis=-1)
  norms = jnp.linalg.norm(embedding0, axis=-1) * jnp.linalg.norm(embedding1, axis=-1)
  return jnp.clip(dot / jnp.maximum(norms, 1e-12), -1.0, 1.0)


def l2_normalize(embedding, axis: int = -1, eps: float = 1e-12):
  """embedding / max(||embedding||, eps) along `axis`: (B, D) -> unit rows (a zero row stays zero). The one
  normalisation of the project (heads, losses, verification)."""
  embedding = jnp.asarray(embedding)
  return embedding / jnp.maximum(jnp.linalg.norm(embedding, axis=axis, keepdims=True), eps)


def flip_fuse(embedding, embedding_flipped):
  """Fuses the embeddings of a photo and its mirror image as AdaFace validation does.

  The un-normalised embeddings are summed, so each counts in proportion to its norm (the norm carries image quality),
  and the sum is L2-normalised.

  Args:
    embedding: (B, D) un-normalised embeddings of the photos.
    embedding_flipped: (B, D) un-normalised embeddings of the horizontally flipped photos.

  Returns:
    (B, D) unit-norm embeddings.
  """
  return l2_normalize(jnp.asarray(embedding) + jnp.asarray(embedding_flipped))


def _fuse(xp, cosine, p_fake0, p_fake1, strength):
  # p = 1 gives log1p(-1) = -inf and exp(-inf) = 0: exactly -1 at any strength, as promised.
  p_fake0 = xp.clip(p_fake0, 0.0, 1.0)
  p_fake1 = xp.clip(p_fake1, 0.0, 1.0)
  log_both_real = xp.log1p(-p_fake0) + xp.log1p(-p_fake1)
  return -1.0 + (1.0 + xp.clip(cosine, -1.0, 1.0)) * xp.exp(strength * log_both_real)


def fused_score(cosine, p_fake0, p_fake1, strength):
  """The fused similarity -1 + (1 + cos) * ((1 - p0) (1 - p1)) ** strength (see the module docstring).

  Args:
    cosine: (B,) cosine similarities of the two embeddings.
    p_fake0: (B,) probabilities that photo 0 is generated.
    p_fake1: (B,) probabilities that photo 1 is generated.
    strength: scalar > 0, how hard a likely fake pushes the score down.

  Returns:
    (B,) similarities in [-1, 1]: equal to cos when p0 = p1 = 0, -1 when either is 1.
  """
  return _fuse(jnp, jnp.asarray(cosine), jnp.asarray(p_fake0), jnp.asarray(p_fake1), strength)


def fused_score_np(cosine, p_fake0, p_fake1, strength) -> np.ndarray:
  """`fused_score` in float64 NumPy, for metrics on many pairs (float32 would merge near-equal scores into ties)."""
  as64 = lambda values: np.asarray(values, dtype=np.float64)
  with np.errstate(divide='ignore'):  # log1p(-1) = -inf is intended
    return _fuse(np, as64(cosine), as64(p_fake0), as64(p_fake1), float(strength))


def sigmoid_np(logits) -> np.ndarray:
  """Fake logits (B,) -> probabilities (B,) float64, stable for large |logit|."""
  logits = np.asarray(logits, dtype=np.float64)
  return np.exp(-np.logaddexp(0.0, -logits))
