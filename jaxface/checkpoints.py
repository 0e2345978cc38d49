"""Orbax checkpoints of a training run, its best model, and loading them back for inference.

A workdir holds:

- `config.json`: the run's ConfigDict, so a checkpoint can be used without its config file;
- `checkpoints/<step>/`: the full training state (parameters, optimiser, batch statistics, AdaFace EMA statistics, RNG,
  step), written asynchronously every `config.checkpoint_every` steps and at the end, the last
  `config.keep_checkpoints` kept;
- `best/<step>/`: the inference variables of the model with the best fused validation EER, with its scoring
  calibration (fuse strength, threshold at the EER).

Every checkpoint step is an Orbax composite of `state` (arrays) and `meta` (JSON: step, scoring, validation metrics,
and `state_digest`, a BLAKE2b digest of the arrays). The position in the data is the step itself: the input pipeline is
deterministic and resumes at any step.

Orbax writes a step into a temporary folder and renames it when complete, so a run killed mid-write leaves no half step
behind (the temporary folder is ignored and removed). A committed step that was later truncated or tampered with is
caught by `restore` (Orbax cannot read it, or its arrays do not match the digest); `restore_latest_good`, which
training resumes with, then moves it to `checkpoints_corrupt/` with one warning line and falls back to the previous step.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pathlib
import shutil
import signal
import threading
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CONFIG_FILE = 'config.json'
TRAIN_DIR = 'checkpoints'
BEST_DIR = 'best'
CORRUPT_DIR = 'checkpoints_corrupt'
DIGEST_KEY = 'state_digest'

log = logging.getLogger('jaxface.checkpoints')


class CheckpointError(ValueError):
  """A checkpoint that is missing or unusable; the message is one line for the user."""


class CorruptCheckpoint(CheckpointError):
  """A checkpoint step whose files cannot be read back as they were written (truncated, tampered with)."""


def save_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config beside its checkpoints (JSON)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Reads the config a workdir was trained with."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise CheckpointError(f'{path}: no config.json here (is this a jaxface training workdir?)')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def train_manager(workdir: str | pathlib.Path, *, save_every: int, keep: int) -> ocp.CheckpointManager:
  """The asynchronous manager of full training states, `workdir/checkpoints`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=True, create=True)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / TRAIN_DIR, options=options)


def best_manager(workdir: str | pathlib.Path) -> ocp.CheckpointManager:
  """The manager of the best model by fused validation EER, `workdir/best` (one kept)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=True)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / BEST_DIR, options=options)


def digest(state: Any) -> str:
  """BLAKE2b of every array of a pytree (shape, dtype and bytes, in tree order): what `save` records and `restore`
  checks, so a step whose files were altered after the write is not trained on."""
  h = hashlib.blake2b(digest_size=16)
  for leaf in jax.tree.leaves(state):
    a = np.asarray(leaf)  # in the dtype JAX restores it as (float64 becomes float32 unless x64 is on)
    a = np.ascontiguousarray(a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False))
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.data)
  return h.hexdigest()


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
  """Saves `state` (a pytree of host or single-device arrays) and the JSON `meta` (with the state's digest) at `step`.

  Returns:
    Whether a save started (Orbax skips steps off its save interval unless `force`).
  """
  if not force and not manager.should_save(step):
    return False
  meta = {**meta, DIGEST_KEY: digest(state)}
  return manager.save(
      step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
  """Restores (state, meta, step) at `step` (default: latest) into the structure of `abstract_state`.

  The abstract target (shapes, dtypes, shardings from `jax.eval_shape`) is what lets a checkpoint written on one device
  count restore on another.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'{manager.directory}: no checkpoint to restore')
  check_structure(manager, step, abstract_state)
  where = pathlib.Path(manager.directory) / str(step)
  try:
    with _asyncio_quiet():
      restored = manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  except Exception as error:  # pylint: disable=broad-except  (Orbax and TensorStore raise many kinds on bad files)
    raise CorruptCheckpoint(f'{where}: unreadable ({type(error).__name__}: {_first_line(error)})') from None
  meta = dict(restored.meta or {})
  if DIGEST_KEY in meta and digest(restored.state) != meta[DIGEST_KEY]:
    raise CorruptCheckpoint(f'{where}: its arrays do not match the digest saved with them (altered after the write)')
  return restored.state, meta, step


