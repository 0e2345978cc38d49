"""The tf.data input pipeline: TFDS splits -> augmented, fake-mixed, device-shaped batches.

Reading a prepared dataset, for training and evaluation alike:

    dataset = prepared.open_prepared(TFDS_DIR)   # see jaxface.data.prepared; a config's: jaxface.data.sources
    dataset.num_classes, dataset.num_train_examples, dataset.aligner, dataset.splits
    batches = pipeline.train_dataset(dataset, config, num_devices=n, start_step=step, seed=seed)
    pairs = pipeline.pairs_dataset(dataset, 'val', config, batch_size)   # or 'test'

Training data flow (`train_dataset`), per data shard (`data.num_shards`, default one per process; a process reads
its `num_shards / process_count` shards, disjoint slices of the split):

  split slice of this shard (tfds.even_splits)
    -> three streams, each file-shuffled, buffer-shuffled and repeated with its own seed, images still JPEG bytes:
       real photos, recorded fakes, pairs of real photos for pseudo-fakes
    -> choose_from_datasets with a stateless per-position choice: `fake_share` of the examples are fakes, of which
       `pseudo_fakes.share` (a share of the whole batch) are made by `pseudofakes.pseudo_fake`
    -> enumerate, skip(start_step * shard batch)        (resume: nothing before here decodes or augments)
    -> decode, pseudo-fake, augment, resize to the model input size, scale to [-1, 1], each seeded by (seed, shard,
       position)
    -> batch (batch_size / num_shards), this process's shards side by side, reshape to (devices, per_device, ...),
       prefetch.

Shards make the global batch independent of how the devices are hosted: with `data.num_shards=2`, one process with
two devices and two processes with one device each train on the same examples in the same places (the multi-process
test relies on it), and a run can resume on another number of processes without changing its data.

Determinism and resumption: every random choice is either a seeded shuffle or a stateless function of the example's
position in the host's stream, and the parallel maps keep their order, so a run started at step k yields exactly
the batches a run from step 0 yields from step k on. Skipping reads and shuffles the skipped records but does not
decode or augment them.

Memory stays flat: shuffle buffers are bounded (`shuffle_buffer` encoded JPEGs per stream), nothing is cached, and
TFDS auto-caching is off.

Fake share: `fake_share` is the share of fakes (recorded + pseudo) in the batch; None keeps the recorded fakes at
their natural frequency. `pseudo_fakes.share` is always a share of the whole batch. A split with no recorded fakes
fills their share with pseudo-fakes.

Augmentation (`jaxface.data.augment`) runs after the pseudo-fakes are made, on reals and fakes alike.

TensorFlow is kept off the GPU on import: JAX owns the accelerators.
"""
from __future__ import annotations

import os
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


from jaxface.data.prepared import PreparedDataset, hide_gpus_from_tf, open_prepared  # noqa: E402,F401  (re-exported)

hide_gpus_from_tf()

from jaxface.data import pseudofakes  # noqa: E402  (after hiding the GPUs: it builds TF constants)
from jaxface.data.augment import augment  # noqa: E402
from jaxface.data.challenge import FACE_SIZE  # noqa: E402
from jaxface.data.data_config import default_data_config  # noqa: E402,F401  (re-exported)

_REAL, _RECORDED_FAKE, _PSEUDO_FAKE = 0, 1, 2
# The map functions use TF control flow explicitly; AutoGraph's conversion would only slow every pipeline build.
_plain = tf.autograph.experimental.do_not_convert


