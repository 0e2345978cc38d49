"""Trains the two-head face model: `python -m jaxface.train --config configs/NAME.py --workdir DIR`.

With no flags it trains `configs/default.py` on synthetic challenge data (generated and aligned on first use into a
cache folder) with a CPU-sized model and prints the validation EERs.

Flow of one run, top to bottom in `train_and_evaluate`:
  data     the TFDS dataset written by scripts/preprocess.py (or the synthetic one) -> jaxface.data.pipeline batches
           shaped (devices, per_device, S, S, 3);
  state    parameters (FaceModel + AdaFace class head), optimiser, BatchNorm and AdaFace EMA statistics, RNG, step;
           restored from `WORKDIR/checkpoints` when there is one (the data resumes at the same step);
  step     `jax.pmap`-ed over local devices: losses and gradients averaged with `pmean`, BatchNorm statistics synchronised
           through the `batch` axis, a non-finite loss skips the update;
  eval     every epoch: identity-only and fused EER on the validation pairs; the best model by fused EER is kept in
           `WORKDIR/best` with its calibrated fuse strength and threshold.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import pathlib
import signal
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxface import checkpoints
from jaxface import inference
from jaxface import convert
from jaxface import distributed
from jaxface import logbook
from jaxface import losses
from jaxface import optim
from jaxface import metrics as metrics_lib
from jaxface import xla_cpu
from jaxface.config import ConfigError, DEFAULT_CONFIG, load_config, split_runlocal
from jaxface.models.face_model import build_model
from jaxface.models.heads import AdaFaceHead

log = logging.getLogger('jaxface.train')

# Test-only hook: the run sends itself SIGTERM right after this step trains (before it is saved), so a test can hit a
# checkpoint step exactly (scripts/chaos.py, tests/test_train.py).
SIGTERM_AT_STEP_ENV = 'JAXFACE_SIGTERM_AT_STEP'

class TrainingDiverged(RuntimeError):
  """Too many non-finite losses in a row."""


# ----------------------------------------------------------------------------------------------------------------------
# State.
# ----------------------------------------------------------------------------------------------------------------------


def init_variables(model, head, config: ml_collections.ConfigDict, rng: jax.Array) -> tuple[dict, dict]:
  """Initial (params, batch_stats) of FaceModel + AdaFaceHead."""
  size = config.model.input_size
  images = jnp.zeros((2, size, size, 3), jnp.float32)
  model_rng, head_rng = jax.random.split(rng)
  variables = model.init({'params': model_rng, 'dropout': model_rng}, images, train=False)
  head_vars = head.init(head_rng, jnp.zeros((2, config.model.embedding_dim), jnp.float32))
  params = {'model': variables['params'], 'head': head_vars['params']}
  return params, variables.get('batch_stats', {})


def create_train_state(model, head, tx, config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """The whole training state as one pytree (what checkpoints hold)."""
  init_rng, state_rng = jax.random.split(rng)
  params, batch_stats = init_variables(model, head, config, init_rng)
  return {
      'step': jnp.zeros((), jnp.int32),
      'params': params,
      'batch_stats': batch_stats,
      'opt_state': tx.init(params),
      'adaface': losses.init_adaface_state(),
      'rng': state_rng,
      'nonfinite_streak': jnp.zeros((), jnp.int32),
  }


def graft_pretrained(state: dict, config: ml_collections.ConfigDict) -> dict:
  """Replaces the backbone's variables by a converted checkpoint (`python -m jaxface.convert`)."""
  variables = {'params': state['params']['model'], 'batch_stats': state['batch_stats']}
  convert.check_converted(config.init_from, config.model)
  grafted = convert.graft_backbone(variables, convert.load_converted(config.init_from))
  return {**state, 'params': {**state['params'], 'model': grafted['params']}, 'batch_stats': grafted['batch_stats']}


# ----------------------------------------------------------------------------------------------------------------------
# The step.
# ----------------------------------------------------------------------------------------------------------------------