@contextlib.contextmanager
def _asyncio_quiet():
  """Silences the `asyncio` logger: when one read of a damaged step fails, Orbax's other concurrent reads fail too, and
  asyncio logs each as "unhandled exception during asyncio.run() shutdown" with its tracebacks (272 errors and 45,000
  lines for one emptied data file of a small training state). The failure itself is raised and reported in one line
  (CorruptCheckpoint)."""
  logger = logging.getLogger('asyncio')
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def restore_latest_good(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict, int]:
  """`restore` of the latest step that reads back intact: a corrupt step is logged in one line, moved to
  `checkpoints_corrupt/` beside the checkpoints (so later saves can reuse its step number) and the previous step is
  tried. CheckpointError when no step is left, or when the checkpoints hold another model (see `check_structure`)."""
  while True:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(f'{manager.directory}: no intact checkpoint left (the corrupt ones are in '
                            f'{pathlib.Path(manager.directory).parent / CORRUPT_DIR}); start afresh in a new --workdir')
    try:
      return restore(manager, abstract_state, step)
    except CorruptCheckpoint as error:
      moved = _quarantine(manager, step)
      previous = manager.latest_step()
      log.warning('%s; moved to %s, falling back to %s', error, moved,
                  f'step {previous}' if previous is not None else 'a fresh start')


def _quarantine(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
  directory = pathlib.Path(manager.directory)
  target = directory.parent / CORRUPT_DIR / str(step)
  n = 1
  while target.exists():
    target, n = directory.parent / CORRUPT_DIR / f'{step}.{n}', n + 1
  if jax.process_index() == 0:  # one host moves it (the folder is shared); the others wait, then see it gone
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(directory / str(step)), str(target))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(f'jaxface quarantine step {step}')
  manager.reload()
  return target


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0][:200] if text else ''


def _key(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator='/')


