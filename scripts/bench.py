r"""Benchmarks jaxface against an equivalent PyTorch pipeline; see BENCHMARKS.md for measured figures.

  python scripts/bench.py --stage train --arch ir18 --batch 32           # jit train step vs PyTorch eager, and the ratio
  python scripts/bench.py --stage train --arch mobilefacenet --batch 64  # the pretrained real-faces backbone vs its twin
  python scripts/bench.py --stage ops --batch 32                         # depthwise conv and BatchNorm: XLA/Flax vs jaxface vs PyTorch
  python scripts/bench.py --stage conv --batch 32                        # conv2d (custom VJP) vs lax vs PyTorch per IR-18 shape
  python scripts/bench.py --stage xla --batch 8                          # XLA:CPU library switches (XLA_FLAGS) on one conv
  python scripts/bench.py --stage all --json bench.json                  # every stage, each in its own subprocess

Stages: conv, ops, xla (in scripts/bench_kernels.py), train, infer, align (scripts/bench_align.py), pipeline. Each figure is the median of --repeats timed runs after warm-up; JAX and
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
import subprocess
import sys
import time
from typing import Any, Callable

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'scripts'))

from bench_align import ALIGNERS, stage_align  # noqa: E402  pylint: disable=wrong-import-position
from bench_kernels import (  # noqa: E402  pylint: disable=wrong-import-position
    alternate, jax_device, peak_rss_mb, setup_threads, stage_conv, stage_ops, stage_xla, sync_torch,
    torch_device)

STAGES = ('conv', 'ops', 'xla', 'train', 'infer', 'align', 'pipeline')
ARCHS = {'ir18': 'ir_18', 'ir50': 'ir_50', 'mobilefacenet': 'mobilefacenet'}
# Forward FLOPs per 112x112 image, multiply-adds counted as 2 (reference.md section 8).
# MobileFaceNet: XLA's cost analysis of the forward pass at batch 1 (convolutions, BatchNorm and activations).
FORWARD_FLOPS = {'ir_18': 5.19e9, 'ir_50': 12.6e9, 'mobilefacenet': 0.48e9}
# Dense bfloat16 peak FLOP/s of accelerators we may meet, for the share-of-peak figure.
BF16_PEAK = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L4': 121e12, 'TPU v4': 275e12, 'TPU v5e': 197e12}
NUM_CLASSES = 1000


# ----------------------------------------------------------------------------------------------------------------------
# train: the jaxface jit train step against a PyTorch eager (and compiled) step of the same network and heads.
# ----------------------------------------------------------------------------------------------------------------------


def bench_config(arch: str, batch: int):
  from jaxface import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(config_lib.DEFAULT_CONFIG)
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
  from jaxface import optim, train  # pylint: disable=import-outside-toplevel
  from jaxface.models.face_model import build_model  # pylint: disable=import-outside-toplevel
  from jaxface.models.heads import AdaFaceHead  # pylint: disable=import-outside-toplevel

  model, head = build_model(config.model), AdaFaceHead(NUM_CLASSES)
  lr_fn = lambda step: config.optim.learning_rate
  with jax.default_device(device):
    tx = optim.make_optimizer(config, lr_fn)
    state = train.create_train_state(model, head, tx, config, jax.random.key(0))
    step = jax.jit(functools.partial(train.train_step, model=model, head=head, tx=tx, config=config, lr_fn=lr_fn,
                                     axis_name=None), donate_argnums=0)
    batch = jax.device_put(batch_np, device)
  holder = {'state': state}

  def run():
    holder['state'], summary = step(holder['state'], batch)
    jax.block_until_ready(summary['loss'])
  return run


def torch_train_step(arch: str, batch_np: dict[str, Any], device: str, compile_model: bool = False):
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from jaxface.torch_reference import torch_face_model, torch_losses  # pylint: disable=import-outside-toplevel
  model = torch_face_model(arch, NUM_CLASSES).to(torch_device(device))
  forward = torch.compile(model) if compile_model else model
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
  dev = torch_device(device)
  images = torch.from_numpy(np.ascontiguousarray(batch_np['image'].transpose(0, 3, 1, 2))).to(dev)
  label = torch.from_numpy(batch_np['label']).long().to(dev)
  is_fake = torch.from_numpy(batch_np['is_fake']).to(dev)
  id_mask = torch.from_numpy(batch_np['id_mask']).to(dev)

  def run():
    opt.zero_grad(set_to_none=True)
    loss = torch_losses(*forward(images), label, is_fake, id_mask, NUM_CLASSES)
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
# infer: embeddings and fake probabilities per second.
# ----------------------------------------------------------------------------------------------------------------------


INFER_RUNTIMES = ('jax', 'torch_eager', 'onnxruntime')


def export_bench_onnx(arch: str, path: str) -> None:
  """Exports stage_infer's random model (bench_config, model.init with key 0) as jaxface.export's ONNX file.

  stage_infer runs this in a child process, so that the conversion's memory is not in the onnxruntime row's peak.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxface import export  # pylint: disable=import-outside-toplevel
  from jaxface.models.face_model import build_model  # pylint: disable=import-outside-toplevel

  config = bench_config(arch, 1)
  model = build_model(config.model)
  variables = model.init({'params': jax.random.key(0)}, np.zeros((1, 112, 112, 3), np.float32), train=False)
  fn = export.serving_function(model, 112)
  size = jax.eval_shape(fn, variables, jax.ShapeDtypeStruct((1, 112, 112, 3), np.uint8))[0].shape[-1]
  info = export.metadata(config, {'fuse_strength': 0.0, 'threshold': 0.0}, embedding_size=size, flip_tta=False,
                         source='bench')
  export.to_onnx(fn, variables, info, path)


