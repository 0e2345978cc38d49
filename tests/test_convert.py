"""Pretrained import: PyTorch reference IR nets saved as Lightning `.ckpt` and CVLFace safetensors, converted by the
CLI, grafted into FaceModel, must give PyTorch's embeddings; bad inputs give one line naming the key."""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jaxface import convert
from jaxface.models.face_model import FaceModel
from jaxface.torch_reference import build_torch_ir, randomize

ROOT = pathlib.Path(__file__).resolve().parents[1]


def save_lightning_ckpt(net: torch.nn.Module, path: pathlib.Path, extra: dict | None = None) -> None:
  """The official AdaFace layout: {'state_dict': {'model.<backbone key>', 'head.kernel'}, ...}."""
  state = {f'model.{k}': v for k, v in net.state_dict().items()}
  state['head.kernel'] = torch.randn(512, 10)
  torch.save({'epoch': 25, 'global_step': 1000, 'state_dict': state, **(extra or {})}, path)


def save_cvlface_safetensors(net: torch.nn.Module, path: pathlib.Path) -> None:
  save_file({f'model.net.{k}': v.contiguous() for k, v in net.state_dict().items()}, str(path))


def face_model_embedder(arch: str):
  """FaceModel (eval mode) whose backbone is grafted from a converted checkpoint at params['backbone']; one compile."""
  model = FaceModel(arch=arch, fake_head='embedding')
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3))))
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)['embedding'])

  def embed(converted: dict, images: np.ndarray) -> np.ndarray:
    with jax.default_matmul_precision('highest'):
      return np.asarray(forward(convert.graft_backbone(zeros, converted), jnp.asarray(images)))
  return embed


# IR-50 is IR-18's conversion with more units: the end-to-end lane checks it too.
@pytest.mark.parametrize('arch', ['ir_18', pytest.param('ir_50', marks=pytest.mark.slow)])
def test_converted_checkpoints_match_pytorch(arch, tmp_path, capsys):
  net = randomize(build_torch_ir(arch), seed=len(arch), batches=1)
  save_lightning_ckpt(net, tmp_path / 'adaface.ckpt')
  save_cvlface_safetensors(net, tmp_path / 'model.safetensors')
  images = np.random.RandomState(0).uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)
  rgb = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  embed = face_model_embedder(arch)
  # The same weights are read as a BGR model (.ckpt default) and as an RGB one (CVLFace default).
  for source, torch_input in (('adaface.ckpt', rgb.flip(1)), ('model.safetensors', rgb)):
    out_dir = tmp_path / f'out_{source}'
    assert convert.main([str(tmp_path / source), '--arch', arch, '--out', str(out_dir)]) == 0
    info = convert.read_convert_info(out_dir)
    assert info['source_bgr'] == source.endswith('.ckpt') and info['input_size'] == 112
    assert info['left_out'] == (['head.kernel'] if source.endswith('.ckpt') else [])
    with torch.no_grad():
      expected = net(torch_input).numpy()
    got = embed(convert.load_converted(out_dir), images)
    max_abs = float(np.abs(got - expected).max())
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    with capsys.disabled():
      print(f'\n{arch} {source}: max abs diff {max_abs:.2e} (|embedding| max {np.abs(expected).max():.2f}), '
            f'min cosine {cosine.min():.8f}')
    assert max_abs < 1e-4
    assert cosine.min() > 0.99999
    if source.endswith('.ckpt'):
      # The bound above tells a right conversion from a wrong one: the same model fed the colours the other way
      # round (the BGR -> RGB flip the converter makes for a .ckpt, undone) misses it by far.
      wrong = embed(convert.load_converted(out_dir), images[..., ::-1])
      assert np.abs(wrong - expected).max() > 100 * 1e-4


@pytest.fixture(scope='module')
def ir18_state():
  return {f'model.{k}': v.numpy() for k, v in build_torch_ir('ir_18').state_dict().items()}


def test_bgr_source_flips_only_the_stem_input_channels(ir18_state):
  as_bgr, _ = convert.convert_state_dict(ir18_state, 'ir_18', bgr=True)
  as_rgb, _ = convert.convert_state_dict(ir18_state, 'ir_18', bgr=False)
  stem_bgr, stem_rgb = as_bgr['params']['stem_conv']['kernel'], as_rgb['params']['stem_conv']['kernel']
  np.testing.assert_array_equal(stem_bgr, stem_rgb[:, :, ::-1, :])
  assert not np.array_equal(stem_bgr, stem_rgb)
  body_conv = lambda variables: variables['params']['body_0']['conv1']['kernel']
  np.testing.assert_array_equal(body_conv(as_bgr), body_conv(as_rgb))


def run_cli_on_state(state: dict, tmp_path: pathlib.Path, capsys, arch: str = 'ir_18', *flags: str) -> str:
  path = tmp_path / 'bad.safetensors'
  save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, str(path))
  assert convert.main([str(path), '--arch', arch, '--out', str(tmp_path / 'out'), *flags]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1, err
  assert not (tmp_path / 'out' / 'variables').exists()
  return err


def test_wrong_architecture_names_a_key(ir18_state, tmp_path, capsys):
  err = run_cli_on_state(ir18_state, tmp_path, capsys, 'ir_50')
  assert 'wrong architecture' in err and 'model.body.23.res_layer.0.weight' in err and '(ir_18)' in err


def test_missing_key_is_named(ir18_state, tmp_path, capsys):
  state = dict(ir18_state)
  del state['model.body.4.shortcut_layer.1.running_var']
  err = run_cli_on_state(state, tmp_path, capsys)
  assert 'missing key model.body.4.shortcut_layer.1.running_var' in err


def test_extra_key_is_named(ir18_state, tmp_path, capsys):
  state = dict(ir18_state)
  state['model.body.1.shortcut_layer.0.weight'] = np.zeros((64, 64, 1, 1), np.float32)
  err = run_cli_on_state(state, tmp_path, capsys)
  assert 'unexpected key model.body.1.shortcut_layer.0.weight' in err


def test_shape_mismatch_is_named(ir18_state, tmp_path, capsys):
  state = dict(ir18_state)
  state['model.body.2.res_layer.4.weight'] = np.zeros((128, 128, 5, 5), np.float32)
  err = run_cli_on_state(state, tmp_path, capsys)
  assert 'model.body.2.res_layer.4.weight has shape (128, 128, 5, 5)' in err and '(128, 128, 3, 3)' in err


def test_pickle_needing_code_is_refused_unless_trusted(ir18_state, tmp_path):
  path = tmp_path / 'lightning.ckpt'
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in ir18_state.items()},
              'hyper_parameters': argparse.Namespace(lr=0.1)}, path)
  with pytest.raises(convert.ConversionError, match='--trust-pickle') as refused:
    convert.load_state_dict(path)
  assert '\n' not in str(refused.value)
  trusted = convert.load_state_dict(path, trust_pickle=True)
  np.testing.assert_array_equal(trusted['model.input_layer.0.weight'], ir18_state['model.input_layer.0.weight'])


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'jaxface.convert', str(tmp_path / 'nothere.ckpt'), '--arch', 'ir_50',
                           '--out', str(tmp_path / 'out')], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [f'error: {tmp_path / "nothere.ckpt"}: no such file (give the .ckpt, '
                                                'model.safetensors or model.pt to convert)']
