"""MTCNN (Zhang et al. 2016) in PyTorch on the P/R/O-Net weights shipped in the PyPI package `mtcnn` (MIT).

The package runs the nets in TensorFlow; here they are ported layer by layer (TF 'same' pooling, the Permute before
the dense layers, softmax heads) so detection needs torch only. The weights are read with joblib from
`mtcnn/assets/weights/{pnet,rnet,onet}.lz4`: lists of numpy arrays, conv kernels HWIO, PReLU alphas per channel.

Pipeline per batch: image pyramid -> P-Net proposals -> NMS -> R-Net on 24x24 crops -> O-Net on 48x48 crops (box,
score, 5 landmarks) -> the largest, most central face -> similarity transform of its landmarks onto the ArcFace
template, applied to the full-resolution photo.
"""
from __future__ import annotations

import importlib.util
import pathlib
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from jaxface.align import interface


def package_weights_dir() -> pathlib.Path:
  """The folder holding pnet.lz4, rnet.lz4, onet.lz4 inside the installed `mtcnn` package (not imported: it pulls
  TF)."""
  spec = importlib.util.find_spec('mtcnn')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError('the mtcnn package is not installed (pip install mtcnn==1.0.0 joblib lz4; it ships the '
                            'MTCNN weights, MIT licence)')
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / 'assets' / 'weights'


def load_package_weights(name: str, weights_dir: str | pathlib.Path | None = None) -> list[np.ndarray]:
  """The numpy arrays of one net ('pnet', 'rnet' or 'onet') in the package's (Keras) order."""
  import joblib  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(weights_dir or package_weights_dir()) / f'{name}.lz4'
  if not path.is_file():
    raise FileNotFoundError(f'{path}: MTCNN weights missing (reinstall the mtcnn package: pip install mtcnn==1.0.0)')
  return [np.asarray(w, np.float32) for w in joblib.load(path)]


