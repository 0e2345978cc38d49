"""RetinaFace MobileNet-0.25 with five landmarks: a face detector with real weights (MIT), on the shared network.

Weights: `mobilenet0.25_Final.pth` of biubug6/Face-Detector-1MB-with-landmark (a plain state dict, read with
`torch.load(weights_only=True)`, a `module.` prefix stripped, keys checked strictly). Its config is that repo's
`cfg_mnet`: anchors [[10, 20], [32, 64], [128, 256]] px at strides 8/16/32, variances 0.1/0.2, and its `models/net.py`
uses plain ReLU where Pytorch_Retinaface (and DFA) use LeakyReLU 0.1. It expects BGR floats with the mean
(104, 117, 123) subtracted and no scaling, at any size.

Per batch: every photo is padded with a margin and resized onto one square canvas (see `RetinaFaceAligner.tries`), so
the batch runs as one network call, decoded against priors made for that canvas; faces scoring >= min_score go through
NMS; of several faces the largest, most central one is kept (`pick_face`) with its score, and its five landmarks are
warped onto the ArcFace template from the full-resolution photo. Photos without a face are tried again on a bigger
canvas with other margins before they count as faceless.
"""
from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from jaxface.align import interface, retinaface_net
from jaxface.align.mtcnn import nms

MIN_SIZES = ((10, 20), (32, 64), (128, 256))
STEPS = (8, 16, 32)
# The training images' mean, in the BGR order the network reads.
MEAN_BGR = (104.0, 117.0, 123.0)
WEIGHTS_NAME = 'retinaface_mnet025.pth'
ENV_WEIGHTS = 'JAXFACE_RETINAFACE_WEIGHTS'
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class WeightsError(ValueError):
  """RetinaFace weights that cannot be found or loaded; the message is one line saying what to do."""


def default_weights_path() -> pathlib.Path:
  """$JAXFACE_RETINAFACE_WEIGHTS, else third_party/weights/retinaface_mnet025.pth, else ../shared/weights/ (dev)."""
  if os.environ.get(ENV_WEIGHTS):
    return pathlib.Path(os.environ[ENV_WEIGHTS]).expanduser()
  candidates = [_REPO_ROOT / 'third_party' / 'weights' / WEIGHTS_NAME, _REPO_ROOT.parent / 'shared' / 'weights' /
                WEIGHTS_NAME]
  return next((path for path in candidates if path.is_file()), candidates[0])


def load_retinaface(path: str | os.PathLike | None = None, device: str | torch.device = 'cpu'
                    ) -> tuple[retinaface_net.RetinaFace, pathlib.Path]:
  """The MobileNet-0.25 RetinaFace with the weights at `path` (default: `default_weights_path()`), in eval mode."""
  path = pathlib.Path(path).expanduser() if path else default_weights_path()
  if not path.is_file():
    raise WeightsError(f'{path}: no RetinaFace weights here; download weights/mobilenet0.25_Final.pth of '
                       f'github.com/biubug6/Face-Detector-1MB-with-landmark to third_party/weights/{WEIGHTS_NAME} '
                       f'(or pass --aligner-path / set {ENV_WEIGHTS})')
  try:
    tensors = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (a pickle with code, a truncated file: one answer)
    raise WeightsError(f'{path}: not a plain PyTorch state dict ({type(e).__name__}); use mobilenet0.25_Final.pth '
                       'of biubug6/Face-Detector-1MB-with-landmark') from None
  if isinstance(tensors, dict) and isinstance(tensors.get('state_dict'), dict):
    tensors = tensors['state_dict']
  if not isinstance(tensors, dict):
    raise WeightsError(f'{path}: expected a dict of tensors, got {type(tensors).__name__}')
  # Weights saved from nn.DataParallel carry a 'module.' prefix.
  tensors = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in tensors.items()}
  net = retinaface_net.RetinaFace('mobile0.25', leaky=0.0)  # this repo's net.py: plain ReLU
  retinaface_net.load_strict(net, tensors, path, hint='(expected RetinaFace MobileNet-0.25 with 5 landmarks)',
                             error=WeightsError)
  return net.to(device).eval(), path


@functools.lru_cache(maxsize=8)
def _priors(height: int, width: int) -> torch.Tensor:
  return retinaface_net.make_priors(height, width, MIN_SIZES, STEPS)


def pick_face(boxes: np.ndarray, height: float, width: float) -> int:
  """Index of the largest face penalised by its squared distance from the photo centre (as insightface picks).

  boxes: (N, 4) x1, y1, x2, y2 in photo pixels, N >= 1.
  """
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  offset = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2 - width / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2], 1)
  return int(np.argmax(area - 2.0 * (offset ** 2).sum(1)))


