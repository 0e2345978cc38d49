"""Serving exports (jaxface.export, jaxface.serving): ONNX in onnxruntime and the TF SavedModel against JAX.

Tiny random-weight models (an IR-18 laid out as configs/default.py, and a MobileFaceNet with ImageNet input norm,
both with the 'traces' fake head, at reduced width) are exported and checked always; the real weights (the converted
MobileFaceNet from ../shared/weights, and the trained workdirs under runs/ when they exist) skip with a message.
Tolerances are the issue's: max |diff| of the unit embedding <= 1e-4, of the fake logit <= 1e-3.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from jaxface import checkpoints, export, scoring
from jaxface.inference import build_inference_model, compiled_forward
from jaxface.testing import random_variables
from jaxface.verify import FaceVerifier
from jaxface.verify import main as verify_main

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
EMBEDDING_TOL, LOGIT_TOL = 1e-4, 1e-3
STRENGTH, THRESHOLD = 0.5, 0.2

TINY = {
    'ir': dict(arch='ir_18', width=0.125, input_size=112, embedding_dim=32, dropout=0.0, fake_head='traces',
               space_to_depth=True, dtype='float32', bn_axis_name='batch'),
    'mobilefacenet': dict(arch='mobilefacenet', width=0.25, input_size=112, embedding_dim=128, dropout=0.0,
                          fake_head='traces', input_norm='imagenet', dtype='float32', bn_axis_name='batch'),
}

# Runs in a fresh interpreter: loads a SavedModel with TensorFlow alone and fails if anything imported jaxface.
LOAD_WITH_TF_ONLY = """
import sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
out = model.signatures['serving_default'](faces=tf.constant(np.load(sys.argv[2])))
np.savez(sys.argv[3], embedding=out['embedding'].numpy(), fake_logit=out['fake_logit'].numpy(),
         metadata=model.metadata.numpy())
assert not [m for m in sys.modules if m.split('.')[0] == 'jaxface'], 'jaxface was imported'
"""


def _faces(count: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (1, 112, 112, 3))
  return np.clip(base + rng.integers(-60, 60, (count, 112, 112, 3)), 0, 255).astype(np.uint8)


def _workdir(path: pathlib.Path, model_config: dict, flip_tta: bool | None = None) -> pathlib.Path:
  """A best checkpoint of a random model in the layout training writes (scoring calibrated with flip TTA or not;
  None: a checkpoint from before config.flip_tta, which records nothing)."""
  config = ml_collections.ConfigDict({'model': dict(model_config), 'data': {'aligner': 'mtcnn', 'aligner_path': ''}})
  checkpoints.save_config(path, config)
  manager = checkpoints.best_manager(path)
  variables = random_variables(build_inference_model(config.model))
  scoring_meta = {'fuse_strength': STRENGTH, 'threshold': THRESHOLD}
  if flip_tta is not None:
    scoring_meta['flip_tta'] = flip_tta
  checkpoints.save(manager, 3, variables, {'step': 3, 'scoring': scoring_meta}, force=True)
  manager.close()
  return path


def _jax_outputs(checkpoint, faces: np.ndarray, flip_tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """The JAX path's (unit embedding, fake logit): what FaceVerifier runs, normalised."""
  config, variables, _ = checkpoints.load_inference(checkpoint)
  model = build_inference_model(config.model)
  embedding, fake_logit = compiled_forward(model, flip_tta, int(config.model.get('input_size', 112)))(variables, faces)
  return np.asarray(scoring.l2_normalize(embedding)), np.asarray(fake_logit)


