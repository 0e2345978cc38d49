r"""Benchmarks jaxface against an equivalent PyTorch pipeline; see BENCHMARKS.md for measured figures.

  python scripts/bench.py --stage train --arch ir18 --batch 32           # jit train step vs PyTorch eager, and the ratio
  python scripts/bench.py --stage train --arch mobilefacenet --batch 64  # the pretrained real-faces backbone vs its twin
  python scripts/bench.py --stage ops --batch 32                         # depthwise conv and BatchNorm: XLA/Flax vs jaxface vs PyTorch
  python scripts/bench.py --stage conv --batch 32                        # conv2d (custom VJP) vs lax vs PyTorch per IR-18 shape
  python scripts/bench.py --stage all --json bench.json                  # every stage, each in its own subprocess

Stages: conv, ops, train, infer, align, pipeline. Each figure is the median of --repeats timed runs after warm-up; JAX and
PyTorch runs alternate within one process so that load from other programs hits both alike. Each stage runs in a child
process (unless --in-process) so its peak resident memory (ru_maxrss) is its own.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STAGES = ('conv', 'ops', 'train', 'infer', 'align', 'pipeline')
ARCHS = {'ir18': 'ir_18', 'ir50': 'ir_50', 'mobilefacenet': 'mobilefacenet'}
# Forward FLOPs per 112x112 image, multiply-adds counted as 2 (reference.md section 8).
# MobileFaceNet: XLA's cost analysis of the forward pass at batch 1 (convolutions, BatchNorm and activations).
FORWARD_FLOPS = {'ir_18': 5.19e9, 'ir_50': 12.6e9, 'mobilefacenet': 0.48e9}
# Dense bfloat16 peak FLOP/s of accelerators we may meet, for the share-of-peak figure.
BF16_PEAK = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L4': 121e12, 'TPU v4': 275e12, 'TPU v5e': 197e12}
NUM_CLASSES = 1000


def median_time(fn: Callable[[], Any], repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def alternate(runners: dict[str, Callable[[], Any]], repeats: int,
              all_times: dict[str, list[float]] | None = None) -> dict[str, float]:
  """Median seconds per call of each runner, the runners taking turns so that background load hits them alike.

  Every timed call's seconds are appended to `all_times[name]` when it is given.
  """
  times = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  if all_times is not None:
    for name, ts in times.items():
      all_times.setdefault(name, []).extend(ts)
  return {name: statistics.median(ts) for name, ts in times.items()}


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def setup_threads(device: str) -> dict[str, Any]:
  import torch  # pylint: disable=import-outside-toplevel
  cores = os.cpu_count() or 1
  torch.set_num_threads(cores)
  return {'cpu_count': cores, 'torch_threads': torch.get_num_threads(), 'device': device}


def jax_device(device: str):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.devices('cpu' if device == 'cpu' else None)[0]


def torch_device(device: str) -> str:
  return 'cpu' if device == 'cpu' else 'cuda'


def sync_torch(device: str) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  if device != 'cpu':
    torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------------------------------
# conv: one convolution, forward and both gradients, per IR-18 shape.
# ----------------------------------------------------------------------------------------------------------------------

# (input side, in channels, out channels, kernel, stride, how many times IR-18 has it) at 112x112 input.
IR18_CONVS = [
    (112, 3, 64, 3, 1, 1), (112, 64, 64, 3, 1, 1), (112, 64, 64, 3, 2, 1), (56, 64, 64, 3, 1, 2),
    (56, 64, 128, 3, 1, 1), (56, 128, 128, 3, 2, 1), (56, 64, 128, 1, 2, 1), (28, 128, 128, 3, 1, 2),
    (28, 128, 256, 3, 1, 1), (28, 256, 256, 3, 2, 1), (28, 128, 256, 1, 2, 1), (14, 256, 256, 3, 1, 2),
    (14, 256, 512, 3, 1, 1), (14, 512, 512, 3, 2, 1), (14, 256, 512, 1, 2, 1), (7, 512, 512, 3, 1, 2),
]


def stage_conv(args) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from jaxface.ops import conv  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  rows = []
  shapes = IR18_CONVS if not args.conv_shapes else [IR18_CONVS[int(i)] for i in args.conv_shapes.split(',')]
  for side, cin, cout, k, stride, count in shapes:
    pad = (k - 1) // 2
    x = jnp.asarray(rng.standard_normal((args.batch, side, side, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.05, jnp.float32)
    out_side = (side + 2 * pad - k) // stride + 1
    dy = jnp.asarray(rng.standard_normal((args.batch, out_side, out_side, cout)), jnp.float32)

    def jax_fns(fn):
      fwd = jax.jit(lambda x_, w_: fn(x_, w_, stride, (pad, pad)))
      dx = jax.jit(lambda x_, w_, dy_: jax.vjp(lambda a: fn(a, w_, stride, (pad, pad)), x_)[1](dy_)[0])
      dw = jax.jit(lambda x_, w_, dy_: jax.vjp(lambda b: fn(x_, b, stride, (pad, pad)), w_)[1](dy_)[0])
      return fwd, dx, dw

    runs = {}
    for name, fn in (('lax', conv.conv2d_lax), ('jaxface', conv.conv2d)):
      fwd, dx, dw = jax_fns(fn)
      runs[f'{name}_fwd'] = functools.partial(lambda f: f(x, w).block_until_ready(), fwd)
      runs[f'{name}_dx'] = functools.partial(lambda f: f(x, w, dy).block_until_ready(), dx)
      runs[f'{name}_dw'] = functools.partial(lambda f: f(x, w, dy).block_until_ready(), dw)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy())
    dyt = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())
    runs['torch_fwd'] = lambda: torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad)
    runs['torch_dx'] = lambda: torch.nn.grad.conv2d_input(xt.shape, wt, dyt, stride=stride, padding=pad)
    runs['torch_dw'] = lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, dyt, stride=stride, padding=pad)
    with torch.no_grad():
      for run in runs.values():
        run()  # compile / warm up
      times = alternate(runs, args.repeats)
    row = {'shape': f'{side}x{side} {cin}->{cout} k{k} s{stride}', 'count': count,
           **{key: round(value * 1000, 2) for key, value in times.items()}}
    rows.append(row)
    print(f"{row['shape']:28s} x{count}  fwd lax {row['lax_fwd']:7.1f} jaxface {row['jaxface_fwd']:7.1f} torch "
          f"{row['torch_fwd']:7.1f} | dx lax {row['lax_dx']:7.1f} jaxface {row['jaxface_dx']:7.1f} torch "
          f"{row['torch_dx']:7.1f} | dW lax {row['lax_dw']:8.1f} jaxface {row['jaxface_dw']:7.1f} torch "
          f"{row['torch_dw']:7.1f} ms", flush=True)
  totals = {}
  for key in rows[0]:
    if key not in ('shape', 'count'):
      totals[key] = round(sum(r[key] * r['count'] for r in rows), 1)
  print('IR-18 total (ms, weighted by count): ' + ', '.join(f'{k} {v}' for k, v in totals.items()))
  return {'batch': args.batch, 'unit': 'ms per call (median)', 'rows': rows, 'ir18_totals_ms': totals}


# ----------------------------------------------------------------------------------------------------------------------
# train: the jaxface jit train step against a PyTorch eager (and compiled) step of the same network and heads.
# ----------------------------------------------------------------------------------------------------------------------


def bench_config(arch: str, batch: int):
  from configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.model.arch = arch
  config.model.width = 1.0
  config.model.input_size = 112
  config.model.dropout = 0.4
  if arch == 'mobilefacenet':
    config.model.embedding_dim = 128
    config.model.input_norm = 'imagenet'
    config.model.dropout = 0.0
  config.model.fake_head = 'features'
  config.model.space_to_depth = False  # the PyTorch twin reads 112x112x3, as AdaFace's IR nets do
  config.model.bn_axis_name = None
  config.batch_size = batch
  config.optim.learning_rate = 0.01
  config.optim.fake_head_lr = 0.0  # one SGD for every parameter, as in the PyTorch step
  return config


def random_batch(batch: int, size: int = 112, seed: int = 0) -> dict[str, Any]:
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  is_fake = (rng.random(batch) < 0.25).astype(np.int32)
  return {'image': rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
          'label': rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
          'is_fake': is_fake, 'id_mask': (1 - is_fake).astype(np.float32)}


def jax_train_step(config, batch_np: dict[str, Any], device) -> Callable[[], Any]:
  """Returns run() doing one jitted train step of the trainer's own step function (state donated and carried)."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxface import train  # pylint: disable=import-outside-toplevel
  from jaxface.models.face_model import build_model  # pylint: disable=import-outside-toplevel
  from jaxface.models.heads import AdaFaceHead  # pylint: disable=import-outside-toplevel

  model, head = build_model(config.model), AdaFaceHead(NUM_CLASSES)
  lr_fn = lambda step: config.optim.learning_rate
  with jax.default_device(device):
    if all(hasattr(train, n) for n in ('make_optimizer', 'create_train_state', 'train_step')):
      tx = train.make_optimizer(config, lr_fn)
      state = train.create_train_state(model, head, tx, config, jax.random.key(0))
      step = jax.jit(functools.partial(train.train_step, model=model, head=head, tx=tx, config=config, lr_fn=lr_fn,
                                       axis_name=None), donate_argnums=0)
    else:
      state, step = _fallback_train_step(model, head, config)
    batch = jax.device_put(batch_np, device)
  holder = {'state': state}

  def run():
    holder['state'], summary = step(holder['state'], batch)
    jax.block_until_ready(summary['loss'])
  return run


