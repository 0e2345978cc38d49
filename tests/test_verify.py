"""FaceVerifier on a tiny random FaceModel: scores equal the model's own outputs, fixed-size batches, flip TTA, CLI.

The model is the small CNN at quarter width on 56x56 inputs with numpy-random weights: `model.init` under jit takes
over a minute to compile on a busy 2-core machine, the forward pass a few seconds.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxface import checkpoints, scoring
from jaxface.inference import build_inference_model, to_model_input
from jaxface.testing import random_variables
from jaxface.verify import FaceVerifier, VerifyError, main

STRENGTH, THRESHOLD = 2.0, 0.3


def _config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      arch='small_cnn', width=0.25, input_size=56, embedding_dim=64, dropout=0.0, fake_head='features',
      dtype='float32', bn_axis_name='batch'))  # as trained under pmap; inference must drop the axis
  config.data = ml_collections.ConfigDict(dict(aligner='none', aligner_path=''))
  return config


@pytest.fixture(scope='module')
def tiny():
  """(model, variables) of a tiny random FaceModel."""
  model = build_inference_model(_config().model)
  return model, random_variables(model, 56)


_APPLY = {}


def _faces(count, seed=0, size=112):
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (1, size, size, 3))
  return np.clip(base + rng.integers(-40, 40, (count, size, size, 3)), 0, 255).astype(np.uint8)


def _direct(model, variables, faces):
  """The model's own outputs, (embedding (B, D), fake_logit (B,)), through a separate jit."""
  apply = _APPLY.setdefault(model, jax.jit(lambda v, x: model.apply(v, x, train=False)))
  outputs = apply(variables, to_model_input(faces, 56))
  return np.asarray(outputs['embedding']), np.asarray(outputs['fake_logit'])


def test_compare_equals_model_outputs(tiny):
  model, variables = tiny
  verifier = FaceVerifier(model, variables, {'fuse_strength': STRENGTH, 'threshold': THRESHOLD}, input_size=56,
                          aligner='none', batch_size=8)
  faces = _faces(2)
  result = verifier.compare(faces[0], faces[1])
  embedding, logit = _direct(model, variables, faces)
  p_fake = 1 / (1 + np.exp(-logit.astype(np.float64)))
  cosine = embedding[0] @ embedding[1] / np.linalg.norm(embedding[0]) / np.linalg.norm(embedding[1])
  assert result.cosine == pytest.approx(cosine, abs=1e-5)
  assert (result.p_fake_a, result.p_fake_b) == pytest.approx(tuple(p_fake), abs=1e-5)
  fused = -1 + (1 + cosine) * ((1 - p_fake[0]) * (1 - p_fake[1])) ** STRENGTH
  assert result.similarity == pytest.approx(fused, abs=1e-5)
  assert result.same_person == (result.similarity >= THRESHOLD)
  assert verifier.compare(faces[0], faces[0]).cosine == pytest.approx(1.0, abs=1e-6)


def test_batches_are_padded_to_few_sizes(tiny):
  model, variables = tiny
  verifier = FaceVerifier(model, variables, {'fuse_strength': 1.0, 'threshold': 0.0}, input_size=56, batch_size=4)
  faces = _faces(7, seed=1)
  compiled = verifier.network._forward._cache_size()  # pylint: disable=protected-access
  embeddings, logits = verifier.infer(faces)  # batches of 4 and 3 (padded to 4)
  assert embeddings.shape == (7, 64) and logits.shape == (7,)
  expected_embedding, expected_logit = _direct(model, variables, faces)
  np.testing.assert_allclose(embeddings, expected_embedding, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits, expected_logit, rtol=1e-4, atol=1e-4)
  verifier.infer(faces[:3])  # also padded to 4: no new program
  assert verifier.network._forward._cache_size() <= compiled + 1  # pylint: disable=protected-access
  single, _ = verifier.infer(faces[5:6])  # padded to 1
  np.testing.assert_allclose(single[0], expected_embedding[5], rtol=1e-4, atol=1e-4)
  assert verifier.network._forward._cache_size() <= compiled + 2  # pylint: disable=protected-access
  unit = verifier.embed(list(faces[:2]), aligned=True)
  np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, rtol=1e-5)