def _data_cfg(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return cfg.data if 'data' in cfg else cfg


def _image_size(cfg: ml_collections.ConfigDict) -> int:
  """The side faces are resized to: the model's input size (config.model.input_size, the one image-size field), or
  the stored 112 when the config has no model section (evaluation: the network resizes)."""
  model = cfg.get('model') if hasattr(cfg, 'get') else None
  return int(model.input_size) if model and 'input_size' in model else FACE_SIZE


def _source(source, cfg: ml_collections.ConfigDict):
  """What a reader was given, opened: None -> the dataset in cfg's data.tfds_dir; a folder -> the dataset in it."""
  if source is None:
    tfds_dir = _data_cfg(cfg).tfds_dir
    if not tfds_dir:
      raise ValueError('config.data.tfds_dir is empty: set it to the folder scripts/preprocess.py wrote')
    return open_prepared(tfds_dir)
  if isinstance(source, (str, os.PathLike)):
    return open_prepared(source)
  return source


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # Small per-example ops: parallelism across examples beats splitting each op over threads.
  options.threading.max_intra_op_parallelism = 1
  return options


def _read(source, split: str, *, shuffle_seed: int | None, process_index: int, process_count: int,
          skip_decoding: tuple[str, ...] = ()) -> tf.data.Dataset:
  """This host's slice of a split, from a prepared dataset, a TFDS builder holding the split, or a tf.data.Dataset of
  feature dicts (tests)."""
  if isinstance(source, tf.data.Dataset):
    return source.shard(process_count, process_index) if process_count > 1 else source
  if isinstance(source, PreparedDataset):
    source = source.builder(split)
  split_spec = tfds.even_splits(split, n=process_count)[process_index] if process_count > 1 else split
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False, options=_options())
  decoders = {name: tfds.decode.SkipDecoding() for name in skip_decoding} or None
  return source.as_dataset(split=split_spec, shuffle_files=shuffle_seed is not None, read_config=read_config,
                           decoders=decoders)


def _record_size(source, split: str) -> int:
  """Side of the stored faces (112 for jaxface_faces)."""
  if isinstance(source, PreparedDataset):
    source = source.builder(split)
  if isinstance(source, tf.data.Dataset):
    spec = source.element_spec
    image_spec = spec['image'] if 'image' in spec else spec['image0']
    if image_spec.dtype == tf.uint8 and image_spec.shape[0] is not None:
      return int(image_spec.shape[0])
    for features in source.take(1):  # encoded images: the first one tells the size
      return int(tf.io.decode_jpeg(features['image' if 'image' in spec else 'image0']).shape[0])
    return 112
  features = source.info.features
  return int(features['image' if 'image' in features else 'image0'].shape[0])


def _decode(image: tf.Tensor, size: int) -> tf.Tensor:
  if image.dtype == tf.string:
    image = tf.io.decode_jpeg(image, channels=3)
  return tf.ensure_shape(image, [size, size, 3])


def _host_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax
    return jax.process_index(), jax.process_count()
  return process_index, process_count


def _stream_weights(fake_share: float | None, pseudo_share: float, has_fakes: bool) -> list[float]:
  """Sampling weights of [real, recorded fakes, pseudo-fakes]; [natural, pseudo-fakes] when fake_share is None."""
  if not 0.0 <= pseudo_share <= 1.0:
    raise ValueError(f'config.data.pseudo_fakes.share must be in [0, 1], got {pseudo_share}')
  if fake_share is None:
    return [1.0 - pseudo_share, pseudo_share]
  if not 0.0 <= fake_share <= 1.0 or pseudo_share > fake_share:
    raise ValueError(f'config.data.fake_share must be in [pseudo_fakes.share={pseudo_share}, 1], got {fake_share}')
  if not has_fakes:  # no recorded fakes: pseudo-fakes take their share
    return [1.0 - fake_share, 0.0, fake_share]
  return [1.0 - fake_share, fake_share - pseudo_share, pseudo_share]


def _is_empty(ds: tf.data.Dataset) -> bool:
  for _ in ds.take(1):
    return False
  return True


