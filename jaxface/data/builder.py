"""The TFDS builder: challenge photos -> aligned faces -> TFRecord splits (train faces, val pairs, test pairs).

    import jaxface.data.builder
    report = jaxface.data.builder.prepare('/data/kryptonite', '/data/tfds', BuildOptions(aligner='dfa'))
    builder = tfds.builder('jaxface_faces', data_dir='/data/tfds')   # later, anywhere

Two stages, each streaming so that host memory does not grow with the dataset:
  1. align: unique photo paths go through in batches (read batch -> align -> store each face in the resumable cache,
     `jaxface.align.cache`); only a small status per photo stays in memory. A killed run resumes here.
  2. write: TFDS generators read the cached faces one example at a time and write the TFRecord shards.

Splits (features in /work/spec.md):
  train  one example per usable photo of the train people: image, label, person_id, is_fake, landmarks, face_score,
         source.
  val    pairs built from the photos of people held out of train (a seeded share of the people): kinds same (two real
         photos, label 1), different, own_fake, other_fake (label 0).
  test   the test_public pairs, with labels and kinds from labels.csv when there is one, else label -1 and kind ''.

TensorFlow loads only when a JaxfaceFaces builder is made (to write or read), which first hides every GPU from it;
the align stage runs without it.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import pathlib
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds  # imports TensorFlow lazily, on first use
from PIL import Image, ImageFile, ImageOps

from jaxface.align import cache as cache_lib
from jaxface.data import challenge

PathLike = str | os.PathLike

NAME = 'jaxface_faces'
FACE_SIZE = 112
REPORT_NAME = 'preprocess_report.json'
DEFAULT_CACHE_NAME = '_align_cache'
# Test-only hook: seconds to sleep after each newly aligned batch, so a test can kill -9 a run part-way.
SLEEP_ENV = 'JAXFACE_PREPROCESS_SLEEP_PER_BATCH'

PAIR_LABEL = {'same': 1, 'different': 0, 'own_fake': 0, 'other_fake': 0}


def _hide_gpus_from_tf() -> None:
  """TF must leave every GPU to JAX and torch; called before the builder first touches TF."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):  # already initialised, or a build without GPU support
    pass


class PreprocessError(ValueError):
  """A user error (bad option, existing dataset, nothing usable); the message is one line saying what to do."""


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  """Everything that shapes the dataset; recorded in its metadata.

  aligner: 'dfa', 'mtcnn' or 'none' (photos already aligned: centre crop).
  aligner_path: weights for 'dfa' (snapshot folder or Hugging Face repo id).
  device: torch device for the aligner ('cpu', 'cuda'); None picks CUDA when there is one.
  batch_size: photos per aligner call (and per read batch).
  val_fraction: share of the people held out of train to build val pairs (0 gives no val split).
  seed: picks the held-out people and the val pairs.
  min_score: faces scoring below this count as low-score and are treated like faceless photos.
  keep_faceless: keep faceless and low-score photos in train and val (as centre crops, face_score 0 when faceless);
    by default they are skipped there. Test pairs always keep them, flagged in the report.
  cache_dir: the aligned-face cache root; None means <out>/_align_cache.
  labels_path: test pair labels; None means <data_dir>/labels.csv when it exists.
  max_photo_side: photos larger than this (longest side, pixels) are downscaled before aligning, which bounds memory
    per batch; a 112 crop needs no more.
  jpeg_quality: JPEG quality of the stored faces (4:4:4 chroma).
  pairs_per_person: val pairs of each kind drawn per held-out person.
  workers: threads that read and decode photos while the aligner runs.
  progress: show a progress bar (images per second).
  """
  aligner: str = 'none'
  aligner_path: str | None = None
  device: str | None = None
  batch_size: int = 32
  val_fraction: float = 0.1
  seed: int = 0
  min_score: float = 0.0
  keep_faceless: bool = False
  cache_dir: str | None = None
  labels_path: str | None = None
  max_photo_side: int = 2048
  jpeg_quality: int = 95
  pairs_per_person: int = 2
  workers: int = 2
  progress: bool = True

  def check(self) -> None:
    """Raises PreprocessError on an option out of range."""
    if self.batch_size < 1:
      raise PreprocessError(f'batch size must be at least 1, got {self.batch_size}')
    if not 0.0 <= self.val_fraction < 1.0:
      raise PreprocessError(f'val fraction must be in [0, 1), got {self.val_fraction}')
    if not 0.0 <= self.min_score <= 1.0:
      raise PreprocessError(f'min score must be in [0, 1], got {self.min_score}')
    if self.max_photo_side < FACE_SIZE:
      raise PreprocessError(f'max photo side must be at least {FACE_SIZE}, got {self.max_photo_side}')
    if not 1 <= self.jpeg_quality <= 100:
      raise PreprocessError(f'JPEG quality must be in [1, 100], got {self.jpeg_quality}')
    if self.pairs_per_person < 1 or self.workers < 1:
      raise PreprocessError('pairs per person and workers must be at least 1')


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1: align every photo into the cache, in batches.


