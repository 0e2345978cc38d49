"""CVLFace's Differentiable Face Aligner (DFA, Kim et al. CVPR 2024), rebuilt in plain PyTorch.

The Hugging Face snapshots `minchul/cvlface_DFA_resnet50` and `minchul/cvlface_DFA_mobilenet` ship remote code that
needs transformers, timm and torchvision (and downloads ImageNet weights while building). Here the network is written
out (torchvision-style ResNet-50 or MobileNet-0.25, FPN, SSH, RetinaFace heads, an MLP-Mixer aggregator over the 1050
priors) and the tensors are loaded with strict key matching from `model.safetensors` (keys `model.net.*`) or
`pretrained_model/model.pt` (a plain tensor dict, keys `net.*`, read with weights_only=True).

At a fixed 160x160 input the net predicts one face per photo: box, face logits and 5 landmarks in [0, 1] of the
square-padded photo. The similarity transform of those landmarks onto the ArcFace template is applied to the
full-resolution photo, so crops stay sharp.
"""
from __future__ import annotations

import itertools
import json
import os
import pathlib
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from PIL import Image

from jaxface.align import base

DEFAULT_REPO = 'minchul/cvlface_DFA_resnet50'
REPO_IDS = {'resnet50': 'minchul/cvlface_DFA_resnet50', 'mobile0.25': 'minchul/cvlface_DFA_mobilenet'}
NUM_PRIORS = 1050


class SnapshotError(ValueError):
  """A DFA snapshot that cannot be found, downloaded or loaded; the message is one line saying what to do."""


# --- building blocks (names follow the RetinaFace code the weights were trained with) ------------------------------

def _conv_bn(cin: int, cout: int, stride: int = 1, leaky: float = 0.0, kernel: int = 3, act: bool = True,
             groups: int = 1) -> nn.Sequential:
  layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
  if act:
    layers.append(nn.LeakyReLU(leaky))
  return nn.Sequential(*layers)


def _conv_dw(cin: int, cout: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
  """Depthwise 3x3 + pointwise 1x1, each with BN and LeakyReLU: keys .0-.5 as in the trained checkpoints."""
  return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                       nn.LeakyReLU(leaky), nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(leaky))


class MobileNetV1(nn.Module):
  """MobileNet-0.25 body: (B, 3, 160, 160) -> strides 8/16/32 with 64/128/256 channels."""

  def __init__(self):
    super().__init__()
    self.stage1 = nn.Sequential(_conv_bn(3, 8, 2, leaky=0.1), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2),
                                _conv_dw(32, 32, 1), _conv_dw(32, 64, 2), _conv_dw(64, 64, 1))
    self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
    self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    c2 = self.stage1(x)
    c3 = self.stage2(c2)
    return [c2, c3, self.stage3(c3)]