class _PReLU(torch.nn.Module):
  def __init__(self, alpha: np.ndarray):
    super().__init__()
    self.alpha = torch.nn.Parameter(torch.from_numpy(alpha.reshape(-1).copy()), requires_grad=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.prelu(x, self.alpha)


def _conv(kernel: np.ndarray, bias: np.ndarray) -> torch.nn.Conv2d:
  h, w, cin, cout = kernel.shape
  conv = torch.nn.Conv2d(cin, cout, (h, w))
  conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
  conv.bias.data = torch.from_numpy(bias.copy())
  conv.requires_grad_(False)
  return conv


def _dense(kernel: np.ndarray, bias: np.ndarray) -> torch.nn.Linear:
  cin, cout = kernel.shape
  dense = torch.nn.Linear(cin, cout)
  dense.weight.data = torch.from_numpy(kernel.T.copy())
  dense.bias.data = torch.from_numpy(bias.copy())
  dense.requires_grad_(False)
  return dense


def _max_pool_same(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
  """Keras MaxPooling2D(padding='same'): pads at the end (bottom/right) first, never counting the padding."""
  pads = []
  for n in (x.shape[-1], x.shape[-2]):
    out = -(-n // stride)
    total = max((out - 1) * stride + size - n, 0)
    pads += [total // 2, total - total // 2]
  return F.max_pool2d(F.pad(x, pads, value=float('-inf')), size, stride)


def _flatten_keras(x: torch.Tensor) -> torch.Tensor:
  """Keras Permute((2, 1, 3)) + Flatten on NHWC, from NCHW: the feature order is (W, H, C)."""
  return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(torch.nn.Module):
  """Proposal net, fully convolutional: (B, 3, H, W) in [-1, 1] -> box offsets (B, 4, h, w), face prob (B, h, w)."""

  def __init__(self, w: list[np.ndarray]):
    super().__init__()
    self.conv1, self.prelu1 = _conv(w[0], w[1]), _PReLU(w[2])
    self.conv2, self.prelu2 = _conv(w[3], w[4]), _PReLU(w[5])
    self.conv3, self.prelu3 = _conv(w[6], w[7]), _PReLU(w[8])
    self.conv4_1, self.conv4_2 = _conv(w[9], w[10]), _conv(w[11], w[12])

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = _max_pool_same(self.prelu1(self.conv1(x)), 2, 2)
    x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
    return self.conv4_1(x), torch.softmax(self.conv4_2(x), dim=1)[:, 1]


class RNet(torch.nn.Module):
  """Refine net: (N, 3, 24, 24) -> box offsets (N, 4), face prob (N,)."""

  def __init__(self, w: list[np.ndarray]):
    super().__init__()
    self.conv1, self.prelu1 = _conv(w[0], w[1]), _PReLU(w[2])
    self.conv2, self.prelu2 = _conv(w[3], w[4]), _PReLU(w[5])
    self.conv3, self.prelu3 = _conv(w[6], w[7]), _PReLU(w[8])
    self.fc4, self.prelu4 = _dense(w[9], w[10]), _PReLU(w[11])
    self.fc5_1, self.fc5_2 = _dense(w[12], w[13]), _dense(w[14], w[15])

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = _max_pool_same(self.prelu1(self.conv1(x)), 3, 2)
    x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
    x = self.prelu4(self.fc4(_flatten_keras(self.prelu3(self.conv3(x)))))
    return self.fc5_1(x), torch.softmax(self.fc5_2(x), dim=1)[:, 1]


class ONet(torch.nn.Module):
  """Output net: (N, 3, 48, 48) -> box offsets (N, 4), landmarks (N, 10) (5 x then 5 y, box-relative), prob (N,)."""

  def __init__(self, w: list[np.ndarray]):
    super().__init__()
    self.conv1, self.prelu1 = _conv(w[0], w[1]), _PReLU(w[2])
    self.conv2, self.prelu2 = _conv(w[3], w[4]), _PReLU(w[5])
    self.conv3, self.prelu3 = _conv(w[6], w[7]), _PReLU(w[8])
    self.conv4, self.prelu4 = _conv(w[9], w[10]), _PReLU(w[11])
    self.fc5, self.prelu5 = _dense(w[12], w[13]), _PReLU(w[14])
    self.fc6_1, self.fc6_2, self.fc6_3 = _dense(w[15], w[16]), _dense(w[17], w[18]), _dense(w[19], w[20])

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = _max_pool_same(self.prelu1(self.conv1(x)), 3, 2)
    x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
    x = _max_pool_same(self.prelu3(self.conv3(x)), 2, 2)
    x = self.prelu5(self.fc5(_flatten_keras(self.prelu4(self.conv4(x)))))
    return self.fc6_1(x), self.fc6_2(x), torch.softmax(self.fc6_3(x), dim=1)[:, 1]


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = 'union') -> np.ndarray:
  """Greedy non-maximum suppression: indices of kept (N, 4) x1,y1,x2,y2 boxes, best first."""
  order = np.argsort(-scores)
  areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
  keep = []
  while order.size:
    i, rest = order[0], order[1:]
    keep.append(i)
    w = np.maximum(0, np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]))
    h = np.maximum(0, np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]))
    inter = w * h
    denom = np.minimum(areas[i], areas[rest]) if method == 'min' else areas[i] + areas[rest] - inter
    order = rest[inter / np.maximum(denom, 1e-9) <= threshold]
  return np.asarray(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
  boxes = boxes.copy()
  w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  side = np.maximum(w, h)
  boxes[:, 0] += (w - side) / 2
  boxes[:, 1] += (h - side) / 2
  boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
  return boxes


def _refine(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  size = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1] * 2, axis=1)
  return boxes + offsets * size