def check_structure(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> None:
  """CheckpointError in one line naming the first array that differs (missing, extra, another shape or dtype) between
  the checkpoint at `step` and `abstract_state`: a checkpoint of another architecture or config. CorruptCheckpoint
  when the step's metadata cannot be read."""
  where = pathlib.Path(manager.directory) / str(step)
  try:
    saved = ocp.StandardCheckpointHandler().metadata(where / 'state')
    saved = getattr(saved, 'item_metadata', saved)
    jax.tree.leaves(saved)
  except Exception as error:  # pylint: disable=broad-except
    raise CorruptCheckpoint(f'{where}: its metadata is unreadable ({type(error).__name__}: {_first_line(error)})'
                            ) from None
  problem = mismatch(saved, abstract_state)
  if problem:
    raise CheckpointError(f'{where}: holds another model or config ({problem}); use the config it was trained with '
                          'or a new --workdir')


def mismatch(saved: Any, wanted: Any) -> str | None:
  """The first array that differs between two trees of arrays or array metadata (missing, extra, another shape or
  dtype), in words, or None when they match. Paths compare as strings: Orbax stores optax's named tuples as dicts."""
  flat = lambda tree: {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  saved, wanted = flat(saved), flat(wanted)
  for path, leaf in wanted.items():
    if path not in saved:
      return f'{path} is missing there'
    if tuple(saved[path].shape) != tuple(leaf.shape) or np.dtype(saved[path].dtype) != np.dtype(leaf.dtype):
      return (f'{path} is {tuple(saved[path].shape)} {np.dtype(saved[path].dtype)} there, '
              f'{tuple(leaf.shape)} {np.dtype(leaf.dtype)} here')
  extra = sorted(path for path in saved if path not in wanted)
  return f'{extra[0]} is not in this one' if extra else None


def read_meta(manager: ocp.CheckpointManager, step: int | None = None) -> dict:
  """The JSON `meta` of a step (default: the latest) without reading its arrays; {} when there is no step."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return {}
  return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta or {})


def abstract(tree: Any) -> Any:
  """Shapes, dtypes and a single-device sharding of every leaf (arrays, or Orbax's array metadata): the target that
  `restore` fills."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(x):
    if not (hasattr(x, 'shape') and hasattr(x, 'dtype')):
      x = np.asarray(x)
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding)

  return jax.tree.map(leaf, tree, is_leaf=lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype'))


class Preemption:
  """Turns SIGTERM into a flag the training loop checks between steps, so that it saves before exiting.

  Outside the main thread (where signal handlers cannot be installed) it never fires.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self) -> Preemption:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self.requested = True

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def inference_variables(state: Any) -> dict:
  """The FaceModel variables {'params', 'batch_stats'} inside a training state (no class weights, no optimiser)."""
  return {'params': state['params']['model'], 'batch_stats': state['batch_stats']}


def _resolve(path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, int | None]:
  """Finds (workdir, manager directory, step) for a workdir, a `best/`/`checkpoints/` folder or one step folder."""
  if (path / CONFIG_FILE).is_file():
    if (path / BEST_DIR).is_dir() and any(p.name.isdigit() for p in (path / BEST_DIR).iterdir()):
      return path, path / BEST_DIR, None
    return path, path / TRAIN_DIR, None
  if (path.parent / CONFIG_FILE).is_file() and path.name in (BEST_DIR, TRAIN_DIR):
    return path.parent, path, None
  if path.name.isdigit() and (path.parent.parent / CONFIG_FILE).is_file():
    return path.parent.parent, path.parent, int(path.name)
  raise CheckpointError(
      f'{path}: not a jaxface checkpoint (pass a training workdir, its best/ folder, or one checkpoint step folder)')


def _load_converted_inference(path: pathlib.Path) -> tuple[ml_collections.ConfigDict, dict, dict]:
  """A `python -m jaxface.convert` folder as an identity-only model: the pretrained backbone, no fake head (scores are
  the plain cosine, fuse strength 0), the default data settings (`jaxface.data.data_config`: aligner, face size)."""
  from jaxface import convert  # pylint: disable=g-import-not-at-top
  from jaxface.data.data_config import default_data_config  # pylint: disable=g-import-not-at-top

  info = convert.read_convert_info(path)
  config = ml_collections.ConfigDict({'model': {}, 'data': default_data_config()})
  config.model.arch = info['arch']
  config.model.width = float(info.get('width', 1.0))
  config.model.input_size = int(info.get('input_size', 112))
  config.model.embedding_dim = int(info.get('embedding_dim', 512))
  config.model.input_norm = info.get('input_norm', 'unit')
  config.model.fake_head = 'none'
  config.model.space_to_depth = False
  converted = convert.load_converted(path)
  variables = {'params': {'backbone': converted['params']}, 'batch_stats': {'backbone': converted['batch_stats']}}
  return config, variables, {'fuse_strength': 0.0, 'threshold': 0.5}


def load_inference(path: str | pathlib.Path) -> tuple[ml_collections.ConfigDict, dict, dict]:
  """Loads what inference needs from a workdir (its best checkpoint, else its latest), one step folder, or a converted
  pretrained backbone (`python -m jaxface.convert --out DIR`: scored by cosine alone, no fake head).

  Returns:
    (config, variables, scoring): the run's ConfigDict; the FaceModel variables {'params', 'batch_stats'};
    {'fuse_strength': float, 'threshold': float} chosen on validation pairs (defaults 1.0 and 0.5 when the checkpoint
    was saved before any validation).
  """
  from jaxface.models.face_model import build_model  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if not path.exists():
    raise CheckpointError(f'{path}: checkpoint not found (train one with python -m jaxface.train --workdir DIR)')
  from jaxface import convert  # pylint: disable=g-import-not-at-top
  if (path / convert.INFO_FILE).is_file():
    return _load_converted_inference(path)
  workdir, directory, step = _resolve(path)
  config = load_config(workdir)
  model = build_model(config.model)
  size = config.model.input_size
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.float32), train=False))
  manager = ocp.CheckpointManager(directory.absolute())
  if manager.latest_step() is None:
    raise CheckpointError(f'{directory}: holds no checkpoint yet')
  is_best = directory.name == BEST_DIR
  if is_best:
    target = abstract({'params': shapes['params'], 'batch_stats': shapes['batch_stats']})
  else:
    # A full training state: restore only the arrays inference needs, whatever the optimiser was.
    metadata = ocp.StandardCheckpointHandler().metadata(directory.absolute() / str(step or manager.latest_step())
                                                         / 'state')
    target = abstract(getattr(metadata, 'item_metadata', metadata))
    problem = mismatch(inference_variables(target), {'params': shapes['params'], 'batch_stats': shapes['batch_stats']})
    if problem:
      raise CheckpointError(f'{directory}: holds another model than its {workdir / CONFIG_FILE} describes ({problem}); '
                            'give the workdir it was trained in')
  state, meta, _ = restore(manager, target, step)
  manager.close()
  variables = state if is_best else inference_variables(state)
  variables = jax.tree.map(np.asarray, variables)
  scoring = {'fuse_strength': 1.0, 'threshold': 0.5}
  scoring.update(meta.get('scoring', {}))
  return config, variables, scoring