class Bottleneck(nn.Module):
  """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv)."""

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    cout = planes * 4
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
  """torchvision ResNet-50 without avgpool/fc: returns layer2/3/4 (512/1024/2048 channels, strides 8/16/32)."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    cin = 64
    for name, planes, blocks, stride in [('layer1', 64, 3, 1), ('layer2', 128, 4, 2), ('layer3', 256, 6, 2),
                                         ('layer4', 512, 3, 2)]:
      layers = []
      for i in range(blocks):
        layers.append(Bottleneck(cin, planes, stride if i == 0 else 1))
        cin = planes * 4
      setattr(self, name, nn.Sequential(*layers))

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    c2 = self.layer2(self.layer1(x))
    c3 = self.layer3(c2)
    return [c2, c3, self.layer4(c3)]


class FPN(nn.Module):

  def __init__(self, in_channels: list[int], width: int):
    super().__init__()
    leaky = 0.1 if width <= 64 else 0.0
    self.output1 = _conv_bn(in_channels[0], width, leaky=leaky, kernel=1)
    self.output2 = _conv_bn(in_channels[1], width, leaky=leaky, kernel=1)
    self.output3 = _conv_bn(in_channels[2], width, leaky=leaky, kernel=1)
    self.merge1 = _conv_bn(width, width, leaky=leaky)
    self.merge2 = _conv_bn(width, width, leaky=leaky)

  def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    out1, out2, out3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
    out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[-2:], mode='nearest'))
    out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[-2:], mode='nearest'))
    return [out1, out2, out3]


class SSH(nn.Module):

  def __init__(self, width: int):
    super().__init__()
    leaky = 0.1 if width <= 64 else 0.0
    self.conv3X3 = _conv_bn(width, width // 2, act=False)
    self.conv5X5_1 = _conv_bn(width, width // 4, leaky=leaky)
    self.conv5X5_2 = _conv_bn(width // 4, width // 4, act=False)
    self.conv7X7_2 = _conv_bn(width // 4, width // 4, leaky=leaky)
    self.conv7x7_3 = _conv_bn(width // 4, width // 4, act=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    branch5 = self.conv5X5_1(x)
    out = torch.cat([self.conv3X3(x), self.conv5X5_2(branch5), self.conv7x7_3(self.conv7X7_2(branch5))], dim=1)
    return F.relu(out)


class _Head(nn.Module):
  """1x1 conv head: (B, C, H, W) -> (B, H*W*anchors, k) in the priors' order (row, column, anchor)."""

  def __init__(self, width: int, k: int, anchors: int = 2):
    super().__init__()
    self.k = k
    self.conv1x1 = nn.Conv2d(width, anchors * k, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.conv1x1(x).permute(0, 2, 3, 1)
    return out.reshape(out.shape[0], -1, self.k)


class _Mlp(nn.Module):

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(F.gelu(self.fc1(x)))


class MixerBlock(nn.Module):
  """timm's MixerBlock(dim, seq_len) with mlp_ratio (0.5, 4.0): token MLP then channel MLP, pre-LayerNorm eps 1e-6."""

  def __init__(self, dim: int = 16, seq_len: int = NUM_PRIORS):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp_tokens = _Mlp(seq_len, int(0.5 * dim))
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp_channels = _Mlp(dim, int(4.0 * dim))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
    return x + self.mlp_channels(self.norm2(x))


def make_priors(input_size: int = 160) -> torch.Tensor:
  """RetinaFace priors (cx, cy, w, h) in [0, 1]: (1050, 4) at 160, ordered level, row, column, size."""
  priors = []
  for step, sizes in zip([8, 16, 32], [[64, 80], [96, 112], [128, 144]]):
    cells = -(-input_size // step)
    for i, j in itertools.product(range(cells), range(cells)):
      for size in sizes:
        priors.append([(j + 0.5) * step / input_size, (i + 0.5) * step / input_size, size / input_size,
                       size / input_size])
  return torch.tensor(priors, dtype=torch.float32)


class DFANet(nn.Module):
  """The DFA landmark predictor: (B, 3, S, S) BGR in [-1, 1] -> (B, 16) = box 4 | face logits 2 | landmarks 10.

  Box and landmarks are (x, y) in [0, 1] of the input. `arch` is 'resnet50' or 'mobile0.25'.
  """

  def __init__(self, arch: str = 'resnet50', input_size: int = 160):
    super().__init__()
    if arch == 'resnet50':
      self.body, in_channels, width = ResNet50(), [512, 1024, 2048], 256
    elif arch in ('mobile0.25', 'mobilenet0.25', 'mobilenet'):
      self.body, in_channels, width = MobileNetV1(), [64, 128, 256], 64
    else:
      raise ValueError(f'unknown DFA arch {arch!r}: expected resnet50 or mobile0.25')
    self.arch = arch
    self.fpn = FPN(in_channels, width)
    self.ssh1, self.ssh2, self.ssh3 = SSH(width), SSH(width), SSH(width)
    self.ClassHead = nn.ModuleList([_Head(width, 2) for _ in range(3)])  # pylint: disable=invalid-name
    self.BboxHead = nn.ModuleList([_Head(width, 4) for _ in range(3)])  # pylint: disable=invalid-name
    self.LandmarkHead = nn.ModuleList([_Head(width, 10) for _ in range(3)])  # pylint: disable=invalid-name
    priors = make_priors(input_size)
    self.aggregator = nn.Sequential(*[MixerBlock(16, len(priors)) for _ in range(3)], nn.Linear(16, 1))
    self.register_buffer('priors', priors, persistent=False)
    self.variances = (0.1, 0.2)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    feats = self.fpn(self.body(x))
    feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]
    boxes = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
    logits = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
    marks = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
    centre, size = self.priors[None, :, :2], self.priors[None, :, 2:]
    box_centre = centre + boxes[..., :2] * self.variances[0] * size
    box_size = size * torch.exp(boxes[..., 2:] * self.variances[1])
    decoded_boxes = torch.cat([box_centre - box_size / 2, box_centre + box_size / 2], dim=-1)
    decoded_marks = (centre[:, :, None] + marks.reshape(*marks.shape[:2], 5, 2) * self.variances[0]
                     * size[:, :, None]).reshape(marks.shape)
    combined = torch.cat([decoded_boxes, logits, decoded_marks], dim=2)  # (B, 1050, 16)
    weight = torch.softmax(self.aggregator(combined), dim=1)
    return (weight * combined).sum(dim=1)


# --- snapshot loading -------------------------------------------------------------------------------------------

def read_snapshot_config(folder: pathlib.Path) -> dict[str, Any]:
  """The `conf` of a snapshot's config.json (arch, input_size, output_size, color_space, input_padding_ratio)."""
  path = folder / 'config.json'
  if not path.is_file():
    return {}
  try:
    config = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise SnapshotError(f'{path}: not valid JSON ({e}); download the snapshot again') from None
  conf = config.get('conf', config) if isinstance(config, dict) else {}
  return conf if isinstance(conf, dict) else {}


def read_snapshot_tensors(folder: pathlib.Path) -> tuple[dict[str, torch.Tensor], pathlib.Path]:
  """The network's tensors with their prefix removed, from model.safetensors or else pretrained_model/model.pt."""
  safetensors_path = folder / 'model.safetensors'
  torch_path = folder / 'pretrained_model' / 'model.pt'
  if safetensors_path.is_file():
    from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel
    tensors, prefix, path = load_file(str(safetensors_path)), 'model.net.', safetensors_path
  elif torch_path.is_file():
    try:
      tensors = torch.load(torch_path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      raise SnapshotError(f'{torch_path}: not a plain tensor dict ({type(e).__name__}); use the snapshot\'s '
                          'model.safetensors instead') from None
    prefix, path = 'net.', torch_path
  else:
    raise SnapshotError(f'{folder}: no model.safetensors or pretrained_model/model.pt; download a DFA snapshot '
                        f'(huggingface-cli download {DEFAULT_REPO} --local-dir {folder})')
  if not isinstance(tensors, dict):
    raise SnapshotError(f'{path}: expected a dict of tensors, got {type(tensors).__name__}')
  stripped = {}
  for key, value in tensors.items():
    if not key.startswith(prefix):
      raise SnapshotError(f'{path}: unexpected key {key!r} (every key should start with {prefix!r}); is this a '
                          'CVLFace DFA snapshot?')
    stripped[key[len(prefix):]] = value
  return stripped, path


def guess_arch(keys: Any) -> str:
  return 'mobile0.25' if any(k.startswith('body.stage1.') for k in keys) else 'resnet50'


def load_strict(net: DFANet, tensors: dict[str, torch.Tensor], path: pathlib.Path, prefix: str) -> None:
  """Copies tensors into net; any missing, extra or mis-shaped key raises SnapshotError naming the key.

  BatchNorm's num_batches_tracked counters may be absent (they do not affect inference).
  """
  expected = net.state_dict()
  missing = [k for k in expected if k not in tensors and not k.endswith('num_batches_tracked')]
  extra = [k for k in tensors if k not in expected]
  arch_hint = f'(the net was built as {net.arch}: check config.json "arch")'
  if missing:
    more = f' and {len(missing) - 1} more' if len(missing) > 1 else ''
    raise SnapshotError(f'{path}: missing key {prefix}{missing[0]}{more} {arch_hint}')
  if extra:
    more = f' and {len(extra) - 1} more' if len(extra) > 1 else ''
    raise SnapshotError(f'{path}: unexpected key {prefix}{extra[0]}{more} {arch_hint}')
  for key, value in tensors.items():
    if tuple(value.shape) != tuple(expected[key].shape):
      raise SnapshotError(f'{path}: key {prefix}{key} has shape {tuple(value.shape)}, expected '
                          f'{tuple(expected[key].shape)} {arch_hint}')
  net.load_state_dict(tensors, strict=False)


_REPO_ID = re.compile(r'^[A-Za-z0-9][\w.-]*/[\w.-]+$')


def resolve_snapshot(path: str | os.PathLike | None) -> pathlib.Path:
  """A local snapshot folder for `path`: an existing folder, or a Hugging Face repo id fetched with snapshot_download.

  Offline, a repo id raises SnapshotError with the command to download it by hand.
  """
  path = str(path) if path is not None else DEFAULT_REPO
  folder = pathlib.Path(path).expanduser()
  if folder.is_dir():
    return folder
  if not _REPO_ID.match(path) or folder.exists():
    raise SnapshotError(f'{path}: no such DFA snapshot folder (pass the folder holding config.json and '
                        f'model.safetensors, or a Hugging Face repo id such as {DEFAULT_REPO})')
  local = f'third_party/weights/{path.split("/")[-1]}'
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
    return pathlib.Path(snapshot_download(repo_id=path))
  except Exception as e:  # pylint: disable=broad-except  (offline, gated, missing package: one answer)
    raise SnapshotError(f'cannot download {path} ({type(e).__name__}); on a machine with internet run '
                        f'`huggingface-cli download {path} --local-dir {local}` and pass --aligner-path {local}'
                        ) from None


def load_dfa(path: str | os.PathLike | None = None, device: str | torch.device = 'cpu'
             ) -> tuple[DFANet, dict[str, Any]]:
  """Builds the DFA net from a snapshot folder or repo id and loads its weights strictly; returns (net, conf)."""
  folder = resolve_snapshot(path)
  conf = read_snapshot_config(folder)
  tensors, weights_path = read_snapshot_tensors(folder)
  arch = str(conf.get('arch') or guess_arch(tensors))
  input_size = int(conf.get('input_size', 160))
  if str(conf.get('color_space', 'RGB')).upper() != 'RGB':
    raise SnapshotError(f'{folder / "config.json"}: color_space {conf["color_space"]!r} is not supported (RGB only)')
  net = DFANet(arch, input_size)
  prefix = 'model.net.' if weights_path.suffix == '.safetensors' else 'net.'
  load_strict(net, tensors, weights_path, prefix)
  conf = {'arch': arch, 'input_size': input_size, 'output_size': int(conf.get('output_size', 112)),
          'input_padding_ratio': float(conf.get('input_padding_ratio', 0.0) or 0.0), 'weights': str(weights_path)}
  return net.to(device).eval(), conf


# --- the aligner ------------------------------------------------------------------------------------------------

class DFAAligner(base.Aligner):
  """CVLFace DFA: one face per photo, landmarks from the 160 px network input, warp from the full-resolution photo.

  Args:
    path: snapshot folder (config.json + model.safetensors or pretrained_model/model.pt) or a repo id.
    device: torch device; default CUDA when available.
    batch_size: photos per network batch.
    min_score: faces scoring below this count as not found (centre-crop fallback, score 0).
    max_input_side: photos longer than this are first reduced (antialiased) to this side before the bilinear resize to
      the network input; this only affects detection, never the crop.
  """
  name = 'dfa'

  def __init__(self, path: str | os.PathLike | None = None, device: str | None = None, batch_size: int = 32,
               min_score: float = 0.5, max_input_side: int = 640):
    self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    self.net, self.conf = load_dfa(path, self.device)
    self.batch_size = batch_size
    self.min_score = float(min_score)
    self.max_input_side = int(max_input_side)

  def settings(self) -> dict[str, Any]:
    return {'name': self.name, 'arch': self.conf['arch'], 'input_size': self.conf['input_size'],
            'input_padding_ratio': self.conf['input_padding_ratio'], 'weights': pathlib.Path(self.conf['weights']).name,
            'min_score': self.min_score, 'max_input_side': self.max_input_side}

  def _network_input(self, photo: np.ndarray) -> tuple[torch.Tensor, float, float, float]:
    """The photo as the DFA preprocessor makes it: (3, S, S) RGB in [-1, 1], padded to a square with -1 (plus the
    snapshot's padding ratio), bilinear-resized with align_corners=True. Also returns the padded square's side and
    the photo's offset inside it, in photo pixels."""
    h, w = photo.shape[:2]
    side = max(h, w)
    extra = int(side * self.conf['input_padding_ratio'])
    left, top = (side - w) // 2 + extra, (side - h) // 2 + extra
    full = side + 2 * extra
    # Huge photos are reduced (antialiased) first: the bilinear resize below would alias and needs the whole photo.
    factor = min(1.0, self.max_input_side / side)
    if factor < 1.0:
      photo = np.asarray(Image.fromarray(photo).resize((max(1, round(w * factor)), max(1, round(h * factor))),
                                                       Image.Resampling.BICUBIC, reducing_gap=3.0))
    x = torch.from_numpy(np.array(photo, copy=True)).to(self.device).permute(2, 0, 1).float() / 127.5 - 1.0
    sh, sw = x.shape[1:]
    pad_l, pad_t = round(left * factor), round(top * factor)
    square = max(round(full * factor), sh + pad_t, sw + pad_l)
    x = F.pad(x, (pad_l, square - sw - pad_l, pad_t, square - sh - pad_t), value=-1.0)
    size = self.conf['input_size']
    x = F.interpolate(x[None], size=(size, size), mode='bilinear', align_corners=True)[0]
    return x, float(full), float(left), float(top)

  @torch.no_grad()
  def predict(self, photos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks (B, 5, 2) in photo pixels, boxes (B, 4) x1,y1,x2,y2 in photo pixels, face scores (B,)."""
    inputs, geometry = [], []
    for photo in photos:
      x, side, off_x, off_y = self._network_input(photo)
      inputs.append(x)
      geometry.append((side, off_x, off_y))
    out = self.net(torch.stack(inputs).flip(1)).float().cpu().numpy()  # the net was trained on BGR
    geometry = np.asarray(geometry, np.float64)
    side, offset = geometry[:, :1, None], geometry[:, None, 1:]
    boxes = (out[:, :4].reshape(-1, 2, 2) * side - offset).reshape(-1, 4)
    landmarks = out[:, 6:16].reshape(-1, 5, 2) * side - offset
    logits = out[:, 4:6]
    scores = np.exp(logits[:, 1] - np.logaddexp(logits[:, 0], logits[:, 1]))
    return landmarks.astype(np.float32), boxes.astype(np.float32), scores.astype(np.float32)

  def _align_batch(self, photos: list[np.ndarray]) -> base.AlignResult:
    landmarks, _, scores = self.predict(photos)
    found = (scores >= self.min_score) & np.isfinite(landmarks).all(axis=(1, 2))
    return base.faces_from_landmarks(photos, landmarks, scores, found)
