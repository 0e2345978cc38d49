"""A prepared dataset on disk: its layout, and opening it for training and evaluation.

scripts/preprocess.py writes the TFDS dataset `jaxface_faces` in two builder configs, each with its own features and
no placeholders, so plain TFDS reads every split without jaxface installed:

    OUT/jaxface_faces/faces/VERSION/   split train: image, label, person_id, is_fake, landmarks, face_score, source
    OUT/jaxface_faces/pairs/VERSION/   splits val, test: pair_id, image0, image1, label, kind, is_fake0, is_fake1,
                                       source0, source1

    tfds.load('jaxface_faces/faces', data_dir=OUT, split='train')
    tfds.builder_from_directory('OUT/jaxface_faces/pairs/2.0.0').as_dataset(split='test')

Both configs carry the same metadata (`info.metadata`): num_classes, class_names, aligner (name, path, settings,
min_score, max_photo_side, jpeg_quality, face_size), counts, val_people, data_dir and the build options.

`open_prepared(DIR or config)` gives a `PreparedDataset`, which `jaxface.data.pipeline.train_dataset` and
`pairs_dataset` read. Datasets of the 1.0.0 layout (one config holding the union of both feature sets, with
placeholder images) are refused with a one-line error saying how to rewrite them.

Imports TensorFlow only when a dataset is opened, after `hide_gpus_from_tf`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any

from jaxface.config import ConfigError

log = logging.getLogger('jaxface.data.prepared')

PathLike = str | os.PathLike

NAME = 'jaxface_faces'
VERSION = '2.0.0'
FACES, PAIRS = 'faces', 'pairs'
CONFIG_SPLITS = {FACES: ('train',), PAIRS: ('val', 'test')}
SPLIT_CONFIG = {split: config for config, splits in CONFIG_SPLITS.items() for split in splits}
TRAIN_KEYS = ('image', 'label', 'person_id', 'is_fake', 'landmarks', 'face_score', 'source')
PAIR_KEYS = ('pair_id', 'image0', 'image1', 'label', 'kind', 'is_fake0', 'is_fake1', 'source0', 'source1')
_INFO = 'dataset_info.json'


def hide_gpus_from_tf() -> None:
  """Keeps TensorFlow off the GPUs, so JAX and torch get all their memory. Harmless once TF has started."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):  # devices already initialised, or a build without GPU support
    pass


def dataset_dir(tfds_dir: PathLike, config: str) -> pathlib.Path:
  """Where one config's TFRecords and dataset_info.json live: TFDS_DIR/jaxface_faces/CONFIG/VERSION."""
  return pathlib.Path(tfds_dir) / NAME / config / VERSION


def old_layout_dirs(tfds_dir: PathLike) -> list[pathlib.Path]:
  """The datasets of an older layout under TFDS_DIR (1.0.0: TFDS_DIR/jaxface_faces/1.0.0, no configs)."""
  root = pathlib.Path(tfds_dir) / NAME
  found = [path.parent for path in root.glob(f'*/{_INFO}')]
  found += [path.parent for path in root.glob(f'*/*/{_INFO}') if path.parent.name != VERSION]
  return sorted(found)


def is_current(tfds_dir: PathLike) -> bool:
  """True when TFDS_DIR holds both configs of the current layout."""
  return all((dataset_dir(tfds_dir, config) / _INFO).is_file() for config in CONFIG_SPLITS)


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
  """A prepared jaxface_faces dataset: one read-only TFDS builder per config and their shared metadata."""
  tfds_dir: pathlib.Path
  builders: dict[str, Any]  # config name -> tfds.core.DatasetBuilder (read-only, from its directory)
  metadata: dict[str, Any]

  @property
  def num_classes(self) -> int:
    """Train classes: the train people with at least one usable photo."""
    return int(self.metadata['num_classes'])

  @property
  def class_names(self) -> list[str]:
    return list(self.metadata['class_names'])

  @property
  def aligner(self) -> dict[str, Any]:
    """How the faces were aligned: {'name', 'path', 'settings', 'min_score', 'max_photo_side', ...}.

    Evaluation re-aligns raw photos with `make_aligner(a['name'], a['path'])`, read by
    `challenge.read_photo(path, a['max_photo_side'])`.
    """
    return dict(self.metadata['aligner'])

  @property
  def splits(self) -> dict[str, int]:
    """{split name: examples} of every written split."""
    return {name: int(info.num_examples) for builder in self.builders.values()
            for name, info in builder.info.splits.items()}

  @property
  def num_train_examples(self) -> int:
    return self.splits.get('train', 0)

  def builder(self, split: str) -> Any:
    """The TFDS builder holding `split` ('train', 'val' or 'test'); ConfigError (one line) when it was not written."""
    if split not in SPLIT_CONFIG:
      raise ConfigError(f'{self.tfds_dir}: {NAME} has no split {split!r} (expected one of '
                        f'{", ".join(SPLIT_CONFIG)})')
    builder = self.builders[SPLIT_CONFIG[split]]
    if split not in builder.info.splits:
      raise ConfigError(f'{self.tfds_dir}: the {split} split is empty (see preprocess_report.json; prepare a data '
                        f'folder whose {"train/ photos" if split == "train" else "pairs"} align)')
    return builder

  def as_dataset(self, split: str, **kwargs: Any) -> Any:
    """`tfds` as_dataset of one split (kwargs as TFDS takes them); the split names one of 'train', 'val', 'test'."""
    return self.builder(split).as_dataset(split=split, **kwargs)


