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

`open_prepared(TFDS_DIR)` gives a `PreparedDataset`, which `jaxface.data.pipeline.train_dataset` and `pairs_dataset`
read; it returns what it read and edits nothing (a training run records the dataset's aligner itself:
`jaxface.data.sources`). Datasets of the 1.0.0 layout (one config holding the union of both feature sets, with
placeholder images) are refused with a one-line error saying how to rewrite them.

Imports TensorFlow only when a dataset is opened, after `hide_gpus_from_tf`.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from jaxface.config import ConfigError

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


def open_prepared(tfds_dir: PathLike) -> PreparedDataset:
  """Reads the dataset scripts/preprocess.py wrote into TFDS_DIR (its --out); changes nothing.

  Raises:
    ConfigError: no dataset there, or one of an older layout; one line saying what to do.
  """
  tfds_dir = pathlib.Path(tfds_dir)
  if not is_current(tfds_dir):
    raise ConfigError(_missing(tfds_dir))
  hide_gpus_from_tf()
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builders = {config: tfds.builder_from_directory(str(dataset_dir(tfds_dir, config))) for config in CONFIG_SPLITS}
  return PreparedDataset(tfds_dir=tfds_dir, builders=builders, metadata=dict(builders[FACES].info.metadata))
