"""Tests for jaxface.align: template warp, the none aligner, DFA loading, MTCNN on real photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxface.align import base, template


def _photo_with_landmarks(points: np.ndarray, shape=(300, 400)) -> np.ndarray:
  """A photo with a bright 3x3 dot centred on each integer landmark, on a dark noisy background."""
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 40, shape + (3,), dtype=np.uint8)
  for x, y in np.rint(points).astype(int):
    photo[y - 1:y + 2, x - 1:x + 2] = 255
  return photo


def _dot_centres(face: np.ndarray) -> np.ndarray:
  """Brightness-weighted centre of the dot nearest each template point: (5, 2)."""
  grey = face.astype(np.float64).mean(-1)
  grey = np.where(grey > 128, grey, 0.0)
  ys, xs = np.mgrid[0:face.shape[0], 0:face.shape[1]]
  centres = []
  for tx, ty in template.ARCFACE_TEMPLATE:
    near = (np.abs(xs - tx) < 6) & (np.abs(ys - ty) < 6)
    w = grey * near
    centres.append([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
  return np.array(centres)


@pytest.mark.parametrize('angle,scale', [(0.0, 1.0), (0.35, 1.0), (-0.6, 1.0)])
def test_warp_puts_landmarks_on_template(angle, scale):
  # Landmarks: the template rotated, scaled and moved into a bigger photo.
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  points = np.rint((template.ARCFACE_TEMPLATE - 56) @ rot.T * scale + [210, 140])
  photo = _photo_with_landmarks(points)
  matrix = template.similarity_transform(points, template.ARCFACE_TEMPLATE)
  mapped = template.apply_transform(matrix, points)
  assert np.abs(mapped - template.ARCFACE_TEMPLATE).max() < 1.0
  face = template.warp_face(photo, matrix)
  assert face.shape == (112, 112, 3) and face.dtype == np.uint8
  assert np.abs(_dot_centres(face) - mapped).max() < 1.0


def test_warp_from_large_photo_is_antialiased_and_placed():
  # A 4x larger photo: the warp reduces first; the dots (now 12 px wide) must still land within 1 px.
  points = (template.ARCFACE_TEMPLATE - 56) * 4 + [800, 600]
  rng = np.random.default_rng(1)
  photo = rng.integers(0, 40, (1200, 1600, 3), dtype=np.uint8)
  for x, y in np.rint(points).astype(int):
    photo[y - 6:y + 6, x - 6:x + 6] = 255
  matrix = template.similarity_transform(points, template.ARCFACE_TEMPLATE)
  face = template.warp_face(photo, matrix)
  assert np.abs(_dot_centres(face) - template.ARCFACE_TEMPLATE).max() < 1.0


def test_similarity_transform_never_reflects():
  src = template.ARCFACE_TEMPLATE.astype(np.float64)
  mirrored = src * [-1, 1]
  matrix = template.similarity_transform(src, mirrored)
  assert np.linalg.det(matrix[:, :2]) > 0


def test_none_aligner_shapes_and_bad_inputs():
  aligner = base.make_aligner('none')
  photos = [np.full((250, 250, 3), 90, np.uint8), np.full((40, 30), 7, np.uint8), np.zeros((1, 1, 3), np.uint8)]
  result = aligner.align(photos)
  assert result.faces.shape == (3, 112, 112, 3) and result.faces.dtype == np.uint8
  assert result.landmarks.shape == (3, 5, 2) and result.landmarks.dtype == np.float32
  np.testing.assert_allclose(result.crop_landmarks[0], template.ARCFACE_TEMPLATE)
  np.testing.assert_allclose(result.landmarks[0], (template.ARCFACE_TEMPLATE + 0.5) * 250 / 112 - 0.5, atol=1e-3)
  assert result.found.tolist() == [True] * 3 and result.scores.tolist() == [1.0] * 3
  assert int(result.faces[1].mean()) == 7
  with pytest.raises(ValueError, match='unknown aligner'):
    base.make_aligner('nope')


# --- DFA: random-weight networks saved in the snapshot's real format ---------------------------------------------

torch = pytest.importorskip('torch', reason='the dfa and mtcnn aligners need torch (pip install -e .[preprocess])')


def _write_snapshot(folder, arch: str, seed: int = 0):
  """A DFA snapshot as on the Hub: config.json, model.safetensors (model.net.*), pretrained_model/model.pt (net.*)."""
  import json
  from safetensors.torch import save_file
  from jaxface.align import dfa
  torch.manual_seed(seed)
  net = dfa.DFANet(arch).eval()
  state = net.state_dict()
  folder.mkdir(parents=True, exist_ok=True)
  (folder / 'pretrained_model').mkdir(exist_ok=True)
  (folder / 'config.json').write_text(json.dumps({'conf': {
      'arch': arch, 'input_size': 160, 'output_size': 112, 'color_space': 'RGB', 'input_padding_ratio': 0.0}}))
  save_file({'model.net.' + k: v.contiguous() for k, v in state.items()}, str(folder / 'model.safetensors'))
  torch.save({'net.' + k: v for k, v in state.items()}, folder / 'pretrained_model' / 'model.pt')
  return folder


@pytest.fixture(scope='module', params=['mobile0.25', 'resnet50'])
def dfa_snapshot(request, tmp_path_factory):
  return request.param, _write_snapshot(tmp_path_factory.mktemp('dfa') / request.param, request.param)


def test_dfa_loads_both_formats_strictly_and_aligns(dfa_snapshot, tmp_path):
  import shutil
  from jaxface.align import dfa
  arch, folder = dfa_snapshot
  torch.set_num_threads(2)
  aligner = base.make_aligner('dfa', str(folder), device='cpu', min_score=0.0)
  assert aligner.conf['arch'] == arch and aligner.conf['weights'].endswith('model.safetensors')
  assert aligner.net.priors.shape == (dfa.NUM_PRIORS, 4)
  photos = [np.random.default_rng(0).integers(0, 255, (250, 250, 3), dtype=np.uint8),
            np.random.default_rng(1).integers(0, 255, (90, 200, 3), dtype=np.uint8)]
  result = aligner.align(photos)
  assert result.faces.shape == (2, 112, 112, 3) and result.faces.dtype == np.uint8
  assert result.landmarks.shape == (2, 5, 2) and result.landmarks.dtype == np.float32
  assert result.crop_landmarks.shape == (2, 5, 2) and result.scores.dtype == np.float32
  assert result.found.dtype == bool and ((result.scores >= 0) & (result.scores < 1)).all()
  assert (result.scores[~result.found] == 0).all()
  # The same tensors from pretrained_model/model.pt (net.* keys) give the same predictions.
  only_pt = tmp_path / 'only_pt'
  shutil.copytree(folder, only_pt, ignore=shutil.ignore_patterns('model.safetensors'))
  from_pt = base.make_aligner('dfa', str(only_pt), device='cpu', min_score=0.0)
  assert from_pt.conf['weights'].endswith('model.pt')
  pt_state, st_state = from_pt.net.state_dict(), aligner.net.state_dict()
  assert pt_state.keys() == st_state.keys()
  assert all(torch.equal(pt_state[k], st_state[k]) for k in st_state)


def test_dfa_maps_network_landmarks_back_to_photo_pixels(tmp_path, monkeypatch):
  # A (100, 300) photo is padded to a 300 square with 100 rows above: the square's centre is photo pixel (150, 50).
  folder = _write_snapshot(tmp_path / 'snap', 'mobile0.25')
  aligner = base.make_aligner('dfa', str(folder), device='cpu')
  seen = {}

  def fake_net(x):
    seen['shape'] = tuple(x.shape)
    out = torch.zeros((x.shape[0], 16))
    out[:, 0:4] = torch.tensor([0.25, 0.4, 0.75, 0.6])
    out[:, 4:6] = torch.tensor([0.0, np.log(9.0)])  # softmax -> 0.9
    out[:, 6:16] = torch.tensor(template.ARCFACE_TEMPLATE / 112 * 0.4 + 0.3).reshape(-1)
    return out

  monkeypatch.setattr(aligner, 'net', fake_net)
  landmarks, boxes, scores = aligner.predict([np.zeros((100, 300, 3), np.uint8)])
  assert seen['shape'] == (1, 3, 160, 160)
  np.testing.assert_allclose(boxes[0], [75, 20, 225, 80], atol=1e-3)
  np.testing.assert_allclose(scores, [0.9], atol=1e-6)
  np.testing.assert_allclose(landmarks[0], (template.ARCFACE_TEMPLATE / 112 * 0.4 + 0.3) * 300 - [0, 100], atol=1e-3)
  result = aligner.align([np.zeros((100, 300, 3), np.uint8)])
  assert result.found[0] and np.abs(result.crop_landmarks[0] - template.ARCFACE_TEMPLATE).max() < 1e-3
  # A photo larger than max_input_side is reduced before the network; landmarks still come back in its pixels.
  aligner.max_input_side = 150
  np.testing.assert_allclose(aligner.predict([np.zeros((100, 300, 3), np.uint8)])[0], landmarks, atol=1e-3)
  assert seen['shape'] == (1, 3, 160, 160)


@pytest.mark.parametrize('change', ['missing', 'extra', 'shape'])
def test_dfa_bad_keys_name_the_key(tmp_path, change):
  from safetensors.torch import load_file, save_file
  from jaxface.align import dfa
  folder = _write_snapshot(tmp_path / 'snap', 'mobile0.25')
  tensors = load_file(str(folder / 'model.safetensors'))
  if change == 'missing':
    del tensors['model.net.fpn.output1.0.weight']
    expected = 'missing key model.net.fpn.output1.0.weight'
  elif change == 'extra':
    tensors['model.net.body.fc.weight'] = torch.zeros(3)
    expected = 'unexpected key model.net.body.fc.weight'
  else:
    tensors['model.net.aggregator.3.weight'] = torch.zeros(2, 16)
    expected = 'key model.net.aggregator.3.weight has shape (2, 16), expected (1, 16)'
  save_file(tensors, str(folder / 'model.safetensors'))
  with pytest.raises(dfa.SnapshotError) as info:
    base.make_aligner('dfa', str(folder), device='cpu')
  assert expected in str(info.value) and 'model.safetensors' in str(info.value)
  assert '\n' not in str(info.value)


def test_dfa_repo_id_offline_gives_one_line_with_the_download_command(monkeypatch, tmp_path):
  import huggingface_hub
  from jaxface.align import dfa

  def offline(*args, **kwargs):
    raise OSError('We have no connection to the Hub')

  monkeypatch.setattr(huggingface_hub, 'snapshot_download', offline)
  monkeypatch.chdir(tmp_path)  # so 'minchul/cvlface_DFA_resnet50' is not an existing folder
  with pytest.raises(dfa.SnapshotError) as info:
    base.make_aligner('dfa', 'minchul/cvlface_DFA_resnet50', device='cpu')
  message = str(info.value)
  assert '\n' not in message
  assert 'huggingface-cli download minchul/cvlface_DFA_resnet50 --local-dir' in message
  assert '--aligner-path' in message
  with pytest.raises(dfa.SnapshotError, match='no such DFA snapshot folder'):
    base.make_aligner('dfa', str(tmp_path / 'not_there' / 'deeper' / 'x'), device='cpu')


# --- MTCNN on real photos ----------------------------------------------------------------------------------------

REALFACES = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'realfaces-dev'


def _lfw_photos(n: int) -> list[np.ndarray]:
  import json
  from PIL import Image
  train = REALFACES / 'train'
  if not (train / 'sources.json').is_file():
    pytest.skip(f'{REALFACES} is absent: the MTCNN checks need the realfaces-dev LFW photos')
  sources = json.loads((train / 'sources.json').read_text())
  people = sorted(p for p, s in sources.items() if s == 'lfw_real')[:n]
  return [np.asarray(Image.open(sorted((train / 'images' / p).glob('*.jpg'))[0]).convert('RGB')) for p in people]


@pytest.fixture(scope='module')
def mtcnn_aligner():
  torch.set_num_threads(2)
  return base.make_aligner('mtcnn', device='cpu')


def test_mtcnn_finds_lfw_faces_upright_and_centred(mtcnn_aligner):
  photos = _lfw_photos(6)
  result = mtcnn_aligner.align(photos)
  assert result.found.all() and (result.scores > 0.9).all()
  marks = result.landmarks
  assert (marks[:, 0, 0] < marks[:, 1, 0]).all()  # left eye left of right eye
  assert (marks[:, :2, 1].max(1) < marks[:, 3:, 1].min(1)).all()  # eyes above mouth corners
  # LFW faces sit in the middle of the 250x250 photo.
  assert (np.abs(marks.mean(1) - 125) < 25).all()
  # The similarity fit leaves the landmarks within a few pixels of the template in the crop.
  assert np.abs(result.crop_landmarks - template.ARCFACE_TEMPLATE).max() < 8


def test_mtcnn_bad_photos_per_photo(mtcnn_aligner):
  from PIL import Image
  photo = _lfw_photos(1)[0]
  small = mtcnn_aligner.align([photo]).landmarks[0]
  big = np.asarray(Image.fromarray(photo).resize((1000, 1000), Image.Resampling.BILINEAR))
  grey = np.repeat(photo.mean(-1, keepdims=True).astype(np.uint8), 3, axis=-1)
  aligner = base.make_aligner('mtcnn', device='cpu', max_detect_side=250)
  result = aligner.align([big, np.zeros((6, 9, 3), np.uint8), np.full((120, 120, 3), 128, np.uint8), grey])
  assert result.found.tolist() == [True, False, False, True]
  assert result.scores[1] == 0 and result.scores[2] == 0
  # Detected on a 250 px copy, landmarks come back in full-resolution pixels (4x, pixel centres shifted).
  assert np.abs((result.landmarks[0] + 0.5) / 4 - 0.5 - small).max() < 2.0
  assert np.abs(result.landmarks[3] - small).max() < 4.0
  assert result.faces.shape == (4, 112, 112, 3) and int(result.faces[2].mean()) == 128
