"""The align stage of scripts/bench.py: photos per second and peak memory of each aligner on the same photos.

Run through scripts/bench.py (`--stage align [--aligners none mtcnn retinaface dfa] --data-dir DIR`).
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

from bench_kernels import alternate, median_time, peak_rss_mb, sync_torch, torch_device


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


ALIGNERS = ('none', 'mtcnn', 'retinaface', 'dfa')


def stage_align(args) -> dict[str, Any]:
  """Photos per second of each aligner on the same photos, the aligners taking turns in one process (so background
  load hits them alike), and the peak memory of each, measured alone in its own child process."""
  if args.align_memory_only:
    return _align_memory(args, args.aligners[0])
  import torch  # pylint: disable=import-outside-toplevel
  from jaxface.align.base import make_aligner  # pylint: disable=import-outside-toplevel

  photos, source = _sample_photos(args.data_dir, args.align_photos)
  result: dict[str, Any] = {'photos': len(photos), 'source': source,
                            'sizes': [list(s) for s in sorted({p.shape[:2] for p in photos})[:5]],
                            'torch_threads': torch.get_num_threads()}
  aligners = {}
  for name in args.aligners:
    try:
      aligners[name] = make_aligner(name, args.dfa_path if name == 'dfa' else None, device=torch_device(args.device))
    except Exception as e:  # pylint: disable=broad-except
      result[name] = {'error': f'{type(e).__name__}: {str(e)[:200]}'}
      print(f'align {name}: unavailable ({result[name]["error"]})')
      if name == 'dfa':
        result['dfa_network_only'] = _dfa_network_only(args, len(photos))
  for aligner in aligners.values():
    aligner.align(photos[:2])
  seconds = alternate({name: functools.partial(a.align, photos) for name, a in aligners.items()}, args.repeats)
  for name, aligner in aligners.items():
    found = int(sum(bool(f) for f in aligner.align(photos).found))
    result[name] = {'photos_per_s': round(len(photos) / seconds[name], 2), 'faces_found': found,
                    **_align_memory_child(args, name)}
    print(f"align {name}: {result[name]['photos_per_s']:.2f} photos/s, {found}/{len(photos)} faces, peak "
          f"{result[name].get('peak_rss_mb', float('nan')):.0f} MB alone", flush=True)
  if 'mtcnn' in aligners and 'retinaface' in aligners:
    result['retinaface_vs_mtcnn'] = round(seconds['mtcnn'] / seconds['retinaface'], 2)
    print(f"align: retinaface {result['retinaface_vs_mtcnn']:.2f}x mtcnn (same photos, alternating)")
  return result


def _align_memory_child(args, name: str) -> dict[str, Any]:
  child_json = pathlib.Path(os.environ.get('TMPDIR', '/tmp')) / f'jaxface-bench-align-{os.getpid()}-{name}.json'
  command = [sys.executable, str(pathlib.Path(__file__).with_name('bench.py')), '--stage', 'align', '--aligners', name,
             '--align-memory-only', '--in-process',
             '--json', str(child_json), '--device', args.device, '--align-photos', str(args.align_photos),
             '--data-dir', args.data_dir, '--compile-cache', 'none'] + (['--dfa-path', args.dfa_path]
                                                                        if args.dfa_path else [])
  code = subprocess.call(command, stdout=subprocess.DEVNULL)
  row = json.loads(child_json.read_text())['align'] if code == 0 and child_json.exists() else {}
  child_json.unlink(missing_ok=True)
  return row or {'memory_error': f'child exited with code {code}'}


def _align_memory(args, name: str) -> dict[str, Any]:
  """Peak resident memory of one aligner aligning the photos once (and of the process before it was built)."""
  from jaxface.align.base import make_aligner  # pylint: disable=import-outside-toplevel
  photos, _ = _sample_photos(args.data_dir, args.align_photos)
  before = peak_rss_mb()
  make_aligner(name, args.dfa_path if name == 'dfa' else None, device=torch_device(args.device)).align(photos)
  return {'peak_rss_mb': round(peak_rss_mb(), 1), 'peak_rss_before_aligner_mb': round(before, 1)}


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
