"""The trainer: learning on generated data, pmap equivalence, resume after SIGKILL, save on SIGTERM, clear errors."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxface import config as config_lib
from jaxface import optim

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = REPO / 'configs' / 'default.py'

# A run small enough for a unit test: the CPU demo at its smoke size (configs/default.py `shrink`: 40 synthetic people,
# an eighth-width IR-18 on 112x112 faces folded to 56x56, batch 32, 8 steps).
TINY = ['--config', f'{DEFAULT}:runlocal']


def _env(cache: pathlib.Path, devices: int = 1) -> dict:
  env = dict(os.environ)
  env['JAXFACE_CACHE'] = str(cache)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  # Runs of one test share compiled programs: a resumed run skips the minute XLA:CPU spends compiling the step.
  env['JAX_COMPILATION_CACHE_DIR'] = str(cache / 'jax-compile-cache')
  return env


def _run(args: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'jaxface.train', *args], env=env, cwd=REPO, capture_output=True,
                        text=True, **kwargs)


@pytest.fixture(scope='module')
def cache(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp('jaxface_cache')


def test_unknown_config_field_is_one_line(tmp_path, cache):
  result = _run(['--workdir', str(tmp_path / 'w'), '--config.model.no_such_field=3'], _env(cache))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --config.model.no_such_field: {DEFAULT} has no config field 'model.no_such_field'"]


def test_bad_value_type_is_one_line(tmp_path, cache):
  result = _run(['--workdir', str(tmp_path / 'w'), '--config.batch_size=many'], _env(cache))
  assert result.returncode == 2
  assert result.stderr.strip() == 'error: --config.batch_size=many: expected a int'


@pytest.mark.slow  # a full training start-up in a subprocess
def test_missing_dataset_is_one_line(tmp_path, cache):
  missing = tmp_path / 'no_dataset'
  result = _run(['--workdir', str(tmp_path / 'w'), '--config.data.source=tfds', f'--config.data.tfds_dir={missing}'],
                _env(cache))
  assert result.returncode == 2
  # The run logs its config and workdir first; the problem itself is one line, the last, with no traceback.
  lines = result.stderr.strip().splitlines()
  assert 'Traceback' not in result.stderr and sum(l.startswith('error:') for l in lines) == 1, lines
  assert lines[-1].startswith(f'error: {missing}: no prepared jaxface_faces dataset here'), lines


def test_override_parsing():
  config = config_lib.load_config(DEFAULT, ['--config.optim.learning_rate=1', '--config.model.arch=ir_50',
                                       '--config.progress=false', '--config.optim.decay_epochs=(3, 4)'])
  assert config.optim.learning_rate == 1.0 and isinstance(config.optim.learning_rate, float)
  assert config.model.arch == 'ir_50' and config.progress is False and tuple(config.optim.decay_epochs) == (3, 4)


def test_weight_decay_skips_batchnorm_bias_and_prelu():
  params = {'model': {'backbone': {'conv': {'kernel': 1}, 'bn': {'scale': 1, 'bias': 1}, 'prelu': {'alpha': 1}},
                      'dense': {'kernel': 1, 'bias': 1}}, 'head': {'kernel': 1}}
  mask = optim.decay_mask(params)
  assert mask == {'model': {'backbone': {'conv': {'kernel': True}, 'bn': {'scale': False, 'bias': False},
                                         'prelu': {'alpha': False}},
                            'dense': {'kernel': True, 'bias': False}}, 'head': {'kernel': True}}


def test_fake_head_has_its_own_adam_whatever_the_gradient_scale():
  """With optim.fake_head_lr the fake head's step is Adam-sized even when its gradient is tiny and AdaFace's huge."""
  config = config_lib.load_config(str(DEFAULT), ['--config.optim.warmup_epochs=0', '--config.optim.schedule=constant'])
  lr_fn = optim.learning_rate_schedule(config, 10, 100)
  params = {'model': {'backbone': {'conv': {'kernel': np.ones(4, np.float32)}},
                      'fake_head': {'logit': {'kernel': np.ones(4, np.float32)}}},
            'head': {'kernel': np.ones(4, np.float32)}}
  grads = {'model': {'backbone': {'conv': {'kernel': np.full(4, 100.0, np.float32)}},
                     'fake_head': {'logit': {'kernel': np.full(4, 1e-6, np.float32)}}},
           'head': {'kernel': np.full(4, 100.0, np.float32)}}
  tx = optim.make_optimizer(config, lr_fn)
  updates, _ = tx.update(grads, tx.init(params), params)
  step = np.abs(np.asarray(updates['model']['fake_head']['logit']['kernel']))
  np.testing.assert_allclose(step, config.optim.fake_head_lr * (1 + config.optim.fake_head_weight_decay), rtol=0.05)
  config.optim.fake_head_lr = 0.0  # off: the fake head shares SGD and the global clipping, so it hardly moves
  tx = optim.make_optimizer(config, lr_fn)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.abs(np.asarray(updates['model']['fake_head']['logit']['kernel'])).max() < 1e-3


_PMAP_SCRIPT = r'''
import functools, json, sys
import jax, jax.numpy as jnp, numpy as np
from jaxface import config as config_lib
from jaxface import optim, train
from jaxface.models.face_model import build_model
from jaxface.models.heads import AdaFaceHead
config = config_lib.load_config(sys.argv[1], ['--config.model.width=0.125', '--config.model.dropout=0.0'])
model, head = build_model(config.model), AdaFaceHead(num_classes=10)
lr_fn = optim.learning_rate_schedule(config, 10, 100)
tx = optim.make_optimizer(config, lr_fn)
state = train.create_train_state(model, head, tx, config, jax.random.PRNGKey(0))
rng = np.random.default_rng(0)
B, S = 16, config.model.input_size
batches = [{'image': rng.uniform(-1, 1, (B, S, S, 3)).astype(np.float32),
            'label': rng.integers(0, 10, B).astype(np.int32),
            'is_fake': (np.arange(B) % 4 == 0).astype(np.int32)} for _ in range(3)]
for b in batches:
  b['id_mask'] = (1 - b['is_fake']).astype(np.float32)
losses = {}
for n in (1, 2):
  step = jax.pmap(functools.partial(train.train_step, model=model, head=head, tx=tx, config=config, lr_fn=lr_fn),
                  axis_name='batch', devices=jax.devices()[:n])
  s = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), state)
  losses[n] = []
  for b in batches:
    s, summary = step(s, jax.tree.map(lambda x: x.reshape((n, B // n) + x.shape[1:]), b))
    losses[n].append(float(summary['loss'][0]))
print(json.dumps(losses))
'''


@pytest.mark.slow  # compiles the train step twice in a subprocess (minutes on 2 cores)
def test_two_devices_match_one_device(tmp_path):
  """Same global batch on 1 and 2 devices: BatchNorm, AdaFace statistics and every loss are global, so losses agree."""
  script = tmp_path / 'pmap_check.py'
  script.write_text(_PMAP_SCRIPT)
  env = _env(tmp_path, devices=2)
  result = subprocess.run([sys.executable, str(script), str(DEFAULT)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  losses = json.loads(result.stdout.strip().splitlines()[-1])
  one, two = np.array(losses['1']), np.array(losses['2'])
  assert np.all(np.isfinite(one)) and one[0] != one[2]  # the steps really update the model
  np.testing.assert_allclose(two, one, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_sigkill_resumes_and_sigterm_saves(tmp_path, cache):
  """A run killed with SIGKILL resumes from its last checkpoint and ends at the same step; SIGTERM saves first."""
  workdir = tmp_path / 'run'
  args = ['--workdir', str(workdir), *TINY, '--config.num_steps=24', '--config.checkpoint_every=4',
          '--config.eval_every=1000']
  env = _env(cache)
  proc = subprocess.Popen([sys.executable, '-m', 'jaxface.train', *args], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  ckpts = workdir / 'checkpoints'
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None:
    done = [int(p.name) for p in ckpts.glob('*') if p.name.isdigit()] if ckpts.exists() else []
    if any(s >= 8 for s in done):
      break
    time.sleep(0.5)
  assert proc.poll() is None, 'the run ended before it could be killed: ' + proc.stdout.read()[-2000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(int(p.name) for p in ckpts.glob('*') if p.name.isdigit())
  assert 8 <= killed_at < 24

  # SIGTERM on the resumed run: it saves the step it reached, then exits 143.
  proc = subprocess.Popen([sys.executable, '-m', 'jaxface.train', *args], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  output = ''
  deadline = time.time() + 400
  while time.time() < deadline:
    line = proc.stdout.readline()
    output += line
    if 'Resuming from' in line:
      break
  assert f'at step {killed_at}' in output, output[-3000:]
  # SIGTERM once the resumed run has saved a step of its own (so it is training, with steps left), not after a fixed
  # sleep: the train step got faster and a fixed 15 s let the run finish first.
  while time.time() < deadline and proc.poll() is None:
    if any(int(p.name) > killed_at for p in ckpts.glob('*') if p.name.isdigit()):
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  rest, _ = proc.communicate(timeout=300)
  output += rest
  if proc.returncode == 0:  # it finished before the signal arrived: nothing left to interrupt
    pytest.skip('the resumed run finished before SIGTERM')
  assert proc.returncode == 143, output[-3000:]
  assert 'SIGTERM: saved the checkpoint at step' in output
  saved = int(output.split('SIGTERM: saved the checkpoint at step ')[1].split()[0])
  assert saved > killed_at and (ckpts / str(saved)).is_dir()

  result = _run(args, env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resuming from {ckpts.absolute()} at step {saved}' in result.stderr
  assert max(int(p.name) for p in ckpts.glob('*') if p.name.isdigit()) == 24
  steps = [json.loads(l)['step'] for l in (workdir / 'metrics.jsonl').read_text().splitlines()
           if 'loss' in json.loads(l)]
  assert steps[-1] == 24


@pytest.mark.slow
def test_training_learns_identity_and_fakes(tmp_path, cache):
  """On generated data the fake head finds the fakes of people it never saw, and on held-out test pairs, scored with
  the fuse strength validation chose (not calibrated on them), fusing beats the cosine where a fake could break it.

  Validation picks the strength on its own pairs, so fused <= cosine there holds almost by construction (a tiny
  strength is the cosine); the claim is checked on the test split, whose people and pairs training never saw."""
  from jaxface import evaluate  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'learn'
  result = _run(['--workdir', str(workdir), *TINY, '--config.data.synthetic.people=120',
                 '--config.data.synthetic.test_pairs=200', '--config.num_steps=0', '--config.num_epochs=6',
                 '--config.checkpoint_every=100'], _env(cache), timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  final = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines() if 'val_eer_fused' in l][-1]
  assert final['val_eer_fused'] < 0.4  # chance is 0.5
  # The fake head itself finds the fakes of people it never saw (the AUC takes no calibration).
  assert final['val_fake_pair_auc'] > 0.65
  tfds_dir = json.loads((workdir / 'config.json').read_text())['data']['tfds_dir']
  test = evaluate.evaluate(workdir, tmp_path / 'eval', tfds_dir=tfds_dir, split='test', progress=False)
  fused, cosine = test['fused'], test['cosine']
  print(f'test pairs {test["labelled_pairs"]}: EER fused {fused["eer"]:.4f} vs cosine {cosine["eer"]:.4f}; with fakes '
        f'{fused["eer_fake_pairs"]:.4f} vs {cosine["eer_fake_pairs"]:.4f}; own_fake '
        f'{fused["eer_by_kind"]["own_fake"]:.4f} vs {cosine["eer_by_kind"]["own_fake"]:.4f}; fake-in-pair AUC '
        f'{test["fake_detection_pair"]["auc"]:.3f}')
  assert test['labelled_pairs'] == 200  # every test pair, scored with the best checkpoint's stored strength
  assert fused['eer'] < 0.4
  assert fused['eer_fake_pairs'] < cosine['eer_fake_pairs']
  assert fused['eer_by_kind']['own_fake'] < cosine['eer_by_kind']['own_fake']
  assert (workdir / 'best').is_dir()


def test_run_records_the_aligner_its_dataset_was_aligned_with(tmp_path, monkeypatch):
  """A model trained on MTCNN-aligned TFRecords must be evaluated on MTCNN-aligned photos, whatever the config said."""
  from jaxface import train  # pylint: disable=import-outside-toplevel
  from jaxface.data import prepared  # pylint: disable=import-outside-toplevel

  dataset = prepared.PreparedDataset(tfds_dir=tmp_path, builders={},
                                     metadata={'aligner': {'name': 'mtcnn', 'path': None}, 'num_classes': 3})
  monkeypatch.setattr(prepared, 'open_prepared', lambda tfds_dir: dataset if tfds_dir == tmp_path else None)
  config = config_lib.load_config(DEFAULT, ['--config.data.source=tfds', f'--config.data.tfds_dir={tmp_path}'])
  assert config.data.aligner == 'none'
  read, recorded = train.read_training_data(config)  # what train_and_evaluate reads its data through
  assert read is dataset and (recorded.data.aligner, recorded.data.aligner_path) == ('mtcnn', '')
  assert config.data.aligner == 'none'  # the caller's config is left as it was; the run saves `recorded`


@pytest.mark.slow
def test_sigterm_exactly_on_a_checkpoint_step_saves_once_and_exits_143(tmp_path, cache):
  """SIGTERM on a step the regular save has just written (step 4 of checkpoint_every=4, then the last step) used to
  save it twice (Orbax's StepAlreadyExistsError, a traceback, exit 1). The run signals itself through the test hook
  JAXFACE_SIGTERM_AT_STEP right after the step trains, so the timing is exact. A resume with another model width is
  refused in one line naming the mismatch."""
  from jaxface import checkpoints, train  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'run'
  args = ['--workdir', str(workdir), *TINY, '--config.num_steps=8', '--config.checkpoint_every=4',
          '--config.eval_every=4']
  manager = lambda: checkpoints.train_manager(workdir, save_every=4, keep=2)
  for step in (4, 8):  # a checkpoint step, then the last step (always saved)
    result = _run(args, dict(_env(cache), **{train.SIGTERM_AT_STEP_ENV: str(step)}), timeout=900)
    assert result.returncode == 143, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert (f'SIGTERM: saved the checkpoint at step {step} in {(workdir / "checkpoints").absolute()}; rerun the same '
            'command to resume') in result.stderr
    m = manager()
    meta = checkpoints.read_meta(m, step)
    m.close()
    assert meta['step'] == step and 'fuse_strength' in meta['scoring'] and 'threshold' in meta['scoring'], meta
  assert 'Resuming from' in result.stderr and 'at step 4' in result.stderr

  result = _run([*args, '--config.model.width=0.25'], _env(cache), timeout=900)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {(workdir / "checkpoints").absolute()}/8: holds another model or config ('), last
  assert ' there, ' in last and ' here); use the config it was trained with or a new --workdir' in last, last