@dataclasses.dataclass(frozen=True)
class PhotoStatus:
  """What aligning one photo gave. state: 'aligned', 'faceless', 'low_score' or 'unreadable'."""
  state: str
  score: float = 0.0
  error: str = ''


def read_photo(path: PathLike, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
  """Reads a photo as RGB no larger than `max_side` on its longest side (what the aligner is given).

  A large JPEG is decoded straight at a reduced scale (libjpeg's DCT scaling), so a 10000x10000 photo costs a few MB
  and not 300 MB; other formats are decoded fully, then downscaled (antialiased bicubic). Evaluation that re-aligns
  raw photos should read them the same way (the dataset's metadata holds max_photo_side).

  Returns:
    (H', W', 3) uint8 RGB with max(H', W') <= max_side, and the photo's (H, W) as stored.

  Raises:
    challenge.ImageReadError: missing, empty, truncated, corrupt or not an image; one line naming the file.
  """
  from jaxface.align import template  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  try:
    data = path.read_bytes()
  except OSError as error:
    raise challenge.ImageReadError(f'{path}: cannot read file ({type(error).__name__}: {error}) '
                                   '(check the path and its permissions)') from None
  photo = shape = None
  if data[:3] == b'\xff\xd8\xff' and not ImageFile.LOAD_TRUNCATED_IMAGES:
    try:
      with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        if max(width, height) > max_side:
          scale = max_side / max(width, height)
          img.draft('RGB', (math.ceil(width * scale), math.ceil(height * scale)))
          img.load()  # a truncated file fails here
          photo, shape = np.asarray(ImageOps.exif_transpose(img).convert('RGB'), np.uint8), (height, width)
    except Exception as error:  # pylint: disable=broad-except  (Pillow raises many kinds)
      text = ' '.join(str(error).split())
      raise challenge.ImageReadError(f'{path}: cannot decode image, truncated or corrupt ({type(error).__name__}: '
                                     f'{text}) (re-copy the file or remove it and its meta.json entry)') from None
  if photo is None:
    photo = challenge.decode_rgb(data, str(path))
    shape = photo.shape[:2]
  height, width = photo.shape[:2]
  if max(height, width) > max_side:
    scale = max_side / max(height, width)
    photo = template.resize_photo(photo, max(1, round(width * scale)), max(1, round(height * scale)))
  return photo, (int(shape[0]), int(shape[1]))


def _encode_jpeg(face: np.ndarray, quality: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(face, np.uint8)).save(buffer, format='JPEG', quality=quality, subsampling=0)
  return buffer.getvalue()


def _status_of(face: cache_lib.CachedFace, min_score: float) -> PhotoStatus:
  if not face.found:
    return PhotoStatus('faceless', face.score)
  if face.score < min_score:
    return PhotoStatus('low_score', face.score)
  return PhotoStatus('aligned', face.score)


class _Progress:
  """A tqdm bar over photos, or nothing."""

  def __init__(self, total: int, desc: str, enabled: bool):
    self._bar = None
    if enabled:
      import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm.tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True, smoothing=0.1)

  def update(self, count: int, **postfix: Any) -> None:
    if self._bar is not None:
      self._bar.update(count)
      if postfix:
        self._bar.set_postfix(postfix, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


@dataclasses.dataclass
class AlignStats:
  """Counters of the align stage."""
  images: int = 0
  aligned_now: int = 0   # run through the aligner in this run
  from_cache: int = 0    # found in the cache (aligned by an earlier, maybe interrupted, run)
  seconds: float = 0.0
  aligner_seconds: float = 0.0


def _align_batch(aligner, photos: list[np.ndarray]) -> list[Any]:
  """Aligns photos; if the whole batch fails, aligns one by one so one bad photo cannot sink the batch.

  Returns per photo an (index into the result, AlignResult) pair or the exception it raised.
  """
  try:
    result = aligner.align(photos)
    return [(i, result) for i in range(len(photos))]
  except Exception:  # pylint: disable=broad-except
    out = []
    for photo in photos:
      try:
        out.append((0, aligner.align([photo])))
      except Exception as error:  # pylint: disable=broad-except
        out.append(error)
    return out


def align_into_cache(paths: Sequence[pathlib.Path], aligner, cache: cache_lib.AlignCache, options: BuildOptions
                     ) -> tuple[dict[pathlib.Path, PhotoStatus], AlignStats]:
  """Aligns every photo not yet in the cache, `options.batch_size` at a time, and stores each face atomically.

  Memory holds two batches of photos (the one being aligned and the one being read), never the whole list.

  Returns:
    ({path: status} for every path, counters).
  """
  start = time.perf_counter()
  stats = AlignStats(images=len(paths))
  statuses: dict[pathlib.Path, PhotoStatus] = {}
  sleep = float(os.environ.get(SLEEP_ENV, '0') or 0)
  progress = _Progress(len(paths), f'align ({aligner.name})', options.progress)

  def read(path):
    try:
      return read_photo(path, options.max_photo_side)
    except challenge.ImageReadError as error:
      return str(error)
    except Exception as error:  # pylint: disable=broad-except
      return f'{path}: cannot read image ({type(error).__name__}: {error}) (replace the file)'

  def batches_to_align() -> Iterator[list[pathlib.Path]]:
    # Full batches of uncached photos, even when a resumed run finds them scattered between cached ones.
    missing = []
    for path in paths:
      face = cache.get(path)
      if face is None:
        missing.append(path)
        if len(missing) == options.batch_size:
          yield missing
          missing = []
      else:
        statuses[path] = _status_of(face, options.min_score)
        stats.from_cache += 1
        progress.update(1)
    if missing:
      yield missing

  with concurrent.futures.ThreadPoolExecutor(options.workers) as pool:
    for batch, loaded in _read_ahead(batches_to_align(), read, pool):
      good = [(path, item) for path, item in zip(batch, loaded) if not isinstance(item, str)]
      for path, item in zip(batch, loaded):
        if isinstance(item, str):
          statuses[path] = PhotoStatus('unreadable', error=item)
      aligner_start = time.perf_counter()
      aligned = _align_batch(aligner, [photo for _, (photo, _) in good]) if good else []
      stats.aligner_seconds += time.perf_counter() - aligner_start
      for (path, (_, shape)), outcome in zip(good, aligned):
        if isinstance(outcome, Exception):
          statuses[path] = PhotoStatus('unreadable', error=f'{path}: the aligner failed on this photo '
                                       f'({type(outcome).__name__}: {outcome}) (check or replace the file)')
          continue
        i, result = outcome
        face = cache_lib.CachedFace(
            jpeg=_encode_jpeg(result.faces[i], options.jpeg_quality),
            landmarks=np.asarray(result.landmarks[i], np.float32),
            crop_landmarks=np.asarray(result.crop_landmarks[i], np.float32),
            score=float(np.float32(result.scores[i])), found=bool(result.found[i]), photo_shape=shape)
        cache.put(path, face)
        statuses[path] = _status_of(face, options.min_score)
        stats.aligned_now += 1
      rate = stats.aligned_now / max(stats.aligner_seconds, 1e-9)
      progress.update(len(batch), aligner_img_s=f'{rate:.1f}')
      if sleep:
        time.sleep(sleep)
  progress.close()
  stats.seconds = time.perf_counter() - start
  return statuses, stats


def _read_ahead(batches: Iterable[list[pathlib.Path]], read, pool) -> Iterator[tuple[list[pathlib.Path], list[Any]]]:
  """Yields (batch, read results) while the next batch is already being read by `pool`."""
  pending = collections.deque()
  for batch in batches:
    pending.append((batch, [pool.submit(read, path) for path in batch]))
    if len(pending) > 1:
      done, futures = pending.popleft()
      yield done, [future.result() for future in futures]
  while pending:
    done, futures = pending.popleft()
    yield done, [future.result() for future in futures]


# ----------------------------------------------------------------------------------------------------------------------
# The plan: which photos go where (paths only).


def split_people(images: Sequence[challenge.TrainImage], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
  """Splits the people into (train, held out), both sorted, deterministically by seed.

  People with at least two real photos (who can give `same` pairs) and the others are held out separately, each by
  `val_fraction` (at least one of a group when the fraction is positive and the group has two or more people).
  """
  reals = collections.Counter(image.person_id for image in images if not image.is_fake)
  people = sorted({image.person_id for image in images})
  rng = np.random.default_rng(seed)
  held_out = []
  for group in ([p for p in people if reals[p] >= 2], [p for p in people if reals[p] < 2]):
    count = int(round(val_fraction * len(group)))
    if val_fraction > 0 and count == 0 and len(group) >= 2:
      count = 1
    held_out += [group[i] for i in rng.permutation(len(group))[:count]]
  held_out_set = set(held_out)
  return [p for p in people if p not in held_out_set], sorted(held_out)


@dataclasses.dataclass(frozen=True)
class Pair:
  pair_id: str
  path0: pathlib.Path
  path1: pathlib.Path
  label: int
  kind: str
  is_fake0: int
  is_fake1: int


def make_val_pairs(images: Sequence[challenge.TrainImage], seed: int, pairs_per_person: int) -> list[Pair]:
  """Builds val pairs from held-out people's photos, deterministically by seed.

  Per person (in sorted order), up to `pairs_per_person` pairs of each kind: `same` (two real photos of the person,
  label 1), `own_fake` (a real photo and a fake of the same person), `different` (real photos of two people),
  `other_fake` (a real photo and a fake of someone else). Repeated pairs are dropped.
  """
  rng = np.random.default_rng([seed, 1])
  reals: dict[str, list[challenge.TrainImage]] = collections.defaultdict(list)
  fakes: dict[str, list[challenge.TrainImage]] = collections.defaultdict(list)
  for image in sorted(images, key=lambda image: (image.person_id, image.rel_path)):
    (fakes if image.is_fake else reals)[image.person_id].append(image)
  all_reals = [image for person in sorted(reals) for image in reals[person]]
  all_fakes = [image for person in sorted(fakes) for image in fakes[person]]

  def other(pool: list[challenge.TrainImage], person: str) -> challenge.TrainImage | None:
    # Rejection sampling: pools are large and one person holds a small share of them.
    for _ in range(20):
      image = pool[rng.integers(len(pool))]
      if image.person_id != person:
        return image
    candidates = [image for image in pool if image.person_id != person]
    return candidates[rng.integers(len(candidates))] if candidates else None

  chosen: list[tuple[str, challenge.TrainImage, challenge.TrainImage]] = []
  for person in sorted(set(reals) | set(fakes)):
    own_reals, own_fakes = reals.get(person, []), fakes.get(person, [])
    if not own_reals:
      continue  # a fake-only person appears as the fake side of other people's other_fake pairs
    combos = list(itertools.combinations(range(len(own_reals)), 2))
    for index in rng.permutation(len(combos))[:pairs_per_person]:
      a, b = combos[index]
      chosen.append(('same', own_reals[a], own_reals[b]))
    for _ in range(pairs_per_person if own_fakes else 0):
      chosen.append(('own_fake', own_reals[rng.integers(len(own_reals))], own_fakes[rng.integers(len(own_fakes))]))
    for kind, pool in (('different', all_reals), ('other_fake', all_fakes)):
      for _ in range(pairs_per_person if pool else 0):
        partner = other(pool, person)
        if partner is not None:
          chosen.append((kind, own_reals[rng.integers(len(own_reals))], partner))

  pairs, seen = [], set()
  for kind, image0, image1 in chosen:
    key = tuple(sorted((image0.rel_path, image1.rel_path)))
    if key in seen:
      continue
    seen.add(key)
    pairs.append(Pair(pair_id=f'val{len(pairs):07d}', path0=image0.path, path1=image1.path, label=PAIR_LABEL[kind],
                      kind=kind, is_fake0=image0.is_fake, is_fake1=image1.is_fake))
  return pairs


def make_test_pairs(data_dir: PathLike, labels_path: PathLike | None) -> list[Pair]:
  """The test_public pairs with their labels (label -1 and kind '' where unknown); fake flags are unknown (-1)."""
  labels = challenge.read_labels(labels_path) if labels_path else {}
  pairs = []
  for test_pair in challenge.list_test_pairs(data_dir):
    known = labels.get(test_pair.pair_id)
    pairs.append(Pair(pair_id=test_pair.pair_id, path0=test_pair.path0, path1=test_pair.path1,
                      label=known.label if known else -1, kind=(known.kind or '') if known else '',
                      is_fake0=-1, is_fake1=-1))
  return pairs


@dataclasses.dataclass
class AlignedChallenge:
  """A challenge folder after the align stage: what goes where (paths) and how each photo aligned."""
  data_dir: pathlib.Path
  images: list[challenge.TrainImage]
  val_people: list[str]
  test_pairs: list[Pair]
  aligner_meta: dict[str, Any]
  cache: cache_lib.AlignCache
  statuses: dict[pathlib.Path, PhotoStatus]
  stats: AlignStats


def align_challenge(data_dir: PathLike, options: BuildOptions, aligner, cache_root: PathLike) -> AlignedChallenge:
  """The align stage: lists the challenge folder, picks the val people, aligns every photo into the cache.

  Needs no TensorFlow (it is imported only by the write stage), so a long alignment runs without it in memory.
  """
  data_dir = pathlib.Path(data_dir)
  images = challenge.list_train_images(data_dir)
  _, val_people = split_people(images, options.val_fraction, options.seed)
  labels_path = options.labels_path or (
      challenge.default_labels_path(data_dir) if challenge.default_labels_path(data_dir).exists() else None)
  test_pairs = make_test_pairs(data_dir, labels_path)
  aligner_meta = {'name': aligner.name, 'path': options.aligner_path, 'settings': aligner.settings(),
                  'min_score': options.min_score, 'max_photo_side': options.max_photo_side,
                  'jpeg_quality': options.jpeg_quality, 'face_size': FACE_SIZE}
  cache = cache_lib.AlignCache(cache_root, aligner.name, {
      'aligner': aligner.settings(), 'max_photo_side': options.max_photo_side,
      'jpeg_quality': options.jpeg_quality, 'face_size': FACE_SIZE})
  paths = list(dict.fromkeys([image.path for image in images] +
                             [path for pair in test_pairs for path in (pair.path0, pair.path1)]))
  statuses, stats = align_into_cache(paths, aligner, cache, options)
  return AlignedChallenge(data_dir=data_dir, images=images, val_people=val_people, test_pairs=test_pairs,
                          aligner_meta=aligner_meta, cache=cache, statuses=statuses, stats=stats)


# ----------------------------------------------------------------------------------------------------------------------
# The TFDS builder.


# TFDS keeps one feature set per dataset, but train examples and pairs differ. The stored examples carry the union
# (the other kind's fields hold empty placeholders, a few bytes), and `as_dataset` decodes only the split's own
# fields, so readers see exactly TRAIN_KEYS or PAIR_KEYS.
TRAIN_KEYS = ('image', 'label', 'person_id', 'is_fake', 'landmarks', 'face_score', 'source')
PAIR_KEYS = ('pair_id', 'image0', 'image1', 'label', 'kind', 'is_fake0', 'is_fake1', 'source0', 'source1')
PAIR_SPLITS = ('val', 'test')

_TRAIN_PLACEHOLDERS = {'pair_id': '', 'image0': b'', 'image1': b'', 'kind': '', 'is_fake0': -1, 'is_fake1': -1,
                       'source0': '', 'source1': ''}
_PAIR_PLACEHOLDERS = {'image': b'', 'person_id': '', 'is_fake': -1, 'landmarks': np.zeros((5, 2), np.float32),
                      'face_score': np.float32(0), 'source': ''}


def _features() -> tfds.features.FeaturesDict:
  face = tfds.features.Image(shape=(FACE_SIZE, FACE_SIZE, 3), encoding_format='jpeg')
  text, int64 = tfds.features.Text, lambda: tfds.features.Scalar(np.int64)
  return tfds.features.FeaturesDict({
      # train
      'image': face,
      'label': int64(),  # train: class index over train people; pairs: 1 same real person, 0 not, -1 unknown
      'person_id': text(),
      'is_fake': int64(),
      'landmarks': tfds.features.Tensor(shape=(5, 2), dtype=np.float32),  # in crop pixels
      'face_score': tfds.features.Scalar(np.float32),
      'source': text(),  # photo path relative to the data folder
      # val / test pairs
      'pair_id': text(),
      'image0': face,
      'image1': face,
      'kind': text(),  # same, different, own_fake, other_fake, fake; '' if unknown
      'is_fake0': int64(),  # -1 unknown
      'is_fake1': int64(),
      'source0': text(),
      'source1': text(),
  })


def _split_names(split: Any) -> set[str]:
  """The split names a split argument reads: 'train[:10%]+val' -> {'train', 'val'}."""
  if isinstance(split, str):
    text = split
  elif isinstance(getattr(split, 'split', None), str):  # tfds.even_splits / split_for_jax_process
    text = split.split
  else:
    text = str(split)
  return {part.split('[')[0].split('(')[-1].strip(' \'"') for part in text.split('+')}


def _drop_dtype_warning(record: logging.LogRecord) -> bool:
  # TFDS's own partial decoding reads the deprecated FeatureConnector.dtype and warns once per feature, every read.
  return 'FeatureConnector.dtype` is deprecated' not in record.getMessage()


class JaxfaceFaces(tfds.core.GeneratorBasedBuilder):
  """Aligned challenge faces: train faces, val pairs of held-out people, test_public pairs."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Aligned train faces, val pairs of held-out people, test_public pairs.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Give the challenge folder as manual_dir (scripts/preprocess.py --data-dir DIR):
    DIR/train/images/<person_id>/<k>.jpg and DIR/train/meta.json ({"<person_id>/<k>.jpg": 0 real | 1 generated}),
    DIR/test_public/<pair_id>/0.jpg and 1.jpg,
    DIR/labels.csv (optional: pair_id,label[,kind] for the test pairs).
  """

  def __init__(self, *, options: BuildOptions | None = None, aligner: Any = None,
               aligned: AlignedChallenge | None = None, **kwargs: Any):
    """Args: options, an optional ready aligner and an optional finished align stage, used only when preparing (a
    prepared dataset keeps its options in info.metadata); other kwargs go to tfds.core.GeneratorBasedBuilder."""
    _hide_gpus_from_tf()
    self.options = options or BuildOptions()
    self._aligner = aligner
    self._aligned = aligned
    self.align_report: dict[str, Any] = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=_features(),
        metadata=tfds.core.MetadataDict(options=dataclasses.asdict(self.options)),
        homepage='https://codenrock.com/contests/kryptonite-ml-challenge',
    )

  def _as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False) -> 'tf.data.Dataset':
    names = _split_names(split)
    if names <= {'train'}:
      keys = TRAIN_KEYS
    elif names <= set(PAIR_SPLITS):
      keys = PAIR_KEYS
    else:
      raise ValueError(f'{NAME}: read the train split and the pair splits ({", ".join(PAIR_SPLITS)}) separately, '
                       f'got {split!r}')
    if not isinstance(decoders, tfds.decode.PartialDecoding):
      decoders = tfds.decode.PartialDecoding(set(keys), decoders=decoders)
    absl_logger = logging.getLogger('absl')
    absl_logger.addFilter(_drop_dtype_warning)
    try:
      return super()._as_dataset(split, decoders=decoders, read_config=read_config, shuffle_files=shuffle_files)
    finally:
      absl_logger.removeFilter(_drop_dtype_warning)

  # --------------------------------------------------------------------------------------------------------------------
  # Generation.

  def _split_generators(self, dl_manager):
    options = self.options
    aligned = self._aligned
    if aligned is None:  # called by TFDS directly rather than through prepare(): align now
      cache_root = pathlib.Path(options.cache_dir) if options.cache_dir else self.data_dir_root / DEFAULT_CACHE_NAME
      aligned = align_challenge(dl_manager.manual_dir, options, self._aligner or make_aligner(options), cache_root)
    data_dir, images, val_people, test_pairs = aligned.data_dir, aligned.images, aligned.val_people, aligned.test_pairs
    statuses, stats, cache, aligner_meta = aligned.statuses, aligned.stats, aligned.cache, aligned.aligner_meta

    def usable(path: pathlib.Path) -> bool:
      state = statuses[path].state
      return state == 'aligned' or (options.keep_faceless and state in ('faceless', 'low_score'))

    val_set = set(val_people)
    train_images = [image for image in images if image.person_id not in val_set and usable(image.path)]
    classes = sorted({image.person_id for image in train_images})
    val_pairs = make_val_pairs([image for image in images if image.person_id in val_set and usable(image.path)],
                               options.seed, options.pairs_per_person)
    kept_test = [pair for pair in test_pairs
                 if statuses[pair.path0].state != 'unreadable' and statuses[pair.path1].state != 'unreadable']

    self._record(data_dir, images, test_pairs, kept_test, statuses, stats, usable, aligner_meta, classes,
                 val_people, val_pairs, cache)
    if not train_images and not val_pairs and not kept_test:
      raise PreprocessError(f'{data_dir}: no usable photo (see {REPORT_NAME}; check the aligner and --min-score)')

    self._written = {'data_dir': data_dir, 'cache': cache, 'class_index': {p: i for i, p in enumerate(classes)},
                     'train': train_images, 'val': val_pairs, 'test': kept_test}
    return {split: self._generate_examples(split) for split in ('train', 'val', 'test') if self._written[split]}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields (key, example) for a split from the cached faces, one example at a time."""
    written = self._written
    if split == 'train':
      return self._train_examples(written['data_dir'], written['train'], written['class_index'], written['cache'])
    return self._pair_examples(written['data_dir'], written[split], written['cache'])

  def _record(self, data_dir, images, test_pairs, kept_test, statuses, stats, usable, aligner_meta, classes,
              val_people, val_pairs, cache) -> None:
    """Fills info.metadata (what evaluation needs) and align_report (everything, for the JSON report)."""
    by_state = collections.defaultdict(list)
    for path, status in statuses.items():
      by_state[status.state].append(path)
    test_paths = {path for pair in test_pairs for path in (pair.path0, pair.path1)}
    skipped = [{'path': str(path), 'reason': statuses[path].error or statuses[path].state}
               for path in statuses if statuses[path].state == 'unreadable'
               or (path not in test_paths and not usable(path))]
    skipped_pairs = sorted({pair.pair_id for pair in test_pairs} - {pair.pair_id for pair in kept_test})
    counts = {state: len(by_state[state]) for state in ('aligned', 'faceless', 'low_score', 'unreadable')}
    counts.update(images=len(statuses), skipped=len(skipped), skipped_test_pairs=len(skipped_pairs))
    metadata = self.info.metadata
    metadata['aligner'] = aligner_meta
    metadata['num_classes'] = len(classes)
    metadata['class_names'] = classes
    metadata['val_people'] = list(val_people)
    metadata['counts'] = counts
    metadata['data_dir'] = str(data_dir)
    self.align_report = {
        'data_dir': str(data_dir),
        'cache_dir': str(cache.dir),
        'aligner': aligner_meta,
        'options': dataclasses.asdict(self.options),
        'counts': counts,
        'aligned_now': stats.aligned_now,
        'from_cache': stats.from_cache,
        'align_seconds': round(stats.seconds, 3),
        'images_per_second': round(stats.images / max(stats.seconds, 1e-9), 2),
        'aligner_images_per_second': round(stats.aligned_now / max(stats.aligner_seconds, 1e-9), 2),
        'num_classes': len(classes),
        'train_people': len(classes),
        'val_people': len(val_people),
        'val_kinds': dict(collections.Counter(pair.kind for pair in val_pairs)),
        'test_kinds': dict(collections.Counter(pair.kind or 'unknown' for pair in kept_test)),
        'train_photos_listed': len(images),
        'skipped': skipped,
        'skipped_test_pairs': skipped_pairs,
        'faceless': [str(p) for p in by_state['faceless']],
        'low_score': [{'path': str(p), 'score': round(statuses[p].score, 4)} for p in by_state['low_score']],
        'unreadable': [{'path': str(p), 'error': statuses[p].error} for p in by_state['unreadable']],
    }

  @staticmethod
  def _face(cache: cache_lib.AlignCache, path: pathlib.Path) -> cache_lib.CachedFace:
    face = cache.get(path)
    if face is None:  # aligned moments ago: the cache folder was removed or changed underneath this run
      raise RuntimeError(f'{cache.entry_path(path)}: aligned face vanished from the cache (rerun preprocessing)')
    return face

  def _train_examples(self, data_dir, images, class_index, cache) -> Iterator[tuple[str, dict[str, Any]]]:
    for image in images:
      face = self._face(cache, image.path)
      yield image.rel_path, {
          'image': face.jpeg, 'label': class_index[image.person_id], 'person_id': image.person_id,
          'is_fake': image.is_fake, 'landmarks': face.crop_landmarks, 'face_score': np.float32(face.score),
          'source': image.path.relative_to(data_dir).as_posix(), **_TRAIN_PLACEHOLDERS}

  def _pair_examples(self, data_dir, pairs, cache) -> Iterator[tuple[str, dict[str, Any]]]:
    for pair in pairs:
      yield pair.pair_id, {
          'pair_id': pair.pair_id, 'image0': self._face(cache, pair.path0).jpeg,
          'image1': self._face(cache, pair.path1).jpeg, 'label': pair.label, 'kind': pair.kind,
          'is_fake0': pair.is_fake0, 'is_fake1': pair.is_fake1,
          'source0': pair.path0.relative_to(data_dir).as_posix(),
          'source1': pair.path1.relative_to(data_dir).as_posix(), **_PAIR_PLACEHOLDERS}


# ----------------------------------------------------------------------------------------------------------------------
# Reading helpers.


def num_classes(builder: tfds.core.DatasetBuilder) -> int:
  """The number of train classes (train people with at least one usable photo) of a prepared dataset."""
  return int(builder.info.metadata['num_classes'])


def aligner_settings(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
  """How the faces were aligned: {'name', 'path', 'settings', 'min_score', 'max_photo_side', ...}.

  Evaluation re-aligns raw photos with `make_aligner(s['name'], s['path'])` and the same `max_photo_side`.
  """
  return dict(builder.info.metadata['aligner'])


# ----------------------------------------------------------------------------------------------------------------------
# Preparing (the library side of scripts/preprocess.py).


def dataset_dir(out: PathLike) -> pathlib.Path:
  """Where the prepared TFRecords of a TFDS data_dir live."""
  return pathlib.Path(out) / NAME / str(JaxfaceFaces.VERSION)


def make_aligner(options: BuildOptions):
  """The aligner the options name; PreprocessError (one line) when it cannot be built (weights, torch, device)."""
  from jaxface.align import base as align_base  # pylint: disable=import-outside-toplevel
  try:
    return align_base.make_aligner(options.aligner, options.aligner_path, options.device,
                                   batch_size=options.batch_size)
  except (ValueError, OSError, ImportError, RuntimeError) as error:
    text = ' '.join(str(error).split())
    raise PreprocessError(f'cannot build the {options.aligner!r} aligner: {text}') from None


def _check_data_dir(data_dir: pathlib.Path) -> None:
  if not data_dir.is_dir():
    raise PreprocessError(f'{data_dir}: data folder not found (give the challenge folder holding train/ and '
                          'test_public/)')
  if not (data_dir / 'train').is_dir() and not (data_dir / 'test_public').is_dir():
    raise PreprocessError(f'{data_dir}: holds neither train/ nor test_public/ (give the challenge folder itself)')


def _write_json(path: pathlib.Path, value: Any) -> None:
  tmp = path.with_name(f'.{path.name}.tmp')
  tmp.write_text(json.dumps(value, indent=1, default=str) + '\n', encoding='utf-8')
  os.replace(tmp, path)


def prepare(data_dir: PathLike, out: PathLike, options: BuildOptions | None = None, *, overwrite: bool = False,
            aligner: Any = None) -> dict[str, Any]:
  """Aligns the challenge photos in `data_dir` and writes the `jaxface_faces` dataset into the TFDS data_dir `out`.

  Resumable: faces aligned by an interrupted run are taken from the cache (default <out>/_align_cache).
  `aligner` (a jaxface.align.base.Aligner) replaces the one `options.aligner` names; its name and settings() key the
  cache and go into the metadata.

  Returns:
    The report (also written to <out>/preprocess_report.json): counts of aligned, faceless, low-score and unreadable
    photos, what was skipped and why, examples per split, throughput.

  Raises:
    PreprocessError / challenge.DataFormatError: a user error, with a one-line message.
  """
  options = options or BuildOptions()
  options.check()
  data_dir, out = pathlib.Path(data_dir).absolute(), pathlib.Path(out).absolute()
  _check_data_dir(data_dir)
  target = dataset_dir(out)
  if target.exists():
    if not overwrite:
      raise PreprocessError(f'{target}: dataset already exists (pass --overwrite to rebuild it from the align cache, '
                            'or give another --out)')
    shutil.rmtree(target)
  # A killed run leaves TFDS's incomplete.* folder behind; its faces are safe in the cache.
  for stale in (out / NAME).glob('incomplete.*'):
    shutil.rmtree(stale, ignore_errors=True)
  cache_dir = pathlib.Path(options.cache_dir).absolute() if options.cache_dir else out / DEFAULT_CACHE_NAME
  options = dataclasses.replace(options, cache_dir=str(cache_dir),
                                labels_path=str(pathlib.Path(options.labels_path).absolute())
                                if options.labels_path else None)
  if options.labels_path and not pathlib.Path(options.labels_path).is_file():
    raise PreprocessError(f'{options.labels_path}: labels file not found (give a CSV with pair_id,label[,kind])')

  start = time.perf_counter()
  tfds.disable_progress_bar()  # our own bar counts photos; TFDS's would count examples again
  aligner = aligner or make_aligner(options)
  aligned = align_challenge(data_dir, options, aligner, cache_dir)
  builder = JaxfaceFaces(data_dir=str(out), options=options, aligned=aligned)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(data_dir), compute_stats=tfds.download.ComputeStatsMode.SKIP))
  report = dict(builder.align_report)
  report['dataset_dir'] = str(target)
  report['splits'] = {name: int(split.num_examples) for name, split in builder.info.splits.items()}
  report['seconds'] = round(time.perf_counter() - start, 3)
  out.mkdir(parents=True, exist_ok=True)
  _write_json(out / REPORT_NAME, report)
  return report


def write_preview(out: PathLike, count: int, path: PathLike | None = None) -> pathlib.Path:
  """Draws `count` aligned train faces (pairs' first faces if there is no train split) with their landmarks.

  Returns:
    The PNG's path (default <out>/preview.png): a grid of faces, landmarks as coloured dots (left eye red, right eye
    green, nose blue, mouth corners yellow and magenta), each captioned with its face score (F marks a fake).
  """
  from PIL import ImageDraw  # pylint: disable=import-outside-toplevel
  builder = tfds.builder(NAME, data_dir=str(out))
  split = 'train' if 'train' in builder.info.splits else sorted(builder.info.splits)[0]
  examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False).take(count)))
  scale = 2 if len(examples) <= 16 else 1
  cell = FACE_SIZE * scale
  columns = max(1, math.ceil(math.sqrt(len(examples))))
  rows = max(1, math.ceil(len(examples) / columns))
  sheet = Image.new('RGB', (columns * cell, rows * cell), (40, 40, 40))
  draw = ImageDraw.Draw(sheet)
  colours = [(255, 0, 0), (0, 255, 0), (0, 128, 255), (255, 255, 0), (255, 0, 255)]
  for index, example in enumerate(examples):
    left, top = (index % columns) * cell, (index // columns) * cell
    face = example['image'] if 'image' in example else example['image0']
    sheet.paste(Image.fromarray(face).resize((cell, cell), Image.Resampling.NEAREST), (left, top))
    if 'landmarks' in example:
      for (x, y), colour in zip(example['landmarks'], colours):
        cx, cy = left + (x + 0.5) * scale, top + (y + 0.5) * scale
        draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
      caption = f'{float(example["face_score"]):.2f}' + (' F' if example['is_fake'] == 1 else '')
      draw.text((left + 2, top + 1), caption, fill=(255, 255, 0))
  path = pathlib.Path(path) if path else pathlib.Path(out) / 'preview.png'
  sheet.save(path)
  return path
