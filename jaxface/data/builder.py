"""The TFDS builder: challenge photos -> aligned faces -> the `jaxface_faces` dataset (train faces, val and test pairs).

    from jaxface.data import builder, prepared
    report = builder.prepare('/data/kryptonite', '/data/tfds', builder.BuildOptions(aligner='mtcnn'))
    dataset = prepared.open_prepared('/data/tfds')                       # later: what training and evaluation read
    tfds.load('jaxface_faces/faces', data_dir='/data/tfds', split='train')   # or plain TFDS, without jaxface

Two stages, each streaming so that host memory does not grow with the dataset:
  1. align (`align_challenge`): list the folder, plan the splits (`jaxface.data.plan`), and align every photo into the
     resumable cache (`jaxface.data.align_stage`); no TensorFlow. A killed run resumes here.
  2. write: one TFDS builder per config reads the cached faces one example at a time and writes the TFRecord shards.

Configs and splits (layout and features in `jaxface.data.prepared`):
  faces  train: one example per usable photo of the train people: image, label (class index), person_id, is_fake,
         landmarks (in crop pixels), face_score, source (path relative to the data folder).
  pairs  val: pairs of the photos of people held out of train (a seeded share of the people), of the kinds same (two
         real photos, label 1), different, own_fake, other_fake (label 0);
         test: the test_public pairs, with labels and kinds from labels.csv when there is one, else label -1, kind ''.

TensorFlow loads only when a JaxfaceFaces builder is made (to write), which first hides every GPU from it.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds  # imports TensorFlow lazily, on first use

from jaxface.align import cache as cache_lib
from jaxface.data import align_stage as stage
from jaxface.data import challenge, plan, prepared

PathLike = str | os.PathLike

NAME = prepared.NAME
FACE_SIZE = challenge.FACE_SIZE
REPORT_NAME = 'preprocess_report.json'
DEFAULT_CACHE_NAME = '_align_cache'
# Present in OUT/jaxface_faces while prepare() writes the two configs: a dataset found beside it is the partial output of
# a killed run (faces written, pairs not, say), which the rerun replaces instead of refusing it as existing.
WRITING_MARKER = '.writing'


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
  exclude: train photos to leave out, as meta.json keys ("<person_id>/<k>.jpg"), e.g. the exclude.txt of
    `python -m jaxface.clean`; they are neither aligned nor written, in train or in val pairs.
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
  exclude: tuple[str, ...] = ()

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
# Stage 1: plan and align (no TensorFlow).


@dataclasses.dataclass
class AlignedChallenge:
  """A challenge folder after the align stage: what goes where (paths) and how each photo aligned."""
  data_dir: pathlib.Path
  images: list[challenge.TrainImage]
  val_people: list[str]
  test_pairs: list[plan.Pair]
  aligner_meta: dict[str, Any]
  cache: cache_lib.AlignCache
  statuses: dict[pathlib.Path, stage.PhotoStatus]
  stats: stage.AlignStats
  listing: list[tuple[pathlib.Path, str]] = dataclasses.field(default_factory=list)  # challenge.listing_problems


def align_challenge(data_dir: PathLike, options: BuildOptions, aligner, cache_root: PathLike) -> AlignedChallenge:
  """The align stage: lists the challenge folder, picks the val people, aligns every photo into the cache.

  Needs no TensorFlow (it is imported only by the write stage), so a long alignment runs without it in memory.
  """
  data_dir = pathlib.Path(data_dir)
  excluded = set(options.exclude)
  images = [image for image in challenge.list_train_images(data_dir) if image.rel_path not in excluded]
  _, val_people = plan.split_people(images, options.val_fraction, options.seed)
  labels_path = options.labels_path or (
      challenge.default_labels_path(data_dir) if challenge.default_labels_path(data_dir).exists() else None)
  test_pairs = plan.make_test_pairs(data_dir, labels_path)
  aligner_meta = {'name': aligner.name, 'path': options.aligner_path, 'settings': aligner.settings(),
                  'min_score': options.min_score, 'max_photo_side': options.max_photo_side,
                  'jpeg_quality': options.jpeg_quality, 'face_size': FACE_SIZE}
  cache = cache_lib.AlignCache(cache_root, aligner.name, {
      'aligner': aligner.settings(), 'max_photo_side': options.max_photo_side,
      'jpeg_quality': options.jpeg_quality, 'face_size': FACE_SIZE})
  paths = list(dict.fromkeys([image.path for image in images] +
                             [path for pair in test_pairs for path in (pair.path0, pair.path1)]))
  statuses, stats = stage.align_into_cache(paths, aligner, cache, options)
  return AlignedChallenge(data_dir=data_dir, images=images, val_people=val_people, test_pairs=test_pairs,
                          aligner_meta=aligner_meta, cache=cache, statuses=statuses, stats=stats,
                          listing=challenge.listing_problems(data_dir))

@dataclasses.dataclass
class SplitPlan:
  """What each split holds, after the align stage dropped what did not align."""
  classes: list[str]  # train people with a usable photo; a train label is an index into this
  train: list[challenge.TrainImage]
  val: list[plan.Pair]
  test: list[plan.Pair]
  usable: Callable[[pathlib.Path], bool]


def plan_splits(aligned: AlignedChallenge, options: BuildOptions) -> SplitPlan:
  """Train photos and val pairs keep the usable photos (aligned, or faceless / low-score with keep_faceless); test pairs
  keep every pair whose two photos could be read."""
  statuses = aligned.statuses

  def usable(path: pathlib.Path) -> bool:
    state = statuses[path].state
    return state == 'aligned' or (options.keep_faceless and state in ('faceless', 'low_score'))

  val_set = set(aligned.val_people)
  train = [image for image in aligned.images if image.person_id not in val_set and usable(image.path)]
  val = plan.make_val_pairs([image for image in aligned.images if image.person_id in val_set and usable(image.path)],
                            options.seed, options.pairs_per_person)
  test = [pair for pair in aligned.test_pairs
          if statuses[pair.path0].state != 'unreadable' and statuses[pair.path1].state != 'unreadable']
  return SplitPlan(classes=sorted({image.person_id for image in train}), train=train, val=val, test=test,
                   usable=usable)


_REASONS = {'faceless': 'no face found (check the photo, or pass --keep-faceless to keep its centre crop)',
            'low_score': 'face score below --min-score (check the photo, or lower --min-score)'}


def _counts(aligned: AlignedChallenge, split_plan: SplitPlan) -> tuple[dict[str, int], list[dict], list[str]]:
  """(counts by state and of what was skipped, the skipped photos with why, the skipped test pair ids)."""
  statuses = aligned.statuses
  test_paths = {path for pair in aligned.test_pairs for path in (pair.path0, pair.path1)}
  # meta.json's own problems first: the terminal shows the first ten skipped photos.
  skipped = [{'path': str(path), 'reason': reason} for path, reason in aligned.listing]
  skipped += [{'path': str(path), 'reason': statuses[path].error.removeprefix(f'{path}: ')
               or _REASONS.get(statuses[path].state, '')}
              for path in statuses if statuses[path].state == 'unreadable'
              or (path not in test_paths and not split_plan.usable(path))]
  skipped_pairs = sorted({pair.pair_id for pair in aligned.test_pairs} - {pair.pair_id for pair in split_plan.test})
  counts = collections.Counter(status.state for status in statuses.values())
  counts = {state: counts[state] for state in stage.STATES}
  counts.update(images=len(statuses), skipped=len(skipped), skipped_test_pairs=len(skipped_pairs))
  return counts, skipped, skipped_pairs


def describe(aligned: AlignedChallenge, split_plan: SplitPlan, options: BuildOptions
             ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(the dataset's metadata: what readers need, the align report: everything, for preprocess_report.json)."""
  counts, skipped, skipped_pairs = _counts(aligned, split_plan)
  statuses, stats = aligned.statuses, aligned.stats
  by_state = collections.defaultdict(list)
  for path, status in statuses.items():
    by_state[status.state].append(path)
  metadata = {'aligner': aligned.aligner_meta, 'num_classes': len(split_plan.classes),
              'class_names': split_plan.classes, 'val_people': list(aligned.val_people), 'counts': counts,
              'data_dir': str(aligned.data_dir)}
  report = {
      'data_dir': str(aligned.data_dir),
      'cache_dir': str(aligned.cache.dir),
      'aligner': aligned.aligner_meta,
      'options': dataclasses.asdict(options),
      'counts': counts,
      'aligned_now': stats.aligned_now,
      'from_cache': stats.from_cache,
      'align_seconds': round(stats.seconds, 3),
      'images_per_second': round(stats.images / max(stats.seconds, 1e-9), 2),
      'aligner_images_per_second': round(stats.aligned_now / max(stats.aligner_seconds, 1e-9), 2),
      'num_classes': len(split_plan.classes),
      'train_people': len(split_plan.classes),
      'val_people': len(aligned.val_people),
      'val_kinds': dict(collections.Counter(pair.kind for pair in split_plan.val)),
      'test_kinds': dict(collections.Counter(pair.kind or 'unknown' for pair in split_plan.test)),
      'train_photos_listed': len(aligned.images),
      'skipped': skipped,
      'skipped_test_pairs': skipped_pairs,
      'faceless': [str(p) for p in by_state['faceless']],
      'low_score': [{'path': str(p), 'score': round(statuses[p].score, 4)} for p in by_state['low_score']],
      'unreadable': [{'path': str(p), 'error': statuses[p].error} for p in by_state['unreadable']],
  }
  return metadata, report