def test_flip_tta_fuses_by_norm(tiny):
  model, variables = tiny
  verifier = FaceVerifier(model, variables, {'fuse_strength': 1.0, 'threshold': 0.0}, input_size=56, batch_size=4,
                          flip_tta=True)
  faces = _faces(2, seed=2)
  embeddings, logits = verifier.infer(faces)
  plain, plain_logit = _direct(model, variables, faces)
  mirrored, mirrored_logit = _direct(model, variables, faces[:, :, ::-1])
  np.testing.assert_allclose(embeddings, plain + mirrored, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits, (plain_logit + mirrored_logit) / 2, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(verifier.embed(list(faces)), np.asarray(scoring.flip_fuse(plain, mirrored)),
                             rtol=1e-4, atol=1e-5)


def test_raw_photos_go_through_the_aligner(tiny, tmp_path):
  model, variables = tiny
  verifier = FaceVerifier(model, variables, {'fuse_strength': 1.0, 'threshold': 0.0}, input_size=56,
                          aligner='none', batch_size=4)
  photo = _faces(1, seed=3, size=160)[0][:, 10:150]  # 140 wide, 160 high: not an aligned crop
  path = tmp_path / 'photo.png'
  Image.fromarray(photo).save(path)
  from jaxface.align.base import make_aligner  # pylint: disable=import-outside-toplevel
  aligned = make_aligner('none').align([photo]).faces
  expected, _ = _direct(model, variables, aligned)
  from_path = verifier.embed([path])
  np.testing.assert_allclose(from_path[0], expected[0] / np.linalg.norm(expected[0]), rtol=1e-4, atol=1e-5)
  with pytest.raises(VerifyError, match='not a square aligned face'):
    verifier.embed([photo], aligned=True)
  no_aligner = FaceVerifier(model, variables, {'fuse_strength': 1.0, 'threshold': 0.0}, input_size=56)
  with pytest.raises(VerifyError, match='no aligner'):
    no_aligner.embed([photo])


def test_no_face_found_names_the_photo(tiny):
  pytest.importorskip('torch')
  pytest.importorskip('jaxface.align.mtcnn')
  model, variables = tiny
  verifier = FaceVerifier(model, variables, {'fuse_strength': 1.0, 'threshold': 0.0}, input_size=56,
                          aligner='mtcnn')
  blank = np.full((160, 160, 3), 128, np.uint8)
  with pytest.raises(VerifyError, match='blank.jpg: no face found'):
    verifier.align([blank], names=['blank.jpg'])


@pytest.fixture(scope='module')
def workdir(tiny, tmp_path_factory):
  """A best checkpoint of the tiny model in the layout training writes."""
  _, variables = tiny
  path = tmp_path_factory.mktemp('run')
  checkpoints.save_config(path, _config())
  manager = checkpoints.best_manager(path)
  checkpoints.save(manager, 5, variables, {'step': 5, 'scoring': {'fuse_strength': STRENGTH, 'threshold': THRESHOLD}},
                   force=True)
  manager.close()
  return path


def test_load_from_checkpoint(tiny, workdir):
  model, variables = tiny
  verifier = FaceVerifier.load(workdir)
  assert (verifier.fuse_strength, verifier.threshold, verifier.input_size) == (STRENGTH, THRESHOLD, 56)
  assert verifier.aligner_name == 'none'
  faces = _faces(2, seed=4)
  np.testing.assert_allclose(verifier.infer(faces)[0], _direct(model, variables, faces)[0], rtol=1e-4, atol=1e-4)


def _photo_files(tmp_path):
  faces = _faces(2, seed=5)
  paths = []
  for index, face in enumerate(faces):
    paths.append(tmp_path / f'{"ab"[index]}.png')
    Image.fromarray(face).save(paths[-1])
  return [str(p) for p in paths]


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
  monkeypatch.setenv('JAXFACE_XLA_CACHE', '0')  # the CLI would otherwise keep compiled programs under ~/.cache


def test_cli_exit_codes(workdir, tmp_path, capsys):
  a, b = _photo_files(tmp_path)
  assert main([a, a, '--checkpoint', str(workdir), '--threshold', '-1']) == 0
  out = capsys.readouterr().out
  assert out.startswith('same person: similarity') and 'cosine 1.0000' in out
  assert main([a, b, '--checkpoint', str(workdir), '--threshold', '1.01']) == 1
  assert capsys.readouterr().out.startswith('not the same person: similarity')

  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  assert main([a, str(broken), '--checkpoint', str(workdir)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f'error: {broken}: cannot decode image') and '\n' not in err
  assert main([a, str(tmp_path / 'missing.jpg'), '--checkpoint', str(workdir)]) == 2
  assert 'missing.jpg: no such file' in capsys.readouterr().err
  assert main([a, b, '--checkpoint', str(tmp_path / 'no_run')]) == 2
  assert 'no_run: checkpoint not found' in capsys.readouterr().err


def test_cli_warns_about_generated_photo(tiny, tmp_path, capsys):
  _, variables = tiny
  # A fake head that is sure every photo is generated: the fused score hits -1 and the CLI names the photos.
  params = jax.tree.map(np.array, variables['params'])
  params['fake_head']['logit']['bias'] = np.full_like(params['fake_head']['logit']['bias'], 30.0)
  path = tmp_path / 'faker'
  checkpoints.save_config(path, _config())
  manager = checkpoints.best_manager(path)
  checkpoints.save(manager, 1, {'params': params, 'batch_stats': variables['batch_stats']},
                   {'scoring': {'fuse_strength': STRENGTH, 'threshold': THRESHOLD}}, force=True)
  manager.close()
  a, b = _photo_files(tmp_path)
  assert main([a, a, '--checkpoint', str(path)]) == 1
  out = capsys.readouterr().out
  assert 'similarity -1.0000' in out
  assert f'warning: {a} looks generated (fake probability 1.000)' in out