class RetinaFaceAligner(interface.Aligner):
  """RetinaFace MobileNet-0.25 detection, then the 5-point similarity warp from the full-resolution photo.

  Args:
    path: the .pth state dict (default: `default_weights_path()`).
    device: torch device; default CUDA when available.
    batch_size: photos per network call.
    min_score: detections scoring below this are not sure faces (the weights' demo uses 0.5).
    fallback_score: a photo with no sure face on any try takes its best detection scoring at least this.
    nms_threshold: IoU above which a lower-scoring box is suppressed (0.4 as the demo).
    tries: (canvas side, margin) pairs, tried in order on the photos still without a face. Each photo is padded by
      `margin` times its longer side on every edge, with the mean colour (zero once the mean is subtracted, as the
      net saw around its training images), then resized onto a canvas x canvas square: one shape per try, so a batch
      is one network call with priors made once. The margin matters for tight crops (ORL's 92x112, CelebA's 89x109
      aligned faces): with the face touching the frame the detector misses it; with context around it, it does not.
      The first try is small and fast (160 px finds about 90% of the real photos); the 256 px tries catch the rest
      (on seeded samples of realfaces-dev and -train: 87.5% found at 160/0.2 alone, 90.8% at 256/0.2, 97.5% at
      256/0.5, and the three in turn 99%+).
  """
  name = 'retinaface'

  def __init__(self, path: str | os.PathLike | None = None, device: str | None = None, batch_size: int = 32,
               min_score: float = 0.5, fallback_score: float = 0.2, nms_threshold: float = 0.4,
               tries: Sequence[tuple[int, float]] = ((160, 0.2), (256, 0.5), (384, 0.3))):
    self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    self.net, self.weights = load_retinaface(path, self.device)
    self.batch_size = batch_size
    self.min_score = float(min_score)
    self.fallback_score = float(fallback_score)
    self.nms_threshold = float(nms_threshold)
    self.tries = tuple((int(canvas), float(margin)) for canvas, margin in tries)

  def settings(self) -> dict[str, Any]:
    return {'name': self.name, 'weights': self.weights.name, 'min_score': self.min_score,
            'fallback_score': self.fallback_score, 'nms_threshold': self.nms_threshold, 'tries': [list(t) for t in self.tries]}

  @staticmethod
  def _network_input(photo: np.ndarray, side: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo padded and resized onto the canvas: ((canvas, canvas, 3) uint8 RGB, (scale x, scale y, left, top)).

    A canvas pixel-edge coordinate u maps to the photo's u / scale - offset (pixel edges, not centres).
    """
    h, w = photo.shape[:2]
    factor = side / (max(h, w) * (1.0 + 2.0 * margin))
    new_w, new_h = max(1, min(side, round(w * factor))), max(1, min(side, round(h * factor)))
    resized = np.asarray(Image.fromarray(photo).resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=2.0))
    left, top = (side - new_w) // 2, (side - new_h) // 2
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = np.array(MEAN_BGR[::-1], np.uint8)
    canvas[top:top + new_h, left:left + new_w] = resized
    sx, sy = new_w / w, new_h / h
    return canvas, np.array([sx, sy, left / sx, top / sy])

  @torch.no_grad()
  def detect(self, photos: list[np.ndarray], side: int = 256, margin: float = 0.2, min_score: float | None = None
             ) -> list[np.ndarray]:
    """All faces per photo after the score threshold and NMS: (N, 15) rows x1, y1, x2, y2, score, 5 x (x, y),
    in photo pixel centres, best score first. Each photo is padded by `margin` and resized onto a `side` canvas;
    min_score defaults to the aligner's."""
    min_score = self.min_score if min_score is None else min_score
    canvases, geometry = zip(*(self._network_input(p, side, margin) for p in photos))
    x = torch.from_numpy(np.stack(canvases)).to(self.device).permute(0, 3, 1, 2).flip(1).float()
    x = x - torch.tensor(MEAN_BGR, device=self.device).view(1, 3, 1, 1)
    boxes, logits, marks = self.net(x)
    priors = _priors(side, side).to(self.device)
    boxes, marks = retinaface_net.decode(boxes, marks, priors)
    scores = torch.softmax(logits, dim=-1)[..., 1]
    boxes, marks, scores = (t.float().cpu().numpy() for t in (boxes, marks, scores))
    result = []
    for i, (sx, sy, left, top) in enumerate(geometry):
      keep = scores[i] >= min_score
      # Canvas fractions -> canvas pixel edges -> photo pixel edges -> photo pixel centres.
      scale = np.array([sx, sy]) / side
      box = (boxes[i][keep].reshape(-1, 2, 2) / scale - [left, top] - 0.5).reshape(-1, 4)
      mark = (marks[i][keep].reshape(-1, 5, 2) / scale - [left, top] - 0.5).reshape(-1, 10)
      score = scores[i][keep]
      order = nms(box, score, self.nms_threshold)
      result.append(np.concatenate([box[order], score[order, None], mark[order]], 1))
    return result

  def _align_batch(self, photos: list[np.ndarray]) -> interface.AlignResult:
    n = len(photos)
    landmarks = np.zeros((n, 5, 2), np.float32)
    scores = np.zeros((n,), np.float32)
    found = np.zeros((n,), bool)
    fallback: dict[int, np.ndarray] = {}  # per photo, its best face scoring in [fallback_score, min_score)
    for side, margin in self.tries:
      pending = np.flatnonzero(~found)
      if not len(pending):
        break
      detected = self.detect([photos[i] for i in pending], side, margin, min(self.min_score, self.fallback_score))
      for i, rows in zip(pending, detected):
        sure = rows[rows[:, 4] >= self.min_score]
        if len(sure):
          row = sure[pick_face(sure[:, :4], *photos[i].shape[:2])]
          landmarks[i], scores[i], found[i] = row[5:15].reshape(5, 2), row[4], True
        elif len(rows) and (i not in fallback or rows[0, 4] > fallback[i][4]):
          fallback[i] = rows[0]
    # No sure face on any canvas: the best weak one (grey, low-resolution tight crops such as ORL's score 0.2-0.5)
    # still places the landmarks better than a centre crop; its low score is recorded for --min-score to filter.
    for i, row in fallback.items():
      if not found[i]:
        landmarks[i], scores[i], found[i] = row[5:15].reshape(5, 2), row[4], True
    return interface.faces_from_landmarks(photos, landmarks, scores, found)
