"""The project's fake head trained alone on a frozen backbone, cheaply enough to train it dozens of times.

Used by `research.fake_generalisation.benchmark` (leave-one-source-out benchmark and ablations). What is the same as in
training (`jaxface.train`): the module, `jaxface.models.heads.FakeHead` in the configured mode, with its inputs built
as `FaceModel` builds them (noise residual of the [-1, 1] face folded 2x2, the MobileFaceNet stem map, the stage-2
map, the embedding), the loss (`losses.fake_bce`) and the optimiser of the fake head (Adam, config.optim.fake_head_lr
1e-3). What differs: the backbone is frozen (in training the fake loss also tunes the stem and the first two stages),
and the budget is a fixed small number of steps.

Cheap by construction: the full backbone runs once per photo (`backbone_features`: embedding and the per-channel mean
and variance of the stage-2 map); per step only the stem (one strided conv and one depthwise block, a few MFLOPs) and
the head run. `Recipe.train_stem` lets the fake loss tune the stem too, as training does (its BatchNorm statistics
stay frozen; the embedding and stage-2 map keep coming from the frozen backbone). The stage-2 map reaches the head as
a (B, 2, 1, C) map holding mean + sd and mean - sd, whose per-channel mean and variance are exactly the real map's,
so the head's `mean_std_pool` sees the same numbers.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxface import losses
from jaxface.models.face_model import build_backbone, fold_pixels, high_pass, normalize_input
from jaxface.models.heads import FakeHead
from jaxface.models.layers import Conv, batch_norm
from jaxface.models.mobilefacenet import ConvBN, DepthwiseConv

MODES = ('traces', 'features', 'embedding')


@dataclasses.dataclass
class HeadInputs:
  """What the head needs of N photos: faces (N, 112, 112, 3) uint8, embedding (N, D), stage-2 mean and var (N, C)."""
  faces: np.ndarray
  embedding: np.ndarray
  stage2_mean: np.ndarray
  stage2_var: np.ndarray

  def __len__(self) -> int:
    return len(self.faces)

  def take(self, index: np.ndarray) -> HeadInputs:
    return HeadInputs(self.faces[index], self.embedding[index], self.stage2_mean[index], self.stage2_var[index])

  @classmethod
  def concatenate(cls, parts: list[HeadInputs]) -> HeadInputs:
    return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))


class MobileFaceNetStem(nn.Module):
  """The first two layers of `MobileFaceNet` under the same parameter names: conv1 ('stem') and dw_conv ('stage1')."""

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    x = ConvBN(64, 3, 2, name='conv1', train=False)(images)
    y = DepthwiseConv(3, 1, 1, jnp.float32, name='dw_conv_depthwise')(x)
    y = nn.relu(batch_norm(False, None, jnp.float32, name='dw_conv_bn1')(y))
    y = Conv(64, 1, 1, 0, name='dw_conv_pointwise')(y)
    return {'stem': x, 'stage1': nn.relu(batch_norm(False, None, jnp.float32, name='dw_conv_bn2')(y))}


def stem_variables(backbone: dict[str, Any]) -> dict[str, Any]:
  """The stem's share of converted MobileFaceNet variables ({'params', 'batch_stats'} of the backbone)."""
  names = ('conv1', 'dw_conv_depthwise', 'dw_conv_bn1', 'dw_conv_pointwise', 'dw_conv_bn2')
  return {c: {k: v for k, v in backbone[c].items() if k in names} for c in ('params', 'batch_stats')}


def _to_unit(faces: jax.Array) -> jax.Array:
  return faces.astype(jnp.float32) / 127.5 - 1.0


