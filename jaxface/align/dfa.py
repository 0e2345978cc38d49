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

from jaxface.align import interface, retinaface_net

DEFAULT_REPO = 'minchul/cvlface_DFA_resnet50'
REPO_IDS = {'resnet50': 'minchul/cvlface_DFA_resnet50', 'mobile0.25': 'minchul/cvlface_DFA_mobilenet'}
NUM_PRIORS = 1050
# DFA's anchors (2 per cell at strides 8/16/32): bigger than the detector's, as its input is one cropped face.
DFA_MIN_SIZES = ((64, 80), (96, 112), (128, 144))


class SnapshotError(ValueError):
  """A DFA snapshot that cannot be found, downloaded or loaded; the message is one line saying what to do."""


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
  """DFA's priors (cx, cy, w, h) in [0, 1]: (1050, 4) at 160, ordered level, row, column, size."""
  return retinaface_net.make_priors(input_size, input_size, DFA_MIN_SIZES)


class DFANet(retinaface_net.RetinaFace):
  """The DFA landmark predictor: (B, 3, S, S) BGR in [-1, 1] -> (B, 16) = box 4 | face logits 2 | landmarks 10.

  A RetinaFace (the shared `retinaface_net` body, FPN, SSH and heads) whose 1050 decoded priors an MLP-Mixer weighs into
  one face. Box and landmarks are (x, y) in [0, 1] of the input. `arch` is 'resnet50' or 'mobile0.25'.
  """

  def __init__(self, arch: str = 'resnet50', input_size: int = 160):
    try:
      super().__init__(arch)
    except ValueError:
      raise ValueError(f'unknown DFA arch {arch!r}: expected resnet50 or mobile0.25') from None
    priors = make_priors(input_size)
    self.aggregator = nn.Sequential(*[MixerBlock(16, len(priors)) for _ in range(3)], nn.Linear(16, 1))
    self.register_buffer('priors', priors, persistent=False)
    self.variances = retinaface_net.VARIANCES

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    boxes, logits, marks = self.heads(x)
    decoded_boxes, decoded_marks = retinaface_net.decode(boxes, marks, self.priors, self.variances)
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
  """Copies tensors into net; a missing, extra or mis-shaped key raises SnapshotError naming the key."""
  retinaface_net.load_strict(net, tensors, path, prefix, hint=f'(the net was built as {net.arch}: check config.json '
                             '"arch")', error=SnapshotError)


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

class DFAAligner(interface.Aligner):
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

  def _align_batch(self, photos: list[np.ndarray]) -> interface.AlignResult:
    landmarks, _, scores = self.predict(photos)
    found = (scores >= self.min_score) & np.isfinite(landmarks).all(axis=(1, 2))
    return interface.faces_from_landmarks(photos, landmarks, scores, found)