# ----------------------------------------------------------------------------------------------------------------------
# Stage 2: the TFDS builder.


def _features(config: str) -> tfds.features.FeaturesDict:
  """The features of a config: prepared.TRAIN_KEYS for faces, prepared.PAIR_KEYS for pairs."""
  face = lambda: tfds.features.Image(shape=(FACE_SIZE, FACE_SIZE, 3), encoding_format='jpeg')
  text, int64 = tfds.features.Text, lambda: tfds.features.Scalar(np.int64)
  if config == prepared.FACES:
    return tfds.features.FeaturesDict({
        'image': face(),
        'label': int64(),  # class index over the train people (metadata class_names)
        'person_id': text(),
        'is_fake': int64(),
        'landmarks': tfds.features.Tensor(shape=(5, 2), dtype=np.float32),  # in crop pixels
        'face_score': tfds.features.Scalar(np.float32),
        'source': text(),  # photo path relative to the data folder
    })
  return tfds.features.FeaturesDict({
      'pair_id': text(),
      'image0': face(),
      'image1': face(),
      'label': int64(),  # 1 two real photos of one person, 0 not, -1 unknown
      'kind': text(),  # a jaxface.pair_kinds kind (known or the user's own); '' if unknown
      'is_fake0': int64(),  # -1 unknown
      'is_fake1': int64(),
      'source0': text(),
      'source1': text(),
  })


