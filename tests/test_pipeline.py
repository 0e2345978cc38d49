"""The tf.data pipeline on tiny data: device-shaped batches, fake share, resumption, host slicing, pairs.

Data come from a tiny in-test TFDS builder with jaxface_faces' two configs (faces, pairs; 56x56 faces), read through a
PreparedDataset, or from an in-memory tf.data.Dataset of the same feature dicts; the real builder is not needed.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from jaxface.data import pipeline

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

SIZE = 56
NUM_PEOPLE, PER_PERSON, NUM_FAKES = 8, 4, 8   # 32 real photos + 8 recorded fakes = 40 images


def _face(index: int) -> np.ndarray:
  rng = np.random.RandomState(index)
  ys, xs = np.mgrid[0:SIZE, 0:SIZE] / SIZE
  base = 60 + 120 * np.stack([xs, ys, 1 - xs], -1) * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 10, (SIZE, SIZE, 3))
  return np.clip(base, 0, 255).astype(np.uint8)


def _train_records():
  for i in range(NUM_PEOPLE * PER_PERSON + NUM_FAKES):
    fake = i >= NUM_PEOPLE * PER_PERSON
    person = (i - NUM_PEOPLE * PER_PERSON) % NUM_PEOPLE if fake else i // PER_PERSON
    yield f'{i:04d}', {
        'image': _face(i), 'label': person, 'person_id': f'{person:08d}', 'is_fake': int(fake),
        'landmarks': np.zeros((5, 2), np.float32), 'face_score': 1.0, 'source': f'{person:08d}/{i}.jpg'}


_KINDS = ['same', 'different', 'own_fake', 'other_fake', '']


def _pair_records(count: int):
  for i in range(count):
    yield f'{i:08d}', {
        'pair_id': f'{i:08d}', 'image0': _face(100 + i), 'image1': _face(200 + i), 'label': int(i % 5 == 0),
        'kind': _KINDS[i % 5], 'is_fake0': 0, 'is_fake1': int(i % 5 in (2, 3)), 'source0': 'a', 'source1': 'b'}


class PipelineTestFaces(tfds.core.GeneratorBasedBuilder):
  """jaxface_faces' two configs at 56x56: faces (40 train images) and pairs (5 val pairs)."""
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='faces'), tfds.core.BuilderConfig(name='pairs')]

  def _info(self):
    face = lambda: tfds.features.Image(shape=(SIZE, SIZE, 3), encoding_format='jpeg')
    if self.builder_config.name == 'faces':
      features = {'image': face(), 'label': np.int64, 'person_id': tfds.features.Text(), 'is_fake': np.int64,
                  'landmarks': tfds.features.Tensor(shape=(5, 2), dtype=np.float32), 'face_score': np.float32,
                  'source': tfds.features.Text()}
    else:
      features = {'pair_id': tfds.features.Text(), 'image0': face(), 'image1': face(), 'label': np.int64,
                  'kind': tfds.features.Text(), 'is_fake0': np.int64, 'is_fake1': np.int64,
                  'source0': tfds.features.Text(), 'source1': tfds.features.Text()}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    if self.builder_config.name == 'faces':
      return {'train': self._generate_examples(_train_records())}
    return {'val': self._generate_examples(_pair_records(5))}

  def _generate_examples(self, records):
    yield from records


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """A PreparedDataset over the two configs, as prepared.open_prepared gives one."""
  out = tmp_path_factory.mktemp('tfds')
  builders = {}
  for config in ('faces', 'pairs'):
    builders[config] = PipelineTestFaces(config=config, data_dir=str(out))
    builders[config].download_and_prepare()
  return pipeline.PreparedDataset(tfds_dir=out, builders=builders, metadata={'num_classes': NUM_PEOPLE})


def _memory_dataset() -> tf.data.Dataset:
  records = [r for _, r in _train_records()]
  return tf.data.Dataset.from_tensor_slices({
      'image': np.stack([tf.io.encode_jpeg(r['image'], quality=95).numpy() for r in records]),
      'label': np.array([r['label'] for r in records], np.int64),
      'is_fake': np.array([r['is_fake'] for r in records], np.int64)})