def _shard_examples(source, cfg: ml_collections.ConfigDict, *, shard: int, shards: int, skip: int, seed: int
                    ) -> tf.data.Dataset:
  """One data shard's endless stream of model-ready examples (not batched): slice `shard` of `shards` of the train
  split, its examples seeded by (seed, shard, position); the first `skip` are read but not decoded."""
  data = _data_cfg(cfg)
  size = _record_size(source, 'train')
  image_key = ('image',)

  def read(stream: int, keep) -> tf.data.Dataset:
    ds = _read(source, 'train', shuffle_seed=seed * 7919 + stream, process_index=shard, process_count=shards,
               skip_decoding=image_key)
    ds = ds.map(_plain(lambda f: {'image': f['image'], 'label': tf.cast(f['label'], tf.int32),
                                  'is_fake': tf.cast(f['is_fake'], tf.int32)}))
    return ds.filter(_plain(keep)) if keep is not None else ds

  def finish(ds: tf.data.Dataset, stream: int) -> tf.data.Dataset:
    return ds.shuffle(data.shuffle_buffer, seed=seed * 7919 + 100 + stream).repeat()

  def single(el, origin):
    return dict(el, donor=el['image'], donor_label=el['label'], origin=tf.fill([], origin))

  def pair(el):  # a batch of two real photos -> one pseudo-fake recipe
    return {'image': el['image'][0], 'label': el['label'][0], 'is_fake': tf.ones([], tf.int32),
            'donor': el['image'][1], 'donor_label': el['label'][1], 'origin': tf.fill([], _PSEUDO_FAKE)}

  is_real = lambda f: f['is_fake'] == 0
  is_fake = lambda f: f['is_fake'] == 1
  if _is_empty(read(0, is_real)):
    raise ValueError('the train split has no real photos (is_fake == 0): nothing to train on')
  pseudo = finish(read(2, is_real), 2).batch(2, drop_remainder=True).map(_plain(pair))
  has_fakes = data.fake_share is not None and not _is_empty(read(1, is_fake))
  weights = _stream_weights(data.fake_share, float(data.pseudo_fakes.share), has_fakes)
  if data.fake_share is None:
    streams = [finish(read(0, None), 0).map(_plain(lambda f: single(f, f['is_fake']))), pseudo]
  else:
    streams = [finish(read(0, is_real), 0).map(_plain(lambda f: single(f, _REAL)))]
    if weights[1] > 0:
      streams.append(finish(read(1, is_fake), 1).map(_plain(lambda f: single(f, _RECORDED_FAKE))))
    streams.append(pseudo)
    if weights[1] == 0:
      weights = [weights[0], weights[2]]
  logits = tf.math.log(tf.constant([weights], tf.float32))

  def choose(position):
    return tf.random.stateless_categorical(logits, 1, [seed, position], dtype=tf.int64)[0, 0]

  choice = tf.data.Dataset.counter().map(_plain(choose))
  ds = tf.data.Dataset.choose_from_datasets(streams, choice).enumerate()
  ds = ds.skip(skip)
  kind_weights = (float(data.pseudo_fakes.self_blend), float(data.pseudo_fakes.swap), float(data.pseudo_fakes.trace))
  aug = data.augment
  out_size = _image_size(cfg)

  def example(position, el):
    key = tf.random.experimental.stateless_fold_in(tf.constant([seed, shard], tf.int64), position)
    fake_key, aug_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    image = _decode(el['image'], size)
    if weights[-1] > 0:
      image = tf.cond(
          el['origin'] == _PSEUDO_FAKE,
          lambda: pseudofakes.pseudo_fake(image, _decode(el['donor'], size), el['label'] == el['donor_label'],
                                          fake_key, kind_weights)[0],
          lambda: image)
    fake = tf.cast(el['origin'] != _REAL, tf.int32)
    image = augment(image, aug_key, aug, is_fake=fake)
    return {'image': to_model_input(image, out_size), 'label': el['label'], 'is_fake': fake,
            'id_mask': 1.0 - tf.cast(fake, tf.float32)}

  return ds.map(_plain(example), num_parallel_calls=data.parallel_calls, deterministic=True)


def train_dataset_tf(source, cfg: ml_collections.ConfigDict, *, num_devices: int, start_step: int = 0,
                     seed: int = 0, process_index: int | None = None, process_count: int | None = None
                     ) -> tf.data.Dataset:
  """The training stream as a tf.data.Dataset of device-shaped batches; see `train_dataset`."""
  data = _data_cfg(cfg)
  source = _source(source, cfg)
  index, count = _host_info(process_index, process_count)
  shards = int(data.get('num_shards', 0) or count)
  if shards % count:
    raise ValueError(f'config.data.num_shards={shards} must be a multiple of the {count} processes')
  if cfg.batch_size % (count * num_devices) or cfg.batch_size % shards:
    raise ValueError(f'config.batch_size={cfg.batch_size} must divide into {count} hosts x {num_devices} devices '
                     f'and into {shards} data shards')
  host_batch, shard_batch, local = cfg.batch_size // count, cfg.batch_size // shards, shards // count
  parts = [_shard_examples(source, cfg, shard=shard, shards=shards, skip=start_step * shard_batch, seed=seed)
           .batch(shard_batch, drop_remainder=True) for shard in range(index * local, (index + 1) * local)]
  if local == 1:
    ds = parts[0]
  else:  # this host's shards side by side: the global batch is the shards' batches in shard order, however hosted
    ds = tf.data.Dataset.zip(tuple(parts)).map(
        _plain(lambda *b: {k: tf.concat([part[k] for part in b], 0) for k in b[0]}))
  per_device = host_batch // num_devices
  ds = ds.map(_plain(lambda b: {k: tf.reshape(v, [num_devices, per_device, *v.shape[1:]]) for k, v in b.items()}))
  return ds.prefetch(data.prefetch).with_options(_options())