def stage_infer(args) -> dict[str, Any]:
  """Images/s of the forward pass (embedding and fake probability) per runtime in --infer-runtimes, alternating.

  jax: the jitted model on float32 faces; torch_eager: the PyTorch twin; onnxruntime: jaxface.export's ONNX file of the
  same model and weights on uint8 faces (normalisation inside), all threads. Run one runtime per call for its own peak
  memory (peak_rss_mb of the stage).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxface.models.face_model import build_model  # pylint: disable=import-outside-toplevel

  arch = ARCHS[args.arch]
  runtimes = [r for r in args.infer_runtimes.split(',') if r]
  unknown = sorted(set(runtimes) - set(INFER_RUNTIMES))
  if unknown:
    raise SystemExit(f'--infer-runtimes: unknown {", ".join(unknown)} (use {", ".join(INFER_RUNTIMES)})')
  config = bench_config(arch, 1)
  device = jax_device(args.device)
  if 'jax' in runtimes:
    model = build_model(config.model)
    with jax.default_device(device):
      variables = model.init({'params': jax.random.key(0)}, np.zeros((1, 112, 112, 3), np.float32), train=False)

    @jax.jit
    def embed(variables, images):
      out = model.apply(variables, images, train=False)
      return out['embedding'], jax.nn.sigmoid(out['fake_logit'])

  if 'torch_eager' in runtimes:
    import torch  # pylint: disable=import-outside-toplevel
    from jaxface.torch_reference import torch_face_model  # pylint: disable=import-outside-toplevel
    tmodel = torch_face_model(arch, NUM_CLASSES).eval().to(torch_device(args.device))
  if 'onnxruntime' in runtimes:
    import tempfile  # pylint: disable=import-outside-toplevel
    import onnxruntime  # pylint: disable=import-outside-toplevel
    onnx_path = pathlib.Path(tempfile.mkdtemp(prefix='jaxface-bench-')) / f'{arch}.onnx'
    code = (f'import sys; sys.path[:0] = [{str(REPO)!r}, {str(REPO / "scripts")!r}]; import bench; '
            f'bench.export_bench_onnx({arch!r}, {str(onnx_path)!r})')
    start = time.perf_counter()
    subprocess.run([sys.executable, '-c', code], check=True)
    print(f'infer {arch}: exported to ONNX in {time.perf_counter() - start:.0f} s (child process)', flush=True)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
  result = {'arch': arch, 'runtimes': runtimes}
  for batch in [int(b) for b in args.infer_batches.split(',')]:
    images = random_batch(batch)['image']
    runners = {}
    if 'jax' in runtimes:
      images_jax = jax.device_put(images, device)
      runners['jax'] = lambda: jax.block_until_ready(embed(variables, images_jax))
    if 'torch_eager' in runtimes:
      images_torch = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(torch_device(args.device))

      def run_torch():
        with torch.inference_mode():
          embedding, _, fake_logit = tmodel(images_torch)
          torch.sigmoid(fake_logit).cpu()
          embedding.cpu()

      runners['torch_eager'] = run_torch
    if 'onnxruntime' in runtimes:
      faces = np.round((images + 1.0) * 127.5).astype(np.uint8)
      runners['onnxruntime'] = lambda: session.run(None, {'faces': faces})
    for run in runners.values():
      run()
    times = alternate(runners, args.repeats)
    row = {name: {'images_per_s': round(batch / t, 2), 'batch_s': round(t, 4)} for name, t in times.items()}
    if 'jax' in times and 'torch_eager' in times:
      row['ratio_jax_over_torch'] = round(times['torch_eager'] / times['jax'], 3)
    if 'jax' in times and 'onnxruntime' in times:
      row['ratio_onnxruntime_over_jax'] = round(times['jax'] / times['onnxruntime'], 3)
    result[f'batch_{batch}'] = row
    print(f'infer {arch} batch {batch}: ' + ', '.join(f"{name} {row[name]['images_per_s']:.2f} images/s"
                                                       for name in times), flush=True)
  return result


# ----------------------------------------------------------------------------------------------------------------------
# pipeline: tf.data images per second against what the train step consumes.
# ----------------------------------------------------------------------------------------------------------------------


def stage_pipeline(args) -> dict[str, Any]:
  from jaxface.data import pipeline, prepared, sources  # pylint: disable=import-outside-toplevel

  config = bench_config(ARCHS[args.arch], args.batch)
  if args.tfds_dir:
    config.data.source, config.data.tfds_dir = 'tfds', args.tfds_dir
  start = time.perf_counter()
  dataset = prepared.open_prepared(sources.training_tfds_dir(config.data))
  prepare_s = time.perf_counter() - start
  batches = pipeline.train_dataset(dataset, config, num_devices=1, seed=0)
  next(batches)
  count = 0
  start = time.perf_counter()
  while time.perf_counter() - start < args.pipeline_seconds:
    batch = next(batches)
    count += batch['image'].shape[0] * batch['image'].shape[1]
  seconds = time.perf_counter() - start
  images_per_s = count / seconds
  result = {'images_per_s': round(images_per_s, 1), 'batch': args.batch, 'image_size': config.model.input_size,
            'dataset': config.data.tfds_dir, 'prepare_s': round(prepare_s, 1), 'measured_s': round(seconds, 1)}
  print(f'pipeline: {images_per_s:.1f} images/s at {config.model.input_size}x{config.model.input_size} '
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
  fn = {'conv': stage_conv, 'ops': stage_ops, 'xla': stage_xla, 'train': stage_train, 'infer': stage_infer, 'align': stage_align,
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
  parser.add_argument('--xla-flags', action='append', default=None, metavar='FLAGS',
                      help='xla stage: an XLA_FLAGS value to time (repeatable; default: jaxlib default, YNNPACK fusions off, oneDNN)')
  parser.add_argument('--json', help='write the results here')
  parser.add_argument('--torch-compile', action='store_true', help='train stage: also time torch.compile')
  parser.add_argument('--infer-batches', default='1,256')
  parser.add_argument('--infer-runtimes', default=','.join(INFER_RUNTIMES),
                      help='infer stage: comma-separated, of ' + ', '.join(INFER_RUNTIMES))
  parser.add_argument('--conv-shapes', default='', help='conv stage: indices into IR18_CONVS (default all)')
  parser.add_argument('--align-photos', type=int, default=16)
  parser.add_argument('--aligners', nargs='+', default=list(ALIGNERS), choices=ALIGNERS,
                      help='align stage: the aligners to time')
  parser.add_argument('--align-memory-only', action='store_true', help=argparse.SUPPRESS)
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
