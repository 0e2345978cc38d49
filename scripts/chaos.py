"""Kill harness: preprocessing and training killed at random moments, and tampered checkpoints, must recover exactly.

    python scripts/chaos.py [--trials N] [--out DIR] [--seed S] [--cases preprocess train tamper]

On a tiny synthetic challenge set (python -m jaxface.data.synthetic) and a tiny model, each case first makes an
uninterrupted reference, then runs N trials:

- preprocess: `scripts/preprocess.py --aligner none` (slowed by JAXFACE_PREPROCESS_SLEEP_PER_BATCH) gets `kill -9` at
  a moment drawn uniformly over the reference's run time (imports, align stage, TFDS write), then the same command is
  rerun to completion. Recovered: the final TFDS dataset holds every example once, the same ids with the same
  aligned-face bytes as the reference.
- train: `python -m jaxface.train` gets `kill -9` (even trials) or SIGTERM (odd trials) at a moment drawn uniformly
  over the reference's training loop (from its first logged step to its exit), then is rerun to completion.
  Recovered: the rerun resumes from the last step on disk, SIGTERM inside the loop exits 143 with "rerun the same
  command to resume" and no traceback, metrics.jsonl has every step once, and the final parameters equal the
  reference's within 1e-5.
- tamper: a run stopped by SIGTERM at step 9 (checkpoints 6 and 9) has step 9 truncated, overwritten or cut short in
  one of its files, then resumes: it must say so in one line, fall back to step 6 and end equal to the reference.

It prints `N/N recovered, 0 lost, 0 duplicated` per case and writes OUT/chaos_report.json; exit 0 when every trial
recovered. CPU training is deterministic run to run here (XLA:CPU, one device, the step-seeded input pipeline), which
is what lets a resumed run end on the reference's parameters.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
PEOPLE, PHOTOS, TEST_PAIRS = 24, 4, 8
STEPS, CHECKPOINT_EVERY, EVAL_EVERY, TAMPER_AT = 12, 3, 6, 9
# The CPU demo at its smoke size (configs/default.py `shrink`), on the harness's own prepared data, in smaller steps.
TRAIN_FLAGS = ['--config', str(REPO / 'configs' / 'default.py') + ':runlocal', '--config.data.source=tfds',
               '--config.batch_size=8', '--config.eval_batch_size=16', '--config.log_every=1',
               f'--config.num_steps={STEPS}', f'--config.checkpoint_every={CHECKPOINT_EVERY}',
               f'--config.eval_every={EVAL_EVERY}']
TOLERANCE = 1e-5


def _env(out: pathlib.Path, **extra: str) -> dict:
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''),
             JAX_COMPILATION_CACHE_DIR=str(out / 'jax-compile-cache'), TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('XLA_FLAGS', None)  # one CPU device, whatever the caller's shell says
  env.update(extra)
  return env


def _start(cmd: list[str], env: dict, log: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log.open('w'), stderr=subprocess.STDOUT)


def _run(cmd: list[str], env: dict, log: pathlib.Path, timeout: float = 900) -> tuple[int, str]:
  proc = _start(cmd, env, log)
  proc.wait(timeout=timeout)
  return proc.returncode, log.read_text(errors='replace')


# ----------------------------------------------------------------------------------------------------------------------
# Preprocessing.


def _preprocess_cmd(data: pathlib.Path, out: pathlib.Path) -> list[str]:
  return [sys.executable, str(REPO / 'scripts' / 'preprocess.py'), '--data-dir', str(data), '--out', str(out),
          '--aligner', 'none', '--batch-size', '4', '--workers', '1', '--no-progress']


def read_examples(tfds_dir: pathlib.Path) -> dict[str, list[tuple[str, bytes]]]:
  """{split: [(id, aligned-face bytes), ...]} of a prepared dataset, in file order, JPEG bytes undecoded."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from jaxface.data import prepared  # pylint: disable=import-outside-toplevel
  out = {}
  for config, splits in prepared.CONFIG_SPLITS.items():
    builder = tfds.builder_from_directory(str(prepared.dataset_dir(tfds_dir, config)))
    images = ('image',) if config == prepared.FACES else ('image0', 'image1')
    for split in splits:
      if split not in builder.info.splits:
        continue
      ds = builder.as_dataset(split, shuffle_files=False, decoders={k: tfds.decode.SkipDecoding() for k in images})
      key = 'source' if config == prepared.FACES else 'pair_id'
      out[split] = [(ex[key].decode(), b''.join(ex[k] for k in images)) for ex in tfds.as_numpy(ds)]
  return out