def train_step(state: dict, batch: dict, *, model, head, tx, config: ml_collections.ConfigDict,
               lr_fn: Callable, axis_name: str | None = 'batch') -> tuple[dict, dict]:
  """One optimisation step on one device's share of the batch (run under `jax.pmap(axis_name='batch')`).

  batch: 'image' (B, S, S, 3) float32 in [-1, 1], 'label' (B,) int32, 'is_fake' (B,) int32, 'id_mask' (B,) float32.
  """
  l = config.loss
  rng = jax.random.fold_in(state['rng'], state['step'])
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  images = batch['image'].astype(jnp.float32)
  is_fake = batch['is_fake']

  def loss_fn(params):
    outputs, new_model_state = model.apply(
        {'params': params['model'], 'batch_stats': state['batch_stats']}, images, train=True,
        mutable=['batch_stats'], rngs={'dropout': rng})
    embedding = outputs['embedding'].astype(jnp.float32)
    cosine = head.apply({'params': params['head']}, embedding)
    norms = jnp.linalg.norm(embedding, axis=-1)
    terms = {}
    if l.identity_weight:
      terms['identity'], new_ema, logits = losses.adaface_loss(
          cosine, norms, batch['label'], state['adaface'], m=l.m, h=l.h, s=l.s, t_alpha=l.t_alpha,
          mask=batch['id_mask'], axis_name=axis_name)
    else:
      new_ema, logits = state['adaface'], cosine
    if l.fake_weight and config.model.fake_head != 'none':
      terms['fake'] = losses.fake_bce(outputs['fake_logit'].astype(jnp.float32), is_fake,
                                      losses.fake_pos_weight(is_fake, l.fake_pos_weight, axis_name), axis_name=axis_name)
    if l.pushaway_weight:
      terms['pushaway'] = losses.fake_pushaway_loss(
          embedding, losses.head_class_weights(params['head']), batch['label'], is_fake, l.pushaway_margin,
          axis_name=axis_name)
    if l.pair_weight:
      terms['pair'] = losses.in_batch_pair_loss(embedding, batch['label'], is_fake, s=l.pair_s, m0=l.pair_m0,
                                         m1=l.pair_m1, axis_name=axis_name)
    weights = {'identity': l.identity_weight, 'fake': l.fake_weight, 'pushaway': l.pushaway_weight,
               'pair': l.pair_weight}
    total = sum(weights[k] * v for k, v in terms.items())
    aux = {'terms': terms, 'batch_stats': new_model_state['batch_stats'], 'adaface': new_ema,
           'logits': logits, 'fake_logit': outputs['fake_logit']}
    return total, aux

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  if axis_name is not None:
    # Each device's loss is already a global mean (losses psum their sums and counts), so averaging the gradients
    # makes the update equal to one device's on the whole batch.
    grads = jax.lax.pmean(grads, axis_name)
    loss = jax.lax.pmean(loss, axis_name)
  finite = jnp.isfinite(loss) & jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  updates, new_opt_state = tx.update(grads, state['opt_state'], state['params'])
  new_params = optax.apply_updates(state['params'], updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = {
      'step': state['step'] + 1,
      'params': keep(new_params, state['params']),
      'batch_stats': keep(aux['batch_stats'], state['batch_stats']),
      'opt_state': keep(new_opt_state, state['opt_state']),
      'adaface': keep(aux['adaface'], state['adaface']),
      'rng': state['rng'],
      'nonfinite_streak': jnp.where(finite, 0, state['nonfinite_streak'] + 1),
  }
  fake_pred = (aux['fake_logit'] > 0).astype(jnp.int32)
  summary = {
      'loss': loss,
      'learning_rate': lr_fn(state['step']),
      'fake_accuracy': jnp.mean((fake_pred == is_fake).astype(jnp.float32)),
      'nonfinite': 1.0 - finite.astype(jnp.float32),
      **{f'loss_{k}': v for k, v in aux['terms'].items()},
  }
  if axis_name is not None:
    summary = jax.lax.pmean(summary, axis_name)
  return new_state, summary


def validate_pairs(model, variables: dict, pairs, *, input_size: int, batch_size: int, flip_tta: bool = False
                   ) -> dict:
  """Scores the validation pairs and calibrates the fuse strength and the threshold on them.

  Runs the same network and metrics as `jaxface.evaluate` (`inference.score_pairs`, `metrics.pair_metrics`).
  `pairs` yields dicts with 'image0', 'image1' (B, S, S, 3) float32 in [-1, 1], 'label', 'kind', 'is_fake0/1' (B,).

  Returns:
    The flat summary training logs and stores with the best checkpoint: eer_identity and eer_fused (cosine and fused
    at the calibrated strength), fuse_strength, threshold (fused, at the EER), fake_pair_auc (the fake-in-pair AUC of
    `jaxface.metrics`), eer_identity_fake_pairs and eer_fused_fake_pairs (same-person pairs against the pairs holding
    a fake), pairs (labelled).
  """
  network = inference.Network(model, variables, input_size=input_size, batch_size=batch_size, flip_tta=flip_tta)
  parts = [inference.score_pairs(network, batch['image0'], batch['image1'], labels=batch['label'],
                                 kinds=batch['kind'], is_fake0=batch.get('is_fake0'), is_fake1=batch.get('is_fake1'))
           for batch in pairs]
  # Each process scored its slice of the pairs; all of them compute the metrics on all the pairs (same best step).
  result = metrics_lib.pair_metrics(distributed.gather_dataclass(inference.PairScores.concatenate(parts)))
  nan = float('nan')
  fused, cosine = result.get('fused', {}), result.get('cosine', {})
  return {
      'eer_identity': float(cosine.get('eer', nan)),
      'eer_fused': float(fused.get('eer', nan)),
      'fuse_strength': result['fuse_strength'],
      'threshold': float(fused.get('eer_threshold', nan)),
      'fake_pair_auc': float(result['fake_detection_pair'].get('auc', nan)),
      'eer_identity_fake_pairs': float(cosine.get('eer_fake_pairs', nan)),
      'eer_fused_fake_pairs': float(fused.get('eer_fake_pairs', nan)),
      'pairs': result['labelled_pairs'],
  }


# ----------------------------------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------------------------------


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Joins a multi-host job when the config or the environment (a coordinator address) asks for it (see
  `jaxface.distributed.initialize`)."""
  distributed.initialize(config)


def _unreplicate(tree):
  return jax.tree.map(lambda x: np.asarray(x[0]), tree)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """How long a run is, in steps of the global batch."""
  steps_per_epoch: int
  total_steps: int
  eval_every: int
  num_devices: int


def _plan(config: ml_collections.ConfigDict, dataset) -> _Plan:
  num_devices = jax.local_device_count()
  global_batch = config.batch_size
  if global_batch % (num_devices * jax.process_count()):
    raise ConfigError(f'config.batch_size={global_batch} does not divide over {num_devices * jax.process_count()} '
                      'devices')
  steps_per_epoch = max(dataset.num_train_examples // global_batch, 1)
  plan = _Plan(steps_per_epoch=steps_per_epoch,
               total_steps=config.num_steps or int(config.num_epochs * steps_per_epoch),
               eval_every=config.eval_every or steps_per_epoch, num_devices=num_devices)
  log.info('%d training photos of %d people; %d steps of %d (%d per epoch) on %d device(s)',
           dataset.num_train_examples, dataset.num_classes, plan.total_steps, global_batch, steps_per_epoch,
           num_devices)
  return plan


def _initial_state(config: ml_collections.ConfigDict, workdir: pathlib.Path, state: dict,
                   manager) -> dict:
  """The state to start from: the latest checkpoint of the workdir, else `state` with the pretrained backbone grafted
  in (config.init_from); a fresh run also writes its config beside the checkpoints."""
  if manager.latest_step() is not None:
    state, _, start = checkpoints.restore_latest_good(manager, checkpoints.abstract(state))
    log.info('Resuming from %s at step %d', manager.directory, start)
    return state
  if config.init_from:
    state = graft_pretrained(state, config)
    log.info('Backbone initialised from %s', config.init_from)
  if jax.process_index() == 0:
    checkpoints.save_config(workdir, config)
  return state


class _Validator:
  """Validates on the val pairs, logs the result and keeps the best model by fused EER in `WORKDIR/best` with its
  calibrated scoring (fuse strength, threshold)."""

  def __init__(self, model, dataset, config: ml_collections.ConfigDict, workdir: pathlib.Path, writer):
    self.model, self.dataset, self.config, self.writer = model, dataset, config, writer
    self.best = checkpoints.best_manager(workdir)
    self.best_meta = checkpoints.read_meta(self.best)
    self.last: dict = dict(self.best_meta.get('val', {}))

  @property
  def scoring(self) -> dict:
    return self.best_meta.get('scoring', {})

  def __call__(self, step: int, variables: dict) -> dict:
    from jaxface.data import pipeline  # pylint: disable=g-import-not-at-top
    config = self.config
    pairs = pipeline.pairs_dataset(self.dataset, 'val', config, config.eval_batch_size,
                                   process_index=jax.process_index(), process_count=jax.process_count())
    flip_tta = bool(config.get('flip_tta', False))
    result = validate_pairs(self.model, variables, pairs, input_size=config.model.input_size,
                            batch_size=2 * config.eval_batch_size, flip_tta=flip_tta)
    self.writer.write(step, {f'val_{k}': v for k, v in result.items()})
    log.info('step %d: validation EER identity-only %.4f, fused %.4f (strength %.2f) on %d pairs; on the pairs with '
             'fakes %.4f vs %.4f; fake-in-pair AUC %.3f', step, result['eer_identity'], result['eer_fused'],
             result['fuse_strength'], result['pairs'], result['eer_identity_fake_pairs'],
             result['eer_fused_fake_pairs'], result['fake_pair_auc'])
    if result['eer_fused'] <= self.best_meta.get('val', {}).get('eer_fused', np.inf):
      self.best_meta = {'step': step, 'val': result,
                        'scoring': {'fuse_strength': result['fuse_strength'], 'threshold': result['threshold'],
                                    'flip_tta': flip_tta}}
      if step in self.best.all_steps():  # saved by a run killed before its training checkpoint of this step
        self.best.delete(step)
      checkpoints.save(self.best, step, variables, self.best_meta, force=True)
    self.last = result
    return result

  def close(self) -> None:
    self.best.close()


def _log_summaries(summaries: list, step: int, rstate: dict, config: ml_collections.ConfigDict, manager,
                   seconds: float) -> dict:
  """Host means of the steps' summaries since the last log, with images/s; raises TrainingDiverged on a long run of
  non-finite losses."""
  host = jax.tree.map(lambda x: np.asarray(x[0]), jax.device_get(summaries))
  scalars = {k: float(np.mean([s[k] for s in host])) for k in host[0]}
  skipped = int(sum(s['nonfinite'] for s in host))
  if skipped:
    log.warning('steps %d-%d: %d non-finite loss(es); those updates were skipped', step - len(host) + 1, step, skipped)
  streak = int(np.asarray(rstate['nonfinite_streak'])[0])
  if streak >= config.max_nonfinite_steps:
    raise TrainingDiverged(
        f'training diverged: {streak} non-finite losses in a row at step {step}; the last good checkpoint in '
        f'{manager.directory} is intact (lower config.optim.learning_rate or check the data)')
  scalars['images_per_second'] = len(host) * config.batch_size / max(seconds, 1e-9)
  return scalars


def read_training_data(config: ml_collections.ConfigDict) -> tuple[Any, ml_collections.ConfigDict]:
  """Opens the dataset the config trains on (the synthetic demo set is made on first use, by process 0 first, the
  others then read it); returns it and a copy of the config that records it (`config.data.tfds_dir` and the aligner
  preprocessing used, which evaluation and verification follow: `jaxface.data.sources.aligner_settings`)."""
  from jaxface.data import prepared, sources  # pylint: disable=g-import-not-at-top

  dataset = distributed.primary_first(lambda: prepared.open_prepared(sources.training_tfds_dir(config.data)))
  config = copy.deepcopy(config)
  settings = sources.aligner_settings(dataset)
  if settings.get('aligner', config.data.aligner) != config.data.aligner:
    log.info('The dataset was aligned with %r: evaluation will align raw photos the same way', settings['aligner'])
  config.data.update(settings)
  return dataset, config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains (or resumes) a run in `workdir`; returns the final validation metrics."""
  from jaxface.data import pipeline  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  maybe_initialize_distributed(config)
  dataset, config = read_training_data(config)
  plan = _plan(config, dataset)

  model = build_model(config.model)
  head = AdaFaceHead(num_classes=dataset.num_classes)
  lr_fn = optim.learning_rate_schedule(config, plan.steps_per_epoch, plan.total_steps)
  tx = optim.make_optimizer(config, lr_fn)
  manager = checkpoints.train_manager(workdir, save_every=config.checkpoint_every, keep=config.keep_checkpoints)
  state = _initial_state(config, workdir, create_train_state(model, head, tx, config, jax.random.PRNGKey(config.seed)),
                         manager)
  step = int(state['step'])
  # The step also all-reduces each process's SIGTERM flag: every process stops at the same step (distributed.py).
  p_train_step = jax.pmap(distributed.with_stop_vote(functools.partial(
      train_step, model=model, head=head, tx=tx, config=config, lr_fn=lr_fn)), axis_name='batch', donate_argnums=(0,))
  rstate = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (plan.num_devices,) + np.shape(x)), state)
  batches = pipeline.train_dataset(dataset, config, num_devices=plan.num_devices, start_step=step, seed=config.seed)
  writer = logbook.MetricWriter(workdir, start_step=step)
  validate = _Validator(model, dataset, config, workdir, writer)
  progress = _progress(plan.total_steps, step, config)
  summaries, t0 = [], time.time()
  sigterm_at = int(os.environ.get(SIGTERM_AT_STEP_ENV, '0') or 0)
  try:
    with checkpoints.Preemption() as preemption:
      while step < plan.total_steps:
        rstate, summary, votes = p_train_step(rstate, next(batches),
                                              distributed.stop_flags(preemption.requested, plan.num_devices))
        summaries.append(summary)
        step += 1
        if step == sigterm_at:
          os.kill(os.getpid(), signal.SIGTERM)
        last = step == plan.total_steps
        if step % config.log_every == 0 or last:
          scalars = _log_summaries(summaries, step, rstate, config, manager, time.time() - t0)
          writer.write(step, scalars)
          progress.set_postfix(loss=f'{scalars["loss"]:.3f}', img_s=f'{scalars["images_per_second"]:.1f}')
          progress.update(len(summaries))
          summaries, t0 = [], time.time()
        if step % plan.eval_every == 0 or last:
          validate(step, checkpoints.inference_variables(_unreplicate(rstate)))
        meta = {'step': step, 'scoring': validate.scoring}
        saved = checkpoints.save(manager, step, _unreplicate(rstate), meta, force=last)
        if distributed.should_stop(preemption.requested, votes, step):  # SIGTERM on any process: all save this step
          if not saved:  # a SIGTERM on a step just saved (the last one, say) must not save it twice: Orbax refuses
            checkpoints.save(manager, step, _unreplicate(rstate), meta, force=True)
          manager.wait_until_finished()
          log.warning('SIGTERM: saved the checkpoint at step %d in %s; rerun the same command to resume', step,
                      manager.directory)
          raise SystemExit(143)
    if not validate.last:  # a resumed run that had nothing left to train
      validate(step, checkpoints.inference_variables(_unreplicate(rstate)))
  finally:
    progress.close()
    manager.wait_until_finished()
    manager.close()
    validate.close()
    writer.close()
  return {'step': step, **validate.last}