def train_dataset(source, cfg: ml_collections.ConfigDict, *, num_devices: int, start_step: int = 0,
                  seed: int = 0, process_index: int | None = None, process_count: int | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Endless, deterministic, resumable training batches for this host.

  Args:
    source: a `PreparedDataset` (`open_prepared`), its folder, None (the folder `cfg.data.tfds_dir`), a TFDS builder
      holding a train split, or a tf.data.Dataset of train feature dicts with 'image' (JPEG bytes or (S0, S0, 3)
      uint8), 'label' and 'is_fake' (tests, other sources).
    cfg: the training config: `cfg.batch_size` (global) and `cfg.data` (see default_data_config).
    num_devices: local devices; batches get a leading axis of this size for pmap.
    start_step: first step to yield; the batches equal those of a fresh run from that step on.
    seed: the run's seed (config.seed): picks the shuffles and every augmentation.
    process_index, process_count: this host's share of the data shards (`cfg.data.num_shards`, default one per
      process); default jax.process_index() / jax.process_count().
  Yields:
    {'image': (D, B/D, S, S, 3) float32 in [-1, 1], 'label': (D, B/D) int32, 'is_fake': (D, B/D) int32,
     'id_mask': (D, B/D) float32}, B = batch_size / process_count, S = cfg.model.input_size.
  """
  ds = train_dataset_tf(source, cfg, num_devices=num_devices, start_step=start_step, seed=seed,
                        process_index=process_index, process_count=process_count)
  return iter(tfds.as_numpy(ds))


def to_model_input(image: tf.Tensor, size: int) -> tf.Tensor:
  """(S0, S0, 3) uint8 or float [0, 255] -> (size, size, 3) float32 in [-1, 1], antialiased when shrinking."""
  image = tf.cast(image, tf.float32)
  if image.shape[0] != size:
    image = tf.image.resize(image, [size, size], method='bilinear', antialias=True)
  return tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)


def pairs_dataset(source, split: str, cfg: ml_collections.ConfigDict, batch_size: int, *,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Val or test pairs in stored order, no augmentation; the last partial batch is included.

  Args:
    source: a `PreparedDataset` (`open_prepared`), its folder, None (the folder `cfg.data.tfds_dir`), a TFDS builder
      holding the split, or a tf.data.Dataset of pair feature dicts.
    split: 'val' or 'test'.
    cfg: training config (or its `data` section); faces are resized to cfg.model.input_size when it has one.
    batch_size: pairs per batch.
    process_index, process_count: a host slice of the pairs (default: all of them).
  Yields:
    {'image0', 'image1': (B, S, S, 3) float32 in [-1, 1], 'label': (B,) int32, 'kind': (B,) str,
     'is_fake0', 'is_fake1': (B,) int32, 'pair_id': (B,) str}.
  """
  source = _source(source, cfg)
  size = _image_size(cfg)
  record_size = _record_size(source, split)
  ds = _read(source, split, shuffle_seed=None, process_index=process_index, process_count=process_count)

  def prepare(f):
    return {'image0': to_model_input(_decode(f['image0'], record_size), size),
            'image1': to_model_input(_decode(f['image1'], record_size), size),
            'label': tf.cast(f['label'], tf.int32), 'kind': f['kind'],
            'is_fake0': tf.cast(f['is_fake0'], tf.int32), 'is_fake1': tf.cast(f['is_fake1'], tf.int32),
            'pair_id': f['pair_id']}

  ds = ds.map(_plain(prepare), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size).prefetch(2)
  for batch in tfds.as_numpy(ds.with_options(_options())):
    batch['kind'] = np.array([k.decode() for k in batch['kind']], dtype=object)
    batch['pair_id'] = np.array([p.decode() for p in batch['pair_id']], dtype=object)
    yield batch