def compare_examples(got: dict, want: dict) -> dict[str, int]:
  """Counts of lost (in `want`, not in `got`), duplicated (twice in `got`) and changed (other bytes) examples."""
  counts = {'lost': 0, 'duplicated': 0, 'changed': 0, 'extra': 0}
  for split in set(got) | set(want):
    ids = [i for i, _ in got.get(split, [])]
    counts['duplicated'] += len(ids) - len(set(ids))
    have, ref = dict(got.get(split, [])), dict(want.get(split, []))
    counts['lost'] += len(ref.keys() - have.keys())
    counts['extra'] += len(have.keys() - ref.keys())
    counts['changed'] += sum(have[i] != ref[i] for i in ref.keys() & have.keys())
  return counts


def case_preprocess(out: pathlib.Path, data: pathlib.Path, trials: int, rng: random.Random) -> dict:
  """kill -9 preprocessing at random moments, rerun to completion, compare with the uninterrupted run."""
  sleep_env = _env(out, JAXFACE_PREPROCESS_SLEEP_PER_BATCH='0.25')
  ref_dir = out / 'preprocess' / 'reference'
  shutil.rmtree(ref_dir, ignore_errors=True)
  ref_dir.mkdir(parents=True)
  t0 = time.time()
  rc, text = _run(_preprocess_cmd(data, ref_dir / 'tfds'), sleep_env, ref_dir / 'log.txt')
  duration = time.time() - t0
  if rc != 0:
    raise SystemExit(f'error: the reference preprocessing failed (exit {rc}): {text[-500:]}')
  reference = read_examples(ref_dir / 'tfds')
  meta = json.loads((ref_dir / 'tfds' / 'preprocess_report.json').read_text())
  if meta['counts']['aligned'] != meta['counts']['images'] or meta['counts']['skipped']:
    raise SystemExit(f'error: the reference aligned {meta["counts"]["aligned"]} of {meta["counts"]["images"]} photos')
  results = []
  for trial in range(trials):
    tdir = out / 'preprocess' / f'trial{trial}'
    shutil.rmtree(tdir, ignore_errors=True)
    tdir.mkdir(parents=True)
    moment = rng.uniform(0, 0.95 * duration)
    proc = _start(_preprocess_cmd(data, tdir / 'tfds'), sleep_env, tdir / 'killed.txt')
    time.sleep(moment)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cache = tdir / 'tfds' / '_align_cache'
    cached = sum(1 for _ in cache.rglob('*.npz')) if cache.exists() else 0
    stage = 'done' if proc.returncode == 0 else ('write' if cached >= meta['counts']['images'] else 'align/start')
    reruns, rc, text = 0, (0 if proc.returncode == 0 else None), ''  # a run that ended before the kill is complete
    while rc not in (0, 1) and reruns < 3:
      reruns += 1
      rc, text = _run(_preprocess_cmd(data, tdir / 'tfds'), _env(out), tdir / f'rerun{reruns}.txt')
    counts = compare_examples(read_examples(tdir / 'tfds'), reference) if rc in (0, 1) else {'lost': 1}
    ok = rc == 0 and not any(counts.values()) and 'Traceback' not in text
    results.append({'trial': trial, 'kill_after_s': round(moment, 2), 'killed_rc': proc.returncode, 'stage': stage,
                    'reruns': reruns, 'rerun_rc': rc, **counts, 'recovered': ok})
    print(f'  preprocess trial {trial}: kill -9 at {moment:.1f}s ({stage}), rerun exit {rc}: {counts}', flush=True)
  return {'reference_seconds': round(duration, 1), 'examples': {k: len(v) for k, v in reference.items()},
          'trials': results}


# ----------------------------------------------------------------------------------------------------------------------
# Training.


def _train_cmd(workdir: pathlib.Path, tfds_dir: pathlib.Path) -> list[str]:
  return [sys.executable, '-m', 'jaxface.train', '--workdir', str(workdir), f'--config.data.tfds_dir={tfds_dir}',
          *TRAIN_FLAGS]


def saved_steps(workdir: pathlib.Path) -> list[int]:
  """Committed checkpoint steps (Orbax renames a step's temporary folder to its number when complete)."""
  ckpts = workdir / 'checkpoints'
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []


def final_state(workdir: pathlib.Path) -> dict:
  """{name: array} of the parameters and batch statistics in the last checkpoint of a run."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  step = saved_steps(workdir)[-1]
  state = ocp.StandardCheckpointer().restore((workdir / 'checkpoints' / str(step) / 'state').absolute())
  leaves = jax.tree_util.tree_flatten_with_path({'params': state['params'], 'batch_stats': state['batch_stats']})[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def max_difference(a: dict, b: dict) -> float:
  import numpy as np  # pylint: disable=import-outside-toplevel
  if a.keys() != b.keys():
    return float('inf')
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)), initial=0.0)) for k in a)


def metric_steps(workdir: pathlib.Path) -> dict[str, list[int]]:
  """Steps of the training lines ('loss') and of the validation lines ('val_eer_fused') of metrics.jsonl."""
  lines = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {'train': [l['step'] for l in lines if 'loss' in l], 'val': [l['step'] for l in lines if 'val_eer_fused' in l]}


def _count_steps(got: dict[str, list[int]], want: dict[str, list[int]]) -> tuple[int, int]:
  lost = sum(len(set(want[k]) - set(got[k])) for k in want)
  duplicated = sum(len(got[k]) - len(set(got[k])) for k in got)
  return lost, duplicated


def _wait_for_first_step(proc: subprocess.Popen, workdir: pathlib.Path, timeout: float = 600) -> None:
  metrics, deadline = workdir / 'metrics.jsonl', time.time() + timeout
  while proc.poll() is None and time.time() < deadline:
    if metrics.exists() and metrics.stat().st_size > 0:
      return
    time.sleep(0.05)


def _train_trial(out: pathlib.Path, tfds_dir: pathlib.Path, trial: int, loop_seconds: float, reference: dict,
                 rng: random.Random) -> dict:
  tdir = out / 'train' / f'trial{trial}'
  shutil.rmtree(tdir, ignore_errors=True)
  tdir.mkdir(parents=True)
  workdir, sig = tdir / 'workdir', (signal.SIGKILL if trial % 2 == 0 else signal.SIGTERM)
  moment = rng.uniform(0, 0.9 * loop_seconds)
  proc = _start(_train_cmd(workdir, tfds_dir), _env(out), tdir / 'killed.txt')
  _wait_for_first_step(proc, workdir)
  time.sleep(moment)
  proc.send_signal(sig)
  proc.wait(timeout=600)
  killed_text = (tdir / 'killed.txt').read_text(errors='replace')
  problems = []
  if sig == signal.SIGTERM and proc.returncode == 143:
    if 'rerun the same command to resume' not in killed_text or 'Traceback' in killed_text:
      problems.append('SIGTERM exit 143 without the resume line, or with a traceback')
  elif proc.returncode not in (-sig, 0):
    problems.append(f'killed run exited {proc.returncode}')
  on_disk = saved_steps(workdir)
  rc, text = _run(_train_cmd(workdir, tfds_dir), _env(out), tdir / 'rerun.txt')
  expected = (f'Resuming from {(workdir / "checkpoints").absolute()} at step {on_disk[-1]}' if on_disk else None)
  if expected and expected not in text:
    problems.append(f'did not resume from step {on_disk[-1]}')
  if rc != 0 or 'Traceback' in text:
    problems.append(f'rerun exited {rc}')
  steps = metric_steps(workdir) if rc == 0 else {'train': [], 'val': []}
  lost, duplicated = _count_steps(steps, reference['steps'])
  diff = max_difference(final_state(workdir), reference['state']) if rc == 0 else float('inf')
  if diff > TOLERANCE:
    problems.append(f'final parameters differ by {diff:.3g}')
  return {'trial': trial, 'signal': signal.Signals(sig).name, 'kill_after_first_step_s': round(moment, 2),
          'killed_rc': proc.returncode, 'saved_before_rerun': on_disk, 'rerun_rc': rc, 'lost_steps': lost,
          'duplicated_steps': duplicated, 'max_param_diff': diff, 'problems': problems,
          'recovered': not problems and not lost and not duplicated}


def _reference_run(out: pathlib.Path, tfds_dir: pathlib.Path) -> dict:
  """The uninterrupted run: its final state, its metric steps, and how long its loop took."""
  ref = out / 'train' / 'reference'
  shutil.rmtree(ref, ignore_errors=True)
  ref.mkdir(parents=True)
  proc = _start(_train_cmd(ref / 'workdir', tfds_dir), _env(out), ref / 'log.txt')
  _wait_for_first_step(proc, ref / 'workdir')
  t0 = time.time()
  proc.wait(timeout=900)
  if proc.returncode != 0:
    raise SystemExit(f'error: the reference training failed: {(ref / "log.txt").read_text()[-800:]}')
  return {'workdir': ref / 'workdir', 'loop_seconds': time.time() - t0, 'state': final_state(ref / 'workdir'),
          'steps': metric_steps(ref / 'workdir')}


def case_train(out: pathlib.Path, tfds_dir: pathlib.Path, trials: int, rng: random.Random, reference: dict) -> dict:
  """kill -9 / SIGTERM training at random moments of its loop, rerun to completion, compare with the reference."""
  # A second uninterrupted run: the evidence that training here is deterministic at all.
  twin = out / 'train' / 'twin'
  shutil.rmtree(twin, ignore_errors=True)
  twin.mkdir(parents=True)
  rc, _ = _run(_train_cmd(twin / 'workdir', tfds_dir), _env(out), twin / 'log.txt')
  twin_diff = max_difference(final_state(twin / 'workdir'), reference['state']) if rc == 0 else float('inf')
  print(f'  two uninterrupted runs differ by at most {twin_diff:.3g}', flush=True)
  results = []
  for trial in range(trials):
    result = _train_trial(out, tfds_dir, trial, reference['loop_seconds'], reference, rng)
    results.append(result)
    print(f'  train trial {trial}: {result["signal"]} {result["kill_after_first_step_s"]:.1f}s after the first step, '
          f'exit {result["killed_rc"]}, steps on disk {result["saved_before_rerun"]}, rerun exit {result["rerun_rc"]}, '
          f'max |param diff| {result["max_param_diff"]:.3g} {result["problems"] or ""}', flush=True)
  return {'reference_loop_seconds': round(reference['loop_seconds'], 1), 'uninterrupted_twin_max_diff': twin_diff,
          'trials': results}


# ----------------------------------------------------------------------------------------------------------------------
# Tampered checkpoints.


def tamper(step_dir: pathlib.Path, rng: random.Random) -> str:
  """Damages one file of a checkpoint step: truncated, overwritten with random bytes, or emptied."""
  files = sorted(p for p in step_dir.rglob('*') if p.is_file() and p.stat().st_size > 0)
  data_files = [p for p in files if '/d/' in p.as_posix()] or files
  target = rng.choice(data_files if rng.random() < 0.75 else files)
  size, how = target.stat().st_size, rng.choice(['truncate', 'overwrite', 'empty'])
  blob = bytearray(target.read_bytes())
  if how == 'truncate':
    blob = blob[:rng.randrange(size)]
  elif how == 'overwrite':
    start = rng.randrange(size)
    n = min(size - start, rng.randint(1, 64))
    blob[start:start + n] = bytes((b ^ rng.randint(1, 255)) for b in blob[start:start + n])
  else:
    blob = bytearray()
  target.write_bytes(bytes(blob))
  return f'{how} {target.relative_to(step_dir)} ({size} bytes)'


def case_tamper(out: pathlib.Path, tfds_dir: pathlib.Path, trials: int, rng: random.Random, reference: dict) -> dict:
  """A run stopped at step 9 has step 9 damaged, then resumes: one line, step 6, the reference's final parameters."""
  base = out / 'tamper' / 'base'
  shutil.rmtree(base, ignore_errors=True)
  base.mkdir(parents=True)
  rc, text = _run(_train_cmd(base / 'workdir', tfds_dir), _env(out, JAXFACE_SIGTERM_AT_STEP=str(TAMPER_AT)),
                  base / 'log.txt')
  if rc != 143 or saved_steps(base / 'workdir')[-2:] != [TAMPER_AT - CHECKPOINT_EVERY, TAMPER_AT]:
    raise SystemExit(f'error: the run to tamper with did not stop at step {TAMPER_AT} (exit {rc}): {text[-800:]}')
  results = []
  for trial in range(trials):
    workdir = out / 'tamper' / f'trial{trial}'
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(base / 'workdir', workdir)
    damage = tamper(workdir / 'checkpoints' / str(TAMPER_AT), rng)
    rc, text = _run(_train_cmd(workdir, tfds_dir), _env(out), workdir.parent / f'trial{trial}.txt')
    warnings = [line for line in text.splitlines() if 'falling back to' in line]
    detected = len(warnings) == 1 and f'falling back to step {TAMPER_AT - CHECKPOINT_EVERY}' in warnings[0]
    resumed = f'at step {TAMPER_AT - CHECKPOINT_EVERY}' if detected else f'at step {TAMPER_AT}'
    steps = metric_steps(workdir) if rc == 0 else {'train': [], 'val': []}
    lost, duplicated = _count_steps(steps, reference['steps'])
    diff = max_difference(final_state(workdir), reference['state']) if rc == 0 else float('inf')
    ok = rc == 0 and 'Traceback' not in text and f'Resuming from' in text and resumed in text and diff <= TOLERANCE
    results.append({'trial': trial, 'damage': damage, 'detected': detected, 'line': warnings[0] if warnings else '',
                    'rc': rc, 'lost_steps': lost, 'duplicated_steps': duplicated, 'max_param_diff': diff,
                    'recovered': ok and not lost and not duplicated})
    print(f'  tamper trial {trial}: {damage}: {"detected, fell back" if detected else "NOT detected"}, exit {rc}, '
          f'max |param diff| {diff:.3g}', flush=True)
  return {'trials': results}


