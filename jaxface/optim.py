"""The optimiser of a run: learning-rate schedule, SGD-momentum or AdamW with masked weight decay, per-module rates.

    lr_fn = learning_rate_schedule(config, steps_per_epoch, total_steps)
    tx = make_optimizer(config, lr_fn)      # over {'model': FaceModel params, 'head': AdaFace class weights}
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

from jaxface.config import ConfigError


def _leaf_name(path) -> str:
  last = path[-1]
  return str(getattr(last, 'key', getattr(last, 'name', last)))


def decay_mask(params: Any) -> Any:
  """True for the weights that take weight decay: conv and dense kernels and the class weights, not BatchNorm scale or
  bias, biases or PReLU slopes (decaying those pulls activations towards linear and BN towards zero)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) in ('kernel', 'weight'), params)


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int) -> Callable:
  """Warm-up then cosine decay or steps at `config.optim.decay_epochs`, in optimiser steps."""
  o = config.optim
  warmup = int(o.warmup_epochs * steps_per_epoch)
  if o.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, o.learning_rate, max(warmup, 1), max(total_steps, warmup + 1), end_value=o.learning_rate * o.final_lr_ratio)
  if o.schedule == 'step':
    boundaries = {int(e * steps_per_epoch): o.step_factor for e in o.decay_epochs}
    decay = optax.piecewise_constant_schedule(o.learning_rate, boundaries)
    ramp = optax.linear_schedule(0.0, o.learning_rate, max(warmup, 1))
    return optax.join_schedules([ramp, decay], [warmup])
  if o.schedule == 'constant':
    return optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, max(warmup, 1)),
                                 optax.constant_schedule(o.learning_rate)], [warmup])
  raise ConfigError(f'config.optim.schedule={o.schedule!r}: expected cosine, step or constant')


def make_optimizer(config: ml_collections.ConfigDict, lr_fn: Callable) -> optax.GradientTransformation:
  """SGD-momentum or AdamW with decoupled, masked weight decay and gradient clipping.

  With `config.optim.backbone_lr_mult` < 1 the pretrained backbone moves slower than the freshly initialised heads.
  With `config.optim.fake_head_lr` > 0 the fake head trains with its own AdamW (peak rate fake_head_lr, the same
  warm-up and decay) and its own clipping.
  """
  o = config.optim

  def one(scale: float) -> optax.GradientTransformation:
    lr = lambda step: lr_fn(step) * scale
    if o.name == 'sgd':
      return optax.chain(optax.add_decayed_weights(o.weight_decay, decay_mask),
                         optax.sgd(lr, momentum=o.momentum, nesterov=o.nesterov))
    if o.name == 'adamw':
      return optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
    raise ConfigError(f'config.optim.name={o.name!r}: expected sgd or adamw')

  def by_module(module: str, inside: str, outside: str) -> Callable:
    """Labels params['model'][module]'s leaves `inside`, every other leaf `outside` (for optax.multi_transform)."""
    def label(path, _):
      return inside if [str(getattr(k, 'key', k)) for k in path[:2]] == ['model', module] else outside
    return lambda params: jax.tree_util.tree_map_with_path(label, params)

  def clipped(t: optax.GradientTransformation) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), t) if o.grad_clip else t

  tx = clipped(optax.multi_transform({'backbone': one(o.backbone_lr_mult), 'rest': one(1.0)},
                                     by_module('backbone', 'backbone', 'rest')))
  if not o.fake_head_lr:
    return tx
  # The fake head gets an AdamW of its own, on the same schedule, clipped on its own. Its BCE gradients are orders of
  # magnitude smaller than AdaFace's (s = 64): sharing SGD and one global-norm clip, the head barely moved and stayed
  # at chance on the synthetic fakes. Adam's step does not depend on the gradient's scale.
  ratio = o.fake_head_lr / o.learning_rate
  fake = clipped(optax.adamw(lambda step: lr_fn(step) * ratio, b1=o.b1, b2=o.b2,
                             weight_decay=o.fake_head_weight_decay, mask=decay_mask))
  return optax.multi_transform({'fake_head': fake, 'shared': tx}, by_module('fake_head', 'fake_head', 'shared'))