def _crop_and_resize(image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
  """tf.image.crop_and_resize of one (3, H, W) image at pixel boxes divided by (W, H), as the mtcnn package does.

  Returns (N, 3, size, size); samples outside the image read 0.
  """
  _, h, w = image.shape
  t = torch.linspace(0, 1, size, device=image.device, dtype=image.dtype)
  b = torch.as_tensor(boxes, device=image.device, dtype=image.dtype)
  # Normalised TF coordinate c in [0, 1] samples pixel c * (n - 1): grid_sample with align_corners=True maps -1..1 to
  # pixel 0..n-1, so the grid value is 2c - 1.
  xs = (b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * t) / w * 2 - 1  # (N, size)
  ys = (b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * t) / h * 2 - 1
  n = len(boxes)
  grid = torch.stack([xs[:, None, :].expand(n, size, size), ys[:, :, None].expand(n, size, size)], dim=-1)
  grid = grid.reshape(1, n * size, size, 2)
  out = F.grid_sample(image[None], grid, mode='bilinear', padding_mode='zeros', align_corners=True)
  return out.reshape(3, n, size, size).permute(1, 0, 2, 3)


class MTCNNAligner(interface.Aligner):
  """MTCNN detection on the mtcnn package's weights, then the 5-point similarity warp from the full-resolution photo.

  Args:
    device: torch device; default CUDA when available.
    batch_size: photos per detection batch.
    min_face_size: smallest face side in pixels of the detection copy.
    thresholds: P/R/O-Net face probability thresholds.
    max_detect_side: longer photos are downscaled (antialiased) to this side for detection only.
    min_detect_side: shorter photos are upscaled to this side for detection only.
    retry_padding: for photos with no face found, detection is retried once on the photo padded by this fraction of
      its side on each edge (faces that fill the frame, as in tight crops, need context around them).
  """
  name = 'mtcnn'

  def __init__(self, device: str | None = None, batch_size: int = 32, min_face_size: float = 20.0,
               thresholds: Sequence[float] = (0.6, 0.7, 0.8), scale_factor: float = 0.709,
               max_detect_side: int = 1024, min_detect_side: int = 64, retry_padding: float = 0.25,
               weights_dir: str | None = None):
    self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    self.batch_size = batch_size
    self.min_face_size = float(min_face_size)
    self.thresholds = tuple(float(t) for t in thresholds)
    self.scale_factor = float(scale_factor)
    self.max_detect_side = int(max_detect_side)
    self.min_detect_side = int(min_detect_side)
    self.retry_padding = float(retry_padding)
    self.pnet = PNet(load_package_weights('pnet', weights_dir)).to(self.device).eval()
    self.rnet = RNet(load_package_weights('rnet', weights_dir)).to(self.device).eval()
    self.onet = ONet(load_package_weights('onet', weights_dir)).to(self.device).eval()

  def settings(self) -> dict[str, Any]:
    return {'name': self.name, 'weights': 'mtcnn==1.0.0 package', 'min_face_size': self.min_face_size,
            'thresholds': list(self.thresholds), 'scale_factor': self.scale_factor,
            'max_detect_side': self.max_detect_side, 'min_detect_side': self.min_detect_side,
            'retry_padding': self.retry_padding}

  # --- detection -------------------------------------------------------------------------------------------------

  def _to_tensor(self, photos: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(photos)).to(self.device).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 128.0

  def _proposals(self, images: torch.Tensor) -> list[np.ndarray]:
    """P-Net over an image pyramid of same-size images (B, 3, H, W): per image (N, 5) boxes x1,y1,x2,y2,score."""
    b, _, h, w = images.shape
    per_image: list[list[np.ndarray]] = [[] for _ in range(b)]
    scale = 12.0 / self.min_face_size
    while min(h, w) * scale >= 12:
      sh, sw = max(12, int(np.ceil(h * scale))), max(12, int(np.ceil(w * scale)))
      scaled = F.interpolate(images, size=(sh, sw), mode='bilinear', antialias=True, align_corners=False)
      offsets, probs = self.pnet(scaled)
      offsets, probs = offsets.cpu().numpy(), probs.cpu().numpy()
      for i in range(b):
        ys, xs = np.nonzero(probs[i] > self.thresholds[0])
        if not len(ys):
          continue
        # Cell (x, y) of the map sees the 12x12 window at (2x, 2y) of the scaled image (the package's convention).
        x1, y1 = xs * 2 + 1.0, ys * 2 + 1.0
        x2, y2 = xs * 2 + 12.0, ys * 2 + 12.0
        reg = offsets[i][:, ys, xs]
        boxes = np.stack([x1 + reg[0] * 11, y1 + reg[1] * 11, x2 + reg[2] * 11, y2 + reg[3] * 11], 1) / scale
        scores = probs[i][ys, xs]
        keep = nms(boxes, scores, 0.5)
        per_image[i].append(np.concatenate([boxes[keep], scores[keep, None]], 1))
      scale *= self.scale_factor
    result = []
    for found in per_image:
      boxes = np.concatenate(found) if found else np.zeros((0, 5))
      if len(boxes):
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        boxes[:, :4] = _square(boxes[:, :4])
      result.append(boxes)
    return result

  def _refine_stage(self, images: torch.Tensor, boxes: list[np.ndarray], net: torch.nn.Module, size: int,
                    threshold: float, nms_threshold: float, nms_method: str) -> list[np.ndarray]:
    """R-Net (size 24) or O-Net (size 48) on crops: per image (N, 5 or 15) boxes, score [, 10 landmarks x then y]."""
    counts = [len(bx) for bx in boxes]
    if not sum(counts):
      return [np.zeros((0, 15 if size == 48 else 5)) for _ in boxes]
    crops = torch.cat([_crop_and_resize(images[i], bx[:, :4], size) for i, bx in enumerate(boxes) if len(bx)])
    outputs = [o.cpu().numpy() for o in net(crops)]
    start, result = 0, []
    for bx, n in zip(boxes, counts):
      out = [o[start:start + n] for o in outputs]
      start += n
      offsets, probs = out[0], out[-1]
      refined = _refine(bx[:, :4], offsets)
      columns = [refined, probs[:, None]]
      if size == 48:
        w = bx[:, 2:3] - bx[:, 0:1] + 1
        h = bx[:, 3:4] - bx[:, 1:2] + 1
        marks = out[1]
        columns.append(np.concatenate([w * marks[:, :5] + bx[:, 0:1] - 1, h * marks[:, 5:] + bx[:, 1:2] - 1], 1))
      rows = np.concatenate(columns, 1)[probs > threshold]
      if len(rows):
        rows = rows[nms(rows[:, :4], rows[:, 4], nms_threshold, nms_method)]
        if size == 24:
          rows[:, :4] = _square(rows[:, :4])
      result.append(rows)
    return result

  @torch.no_grad()
  def detect(self, photos: list[np.ndarray]) -> list[np.ndarray]:
    """All faces in same-size (H, W, 3) uint8 photos: per photo (N, 15) rows x1,y1,x2,y2,score, 5 x, 5 y."""
    images = self._to_tensor(photos)
    boxes = self._proposals(images)
    boxes = self._refine_stage(images, boxes, self.rnet, 24, self.thresholds[1], 0.7, 'union')
    return self._refine_stage(images, boxes, self.onet, 48, self.thresholds[2], 0.7, 'min')

  # --- alignment -------------------------------------------------------------------------------------------------

  def _detection_copy(self, photo: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = photo.shape[:2]
    factor = 1.0
    if max(h, w) > self.max_detect_side:
      factor = self.max_detect_side / max(h, w)
    elif min(h, w) < self.min_detect_side:
      factor = self.min_detect_side / min(h, w)
    if factor == 1.0:
      return photo, 1.0
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)), factor

  @staticmethod
  def _pick(rows: np.ndarray, height: int, width: int) -> np.ndarray | None:
    """The largest face, penalised by its distance from the photo centre (as insightface picks), or None."""
    if not len(rows):
      return None
    area = (rows[:, 2] - rows[:, 0]) * (rows[:, 3] - rows[:, 1])
    centre = np.stack([(rows[:, 0] + rows[:, 2]) / 2 - width / 2, (rows[:, 1] + rows[:, 3]) / 2 - height / 2], 1)
    return rows[np.argmax(area - 2.0 * (centre ** 2).sum(1))]

  def _detect_grouped(self, copies: list[np.ndarray]) -> list[np.ndarray | None]:
    """Detects on photos of any sizes, batching those of equal size; returns the picked row per photo."""
    picked: list[np.ndarray | None] = [None] * len(copies)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, c in enumerate(copies):
      groups.setdefault(c.shape, []).append(i)
    for shape, idx in groups.items():
      for rows, i in zip(self.detect([copies[i] for i in idx]), idx):
        picked[i] = self._pick(rows, shape[0], shape[1])
    return picked

  def _align_batch(self, photos: list[np.ndarray]) -> interface.AlignResult:
    copies, factors = zip(*(self._detection_copy(p) for p in photos))
    factors, offsets = list(factors), [0.0] * len(photos)
    picked = self._detect_grouped(list(copies))
    misses = [i for i, row in enumerate(picked) if row is None]
    if misses and self.retry_padding > 0:
      padded = []
      for i in misses:
        h, w = copies[i].shape[:2]
        pad = int(round(self.retry_padding * max(h, w)))
        padded.append(np.pad(copies[i], ((pad, pad), (pad, pad), (0, 0)), mode='edge'))
        offsets[i] = pad
      for i, row in zip(misses, self._detect_grouped(padded)):
        picked[i] = row
    landmarks = np.zeros((len(photos), 5, 2), np.float32)
    scores = np.zeros((len(photos),), np.float32)
    found = np.zeros((len(photos),), bool)
    for i, row in enumerate(picked):
      if row is None:
        continue
      # Detection-copy pixel centres -> photo pixel centres.
      points = np.stack([row[5:10], row[10:15]], 1) - offsets[i]
      landmarks[i] = (points + 0.5) / factors[i] - 0.5
      scores[i], found[i] = row[4], True
    return interface.faces_from_landmarks(photos, landmarks, scores, found)