# ----------------------------------------------------------------------------------------------------------------------


def summary_line(name: str, trials: list[dict]) -> str:
  recovered = sum(t['recovered'] for t in trials)
  lost = sum(t.get('lost', 0) + t.get('lost_steps', 0) + t.get('changed', 0) for t in trials)
  duplicated = sum(t.get('duplicated', 0) + t.get('duplicated_steps', 0) for t in trials)
  return f'{name}: {recovered}/{len(trials)} recovered, {lost} lost, {duplicated} duplicated'


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--trials', type=int, default=10, help='trials per case (default 10)')
  parser.add_argument('--out', default='runs/chaos', help='working folder (default runs/chaos)')
  parser.add_argument('--seed', type=int, default=0, help='draws the kill moments and the damage')
  parser.add_argument('--cases', nargs='+', default=['preprocess', 'train', 'tamper'],
                      choices=['preprocess', 'train', 'tamper'])
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out).absolute()
  out.mkdir(parents=True, exist_ok=True)
  rng = random.Random(args.seed)
  data = out / 'data'
  if not (data / 'train' / 'meta.json').is_file():
    subprocess.run([sys.executable, '-m', 'jaxface.data.synthetic', '--out', str(data), '--people', str(PEOPLE),
                    '--photos-per-person', str(PHOTOS), '--test-pairs', str(TEST_PAIRS), '--overwrite'],
                   env=_env(out), cwd=REPO, check=True, capture_output=True)
  report, lines, start = {}, [], time.time()
  if 'preprocess' in args.cases:
    report['preprocess'] = case_preprocess(out, data, args.trials, rng)
    lines.append(summary_line('preprocess, kill -9', report['preprocess']['trials']))
  tfds_dir = out / 'tfds'
  if not (tfds_dir / 'preprocess_report.json').is_file():
    _run(_preprocess_cmd(data, tfds_dir), _env(out), out / 'preprocess.txt')
  if 'train' in args.cases or 'tamper' in args.cases:
    reference = _reference_run(out, tfds_dir)
    if 'train' in args.cases:
      report['train'] = case_train(out, tfds_dir, args.trials, rng, reference)
      lines.append(summary_line('train, kill -9 and SIGTERM', report['train']['trials']))
    if 'tamper' in args.cases:
      report['tamper'] = case_tamper(out, tfds_dir, args.trials, rng, reference)
      lines.append(summary_line('train, tampered checkpoint', report['tamper']['trials']))
  report['seconds'] = round(time.time() - start, 1)
  (out / 'chaos_report.json').write_text(json.dumps(report, indent=1, default=str) + '\n')
  for line in lines:
    print(line)
  print(f'report: {out / "chaos_report.json"} ({report["seconds"]:.0f} s)')
  every = [t for case in report.values() if isinstance(case, dict) for t in case['trials']]
  return 0 if all(t['recovered'] for t in every) else 1


if __name__ == '__main__':
  sys.exit(main())