def _progress(total: int, start: int, config: ml_collections.ConfigDict):
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=start, desc='train', unit='step', dynamic_ncols=True,
                   disable=not config.get('progress', True) or jax.process_index() != 0)


# ----------------------------------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(
      prog='python -m jaxface.train', description=__doc__.split('\n\n')[0],
      epilog='Any config field can be overridden with --config.FIELD=VALUE, e.g. --config.batch_size=64.')
  parser.add_argument('--config', default=str(DEFAULT_CONFIG),
                      help='config file (default: configs/default.py); PATH:runlocal for its CPU smoke size')
  parser.add_argument('--workdir', default=None, help='where checkpoints and metrics go (default: ./workdir/<config>)')
  args, rest = parser.parse_known_args(argv)
  # force: absl (imported by orbax and TF) has already put a WARNING-level handler on the root logger.
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S',
                      force=True)
  for noisy in ('absl', 'tensorflow', 'jax._src.xla_bridge', 'orbax'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    overrides = [r for r in rest if r.startswith('--config.')]
    unknown = [r for r in rest if not r.startswith('--config.')]
    if unknown:
      raise ConfigError(f'unknown argument {unknown[0]!r} (see python -m jaxface.train --help)')
    config = load_config(args.config, overrides)
    path, runlocal = split_runlocal(args.config)
    workdir = args.workdir or str(pathlib.Path('workdir') / (path.stem + ('_runlocal' if runlocal else '')))
    log.info('config %s, workdir %s', args.config, workdir)
    log.info('XLA:CPU convolutions: %s', 'Eigen (YNNPACK off by jaxface.xla_cpu)' if xla_cpu.eigen_convolutions()
             else 'jaxlib default (XLA_FLAGS left as given)')
    result = train_and_evaluate(config, workdir)
  except (ConfigError, checkpoints.CheckpointError, convert.ConversionError, TrainingDiverged) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'validation EER (identity-only cosine): {result.get("eer_identity", float("nan")):.4f}')
  print(f'validation EER (fused with the fake head): {result.get("eer_fused", float("nan")):.4f}')
  print(f'validation EER on the pairs with fakes: identity-only '
        f'{result.get("eer_identity_fake_pairs", float("nan")):.4f}, fused '
        f'{result.get("eer_fused_fake_pairs", float("nan")):.4f}; fake-in-pair AUC '
        f'{result.get("fake_pair_auc", float("nan")):.3f}')
  print(f'best checkpoint: {pathlib.Path(workdir) / checkpoints.BEST_DIR}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
