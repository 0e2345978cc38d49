"""The RetinaFace network (Deng et al. 2019) in plain PyTorch: body, FPN, SSH, class/box/landmark heads, priors, decoding.

One module serves two aligners: `retinaface` (MobileNet-0.25, the biubug6/Face-Detector-1MB-with-landmark weights,
any input size) and `dfa` (CVLFace's DFA, a RetinaFace with a ResNet-50 or MobileNet-0.25 body at a fixed 160x160
input plus an aggregator, in `dfa.py`). Parameter names follow the RetinaFace code both were trained with
(`body.stage1.*`, `fpn.output1`, `ssh1.conv3X3`, `ClassHead.0.conv1x1`, ...), so their state dicts load strictly.
"""
from __future__ import annotations

import itertools
import pathlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

VARIANCES = (0.1, 0.2)


# --- building blocks -------------------------------------------------------------------------------------------

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
  """MobileNet-0.25 body: (B, 3, H, W) -> strides 8/16/32 with 64/128/256 channels (ceil(H / stride) rows)."""

  def __init__(self, leaky: float = 0.1):
    super().__init__()
    self.stage1 = nn.Sequential(_conv_bn(3, 8, 2, leaky=leaky), _conv_dw(8, 16, 1, leaky), _conv_dw(16, 32, 2, leaky),
                                _conv_dw(32, 32, 1, leaky), _conv_dw(32, 64, 2, leaky), _conv_dw(64, 64, 1, leaky))
    self.stage2 = nn.Sequential(_conv_dw(64, 128, 2, leaky), *[_conv_dw(128, 128, 1, leaky) for _ in range(5)])
    self.stage3 = nn.Sequential(_conv_dw(128, 256, 2, leaky), _conv_dw(256, 256, 1, leaky))

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

  def __init__(self, in_channels: list[int], width: int, leaky: float):
    super().__init__()
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

  def __init__(self, width: int, leaky: float):
    super().__init__()
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


# --- the network -----------------------------------------------------------------------------------------------

class RetinaFace(nn.Module):
  """Body + FPN + SSH + heads: (B, 3, H, W) -> raw (box offsets (B, N, 4), class logits (B, N, 2), landmark offsets
  (B, N, 10)), N = the priors of `make_priors(H, W, ...)`.

  Args:
    arch: 'mobile0.25' or 'resnet50'.
    leaky: the negative slope of every activation. None is Pytorch_Retinaface's rule, which DFA was trained with:
      0.1 in MobileNet-0.25 and in FPN/SSH of width <= 64, 0 elsewhere. biubug6/Face-Detector-1MB-with-landmark's
      net.py builds the same layers with plain ReLU everywhere (its weights need leaky=0: with 0.1 the boxes still
      look right but the landmarks spread about 2x too far from the anchor).
  """

  def __init__(self, arch: str = 'mobile0.25', leaky: float | None = None):
    super().__init__()
    if arch == 'resnet50':
      in_channels, width = [512, 1024, 2048], 256
      self.body = ResNet50()
    elif arch in ('mobile0.25', 'mobilenet0.25', 'mobilenet'):
      in_channels, width = [64, 128, 256], 64
      self.body = MobileNetV1(0.1 if leaky is None else leaky)
    else:
      raise ValueError(f'unknown RetinaFace arch {arch!r}: expected resnet50 or mobile0.25')
    if leaky is None:
      leaky = 0.1 if width <= 64 else 0.0
    self.arch = arch
    self.fpn = FPN(in_channels, width, leaky)
    self.ssh1, self.ssh2, self.ssh3 = SSH(width, leaky), SSH(width, leaky), SSH(width, leaky)
    self.ClassHead = nn.ModuleList([_Head(width, 2) for _ in range(3)])  # pylint: disable=invalid-name
    self.BboxHead = nn.ModuleList([_Head(width, 4) for _ in range(3)])  # pylint: disable=invalid-name
    self.LandmarkHead = nn.ModuleList([_Head(width, 10) for _ in range(3)])  # pylint: disable=invalid-name

  def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    feats = self.fpn(self.body(x))
    feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]
    boxes = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
    logits = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
    marks = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
    return boxes, logits, marks

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return self.heads(x)


def make_priors(height: int, width: int, min_sizes: Sequence[Sequence[int]], steps: Sequence[int] = (8, 16, 32)
                ) -> torch.Tensor:
  """RetinaFace priors (cx, cy, w, h) as fractions of the input: (N, 4), ordered level, row, column, size.

  A level of stride s has ceil(H / s) x ceil(W / s) cells, as many as the body's feature map.
  """
  priors = []
  for step, sizes in zip(steps, min_sizes):
    rows, cols = -(-height // step), -(-width // step)
    for i, j in itertools.product(range(rows), range(cols)):
      for size in sizes:
        priors.append([(j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height])
  return torch.tensor(priors, dtype=torch.float32)


def decode(boxes: torch.Tensor, marks: torch.Tensor, priors: torch.Tensor,
           variances: tuple[float, float] = VARIANCES) -> tuple[torch.Tensor, torch.Tensor]:
  """Head offsets -> boxes (B, N, 4) x1, y1, x2, y2 and landmarks (B, N, 10) (x, y) x 5, as fractions of the input.

  Boxes: centre = prior centre + offset * v0 * prior size, size = prior size * exp(offset * v1). Landmarks: prior
  centre + offset * v0 * prior size.
  """
  centre, size = priors[None, :, :2], priors[None, :, 2:]
  box_centre = centre + boxes[..., :2] * variances[0] * size
  box_size = size * torch.exp(boxes[..., 2:] * variances[1])
  decoded_boxes = torch.cat([box_centre - box_size / 2, box_centre + box_size / 2], dim=-1)
  decoded_marks = (centre[:, :, None] + marks.reshape(*marks.shape[:2], 5, 2) * variances[0]
                   * size[:, :, None]).reshape(marks.shape)
  return decoded_boxes, decoded_marks


# --- strict loading --------------------------------------------------------------------------------------------

def load_strict(net: nn.Module, tensors: dict[str, torch.Tensor], path: str | pathlib.Path, prefix: str = '',
                hint: str = '', error: type[Exception] = ValueError) -> None:
  """Copies tensors into net; any missing, extra or mis-shaped key raises `error` with one line naming the key.

  BatchNorm's num_batches_tracked counters may be absent (they do not affect inference).
  """
  expected = net.state_dict()
  missing = [k for k in expected if k not in tensors and not k.endswith('num_batches_tracked')]
  extra = [k for k in tensors if k not in expected]
  hint = f' {hint}' if hint else ''
  for problem, keys in (('missing', missing), ('unexpected', extra)):
    if keys:
      more = f' and {len(keys) - 1} more' if len(keys) > 1 else ''
      raise error(f'{path}: {problem} key {prefix}{keys[0]}{more}{hint}')
  for key, value in tensors.items():
    if tuple(value.shape) != tuple(expected[key].shape):
      raise error(f'{path}: key {prefix}{key} has shape {tuple(value.shape)}, expected '
                  f'{tuple(expected[key].shape)}{hint}')
  net.load_state_dict(tensors, strict=False)
