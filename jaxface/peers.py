"""Peer face recognisers a user would pick instead of jaxface, scored on the same test pairs.

    python scripts/compare.py --out runs/peer --peers dlib --data-dir ../shared/data/realfaces-train

`dlib`: the `face_recognition` package's model (dlib's ResNet-29 metric network, 128-d, LFW 99.38%), run through dlib
exactly as `face_recognition.face_encodings(image)` runs it with its defaults: the HOG frontal detector upsampled once,
the 5-point shape predictor, `compute_face_descriptor` with one jitter (dlib's 150x150 face chip with 0.25 padding).
It calls dlib and the model files of `face_recognition_models` directly instead of importing `face_recognition`,
whose setup pins a `dlib` that must be compiled and whose model package needs setuptools' removed `pkg_resources`
(`pip install -e ".[peer]"` installs what is needed). The similarity of a pair is minus the Euclidean distance of the
two descriptors (`face_recognition.face_distance`; the package's own decision is distance < 0.6). Where the HOG
detector finds no face (tight crops, profile views), the whole photo is taken as the face box, as a user of
`face_encodings(image, known_face_locations=[whole image])` would; those photos are counted. Where it finds several,
the largest box is kept (the challenge photos hold one person).

dlib is imported only when a peer is built; `import jaxface` does not import it.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from jaxface.data import challenge

PEERS = ('dlib',)


class PeerError(RuntimeError):
  """A peer that cannot run here; the message is one line saying what to install."""


def _model_file(name: str) -> str:
  # find_spec locates the package without running its __init__, which imports pkg_resources.
  spec = importlib.util.find_spec('face_recognition_models')
  if spec is None or not spec.submodule_search_locations:
    raise PeerError('the dlib peer needs the face_recognition_models package (pip install -e ".[peer]")')
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / 'models' / name
  if not path.is_file():
    raise PeerError(f'{path}: model file missing (reinstall face_recognition_models)')
  return str(path)


class DlibPeer:
  """face_recognition's descriptor pipeline (see the module docstring)."""

  name = 'dlib'

  def __init__(self):
    try:
      import dlib  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise PeerError('the dlib peer needs dlib (pip install -e ".[peer]", which takes the dlib-bin wheel)') from None
    self._dlib = dlib
    self._detector = dlib.get_frontal_face_detector()
    self._shape = dlib.shape_predictor(_model_file('shape_predictor_5_face_landmarks.dat'))
    self._encoder = dlib.face_recognition_model_v1(_model_file('dlib_face_recognition_resnet_model_v1.dat'))

  def describe(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W, 3) uint8 RGB photo -> ((128,) float32 descriptor, whether the detector found a face)."""
    rgb = np.ascontiguousarray(rgb)
    boxes = list(self._detector(rgb, 1))
    found = bool(boxes)
    if found:
      box = max(boxes, key=lambda b: b.width() * b.height())
    else:
      box = self._dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
    shape = self._shape(rgb, box)
    return np.asarray(self._encoder.compute_face_descriptor(rgb, shape, 1), np.float32), found


def build_peer(name: str) -> DlibPeer:
  if name == 'dlib':
    return DlibPeer()
  raise PeerError(f'unknown peer {name!r}: use one of {", ".join(PEERS)}')


@dataclasses.dataclass
class PeerScores:
  """A peer's similarities for N pairs (arrays (N,); label -1 and kind '' where unknown)."""
  pair_ids: np.ndarray
  similarity: np.ndarray
  labels: np.ndarray
  kinds: np.ndarray
  face_found: np.ndarray  # (N, 2) bool


def score_pairs(peer, data_dir, labels: dict | None = None, progress: bool = False) -> PeerScores:
  """Scores every test_public/<pair>/{0,1}.jpg of a challenge folder with `peer`.

  A photo that cannot be read is reported on stderr (one line) and its pair scored -1e9 (rejected), not dropped.
  """
  pairs = challenge.list_test_pairs(data_dir)
  if not pairs:
    raise PeerError(f'{challenge.test_pairs_dir(data_dir)}: no test pairs (expected test_public/<pair_id>/0.jpg,1.jpg)')
  labels = labels or {}
  iterator: Sequence = pairs
  if progress:
    import tqdm  # pylint: disable=import-outside-toplevel
    iterator = tqdm.tqdm(pairs, desc=f'{peer.name} peer', unit='pair')
  similarity, found = [], []
  for pair in iterator:
    try:
      (d0, f0), (d1, f1) = (peer.describe(challenge.load_rgb(p)) for p in (pair.path0, pair.path1))
    except challenge.ImageReadError as error:
      print(f'warning: {error}; pair {pair.pair_id} scored as rejected', file=sys.stderr)
      similarity.append(-1e9)
      found.append((False, False))
      continue
    similarity.append(-float(np.linalg.norm(d0 - d1)))
    found.append((f0, f1))
  known = [labels.get(p.pair_id) for p in pairs]
  return PeerScores(
      pair_ids=np.array([p.pair_id for p in pairs]),
      similarity=np.array(similarity, np.float64),
      labels=np.array([-1 if k is None else k.label for k in known]),
      kinds=np.array(['' if k is None or k.kind is None else k.kind for k in known]),
      face_found=np.array(found, bool))
