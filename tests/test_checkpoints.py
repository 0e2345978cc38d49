"""Orbax checkpoints: a full training state round-trips, and inference loads from a workdir, best/ or one step."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from jaxface import checkpoints
from jaxface.models.face_model import build_model


def _config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      arch='ir_18', width=0.125, input_size=56, embedding_dim=64, dropout=0.0, fake_head='features',
      dtype='float32', bn_axis_name=None))
  return config


def _variables(config, seed=0):
  model = build_model(config.model)
  images = np.zeros((1, 56, 56, 3), np.float32)
  return model, model.init(jax.random.PRNGKey(seed), images, train=False)


def _embed(model, variables, images):
  return np.asarray(model.apply(variables, images, train=False)['embedding'])


def test_training_state_round_trip_and_inference(tmp_path):
  config = _config()
  model, variables = _variables(config)
  state = {'step': np.int32(7), 'params': {'model': variables['params'], 'head': {'kernel': np.ones((64, 5))}},
           'batch_stats': variables['batch_stats'], 'rng': np.asarray(jax.random.PRNGKey(3))}
  checkpoints.save_config(tmp_path, config)
  manager = checkpoints.train_manager(tmp_path, save_every=1, keep=2)
  checkpoints.save(manager, 7, state, {'step': 7, 'scoring': {'fuse_strength': 2.0, 'threshold': 0.25}}, force=True)
  manager.wait_until_finished()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)
  restored, meta, step = checkpoints.restore(manager, abstract)
  manager.close()
  assert step == 7 and meta['step'] == 7
  jax.tree.map(np.testing.assert_array_equal, restored, state)

  images = np.random.default_rng(0).uniform(-1, 1, (2, 56, 56, 3)).astype(np.float32)
  for path in (tmp_path, tmp_path / 'checkpoints', tmp_path / 'checkpoints' / '7'):
    loaded_config, loaded, scoring = checkpoints.load_inference(path)
    assert loaded_config.model.arch == 'ir_18'
    assert scoring == {'fuse_strength': 2.0, 'threshold': 0.25}
    np.testing.assert_array_equal(_embed(model, loaded, images), _embed(model, variables, images))


def test_best_checkpoint_is_preferred(tmp_path):
  config = _config()
  model, latest = _variables(config, seed=0)
  _, best_vars = _variables(config, seed=1)
  checkpoints.save_config(tmp_path, config)
  manager = checkpoints.train_manager(tmp_path, save_every=1, keep=1)
  checkpoints.save(manager, 9, {'step': np.int32(9), 'params': {'model': latest['params']},
                                'batch_stats': latest['batch_stats']}, {'step': 9}, force=True)
  manager.wait_until_finished()
  manager.close()
  best = checkpoints.best_manager(tmp_path)
  checkpoints.save(best, 4, dict(best_vars), {'step': 4, 'scoring': {'fuse_strength': 0.5, 'threshold': 0.1}},
                   force=True)
  best.close()
  _, loaded, scoring = checkpoints.load_inference(tmp_path)
  images = np.random.default_rng(1).uniform(-1, 1, (2, 56, 56, 3)).astype(np.float32)
  np.testing.assert_array_equal(_embed(model, loaded, images), _embed(model, best_vars, images))
  assert scoring['fuse_strength'] == 0.5


def test_missing_checkpoint_is_one_line(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='checkpoint not found'):
    checkpoints.load_inference(tmp_path / 'nothing')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(checkpoints.CheckpointError, match='not a jaxface checkpoint'):
    checkpoints.load_inference(tmp_path / 'empty')