def _config(batch_size=8, fake_share=0.5, pseudo_share=0.25, image_size=SIZE, shuffle_buffer=16):
  import ml_collections
  cfg = ml_collections.ConfigDict({'batch_size': batch_size})
  cfg.data = pipeline.default_data_config()
  cfg.model = ml_collections.ConfigDict({'input_size': image_size})
  cfg.data.fake_share = fake_share
  cfg.data.pseudo_fakes.share = pseudo_share
  cfg.data.shuffle_buffer = shuffle_buffer
  cfg.data.parallel_calls = 2
  for name in ('blur', 'downscale', 'jpeg'):  # exercise every augmentation
    cfg.data.augment[name] = 0.5
  return cfg


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_batch_shapes_fake_share_and_id_mask(dataset):
  cfg = _config(batch_size=16, fake_share=0.5, pseudo_share=0.25, image_size=32)
  batches = _take(pipeline.train_dataset(dataset, cfg, num_devices=2, process_index=0, process_count=1), 6)
  batch = batches[0]
  assert set(batch) == {'image', 'label', 'is_fake', 'id_mask'}
  assert batch['image'].shape == (2, 8, 32, 32, 3) and batch['image'].dtype == np.float32
  assert batch['image'].min() >= -1.0 and batch['image'].max() <= 1.0 and batch['image'].std() > 0.05
  for key, dtype in (('label', np.int32), ('is_fake', np.int32), ('id_mask', np.float32)):
    assert batch[key].shape == (2, 8) and batch[key].dtype == dtype
  assert ((0 <= batch['label']) & (batch['label'] < NUM_PEOPLE)).all()
  is_fake = np.concatenate([b['is_fake'].ravel() for b in batches])
  id_mask = np.concatenate([b['id_mask'].ravel() for b in batches])
  assert abs(is_fake.mean() - 0.5) < 0.12, is_fake.mean()
  np.testing.assert_array_equal(id_mask, 1.0 - is_fake)  # fakes and pseudo-fakes never count for identity


def test_pseudo_fakes_fill_the_share_without_recorded_fakes():
  real_only = _memory_dataset().filter(lambda f: f['is_fake'] == 0)
  cfg = _config(batch_size=16, fake_share=0.3, pseudo_share=0.1)
  batches = _take(pipeline.train_dataset(real_only, cfg, num_devices=1, process_index=0, process_count=1), 6)
  assert abs(np.mean([b['is_fake'].mean() for b in batches]) - 0.3) < 0.1


def test_natural_share_without_pseudo_fakes():
  cfg = _config(batch_size=20, fake_share=None, pseudo_share=0.0)
  batches = _take(pipeline.train_dataset(_memory_dataset(), cfg, num_devices=1, process_index=0, process_count=1), 4)
  share = np.mean([b['is_fake'].mean() for b in batches])
  assert abs(share - NUM_FAKES / 40) < 0.1, share  # natural share: 8 of 40