def backbone_features(backbone: dict[str, Any], faces: np.ndarray, batch_size: int = 64) -> HeadInputs:
  """Runs the frozen MobileFaceNet once over (N, 112, 112, 3) uint8 faces -> HeadInputs."""
  net = build_backbone('mobilefacenet', embedding_dim=backbone['params']['conv3']['kernel'].shape[-1])

  @jax.jit
  def run(images):
    embedding, stages = net.apply(backbone, normalize_input(_to_unit(images), 'imagenet'), train=False)
    s2 = stages['stage2'].astype(jnp.float32)
    return embedding, s2.mean(axis=(1, 2)), s2.var(axis=(1, 2))

  outs = []
  for start in range(0, len(faces), batch_size):
    chunk = faces[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
    outs.append([np.asarray(o)[:len(chunk)] for o in run(padded)])
  if not outs:
    return HeadInputs(faces, np.zeros((0, 128), np.float32), np.zeros((0, 64), np.float32), np.zeros((0, 64)))
  return HeadInputs(faces, *(np.concatenate(parts) for parts in zip(*outs)))


def head_stages(stem: dict[str, Any], faces: jax.Array, s2_mean: jax.Array, s2_var: jax.Array) -> dict[str, jax.Array]:
  """The stage maps FakeHead reads, built as FaceModel builds them for MobileFaceNet (see the module docstring)."""
  images = _to_unit(faces)
  stages = MobileFaceNetStem().apply(stem, normalize_input(images, 'imagenet'))
  sd = jnp.sqrt(s2_var)
  stage2 = jnp.stack([s2_mean + sd, s2_mean - sd], axis=1)[:, :, None, :]
  return {**stages, 'residual': fold_pixels(high_pass(images)), 'stage2': stage2}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How the head is trained. steps x batch_size examples, drawn with `sampling_weights`' probabilities; with
  probability `launder_prob` an example is replaced by its laundered copy (reals and fakes alike)."""
  mode: str = 'traces'
  steps: int = 300
  batch_size: int = 32
  lr: float = 1e-3
  launder_prob: float = 0.0
  seed: int = 0
  train_stem: bool = False  # the fake loss also tunes the stem's weights, at stem_lr_mult x lr
  stem_lr_mult: float = 0.1


def sampling_weights(labels: np.ndarray, sources: np.ndarray, balance_sources: bool,
                     strata: np.ndarray | None = None) -> np.ndarray:
  """Per-example probabilities: half the draws real, half fake; within a class uniform over examples, or (with
  balance_sources) uniform over sources first, so that no source's share of a class predicts the label.

  `strata` (N,) ints, e.g. bins of a trivial statistic such as face sharpness: the draws then hold that statistic's
  distribution the same for both classes (each stratum gets the mean of its real and fake shares, split equally
  between the classes; a stratum that only one class fills is left out), so the statistic alone says nothing about
  the label. Within a (class, stratum) cell the draws are uniform over examples or sources as above."""
  labels, sources = np.asarray(labels), np.asarray(sources)
  for label in (0, 1):
    if not (labels == label).any():
      raise ValueError(f'the training set has no {"fake" if label else "real"} examples: nothing to contrast')
  strata = np.zeros(len(labels), np.int64) if strata is None else np.asarray(strata)
  if strata.shape != labels.shape:
    raise ValueError(f'strata has shape {strata.shape}, labels {labels.shape}: one stratum per example')
  shared = [b for b in np.unique(strata) if all(((labels == c) & (strata == b)).any() for c in (0, 1))]
  if not shared:
    raise ValueError('no stratum holds both real and fake examples: use coarser strata')
  share = {b: np.mean([((labels == c) & (strata == b)).sum() / (labels == c).sum() for c in (0, 1)]) for b in shared}
  weights = np.zeros(len(labels), np.float64)
  for b in shared:
    for label in (0, 1):
      members = (labels == label) & (strata == b)
      if balance_sources:
        names = np.unique(sources[members])
        for name in names:
          mask = members & (sources == name)
          weights[mask] = share[b] / len(names) / mask.sum()
      else:
        weights[members] = share[b] / members.sum()
  return weights / weights.sum()


def quantile_strata(values: np.ndarray, bins: int) -> np.ndarray:
  """(N,) values -> (N,) ints in [0, bins): the pooled quantile bin of each value."""
  values = np.asarray(values, np.float64)
  edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
  return np.searchsorted(edges, values, side='right')


def _init(model: FakeHead, stem, inputs: HeadInputs, seed: int):
  sample = inputs.take(np.arange(min(2, len(inputs))))
  stages = head_stages(stem, jnp.asarray(sample.faces), jnp.asarray(sample.stage2_mean),
                       jnp.asarray(sample.stage2_var))
  return model.init(jax.random.PRNGKey(seed), jnp.asarray(sample.embedding), stages)


@functools.lru_cache(maxsize=8)
def _trainer(mode: str, lr: float, train_stem: bool = False, stem_lr_mult: float = 0.1):
  """(model, optimiser, jitted step) for one head mode, compiled once and shared by every training run.

  The step's parameters are {'head': head params, 'stem': stem params}; with train_stem False the stem gets no update.
  """
  model = FakeHead(mode, train=True)
  stem_tx = optax.adam(lr * stem_lr_mult) if train_stem else optax.set_to_zero()
  tx = optax.multi_transform({'head': optax.adam(lr), 'stem': stem_tx}, {'head': 'head', 'stem': 'stem'})

  @jax.jit
  def step(params, batch_stats, opt_state, stem_stats, faces, embedding, s2_mean, s2_var, is_fake):

    def loss_fn(p):
      stem = {'params': p['stem'], 'batch_stats': stem_stats}
      stages = head_stages(stem, faces, s2_mean, s2_var)
      if not train_stem:
        stages = jax.lax.stop_gradient(stages)
      logit, updates = model.apply({'params': p['head'], **({'batch_stats': batch_stats} if batch_stats else {})},
                                   embedding, stages, mutable=['batch_stats'])
      return losses.fake_bce(logit, is_fake), updates.get('batch_stats', {})

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  return model, tx, step


def _mix(batch: HeadInputs, other: HeadInputs, swap: np.ndarray) -> HeadInputs:
  """Per example, `other` where swap is True, else `batch`."""
  pick = lambda a, b: np.where(swap.reshape(-1, *[1] * (a.ndim - 1)), b, a)
  return HeadInputs(*(pick(a, b) for a, b in zip(dataclasses.astuple(batch), dataclasses.astuple(other))))


def train_head(stem: dict[str, Any], inputs: HeadInputs, labels: np.ndarray, weights: np.ndarray, recipe: Recipe,
               laundered: HeadInputs | None = None) -> dict[str, Any]:
  """Trains a fresh FakeHead(recipe.mode) on `inputs` -> its variables ({'params', 'batch_stats', 'stem'}).

  'stem' holds the stem variables the head was trained with (tuned when recipe.train_stem); `score_head` uses them.
  """
  if recipe.mode not in MODES:
    raise ValueError(f'fake head mode {recipe.mode!r} is not one of {", ".join(MODES)}')
  if recipe.launder_prob > 0 and (laundered is None or len(laundered) != len(inputs)):
    raise ValueError('launder_prob > 0 needs one laundered copy per training example (laundered=HeadInputs)')
  model, tx, step = _trainer(recipe.mode, recipe.lr, recipe.train_stem, recipe.stem_lr_mult)
  variables = _init(model, stem, inputs, recipe.seed)
  params = {'head': variables['params'], 'stem': stem['params']}
  batch_stats = variables.get('batch_stats', {})
  opt_state = tx.init(params)
  rng = np.random.default_rng(recipe.seed)
  labels = np.asarray(labels, np.int32)
  for _ in range(recipe.steps):
    index = rng.choice(len(inputs), recipe.batch_size, p=weights)
    batch = inputs.take(index)
    if recipe.launder_prob > 0:
      batch = _mix(batch, laundered.take(index), rng.random(recipe.batch_size) < recipe.launder_prob)
    params, batch_stats, opt_state, _ = step(params, batch_stats, opt_state, stem['batch_stats'], batch.faces,
                                             batch.embedding, batch.stage2_mean, batch.stage2_var, labels[index])
  return {'params': params['head'], 'batch_stats': batch_stats,
          'stem': {'params': params['stem'], 'batch_stats': stem['batch_stats']}}


@functools.lru_cache(maxsize=8)
def _scorer(mode: str):
  model = FakeHead(mode, train=False)

  @jax.jit
  def score(variables, stem, faces, embedding, s2_mean, s2_var):
    variables = {k: v for k, v in variables.items() if v and k in ('params', 'batch_stats')}
    return model.apply(variables, embedding, head_stages(stem, faces, s2_mean, s2_var))
  return score


def score_head(variables: dict[str, Any], stem: dict[str, Any], inputs: HeadInputs, mode: str,
               batch_size: int = 128) -> np.ndarray:
  """Fake logits (N,) of a trained head on `inputs` (eval mode: BatchNorm running statistics).

  The stem is the one the head was trained with (variables['stem']) where `train_head` recorded it, else `stem`.
  """
  score = _scorer(mode)
  stem = variables.get('stem', stem)
  out = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs.take(np.arange(start, min(start + batch_size, len(inputs))))
    n = len(chunk)
    pad = lambda a: np.concatenate([a, np.zeros((batch_size - n, *a.shape[1:]), a.dtype)])
    logits = score(variables, stem, pad(chunk.faces), pad(chunk.embedding), pad(chunk.stage2_mean),
                   pad(chunk.stage2_var))
    out.append(np.asarray(logits)[:n])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def spectrum_features(faces: np.ndarray) -> np.ndarray:
  """(N, S, S, 3) uint8 faces -> (N, R) azimuthally averaged log power spectrum of the grey face (the 1-D spectrum
  of Durall et al. 2019, "Unmasking DeepFakes with simple features"), R = floor(sqrt(2) S / 2) + 1 integer rings
  from DC out to the corners, so that a period-2 pattern (Nyquist, where a checkerboard sits) is in it. Each photo's
  curve is shifted to mean 0 so that overall contrast drops out and the shape (how power falls with frequency, where
  a generator's upsampling leaves bumps) is what remains. A Hann window keeps the face's border from adding a cross
  to the spectrum."""
  faces = np.asarray(faces)
  if faces.ndim != 4 or faces.shape[1] != faces.shape[2]:
    raise ValueError(f'faces must be (N, S, S, C) squares, got {faces.shape}')
  size = faces.shape[1]
  grey = faces.astype(np.float64).mean(-1)
  grey -= grey.mean(axis=(1, 2), keepdims=True)
  window = np.outer(np.hanning(size), np.hanning(size))
  power = np.abs(np.fft.fftshift(np.fft.fft2(grey * window), axes=(1, 2))) ** 2
  yy, xx = np.indices((size, size)) - size // 2
  radius = np.sqrt(xx ** 2 + yy ** 2).astype(np.int64).ravel()
  counts = np.bincount(radius)
  rings = np.stack([np.bincount(radius, p.ravel(), minlength=len(counts)) for p in power]) / counts
  curve = np.log(rings + 1e-8)
  return (curve - curve.mean(axis=1, keepdims=True)).astype(np.float32)


def train_spectrum(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, c: float = 1.0):
  """A standardised logistic regression on `spectrum_features`, each example weighted as `sampling_weights` draws
  it -> the fitted scikit-learn pipeline (score with its decision_function)."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.pipeline import make_pipeline  # pylint: disable=import-outside-toplevel
  from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
  model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
  weights = np.asarray(weights, np.float64)
  model.fit(features, labels, logisticregression__sample_weight=weights * len(weights) / weights.sum())
  return model
