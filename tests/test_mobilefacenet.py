"""MobileFaceNet: strict conversion of the foamliu state-dict layout, and parity with the independent ONNX export
of the real weights on real aligned faces (skipped when ../shared is absent)."""
import json
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import convert
from jaxface.models.face_model import FaceModel
from jaxface.models.mobilefacenet import MobileFaceNet

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / 'shared'
WEIGHTS = SHARED / 'weights'


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """A state dict in the real file's key layout and torch shapes (plus num_batches_tracked), random values."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda: MobileFaceNet().init(jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3))))
  state = {}
  for path, leaf in flax.traverse_util.flatten_dict(abstract).items():
    key = convert._mobilefacenet_key(path)  # pylint: disable=protected-access
    shape = convert._mobilefacenet_transform(path)[1](leaf.shape)  # pylint: disable=protected-access
    values = rng.normal(size=shape).astype(np.float32) * 0.1
    state[key] = np.abs(values) + 0.5 if key.endswith('running_var') else values
  for key in [k for k in state if k.endswith('running_mean')]:
    state[key.replace('running_mean', 'num_batches_tracked')] = np.array(7)
  return state


def test_converts_its_own_layout_and_keeps_values():
  state = random_state_dict()
  variables, info = convert.convert_mobilefacenet(state, 'random.pt')
  assert info['input_norm'] == 'imagenet' and info['embedding_dim'] == 128
  flat = flax.traverse_util.flatten_dict(variables)
  assert len(flat) == len([k for k in state if not k.endswith('num_batches_tracked')])
  # The 1x1 head layer conv3 (128, 512, 1, 1) becomes a Dense kernel (512, 128).
  dense = [v for p, v in flat.items() if 'conv3' in '/'.join(p) and p[-1] == 'kernel'][0]
  np.testing.assert_array_equal(dense, state['conv3.weight'][:, :, 0, 0].T)


@pytest.mark.parametrize('damage', ['missing', 'extra', 'shape'])
def test_strict_errors_name_the_key(damage):
  state = random_state_dict()
  key = 'features.3.conv.1.weight' if 'features.3.conv.1.weight' in state else sorted(state)[5]
  if damage == 'missing':
    del state[key]
  elif damage == 'extra':
    state['fc.weight'] = np.zeros((2, 2), np.float32)
    key = 'fc.weight'
  else:
    state[key] = state[key][:1]
  with pytest.raises(convert.ConversionError) as error:
    convert.convert_mobilefacenet(state, 'bad.pt')
  message = str(error.value)
  assert '\n' not in message and key in message and 'bad.pt' in message


def test_parity_with_the_pytorch_twin_in_the_real_key_layout():
  """The PyTorch twin (jaxface/torch_reference.py, foamliu's module tree), random weights and statistics, converted
  through the real import path: embeddings agree to < 1e-4 (relative to their scale), in eval mode."""
  torch = pytest.importorskip('torch')
  from jaxface.torch_reference import build_torch_mobilefacenet, randomize  # pylint: disable=import-outside-toplevel
  net = randomize(build_torch_mobilefacenet(), seed=3, batch_size=4)
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  assert set(state) == set(random_state_dict())  # the twin's keys are the real file's
  variables, _ = convert.convert_mobilefacenet(state, 'twin.pt')
  x = np.random.default_rng(0).normal(size=(3, 112, 112, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  with jax.default_matmul_precision('highest'):
    ours, _ = MobileFaceNet().apply(variables, jnp.asarray(x))
  ours = np.asarray(ours)
  error = np.abs(ours - theirs).max() / np.abs(theirs).max()
  print(f'\nPyTorch twin: max |diff| / max |embedding| = {error:.2e}')
  assert error < 1e-4


def _real_file(name: str) -> pathlib.Path:
  path = WEIGHTS / name
  if not path.is_file():
    pytest.skip(f'{path} not found (the real MobileFaceNet weights live in ../shared/weights)')
  return path


def test_real_file_has_the_expected_layout():
  pytest.importorskip('torch')
  state = convert.load_state_dict(_real_file('mobilefacenet_ms1m.pt'))
  assert set(state) == set(random_state_dict())
  variables, _ = convert.convert_mobilefacenet(state, 'mobilefacenet_ms1m.pt')
  assert sum(v.size for v in jax.tree.leaves(variables)) == 1_019_648


@pytest.mark.slow  # MTCNN and onnxruntime on real photos
def test_parity_with_the_onnx_export_on_real_aligned_faces(tmp_path, realfaces_dev_dir):
  ort = pytest.importorskip('onnxruntime')
  pytest.importorskip('torch')
  from jaxface.align.base import make_aligner  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'mbf'
  assert convert.main([str(_real_file('mobilefacenet_ms1m.pt')), '--arch', 'mobilefacenet', '--out', str(out)]) == 0
  train = realfaces_dev_dir / 'train'
  meta = json.loads((train / 'meta.json').read_text())
  names = sorted(k for k, v in meta.items() if v == 0)[:16]
  photos = [np.asarray(Image.open(train / 'images' / n).convert('RGB')) for n in names]
  result = make_aligner('mtcnn', device='cpu').align(photos)
  faces = result.faces[result.found]
  assert len(faces) >= 12
  model = FaceModel(arch='mobilefacenet', embedding_dim=128, fake_head='none', input_norm='imagenet')
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3)))
  variables = convert.graft_backbone(variables, convert.load_converted(out))
  with jax.default_matmul_precision('highest'):
    ours = np.asarray(model.apply(variables, faces.astype(np.float32) / 127.5 - 1.0)['embedding'])
  session = ort.InferenceSession(str(_real_file('mobilefacenet_ms1m.onnx')), providers=['CPUExecutionProvider'])
  mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
  theirs = np.concatenate([
      session.run(None, {'input0': ((f / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)[None]})[0]
      for f in faces])
  cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
  print(f'\n{len(faces)} real faces: min cosine {cosine.min():.7f}, max |diff| {np.abs(ours - theirs).max():.2e}')
  assert cosine.min() >= 0.9999