def test_resume_from_step_gives_the_same_batches(dataset):
  cfg = _config(batch_size=8)
  fresh = _take(pipeline.train_dataset(dataset, cfg, num_devices=2, process_index=0, process_count=1), 8)
  resumed = _take(pipeline.train_dataset(dataset, cfg, num_devices=2, start_step=5, process_index=0,
                                         process_count=1), 3)
  for a, b in zip(fresh[5:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # Later epochs are shuffled anew: 8 batches of 8 cover 40 examples more than once, in a different order.
  assert not np.array_equal(fresh[0]['label'], fresh[5]['label'])


def test_hosts_get_disjoint_examples(dataset):
  # No pseudo-fakes and no augmentation randomness that could hide identity: compare the labels+image sums.
  cfg = _config(batch_size=20, fake_share=None, pseudo_share=0.0)
  for name in ('flip', 'crop_scale', 'color', 'blur', 'downscale', 'jpeg'):
    cfg.data.augment[name] = 0.0
  seen = []
  for host in range(2):
    batch = next(pipeline.train_dataset(dataset, cfg, num_devices=1, process_index=host, process_count=2))
    # 20 examples per host slice, batch of 10 per host: one epoch of the slice, each example once.
    keys = {(int(l), round(float(im.sum()), 1)) for l, im in zip(batch['label'][0], batch['image'][0])}
    assert len(keys) == 10
    seen.append(keys)
  assert not seen[0] & seen[1]


def test_data_shards_make_the_batch_independent_of_the_process_layout(dataset):
  """data.num_shards=2: one process with two devices gets, device by device, what two processes with one device each
  get, from the start and on resuming; the shards are disjoint slices of the split."""
  cfg = _config(batch_size=8, fake_share=0.5, pseudo_share=0.25)
  cfg.data.num_shards = 2
  for start in (0, 3):
    one = _take(pipeline.train_dataset(dataset, cfg, num_devices=2, start_step=start, process_index=0,
                                       process_count=1), 3)
    hosts = [_take(pipeline.train_dataset(dataset, cfg, num_devices=1, start_step=start, process_index=i,
                                          process_count=2), 3) for i in range(2)]
    for step, batch in enumerate(one):
      for key, value in batch.items():
        assert value.shape[:2] == (2, 4)
        np.testing.assert_array_equal(value, np.concatenate([hosts[0][step][key], hosts[1][step][key]]), err_msg=key)
  cfg.data.num_shards = 3
  with pytest.raises(ValueError, match='num_shards=3 must be a multiple of the 2 processes'):
    pipeline.train_dataset(dataset, cfg, num_devices=1, process_index=0, process_count=2)


def test_pairs_dataset(dataset):
  cfg = _config(image_size=SIZE)
  batches = list(pipeline.pairs_dataset(dataset, 'val', cfg, batch_size=2))
  assert [len(b['pair_id']) for b in batches] == [2, 2, 1]  # the last partial batch is kept
  # TFDS stores examples in key-hash order; each pair keeps its own fields.
  got = {p: (k, l, f) for b in batches for p, k, l, f in zip(b['pair_id'], b['kind'], b['label'], b['is_fake1'])}
  assert got == {f'{i:08d}': (_KINDS[i % 5], int(i % 5 == 0), int(i % 5 in (2, 3))) for i in range(5)}
  first = batches[0]
  assert first['image0'].shape == (2, SIZE, SIZE, 3) and first['image0'].dtype == np.float32
  assert first['label'].dtype == np.int32 and first['is_fake0'].tolist() == [0, 0]
  # No augmentation: the model input is the stored (JPEG-decoded) face scaled to [-1, 1].
  stored = next(iter(dataset.as_dataset('val', shuffle_files=False)))['image0'].numpy()
  np.testing.assert_allclose(first['image0'][0], stored / 127.5 - 1.0, atol=1e-6)


def test_bad_config_is_rejected():
  cfg = _config(fake_share=0.1, pseudo_share=0.2)
  with pytest.raises(ValueError, match='fake_share'):
    next(pipeline.train_dataset(_memory_dataset(), cfg, num_devices=1, process_index=0, process_count=1))
  cfg = _config(batch_size=10)
  with pytest.raises(ValueError, match='batch_size'):
    next(pipeline.train_dataset(_memory_dataset(), cfg, num_devices=4, process_index=0, process_count=1))


def test_every_data_config_field_is_read_by_the_code_and_the_dead_ones_are_gone():
  """A field nothing reads is a setting that silently does nothing: each one of config.data must be read somewhere in
  jaxface/ (as `.name`, `['name']` or `get('name'...)`), outside the file that defines it."""
  import ast  # pylint: disable=import-outside-toplevel
  package = pathlib.Path(pipeline.__file__).resolve().parents[1]
  read = set()
  for path in package.rglob('*.py'):
    if path.name == 'data_config.py':
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Attribute):
        read.add(node.attr)
      elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        read.add(node.value)

  def fields(config, prefix=''):
    for key, value in config.items():
      yield prefix + key, key
      if hasattr(value, 'items'):
        yield from fields(value, f'{prefix}{key}.')

  c = pipeline.default_data_config()
  unread = [name for name, key in fields(c) if key not in read]
  assert not unread, f'config.data fields no code reads: {unread}'
  for dead in ('image_size', 'seed'):  # one image size (config.model.input_size), one seed (config.seed)
    assert dead not in c
  assert c.pseudo_fakes.share <= c.fake_share


@pytest.mark.parametrize('size', [112, 56])
def test_the_tf_and_jax_model_inputs_are_twins(size):
  """Training feeds the model through pipeline.to_model_input (TF), inference through inference.to_model_input (JAX):
  the same aligned faces must give the same input, or a model is scored on inputs it never trained on."""
  from jaxface import inference  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(size)
  faces = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
  faces[0] = np.clip(np.indices((112, 112)).sum(0) % 2 * 255, 0, 255)[..., None]  # a 1-pixel checkerboard: resize-hard
  theirs = np.stack([pipeline.to_model_input(tf.constant(face), size).numpy() for face in faces])
  ours = np.asarray(inference.to_model_input(faces, size))
  assert ours.shape == theirs.shape == (3, size, size, 3)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
  assert float(np.abs(ours).max()) <= 1.0 and float(ours.std()) > 0.1  # in range, and not a constant image


def test_open_prepared_reads_a_prepared_folder_and_edits_no_config(tmp_path):
  from jaxface.config import ConfigError
  from jaxface.data import builder, prepared, sources, synthetic
  synthetic.generate(tmp_path / 'data', people=4, photos_per_person=3, test_pairs=4, size=48)
  builder.prepare(tmp_path / 'data', tmp_path / 'tfds', builder.BuildOptions(aligner='none', val_fraction=0.0,
                                                                              progress=False))
  cfg = _config(batch_size=4, image_size=SIZE)
  cfg.data.source, cfg.data.tfds_dir = 'tfds', str(tmp_path / 'tfds')
  cfg.data.aligner, cfg.data.aligner_path = 'mtcnn', 'weights.pt'
  before = cfg.to_json()
  dataset = prepared.open_prepared(sources.training_tfds_dir(cfg.data))
  assert cfg.to_json() == before  # reading changes nothing; a training run records the aligner itself
  assert (dataset.num_classes, dataset.num_train_examples, dataset.splits) == (4, 12, {'train': 12, 'test': 4})
  assert dataset.aligner['name'] == 'none' and dataset.aligner['max_photo_side'] == 2048
  assert sources.aligner_settings(dataset) == {'tfds_dir': str(tmp_path / 'tfds'), 'aligner': 'none',
                                               'aligner_path': '', 'max_photo_side': 2048}
  batch = next(pipeline.train_dataset(dataset, cfg, num_devices=1, process_index=0, process_count=1))
  assert batch['image'].shape == (1, 4, SIZE, SIZE, 3)
  by_path = list(pipeline.pairs_dataset(str(tmp_path / 'tfds'), 'test', cfg, batch_size=3))
  by_config = list(pipeline.pairs_dataset(None, 'test', cfg, batch_size=3))
  assert [len(b['pair_id']) for b in by_path] == [len(b['pair_id']) for b in by_config] == [3, 1]
  with pytest.raises(ConfigError, match='the val split is empty'):
    next(pipeline.pairs_dataset(dataset, 'val', cfg, batch_size=3))
  for source, tfds_dir, match in (('tfds', '', 'config.data.tfds_dir is empty'),
                                  ('elsewhere', 'x', "config.data.source='elsewhere': expected synthetic or tfds"),
                                  ('tfds', str(tmp_path / 'none'), 'no prepared jaxface_faces dataset here')):
    cfg.data.source, cfg.data.tfds_dir = source, tfds_dir
    with pytest.raises(ConfigError, match=match) as info:
      prepared.open_prepared(sources.training_tfds_dir(cfg.data))
    assert '\n' not in str(info.value)