def _fallback_train_step(model, head, config):
  """A self-contained step (SGD-momentum, AdaFace + fake BCE) for trees without jaxface.train's step functions."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from jaxface import losses  # pylint: disable=import-outside-toplevel

  images = jnp.zeros((2, 112, 112, 3), jnp.float32)
  variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, images, train=False)
  params = {'model': variables['params'], 'head': head.init(jax.random.key(2), jnp.zeros((2, 512)))['params']}
  tx = optax.sgd(config.optim.learning_rate, momentum=0.9)
  state = {'params': params, 'batch_stats': variables['batch_stats'], 'opt': tx.init(params),
           'adaface': losses.init_adaface_state()}

  def step(state, batch):
    def loss_fn(p):
      out, new_vars = model.apply({'params': p['model'], 'batch_stats': state['batch_stats']}, batch['image'],
                                  train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(3)})
      cosine = head.apply({'params': p['head']}, out['embedding'])
      norms = jnp.linalg.norm(out['embedding'], axis=-1)
      identity, ema, _ = losses.adaface_loss(cosine, norms, batch['label'], state['adaface'], m=0.4, h=0.333, s=64.0,
                                             t_alpha=0.01, mask=batch['id_mask'])
      return identity + losses.fake_bce(out['fake_logit'], batch['is_fake'], 1.0), (new_vars, ema)
    (loss, (new_vars, ema)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt = tx.update(grads, state['opt'], state['params'])
    return ({'params': optax.apply_updates(state['params'], updates), 'batch_stats': new_vars['batch_stats'],
             'opt': opt, 'adaface': ema}, {'loss': loss})
  return state, jax.jit(step, donate_argnums=0)


def torch_face_model(arch: str):
  """The PyTorch twin of FaceModel(fake_head='features') + AdaFaceHead: official IR net (or foamliu's MobileFaceNet),
  the same fake head (a conv3x3-BN-ReLU on the stage-1 map, mean+std pooled with the stage-2 map and the embedding)."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  from tests.torch_reference import build_torch_ir, build_torch_mobilefacenet  # pylint: disable=import-outside-toplevel

  mobile = arch == 'mobilefacenet'
  dim, stage1_ch, stage2_ch = (128, 64, 64) if mobile else (512, 64, 128)

  class TorchFaceModel(nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = (build_torch_mobilefacenet() if mobile else build_torch_ir(arch)).train()
      self.trace = nn.Sequential(nn.Conv2d(stage1_ch, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
      self.norm = nn.LayerNorm(dim + 2 * 64 + 2 * stage2_ch)
      self.mlp = nn.Sequential(nn.Linear(dim + 2 * 64 + 2 * stage2_ch, 256), nn.ReLU(), nn.Linear(256, 1))
      self.class_weights = nn.Parameter(torch.randn(dim, NUM_CLASSES))

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
      stage_ends = [sum(len_ for len_ in _units_per_stage(arch)[:i + 1]) for i in range(4)]
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


def _units_per_stage(arch: str) -> tuple[int, ...]:
  return {'ir_18': (2, 2, 2, 2), 'ir_34': (3, 4, 6, 3), 'ir_50': (3, 4, 14, 3), 'ir_101': (3, 13, 30, 3)}[arch]


def torch_losses(embedding, cosine, fake_logit, label, is_fake, id_mask):
  """AdaFace (batch-statistics margin, as the official code computes it) + fake BCE + push-away, in PyTorch."""
  import torch  # pylint: disable=import-outside-toplevel
  norms = embedding.norm(dim=1).clamp(0.001, 100).detach()
  margin_scaler = ((norms - norms.mean()) / (norms.std() + 1e-3) * 0.333).clamp(-1, 1)
  cosine = cosine.clamp(-1 + 1e-3, 1 - 1e-3)
  one_hot = torch.nn.functional.one_hot(label, NUM_CLASSES).float()
  theta = torch.acos(cosine) + one_hot * (-0.4 * margin_scaler)[:, None]
  logits = (torch.cos(theta.clamp(1e-3, 3.14159 - 1e-3)) - one_hot * (0.4 + 0.4 * margin_scaler)[:, None]) * 64.0
  identity = (torch.nn.functional.cross_entropy(logits, label, reduction='none') * id_mask).sum() / id_mask.sum()
  fake = torch.nn.functional.binary_cross_entropy_with_logits(fake_logit, is_fake.float())
  pushaway = (torch.relu((cosine * one_hot).sum(1) - 0.3) * is_fake.float()).mean()
  return identity + fake + 0.5 * pushaway


def torch_train_step(arch: str, batch_np: dict[str, Any], device: str, compile_model: bool = False):
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  model = torch_face_model(arch).to(torch_device(device))
  forward = torch.compile(model) if compile_model else model
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
  dev = torch_device(device)
  images = torch.from_numpy(np.ascontiguousarray(batch_np['image'].transpose(0, 3, 1, 2))).to(dev)
  label = torch.from_numpy(batch_np['label']).long().to(dev)
  is_fake = torch.from_numpy(batch_np['is_fake']).to(dev)
  id_mask = torch.from_numpy(batch_np['id_mask']).to(dev)

  def run():
    opt.zero_grad(set_to_none=True)
    loss = torch_losses(*forward(images), label, is_fake, id_mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    loss.item()
    sync_torch(device)
  return run


def flops_share(images_per_s: float, arch: str, device: str, train: bool) -> dict[str, Any]:
  """Achieved FLOP/s (a train step is counted as 3 forward passes) and, on an accelerator, the share of bf16 peak."""
  achieved = images_per_s * FORWARD_FLOPS[arch] * (3 if train else 1)
  out = {'achieved_gflops': round(achieved / 1e9, 1)}
  if device != 'cpu':
    import jax  # pylint: disable=import-outside-toplevel
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in BF16_PEAK.items() if k in kind), None)
    out.update(device_kind=kind, bf16_peak_share=round(achieved / peak, 4) if peak else None)
  return out


def stage_train(args) -> dict[str, Any]:
  arch = ARCHS[args.arch]
  config = bench_config(arch, args.batch)
  batch = random_batch(args.batch)
  runners = {}
  start = time.perf_counter()
  runners['jax'] = jax_train_step(config, batch, jax_device(args.device))
  runners['jax']()  # compile
  compile_s = {'jax': time.perf_counter() - start}
  runners['jax']()
  runners['torch_eager'] = torch_train_step(arch, batch, args.device)
  runners['torch_eager']()
  if args.torch_compile:
    start = time.perf_counter()
    try:
      compiled = torch_train_step(arch, batch, args.device, compile_model=True)
      compiled()
      compiled()
      runners['torch_compile'] = compiled
    except Exception as e:  # pylint: disable=broad-except
      print(f'torch.compile failed: {type(e).__name__}: {str(e)[:300]}')
    compile_s['torch_compile'] = time.perf_counter() - start
  all_times = {}
  times = alternate(runners, args.repeats, all_times)
  result = {'arch': arch, 'batch': args.batch, 'compile_s': {k: round(v, 1) for k, v in compile_s.items()}}
  for name, seconds in times.items():
    result[name] = {'step_s': round(seconds, 3), 'images_per_s': round(args.batch / seconds, 2),
                    'every_step_s': [round(t, 3) for t in all_times[name]],
                    **flops_share(args.batch / seconds, arch, args.device, train=True)}
  result['ratio_jax_over_torch_eager'] = round(times['torch_eager'] / times['jax'], 3)
  if 'torch_compile' in times:
    result['ratio_jax_over_torch_compile'] = round(times['torch_compile'] / times['jax'], 3)
  for name in times:
    print(f"train {arch} batch {args.batch}: {name:14s} {result[name]['step_s']:7.3f} s/step "
          f"{result[name]['images_per_s']:7.2f} images/s  (every step: "
          f"{', '.join(f'{t:.2f}' for t in result[name]['every_step_s'])} s)")
  print(f"ratio jax / torch eager (images/s): {result['ratio_jax_over_torch_eager']:.2f}")
  if 'ratio_jax_over_torch_compile' in result:
    print(f"ratio jax / torch.compile (images/s): {result['ratio_jax_over_torch_compile']:.2f}")
  return result


# ----------------------------------------------------------------------------------------------------------------------
# ops: MobileFaceNet's CPU weak spots, depthwise convolutions and BatchNorm, against XLA's / Flax's own and PyTorch.
# ----------------------------------------------------------------------------------------------------------------------

# (side, channels, stride) of MobileFaceNet's depthwise 3x3 convs at 112x112 input, and how many it has.
MOBILEFACENET_DEPTHWISE = [(56, 64, 1, 1), (56, 128, 2, 1), (28, 128, 1, 4), (28, 256, 2, 1), (14, 256, 1, 6),
                           (14, 512, 2, 1), (7, 256, 1, 2)]


def _timed_row(op: str, count: int, runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Any]:
  """Warms every runner up (compiles), times them in alternation: {'op', 'count', runner: ms (median)}."""
  for run in runs.values():
    run()
  return {'op': op, 'count': count, **{key: round(v * 1000, 2) for key, v in alternate(runs, repeats).items()}}


def stage_ops(args) -> dict[str, Any]:
  import flax.linen as fnn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from jaxface.models.layers import BatchNorm  # pylint: disable=import-outside-toplevel
  from jaxface.ops import depthwise  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  rows = []
  for side, channels, stride, count in MOBILEFACENET_DEPTHWISE:
    x = jnp.asarray(rng.standard_normal((args.batch, side, side, channels)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 1, channels)) * 0.3, jnp.float32)
    runs = {}
    for name, fn in (('lax', depthwise.depthwise_conv2d_lax), ('jaxface', depthwise.depthwise_conv2d)):
      fwd = jax.jit(lambda x_, k_, fn=fn: fn(x_, k_, stride, 1))
      grad = jax.jit(jax.grad(lambda x_, k_, fn=fn: jnp.sum(fn(x_, k_, stride, 1) ** 2), argnums=(0, 1)))
      runs[f'{name}_fwd'] = functools.partial(lambda f: jax.block_until_ready(f(x, k)), fwd)
      runs[f'{name}_grad'] = functools.partial(lambda f: jax.block_until_ready(f(x, k)), grad)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    kt = torch.from_numpy(np.asarray(k).transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    conv = lambda: torch.nn.functional.conv2d(xt, kt, stride=stride, padding=1, groups=channels)

    def torch_grad():
      (conv() ** 2).sum().backward()
    runs['torch_fwd'] = lambda: conv().detach()
    runs['torch_grad'] = torch_grad
    rows.append(_timed_row(f'depthwise 3x3 {side}x{side}x{channels} s{stride}', count, runs, args.repeats))
  for side, channels in ((56, 64), (28, 128), (14, 256), (7, 512)):
    x = jnp.asarray(rng.standard_normal((args.batch, side, side, channels)), jnp.float32)
    runs = {}
    for name, module in (('lax', fnn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)),
                         ('jaxface', BatchNorm(use_running_average=False))):
      variables = module.init(jax.random.key(0), x)
      apply = lambda p, x_, m=module, v=variables: m.apply({'params': p, 'batch_stats': v['batch_stats']}, x_,
                                                           mutable=['batch_stats'])[0]
      fwd = jax.jit(apply)
      grad = jax.jit(jax.grad(lambda p, x_, f=apply: jnp.sum(f(p, x_) ** 2), argnums=(0, 1)))
      runs[f'{name}_fwd'] = functools.partial(lambda f, p: jax.block_until_ready(f(p, x)), fwd, variables['params'])
      runs[f'{name}_grad'] = functools.partial(lambda f, p: jax.block_until_ready(f(p, x)), grad, variables['params'])
    bn = torch.nn.BatchNorm2d(channels).train()
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_(True)

    def torch_bn_grad():
      (bn(xt) ** 2).sum().backward()
    runs['torch_fwd'] = lambda: bn(xt).detach()
    runs['torch_grad'] = torch_bn_grad
    rows.append(_timed_row(f'batchnorm {side}x{side}x{channels}', 1, runs, args.repeats))
  for row in rows:
    print(f"{row['op']:34s} x{row['count']}  fwd lax/flax {row['lax_fwd']:8.1f} jaxface {row['jaxface_fwd']:7.1f} "
          f"torch {row['torch_fwd']:7.1f} | grad lax/flax {row['lax_grad']:8.1f} jaxface {row['jaxface_grad']:7.1f} "
          f"torch {row['torch_grad']:7.1f} ms", flush=True)
  return {'batch': args.batch, 'unit': 'ms per call (median)', 'rows': rows}


# ----------------------------------------------------------------------------------------------------------------------
# infer: embeddings and fake probabilities per second.
# ----------------------------------------------------------------------------------------------------------------------


def stage_infer(args) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from jaxface.models.face_model import build_model  # pylint: disable=import-outside-toplevel

  arch = ARCHS[args.arch]
  config = bench_config(arch, 1)
  model = build_model(config.model)
  device = jax_device(args.device)
  with jax.default_device(device):
    variables = model.init({'params': jax.random.key(0)}, np.zeros((1, 112, 112, 3), np.float32), train=False)

  @jax.jit
  def embed(variables, images):
    out = model.apply(variables, images, train=False)
    return out['embedding'], jax.nn.sigmoid(out['fake_logit'])

  tmodel = torch_face_model(arch).eval().to(torch_device(args.device))
  result = {'arch': arch}
  for batch in [int(b) for b in args.infer_batches.split(',')]:
    images = random_batch(batch)['image']
    images_jax = jax.device_put(images, device)
    images_torch = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(torch_device(args.device))

    def run_torch():
      with torch.inference_mode():
        embedding, _, fake_logit = tmodel(images_torch)
        torch.sigmoid(fake_logit).cpu()
        embedding.cpu()

    runners = {'jax': lambda: jax.block_until_ready(embed(variables, images_jax)), 'torch_eager': run_torch}
    for run in runners.values():
      run()
    times = alternate(runners, args.repeats)
    row = {name: {'images_per_s': round(batch / t, 2), 'batch_s': round(t, 4)} for name, t in times.items()}
    row['ratio_jax_over_torch'] = round(times['torch_eager'] / times['jax'], 3)
    result[f'batch_{batch}'] = row
    print(f"infer {arch} batch {batch}: jax {row['jax']['images_per_s']:.2f} images/s, torch "
          f"{row['torch_eager']['images_per_s']:.2f} images/s, ratio {row['ratio_jax_over_torch']:.2f}", flush=True)
  return result


# ----------------------------------------------------------------------------------------------------------------------
# align: photos per second of each aligner.
# ----------------------------------------------------------------------------------------------------------------------


def _sample_photos(data_dir: str | None, count: int):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxface.data.challenge import list_test_pairs, load_rgb  # pylint: disable=import-outside-toplevel
  if data_dir and pathlib.Path(data_dir).exists():
    pairs = list_test_pairs(data_dir)[:(count + 1) // 2]
    photos = [load_rgb(p) for pair in pairs for p in (pair.path0, pair.path1)][:count]
    if photos:
      return photos, data_dir
  rng = np.random.default_rng(0)
  return [rng.integers(0, 255, (250, 250, 3), dtype=np.uint8) for _ in range(count)], 'random 250x250 noise'


def stage_align(args) -> dict[str, Any]:
  import torch  # pylint: disable=import-outside-toplevel
  from jaxface.align.base import make_aligner  # pylint: disable=import-outside-toplevel

  photos, source = _sample_photos(args.data_dir, args.align_photos)
  sizes = sorted({p.shape[:2] for p in photos})
  result = {'photos': len(photos), 'source': source, 'sizes': [list(s) for s in sizes[:5]]}
  for name in ('none', 'mtcnn', 'dfa'):
    try:
      aligner = make_aligner(name, args.dfa_path if name == 'dfa' else None, device=torch_device(args.device))
    except Exception as e:  # pylint: disable=broad-except
      result[name] = {'error': f'{type(e).__name__}: {str(e)[:200]}'}
      print(f'align {name}: unavailable ({result[name]["error"]})')
      if name == 'dfa':
        result['dfa_network_only'] = _dfa_network_only(args, len(photos))
      continue
    aligner.align(photos[:2])
    seconds = median_time(lambda: aligner.align(photos), args.repeats)
    result[name] = {'photos_per_s': round(len(photos) / seconds, 2)}
    print(f"align {name}: {result[name]['photos_per_s']:.2f} photos/s", flush=True)
  result['torch_threads'] = torch.get_num_threads()
  return result


def _dfa_network_only(args, count: int) -> dict[str, Any]:
  """Without the DFA snapshot (offline), time its network on randomly initialised weights: the bulk of its cost."""
  import torch  # pylint: disable=import-outside-toplevel
  from jaxface.align import dfa  # pylint: disable=import-outside-toplevel
  net = dfa.DFANet('resnet50', 160).eval().to(torch_device(args.device))
  inputs = torch.rand(count, 3, 160, 160, device=torch_device(args.device)) * 2 - 1

  def run():
    with torch.inference_mode():
      net(inputs)
    sync_torch(args.device)
  run()
  seconds = median_time(run, args.repeats)
  out = {'photos_per_s': round(count / seconds, 2), 'note': 'DFANet resnet50 forward at 160x160, random weights'}
  print(f"align dfa (network only, random weights): {out['photos_per_s']:.2f} photos/s", flush=True)
  return out


# ----------------------------------------------------------------------------------------------------------------------
# pipeline: tf.data images per second against what the train step consumes.
# ----------------------------------------------------------------------------------------------------------------------


def stage_pipeline(args) -> dict[str, Any]:
  from jaxface import train  # pylint: disable=import-outside-toplevel
  from jaxface.data import pipeline  # pylint: disable=import-outside-toplevel

  config = bench_config(ARCHS[args.arch], args.batch)
  if args.tfds_dir:
    config.data.source, config.data.tfds_dir = 'tfds', args.tfds_dir
  start = time.perf_counter()
  builder = train.load_builder(config)
  prepare_s = time.perf_counter() - start
  batches = pipeline.train_dataset(builder, config, num_devices=1, seed=0)
  next(batches)
  count = 0
  start = time.perf_counter()
  while time.perf_counter() - start < args.pipeline_seconds:
    batch = next(batches)
    count += batch['image'].shape[0] * batch['image'].shape[1]
  seconds = time.perf_counter() - start
  images_per_s = count / seconds
  result = {'images_per_s': round(images_per_s, 1), 'batch': args.batch, 'image_size': config.data.image_size,
            'dataset': config.data.tfds_dir, 'prepare_s': round(prepare_s, 1), 'measured_s': round(seconds, 1)}
  print(f'pipeline: {images_per_s:.1f} images/s at {config.data.image_size}x{config.data.image_size} '
        f'(batch {args.batch}; the IR-18 train step consumes what --stage train reports)')
  return result


# ----------------------------------------------------------------------------------------------------------------------
# Driver.
# ----------------------------------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  from jaxface import xla_cpu  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  model = platform.processor()
  try:
    for line in open('/proc/cpuinfo'):
      if line.startswith('model name'):
        model = line.split(':', 1)[1].strip()
        break
  except OSError:
    pass
  return {'date_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime()), 'cpu': model, 'cpu_count': os.cpu_count(),
          'python': platform.python_version(), 'jax': jax.__version__, 'jax_backend': jax.default_backend(),
          'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
          'load_average': os.getloadavg(), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'eigen_convolutions': xla_cpu.eigen_convolutions()}


def run_stage(args, stage: str) -> dict[str, Any]:
  setup_threads(args.device)
  if args.compile_cache != 'none':
    import jax  # pylint: disable=import-outside-toplevel
    # XLA:CPU needs about a minute of CPU time to compile an IR-18 train step; a second run reuses it from disk.
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(args.compile_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  fn = {'conv': stage_conv, 'ops': stage_ops, 'train': stage_train, 'infer': stage_infer, 'align': stage_align,
        'pipeline': stage_pipeline}[stage]
  start = time.perf_counter()
  result = fn(args)
  result['stage_wall_s'] = round(time.perf_counter() - start, 1)
  result['peak_rss_mb'] = round(peak_rss_mb(), 1)
  print(f'{stage}: peak host memory {result["peak_rss_mb"]:.0f} MB, {result["stage_wall_s"]:.0f} s')
  return result


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--stage', default='train', choices=(*STAGES, 'all'))
  parser.add_argument('--arch', default='ir18', choices=tuple(ARCHS))
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--device', default='cpu', choices=('cpu', 'gpu'))
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', help='write the results here')
  parser.add_argument('--torch-compile', action='store_true', help='train stage: also time torch.compile')
  parser.add_argument('--infer-batches', default='1,256')
  parser.add_argument('--conv-shapes', default='', help='conv stage: indices into IR18_CONVS (default all)')
  parser.add_argument('--align-photos', type=int, default=16)
  parser.add_argument('--data-dir', default='/work/shared/data/realfaces-dev', help='photos for the align stage')
  parser.add_argument('--dfa-path', default=None)
  parser.add_argument('--tfds-dir', default='', help='pipeline stage: a preprocess.py output (default: synthetic)')
  parser.add_argument('--pipeline-seconds', type=float, default=20.0)
  parser.add_argument('--compile-cache', default='~/.cache/jaxface/jax-compile-cache',
                      help="JAX persistent compilation cache ('none' to compile from scratch)")
  parser.add_argument('--in-process', action='store_true', help='run stages in this process (no clean memory peaks)')
  parser.add_argument('--child-json', help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.device == 'cpu':
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jaxface  # pylint: disable=import-outside-toplevel,unused-import
  # ^ before any JAX backend starts, so its XLA:CPU flag (Eigen convolutions) applies; JAXFACE_XLA_DEFAULTS=0 compares.
  stages = STAGES if args.stage == 'all' else (args.stage,)
  if args.child_json:
    result = run_stage(args, stages[0])
    pathlib.Path(args.child_json).write_text(json.dumps(result))
    return 0
  results = {'environment': environment(), 'command': ' '.join([pathlib.Path(sys.argv[0]).name, *sys.argv[1:]])}
  for stage in stages:
    if args.in_process:
      results[stage] = run_stage(args, stage)
      continue
    child_json = pathlib.Path(os.environ.get('TMPDIR', '/tmp')) / f'jaxface-bench-{os.getpid()}-{stage}.json'
    argv_child = [a for a in (argv if argv is not None else sys.argv[1:])]
    argv_child = _replace_stage(argv_child, stage) + ['--child-json', str(child_json)]
    code = subprocess.call([sys.executable, __file__, *argv_child])
    if code != 0 or not child_json.exists():
      results[stage] = {'error': f'stage exited with code {code}'}
      print(f'{stage}: failed (exit code {code})')
      continue
    results[stage] = json.loads(child_json.read_text())
    child_json.unlink()
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    print(f'wrote {args.json}')
  return 0 if all('error' not in results[s] for s in stages) else 1


def _replace_stage(argv: list[str], stage: str) -> list[str]:
  out, skip = [], False
  for i, a in enumerate(argv):
    if skip:
      skip = False
      continue
    if a == '--stage':
      skip = True
      continue
    if a.startswith('--stage='):
      continue
    out.append(a)
  return out + ['--stage', stage]


if __name__ == '__main__':
  sys.exit(main())
