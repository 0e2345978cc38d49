"""Where a training run's data comes from: the TFDS folder a config names, or the synthetic demo set made for it.

    tfds_dir = sources.training_tfds_dir(config.data)     # 'synthetic': generated and prepared on first use
    dataset = prepared.open_prepared(tfds_dir)            # reads it; changes nothing

`jaxface.train` calls these, then records the dataset's aligner in the run's config (`aligner_settings`), so
evaluation and verification align raw photos the way the training faces were aligned.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
from typing import Any

from jaxface.config import ConfigError

log = logging.getLogger('jaxface.data.sources')


def cache_root() -> pathlib.Path:
  """Where generated data is kept between runs: $JAXFACE_CACHE, default ~/.cache/jaxface."""
  return pathlib.Path(os.environ.get('JAXFACE_CACHE', pathlib.Path.home() / '.cache' / 'jaxface'))


def training_tfds_dir(data: Any) -> pathlib.Path:
  """The prepared dataset a config's data section (`config.data`) trains on.

  `source` 'tfds' names it (`tfds_dir`, the --out of scripts/preprocess.py); 'synthetic' makes it once
  (`prepare_synthetic`).

  Raises:
    ConfigError: an empty tfds_dir or an unknown source; one line saying what to do.
  """
  if data.source == 'synthetic':
    return prepare_synthetic(data)
  if data.source == 'tfds':
    if not data.tfds_dir:
      raise ConfigError('config.data.tfds_dir is empty: pass --config.data.tfds_dir=DIR (the --out of '
                        'scripts/preprocess.py)')
    return pathlib.Path(data.tfds_dir)
  raise ConfigError(f'config.data.source={data.source!r}: expected synthetic or tfds')


def prepare_synthetic(data: Any) -> pathlib.Path:
  """Generates and prepares (aligner 'none') the synthetic dataset a config's data section describes; returns its
  TFDS dir.

  Reads `data.synthetic` (the arguments of `jaxface.data.synthetic.generate`), `data.val_fraction` and
  `data.val_pairs_per_person`. Done once per setting under cache_root()/synthetic-<hash>; a later run reuses it,
  and a dataset written in an older layout is rewritten from its align cache.
  """
  from jaxface.data import builder, prepared, synthetic  # pylint: disable=import-outside-toplevel  (TensorFlow)

  settings = data.synthetic.to_dict()
  settings.update(val_fraction=data.val_fraction, val_pairs_per_person=data.val_pairs_per_person)
  key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
  root = cache_root() / f'synthetic-{key}'
  raw_dir, tfds_dir = root / 'raw', root / 'tfds'
  done = root / 'READY'
  options = builder.BuildOptions(aligner='none', val_fraction=data.val_fraction,
                                 pairs_per_person=data.val_pairs_per_person, progress=False)
  if not done.exists():
    log.info('Generating synthetic challenge data into %s (first use; later runs reuse it)', root)
    synthetic.generate(raw_dir, overwrite=True, **data.synthetic.to_dict())
    builder.prepare(raw_dir, tfds_dir, options, overwrite=True)
    done.write_text(json.dumps(settings))
  elif not prepared.is_current(tfds_dir):
    log.info('Rewriting the cached synthetic dataset in %s in the current layout (from its align cache)', tfds_dir)
    builder.prepare(raw_dir, tfds_dir, options, overwrite=True)
  else:
    log.info('Using cached synthetic data in %s', root)
  return tfds_dir


def aligner_settings(dataset: Any) -> dict[str, Any]:
  """What a run records of the dataset it trained on (`config.data` fields), read from a `PreparedDataset`:
  tfds_dir, and the aligner, its path and the photo size preprocessing read photos at, when the dataset says.

  A 'none'-aligned model fed MTCNN crops, or the reverse, scores far worse: evaluation follows the dataset, not the
  config's default.
  """
  settings: dict[str, Any] = {'tfds_dir': str(dataset.tfds_dir)}
  aligned = dataset.aligner
  if aligned.get('name'):
    settings.update(aligner=aligned['name'], aligner_path=aligned.get('path') or '')
  if aligned.get('max_photo_side'):  # verify reads raw photos at the size preprocessing read them
    settings['max_photo_side'] = int(aligned['max_photo_side'])
  return settings