def _onnx_outputs(path, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  import onnxruntime  # pylint: disable=import-outside-toplevel
  session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
  embedding, fake_logit = session.run(None, {export.INPUT_NAME: faces})
  return embedding, fake_logit


def _savedmodel_outputs(path, faces: np.ndarray, tmp: pathlib.Path) -> tuple[np.ndarray, np.ndarray, dict]:
  """Runs the SavedModel in a fresh interpreter with TensorFlow only (it fails there if jaxface gets imported)."""
  np.save(tmp / 'faces.npy', faces)
  done = subprocess.run([sys.executable, '-c', LOAD_WITH_TF_ONLY, str(path), str(tmp / 'faces.npy'),
                         str(tmp / 'out.npz')], cwd=tmp, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  out = np.load(tmp / 'out.npz')
  return out['embedding'], out['fake_logit'], json.loads(out['metadata'].item())


def _max_diffs(ours, theirs) -> tuple[float, float]:
  return float(np.abs(ours[0] - theirs[0]).max()), float(np.abs(ours[1] - theirs[1]).max())


# MobileFaceNet's export (depthwise routes) takes minutes to convert and compile: end-to-end lane.
@pytest.fixture(scope='module', params=['ir', pytest.param('mobilefacenet', marks=pytest.mark.slow)])
def exported(request, tmp_path_factory):
  """(arch key, workdir, model.onnx, SavedModel folder) of a tiny random model."""
  pytest.importorskip('jax2onnx', reason='ONNX export needs the export extra: pip install -e ".[export]"')
  root = tmp_path_factory.mktemp(f'export_{request.param}')
  workdir = _workdir(root / 'run', TINY[request.param])
  onnx_path = export.export(workdir, 'onnx', root / 'model.onnx')
  savedmodel = export.export(workdir, 'savedmodel', root / 'savedmodel')
  return request.param, workdir, onnx_path, savedmodel


def test_onnx_matches_jax_at_any_batch(exported):
  arch, workdir, onnx_path, _ = exported
  for count in (1, 5):
    faces = _faces(count, seed=count)
    embedding_diff, logit_diff = _max_diffs(_onnx_outputs(onnx_path, faces), _jax_outputs(workdir, faces))
    print(f'\n{arch} onnx batch {count}: max |diff| embedding {embedding_diff:.2e}, fake logit {logit_diff:.2e}')
    assert embedding_diff <= EMBEDDING_TOL and logit_diff <= LOGIT_TOL


def test_onnx_metadata_says_what_a_server_needs(exported):
  import onnx  # pylint: disable=import-outside-toplevel
  arch, _, onnx_path, _ = exported
  model = onnx.load(str(onnx_path))
  meta = {p.key: p.value for p in model.metadata_props}
  assert meta['embedding_size'] == str(TINY[arch]['embedding_dim'])
  assert (float(meta['fuse_strength']), float(meta['threshold'])) == (STRENGTH, THRESHOLD)
  assert meta['aligner'] == 'mtcnn' and meta['flip_tta'] == 'false' and meta['arch'] == TINY[arch]['arch']
  assert meta['jaxface_version'] == __import__('jaxface').__version__ and 'uint8' in meta['input_format']
  (face_input,) = model.graph.input
  dims = face_input.type.tensor_type.shape.dim
  assert face_input.name == 'faces' and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [112, 112, 3]
  assert face_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
  assert [o.name for o in model.graph.output] == ['embedding', 'fake_logit']


def test_savedmodel_matches_jax_and_loads_without_jaxface(exported, tmp_path):
  arch, workdir, _, savedmodel = exported
  faces = _faces(3, seed=7)
  embedding, fake_logit, meta = _savedmodel_outputs(savedmodel, faces, tmp_path)
  embedding_diff, logit_diff = _max_diffs((embedding, fake_logit), _jax_outputs(workdir, faces))
  print(f'\n{arch} savedmodel: max |diff| embedding {embedding_diff:.2e}, fake logit {logit_diff:.2e}')
  assert embedding_diff <= EMBEDDING_TOL and logit_diff <= LOGIT_TOL
  assert meta['embedding_size'] == str(TINY[arch]['embedding_dim']) and meta['aligner'] == 'mtcnn'
  assert json.loads((savedmodel / 'assets.extra' / export.METADATA_FILE).read_text()) == meta


def test_verifier_on_the_onnx_file_decides_as_the_checkpoint(exported, tmp_path, monkeypatch):
  _, workdir, onnx_path, _ = exported
  ours, theirs = FaceVerifier.load(onnx_path), FaceVerifier.load(workdir)
  assert (ours.fuse_strength, ours.threshold, ours.aligner_name) == (STRENGTH, THRESHOLD, 'mtcnn')
  faces = _faces(6, seed=11)
  for a, b in ((0, 1), (2, 3), (4, 5), (0, 0)):
    mine, reference = ours.compare(faces[a], faces[b], aligned=True), theirs.compare(faces[a], faces[b], aligned=True)
    assert mine.same_person == reference.same_person
    np.testing.assert_allclose([mine.similarity, mine.cosine, mine.p_fake_a, mine.p_fake_b],
                               [reference.similarity, reference.cosine, reference.p_fake_a, reference.p_fake_b],
                               atol=1e-4)
  np.testing.assert_allclose(ours.embed(faces, aligned=True), theirs.embed(faces, aligned=True), atol=EMBEDDING_TOL)
  # The CLI on aligned crops: the same exit code (0 match, 1 no match) from the file and from the checkpoint.
  from PIL import Image  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv('JAXFACE_XLA_CACHE', '0')
  paths = []
  for index in (0, 1):
    paths.append(str(tmp_path / f'{index}.png'))
    Image.fromarray(faces[index]).save(paths[-1])
  assert verify_main([*paths, '--checkpoint', str(onnx_path), '--aligned']) == \
      verify_main([*paths, '--checkpoint', str(workdir), '--aligned'])


def test_evaluate_scores_with_the_onnx_verifier(exported, synthetic_data_dir):
  """jaxface.evaluate's folder scoring (aligned 112x112 synthetic photos) gives the checkpoint's scores."""
  from jaxface import evaluate  # pylint: disable=import-outside-toplevel
  _, workdir, onnx_path, _ = exported
  ours = evaluate.score_folder(FaceVerifier.load(onnx_path, aligner='none'), synthetic_data_dir, progress=False)
  theirs = evaluate.score_folder(FaceVerifier.load(workdir, aligner='none'), synthetic_data_dir, progress=False)
  assert list(ours.pair_ids) == list(theirs.pair_ids) and len(ours.pair_ids) > 0
  np.testing.assert_allclose(ours.cosine, theirs.cosine, atol=1e-4)
  np.testing.assert_allclose(ours.fused(STRENGTH), theirs.fused(STRENGTH), atol=1e-4)


def test_evaluate_cli_path_takes_an_onnx_file(exported, synthetic_data_dir, tmp_path):
  """`python -m jaxface.evaluate --checkpoint model.onnx` (evaluate.evaluate) scores as the checkpoint does."""
  from jaxface import evaluate  # pylint: disable=import-outside-toplevel
  _, workdir, onnx_path, _ = exported
  ours = evaluate.evaluate(onnx_path, tmp_path / 'onnx', data_dir=synthetic_data_dir, aligner='none', progress=False)
  theirs = evaluate.evaluate(workdir, tmp_path / 'jax', data_dir=synthetic_data_dir, aligner='none', progress=False)
  assert ours['pairs'] == theirs['pairs'] > 0 and ours['fuse_strength'] == theirs['fuse_strength']
  assert abs(ours['fused']['eer'] - theirs['fused']['eer']) <= 1e-6
  assert (tmp_path / 'onnx' / 'submission.csv').read_text().count('\n') == ours['pairs'] + 1


def test_flip_tta_is_baked_into_the_graph(tmp_path):
  pytest.importorskip('jax2onnx', reason='ONNX export needs the export extra: pip install -e ".[export]"')
  workdir = _workdir(tmp_path / 'run', TINY['ir'])
  onnx_path = export.export(workdir, 'onnx', tmp_path / 'flip.onnx', flip_tta=True)
  faces = _faces(2, seed=5)
  embedding_diff, logit_diff = _max_diffs(_onnx_outputs(onnx_path, faces), _jax_outputs(workdir, faces, True))
  assert embedding_diff <= EMBEDDING_TOL and logit_diff <= LOGIT_TOL
  assert FaceVerifier.load(onnx_path, flip_tta=True).flip_tta
  plain = export.export(workdir, 'onnx', tmp_path / 'plain.onnx')
  with pytest.raises(checkpoints.CheckpointError, match='--flip-tta') as error:
    FaceVerifier.load(plain, flip_tta=True)
  assert '\n' not in str(error.value)


def test_errors_are_one_line(tmp_path, capsys):
  assert export.main(['--checkpoint', str(tmp_path / 'nothing'), '--format', 'onnx', '--out', str(tmp_path / 'x')]) == 2
  message = capsys.readouterr().err.strip()
  assert message.startswith('error:') and 'nothing' in message and '\n' not in message
  with pytest.raises(checkpoints.CheckpointError, match='no such ONNX file'):
    FaceVerifier.load(tmp_path / 'missing.onnx')
  pytest.importorskip('onnx')
  import onnx  # pylint: disable=import-outside-toplevel
  from onnx import helper  # pylint: disable=import-outside-toplevel
  graph = helper.make_graph([helper.make_node('Identity', ['x'], ['y'])], 'g',
                            [helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1])],
                            [helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1])])
  onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]), str(tmp_path / 'other.onnx'))
  with pytest.raises(checkpoints.CheckpointError, match='not a jaxface export') as error:
    FaceVerifier.load(tmp_path / 'other.onnx')
  assert '\n' not in str(error.value)