class JaxfaceFaces(tfds.core.GeneratorBasedBuilder):
  """Aligned challenge faces: config faces (train faces), config pairs (val pairs of held-out people, test pairs)."""

  VERSION = tfds.core.Version(prepared.VERSION)
  RELEASE_NOTES = {
      '1.0.0': 'Aligned train faces, val pairs of held-out people, test_public pairs (one config, placeholders).',
      '2.0.0': 'Two configs with their own features, faces (train) and pairs (val, test): no placeholders.',
  }
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=prepared.FACES, description='train: one aligned face per usable train photo'),
      tfds.core.BuilderConfig(name=prepared.PAIRS, description='val: pairs of held-out people; test: test_public'),
  ]
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
    prepared.hide_gpus_from_tf()
    self.options = options or BuildOptions()
    self._aligner = aligner
    self._aligned = aligned
    self.align_report: dict[str, Any] = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=_features(self.builder_config.name),
        metadata=tfds.core.MetadataDict(options=dataclasses.asdict(self.options)),
        homepage='https://codenrock.com/contests/kryptonite-ml-challenge',
    )

  def _split_generators(self, dl_manager):
    options, aligned = self.options, self._aligned
    if aligned is None:  # called by TFDS directly rather than through prepare(): align now (the cache is shared)
      cache_root = pathlib.Path(options.cache_dir) if options.cache_dir else self.data_dir_root / DEFAULT_CACHE_NAME
      aligned = align_challenge(dl_manager.manual_dir, options, self._aligner or make_aligner(options), cache_root)
    split_plan = plan_splits(aligned, options)
    if not split_plan.train and not split_plan.val and not split_plan.test:
      raise PreprocessError(f'{aligned.data_dir}: no usable photo (see {REPORT_NAME}; check the aligner and '
                            '--min-score)')
    metadata, self.align_report = describe(aligned, split_plan, options)
    self.info.metadata.update(metadata)
    return {split: self._generate_examples(split, aligned, split_plan)
            for split in prepared.CONFIG_SPLITS[self.builder_config.name] if getattr(split_plan, split)}

  def _generate_examples(self, split: str, aligned: AlignedChallenge, split_plan: SplitPlan
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields (key, example) of a split from the cached faces, one example at a time."""
    data_dir, cache = aligned.data_dir, aligned.cache
    if split == 'train':
      class_index = {person: i for i, person in enumerate(split_plan.classes)}
      for image in split_plan.train:
        face = _face(cache, image.path)
        yield image.rel_path, {
            'image': face.jpeg, 'label': class_index[image.person_id], 'person_id': image.person_id,
            'is_fake': image.is_fake, 'landmarks': face.crop_landmarks, 'face_score': np.float32(face.score),
            'source': image.path.relative_to(data_dir).as_posix()}
      return
    for pair in getattr(split_plan, split):
      yield pair.pair_id, {
          'pair_id': pair.pair_id, 'image0': _face(cache, pair.path0).jpeg, 'image1': _face(cache, pair.path1).jpeg,
          'label': pair.label, 'kind': pair.kind, 'is_fake0': pair.is_fake0, 'is_fake1': pair.is_fake1,
          'source0': pair.path0.relative_to(data_dir).as_posix(),
          'source1': pair.path1.relative_to(data_dir).as_posix()}


def _face(cache: cache_lib.AlignCache, path: pathlib.Path) -> cache_lib.CachedFace:
  face = cache.get(path)
  if face is None:  # aligned moments ago: the cache folder was removed or changed underneath this run
    raise RuntimeError(f'{cache.entry_path(path)}: aligned face vanished from the cache (rerun preprocessing)')
  return face


# ----------------------------------------------------------------------------------------------------------------------
# Preparing (the library side of scripts/preprocess.py).


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

def _clear_target(out: pathlib.Path, overwrite: bool) -> None:
  """Removes the datasets prepare() writes (of either layout) when overwriting, and an interrupted run's leftovers."""
  existing = [path for path in [prepared.dataset_dir(out, config) for config in prepared.CONFIG_SPLITS]
              + prepared.old_layout_dirs(out) if path.exists()]
  if existing and not overwrite and not (out / NAME / WRITING_MARKER).exists():
    raise PreprocessError(f'{existing[0]}: dataset already exists (pass --overwrite to rebuild it from the align '
                          'cache, or give another --out)')
  for path in existing:
    shutil.rmtree(path)
  # A killed run leaves TFDS's incomplete.* folders behind; its faces are safe in the cache.
  for stale in [*(out / NAME).glob('incomplete.*'), *(out / NAME).glob('*/incomplete.*')]:
    shutil.rmtree(stale, ignore_errors=True)


def prepare(data_dir: PathLike, out: PathLike, options: BuildOptions | None = None, *, overwrite: bool = False,
            aligner: Any = None) -> dict[str, Any]:
  """Aligns the challenge photos in `data_dir` and writes the `jaxface_faces` dataset (both configs) into `out`.

  Resumable: faces aligned by an interrupted run are taken from the cache (default <out>/_align_cache).
  `aligner` (a jaxface.align.base.Aligner) replaces the one `options.aligner` names; its name and settings() key the
  cache and go into the metadata. With `overwrite`, a dataset already in `out` (of this layout or an older one) is
  replaced.

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
  _clear_target(out, overwrite)
  cache_dir = pathlib.Path(options.cache_dir).absolute() if options.cache_dir else out / DEFAULT_CACHE_NAME
  options = dataclasses.replace(options, cache_dir=str(cache_dir),
                                labels_path=str(pathlib.Path(options.labels_path).absolute())
                                if options.labels_path else None)
  if options.labels_path and not pathlib.Path(options.labels_path).is_file():
    raise PreprocessError(f'{options.labels_path}: labels file not found (give a CSV with pair_id,label[,kind])')

  start = time.perf_counter()
  tfds.disable_progress_bar()  # our own bar counts photos; TFDS's would count examples again
  aligned = align_challenge(data_dir, options, aligner or make_aligner(options), cache_dir)
  report, splits = {}, {}
  marker = out / NAME / WRITING_MARKER
  marker.parent.mkdir(parents=True, exist_ok=True)
  marker.touch()
  for config in prepared.CONFIG_SPLITS:
    builder = JaxfaceFaces(config=config, data_dir=str(out), options=options, aligned=aligned)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(data_dir), compute_stats=tfds.download.ComputeStatsMode.SKIP))
    report = dict(builder.align_report)
    splits.update({name: int(split.num_examples) for name, split in builder.info.splits.items()})
  report['dataset_dirs'] = {config: str(prepared.dataset_dir(out, config)) for config in prepared.CONFIG_SPLITS}
  report['splits'] = splits
  report['seconds'] = round(time.perf_counter() - start, 3)
  out.mkdir(parents=True, exist_ok=True)
  _write_json(out / REPORT_NAME, report)
  marker.unlink()
  return report