def _missing(tfds_dir: PathLike) -> str:
  """The one-line error for a folder without a current dataset."""
  old = old_layout_dirs(tfds_dir)
  if old:
    return (f'{old[0]}: a {NAME} dataset of an older layout (one config with placeholder features) (rerun '
            f'scripts/preprocess.py with --out {tfds_dir} --overwrite: the align cache makes it fast)')
  return (f'{tfds_dir}: no prepared {NAME} dataset here (run scripts/preprocess.py --data-dir CHALLENGE_DIR '
          f'--out {tfds_dir} first)')


def open_dir(tfds_dir: PathLike) -> PreparedDataset:
  """Opens the dataset scripts/preprocess.py wrote into TFDS_DIR (its --out); ConfigError (one line) if none is."""
  tfds_dir = pathlib.Path(tfds_dir)
  if not is_current(tfds_dir):
    raise ConfigError(_missing(tfds_dir))
  hide_gpus_from_tf()
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builders = {config: tfds.builder_from_directory(str(dataset_dir(tfds_dir, config))) for config in CONFIG_SPLITS}
  return PreparedDataset(tfds_dir=tfds_dir, builders=builders, metadata=dict(builders[FACES].info.metadata))


def open_prepared(source: Any) -> PreparedDataset:
  """Opens a prepared dataset: a TFDS_DIR, or the one a training config names.

  With a config (`config.data.source` 'tfds' reads `config.data.tfds_dir`; 'synthetic' generates and prepares the
  set `config.data.synthetic` describes, once, via `jaxface.data.synthetic.prepare_synthetic`), the config is updated
  in place: `data.tfds_dir` names the dataset, and `data.aligner` / `data.aligner_path` / `data.max_photo_side` become
  the dataset's own, so evaluation and verification read and align raw photos the way the training faces were.

  Raises:
    ConfigError: no tfds_dir, an unknown source, no dataset or one of an older layout; one line saying what to do.
  """
  if isinstance(source, (str, os.PathLike)):
    return open_dir(source)
  data = source.data
  if data.source == 'synthetic':
    from jaxface.data import synthetic  # pylint: disable=import-outside-toplevel
    tfds_dir = synthetic.prepare_synthetic(source)
  elif data.source == 'tfds':
    tfds_dir = data.tfds_dir
    if not tfds_dir:
      raise ConfigError('config.data.tfds_dir is empty: pass --config.data.tfds_dir=DIR (the --out of '
                        'scripts/preprocess.py)')
  else:
    raise ConfigError(f'config.data.source={data.source!r}: expected synthetic or tfds')
  prepared = open_dir(tfds_dir)
  data.tfds_dir = str(tfds_dir)
  # A 'none'-aligned model fed MTCNN crops, or the reverse, scores far worse: follow the dataset, not the default.
  aligned = prepared.aligner
  if aligned.get('name') and aligned['name'] != data.aligner:
    log.info('The dataset was aligned with %r: evaluation will align raw photos the same way', aligned['name'])
    data.aligner = aligned['name']
    data.aligner_path = aligned.get('path') or ''
  if aligned.get('max_photo_side'):  # verify reads raw photos at the size preprocessing read them
    data.max_photo_side = int(aligned['max_photo_side'])
  return prepared