def test_portable_routes_leave_no_platform_index():
  from jaxface.ops import routes  # pylint: disable=import-outside-toplevel
  from jaxface.ops.batchnorm import channel_sum  # pylint: disable=import-outside-toplevel
  from jaxface.ops.depthwise import depthwise_conv2d  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x, kernel = rng.normal(size=(2, 9, 9, 8)).astype(np.float32), rng.normal(size=(3, 3, 1, 8)).astype(np.float32)
  # A fresh function per trace: jit and make_jaxpr cache traces by function, and the block is read at trace time.
  fn = lambda: lambda x, k: (depthwise_conv2d(x, k, 2, 1), channel_sum(x))
  assert 'platform_index' in str(jax.make_jaxpr(fn())(x, kernel))
  with routes.portable():
    jaxpr = str(jax.make_jaxpr(fn())(x, kernel))
    portable = jax.jit(fn())(x, kernel)
  assert not routes.is_portable()
  assert 'platform_index' not in jaxpr and 'feature_group_count=8' in jaxpr
  for ours, theirs in zip(portable, jax.jit(fn())(x, kernel)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_import_jaxface_and_export_stay_lazy():
  """`import jaxface` and the export/serving modules import neither onnxruntime nor TensorFlow nor the converters."""
  code = ('import sys, jaxface, jaxface.export, jaxface.serving, jaxface.ops.routes; '
          "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'onnxruntime', 'tensorflow', 'jax2onnx', 'onnx', 'torch'})))")
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=True)
  assert done.stdout.strip() == ''


