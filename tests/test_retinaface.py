"""RetinaFace MobileNet-0.25: strict loading in the real key layout, and on the real weights and real photos, faces
found and landmarks that agree with MTCNN's (skipped with a message when ../shared is absent)."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from jaxface.align import retinaface, retinaface_net  # noqa: E402  pylint: disable=g-import-not-at-top

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / 'shared'
REAL_WEIGHTS = SHARED / 'weights' / retinaface.WEIGHTS_NAME


def _random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
  torch.manual_seed(seed)
  net = retinaface_net.RetinaFace('mobile0.25', leaky=0.0)
  return {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in net.state_dict().items()}


def test_loads_a_state_dict_in_the_real_layout_strictly(tmp_path):
  state = _random_state_dict()
  path = tmp_path / 'mnet.pth'
  torch.save({f'module.{k}': v for k, v in state.items()}, path)  # as saved from nn.DataParallel
  net, loaded_from = retinaface.load_retinaface(path)
  assert loaded_from == path
  key = 'body.stage1.0.0.weight' if 'body.stage1.0.0.weight' in state else sorted(state)[0]
  assert torch.equal(net.state_dict()[key], state[key])


@pytest.mark.parametrize('damage', ['missing', 'extra', 'shape'])
def test_bad_weights_are_one_line_naming_the_key(tmp_path, damage):
  state = _random_state_dict()
  key = sorted(k for k in state if k.endswith('weight'))[3]
  if damage == 'missing':
    del state[key]
  elif damage == 'extra':
    key = 'fc.weight'
    state[key] = torch.zeros(2, 2)
  else:
    state[key] = state[key][:1]
  path = tmp_path / 'bad.pth'
  torch.save(state, path)
  with pytest.raises(retinaface.WeightsError) as error:
    retinaface.load_retinaface(path)
  message = str(error.value)
  assert '\n' not in message and key in message and 'bad.pth' in message


def test_missing_file_says_where_to_get_it(tmp_path):
  with pytest.raises(retinaface.WeightsError, match='biubug6'):
    retinaface.load_retinaface(tmp_path / 'none.pth')


def _real_photos(count_per_set: int = 60) -> tuple[list[np.ndarray], list[str]]:
  """Seeded real (not generated) photos of realfaces-dev and realfaces-train."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  photos, names = [], []
  rng = np.random.default_rng(0)
  for name in ('realfaces-dev', 'realfaces-train'):
    train = SHARED / 'data' / name / 'train'
    if not (train / 'meta.json').is_file():
      pytest.skip(f'{train} not found (the real photos live in ../shared/data)')
    meta = json.loads((train / 'meta.json').read_text())
    real = sorted(k for k, v in meta.items() if v == 0)
    for key in rng.choice(real, count_per_set, replace=False):
      photos.append(np.asarray(Image.open(train / 'images' / key).convert('RGB')))
      names.append(f'{name}/{key}')
  return photos, names


def test_real_weights_find_faces_and_agree_with_mtcnn():
  if not REAL_WEIGHTS.is_file():
    pytest.skip(f'{REAL_WEIGHTS} not found (the real RetinaFace weights live in ../shared/weights)')
  pytest.importorskip('mtcnn')
  from jaxface.align.base import make_aligner  # pylint: disable=import-outside-toplevel
  photos, names = _real_photos()
  ours = make_aligner('retinaface', REAL_WEIGHTS, device='cpu').align(photos)
  found = ours.found & (ours.scores >= 0.5)
  missed = [n for n, f in zip(names, found) if not f]
  print(f'\nretinaface: {found.sum()}/{len(photos)} real photos with a face; missed {missed[:5]}')
  assert found.mean() >= 0.99, missed
  theirs = make_aligner('mtcnn', device='cpu').align(photos)
  both = found & theirs.found
  distance = np.linalg.norm(ours.crop_landmarks[both] - theirs.crop_landmarks[both], axis=-1)  # (N, 5) crop px
  median = float(np.median(distance))
  print(f'median landmark distance to MTCNN on {both.sum()} photos: {median:.2f} px (112x112 crop)')
  assert both.sum() >= 0.9 * len(photos) and median <= 3.0