# ----------------------------------------------------------------------------------------------------------------------
# Real weights and real faces (skip when ../shared or runs/ are absent).


def _real_faces(count: int = 12) -> np.ndarray:
  """Real photos from realfaces-dev's train split (92x112 LFW-style crops), padded to square and resized to 112."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  train = SHARED / 'data' / 'realfaces-dev' / 'train'
  if not (train / 'meta.json').is_file():
    pytest.skip(f'{train} not found (real faces live in ../shared/data/realfaces-dev)')
  names = sorted(json.loads((train / 'meta.json').read_text()))[:count]
  faces = []
  for name in names:
    image = Image.open(train / 'images' / name).convert('RGB')
    side = max(image.size)
    square = Image.new('RGB', (side, side))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    faces.append(np.asarray(square.resize((112, 112), Image.BICUBIC)))
  return np.stack(faces)


def _check_real(checkpoint: pathlib.Path, tmp_path: pathlib.Path) -> None:
  faces = _real_faces()
  reference = _jax_outputs(checkpoint, faces)
  onnx_path = export.export(checkpoint, 'onnx', tmp_path / 'model.onnx')
  savedmodel = export.export(checkpoint, 'savedmodel', tmp_path / 'savedmodel')
  for name, outputs in (('onnx', _onnx_outputs(onnx_path, faces)),
                        ('savedmodel', _savedmodel_outputs(savedmodel, faces, tmp_path)[:2])):
    embedding_diff, logit_diff = _max_diffs(outputs, reference)
    print(f'\n{checkpoint.name} {name}, {len(faces)} real faces: max |diff| embedding {embedding_diff:.2e}, '
          f'fake logit {logit_diff:.2e}')
    assert embedding_diff <= EMBEDDING_TOL and logit_diff <= LOGIT_TOL
  ours, theirs = FaceVerifier.load(onnx_path, aligner='none'), FaceVerifier.load(checkpoint, aligner='none')
  for a, b in zip(range(0, len(faces), 2), range(1, len(faces), 2)):
    mine, jax_result = ours.compare(faces[a], faces[b], aligned=True), theirs.compare(faces[a], faces[b], aligned=True)
    assert mine.same_person == jax_result.same_person and abs(mine.similarity - jax_result.similarity) <= 1e-4


@pytest.mark.slow
def test_real_mobilefacenet_weights(tmp_path):
  """The pretrained MobileFaceNet converted from ../shared/weights (as a fresh clone's CI can), on real faces."""
  pytest.importorskip('jax2onnx', reason='ONNX export needs the export extra: pip install -e ".[export]"')
  pytest.importorskip('torch', reason='reading the .pt weights needs torch (the preprocess extra)')
  from jaxface import convert  # pylint: disable=import-outside-toplevel
  weights = SHARED / 'weights' / 'mobilefacenet_ms1m.pt'
  if not weights.is_file():
    pytest.skip(f'{weights} not found (the real MobileFaceNet weights live in ../shared/weights)')
  converted = tmp_path / 'mbf_ms1m'
  assert convert.main([str(weights), '--arch', 'mobilefacenet', '--out', str(converted)]) == 0
  _check_real(converted, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize('run', ['rt_ir18', 'realfaces_mbf'])
def test_trained_workdirs(run, tmp_path):
  """The trained IR-18 default and fine-tuned MobileFaceNet (both heads) of runs/, where this machine has them."""
  pytest.importorskip('jax2onnx', reason='ONNX export needs the export extra: pip install -e ".[export]"')
  workdir = REPO / 'runs' / run
  if not (workdir / 'config.json').is_file():
    pytest.skip(f'{workdir} not found (a trained workdir; a fresh clone has no runs/)')
  _check_real(workdir, tmp_path)


def test_a_checkpoint_calibrated_with_flip_tta_is_scored_and_exported_with_it(tmp_path):
  flipped = _workdir(tmp_path / 'flipped', TINY['ir'], flip_tta=True)
  assert FaceVerifier.load(flipped).flip_tta and not FaceVerifier.load(flipped, flip_tta=False).flip_tta
  assert not FaceVerifier.load(_workdir(tmp_path / 'plain', TINY['ir'], flip_tta=False)).flip_tta
  assert not FaceVerifier.load(_workdir(tmp_path / 'old', TINY['ir'])).flip_tta
  pytest.importorskip('jax2onnx', reason='ONNX export needs the export extra: pip install -e ".[export]"')
  onnx_path = export.export(flipped, 'onnx', tmp_path / 'flipped.onnx')
  assert FaceVerifier.load(onnx_path).flip_tta
