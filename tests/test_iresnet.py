"""Backbones: official parameter counts, layout, and forward + backward passes that compile on the CPU."""
from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models.face_model import ARCHS, FaceModel, build_model, high_pass
from jaxface.models.iresnet import IR_UNITS, IResNet, official_param_count, scaled_channels, shortcut_conv_units


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def flax_backbone_shapes(arch: str, width: float = 1.0, size: int = 112):
  net = IResNet(IR_UNITS[arch], width=width)
  return jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))


def test_parameter_counts_match_the_official_models(capsys):
  """IR-18/50: Flax == PyTorch reference (official layout) == hand count; IR-101 (not built in torch, slow): Flax ==
  hand count.

  The hand count (`official_param_count`) is: stem 3*64*9 + 2*64 + 64; per unit in->d 2*in + 9*in*d + 2*d + d +
  9*d*d + 2*d, plus in*d + 2*d for a conv shortcut; output 2*512 + 25088*512 + 512 (BatchNorm1d is affine=False).
  """
  from jaxface.torch_reference import build_torch_ir
  counts = {}
  for arch in ('ir_18', 'ir_50', 'ir_101'):
    counts[arch] = count(flax_backbone_shapes(arch)['params'])
    assert counts[arch] == official_param_count(arch)
    if arch != 'ir_101':
      torch_count = sum(p.numel() for p in build_torch_ir(arch).parameters())
      assert counts[arch] == torch_count
  with capsys.disabled():
    print('\nbackbone parameters at 112x112: ' + ', '.join(f'{a} {n:,}' for a, n in counts.items()))
  assert counts == {'ir_18': 24_020_352, 'ir_50': 43_585_600, 'ir_101': 65_150_912}


def test_layout_shortcuts_stages_and_output():
  variables = flax_backbone_shapes('ir_50')
  params = variables['params']
  with_conv = sorted(int(k[5:]) for k, v in params.items() if k.startswith('body_') and 'shortcut_conv' in v)
  assert with_conv == shortcut_conv_units('ir_50') == [3, 7, 21]
  assert shortcut_conv_units('ir_101') == [3, 16, 46] and shortcut_conv_units('ir_18') == [2, 4, 6]
  assert params['output']['output_dense']['kernel'].shape == (7 * 7 * 512, 512)
  assert 'embedding_bn' not in params['output']  # BatchNorm1d without scale and bias
  assert set(variables['batch_stats']['output']['embedding_bn']) == {'mean', 'var'}
  assert params['body_5']['prelu']['alpha'].shape == (128,)
  net = IResNet(IR_UNITS['ir_18'], width=0.25)
  small = jax.eval_shape(lambda: net.init_with_output(jax.random.PRNGKey(0), jnp.zeros((3, 56, 56, 3))))
  (embedding, stages), _ = small
  assert embedding.shape == (3, 512)
  assert {k: v.shape for k, v in stages.items()} == {
      'stem': (3, 56, 56, 16), 'stage1': (3, 28, 28, 16), 'stage2': (3, 14, 14, 32), 'stage3': (3, 7, 7, 64),
      'stage4': (3, 4, 4, 128)}


def compile_fast(fn, *args):
  """jit + compile at XLA optimisation level 0: compiling is the slow part on a busy CPU and these models are tiny."""
  return jax.jit(fn).lower(*args).compile(compiler_options={'xla_backend_optimization_level': 0})


def train_loss(model, params, batch_stats, images, rng):
  out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=True,
                             mutable=['batch_stats'], rngs={'dropout': rng})
  loss = jnp.mean(jnp.sum(out['embedding'] ** 2, axis=-1)) + jnp.mean(jax.nn.softplus(out['fake_logit']))
  return loss, updates['batch_stats']


@pytest.mark.parametrize('arch', ARCHS)
def test_forward_and_backward_trace_under_jit(arch):
  """Every backbone, at width 1/8 and 56x56, traces a jitted training-mode forward + backward (shapes only)."""
  model = build_model({'arch': arch, 'width': 0.125, 'input_size': 56, 'fake_head': 'traces'})
  images = jax.ShapeDtypeStruct((2, 56, 56, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
  step = jax.jit(jax.grad(functools.partial(train_loss, model), has_aux=True))
  grads, new_stats = jax.eval_shape(step, variables['params'], variables['batch_stats'], images,
                                    jax.random.PRNGKey(1))
  assert jax.tree.structure(grads) == jax.tree.structure(variables['params'])
  assert jax.tree.structure(new_stats) == jax.tree.structure(variables['batch_stats'])
  assert jax.tree.leaves(grads['backbone'])[0].dtype == jnp.float32


def test_high_pass_cancels_flat_content_and_keeps_a_checkerboard():
  flat = jnp.full((1, 8, 8, 3), 0.7)
  np.testing.assert_allclose(high_pass(flat), 0.0, atol=1e-6)
  checker = jnp.asarray((-1.0) ** (np.arange(8)[:, None] + np.arange(8)[None, :]))[None, :, :, None]
  # Inside, a 3x3 window holds 5 of the centre's sign and 4 of the other: local mean 1/9 of it, residual 8/9.
  np.testing.assert_allclose(high_pass(checker)[0, 1:-1, 1:-1], checker[0, 1:-1, 1:-1] * 8 / 9, atol=1e-6)


def test_traces_head_reads_the_folded_noise_residual():
  model = build_model({'arch': 'ir_18', 'width': 0.125, 'input_size': 112, 'space_to_depth': True})
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 112, 112, 3))))
  head = variables['params']['fake_head']
  assert variables['batch_stats']['fake_head']['residual_bn']['mean'].shape == (12,)  # 2x2 x RGB, folded
  stem = scaled_channels(64, 0.125)
  assert head['trace_conv0']['kernel'].shape == (3, 3, 12 + stem, 32)


@pytest.mark.parametrize('mode', ['features', 'embedding', 'none'])
def test_other_fake_head_modes_trace(mode):
  model = build_model({'arch': 'ir_18', 'width': 0.125, 'input_size': 56, 'fake_head': mode})
  out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, 56, 56, 3))))
  assert out['fake_logit'].shape == (2,)
  assert ('fake_head' in variables['params']) == (mode != 'none')
  if mode == 'features':
    assert 'trace_conv' in variables['params']['fake_head']


def test_unknown_fake_head_mode_is_one_clear_error():
  model = build_model({'arch': 'ir_18', 'width': 0.125, 'input_size': 56, 'fake_head': 'spectral'})
  with pytest.raises(ValueError, match="'spectral'.*'traces'"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 56, 56, 3))))


def test_tiny_model_trains_one_real_step():
  """A real compiled forward + backward of a tiny IR-18 FaceModel as the default config builds it: 112x112 folded to
  56x56x12, the 'traces' fake head on the stem output."""
  model = build_model({'arch': 'ir_18', 'width': 0.125, 'input_size': 112, 'fake_head': 'traces',
                       'space_to_depth': True})
  images = jax.random.uniform(jax.random.PRNGKey(2), (4, 112, 112, 3), minval=-1, maxval=1)
  variables = compile_fast(model.init, jax.random.PRNGKey(0), images)(jax.random.PRNGKey(0), images)
  params, stats = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(params['backbone']['body_0']['prelu']['alpha'], 0.25)
  compiled = compile_fast(jax.value_and_grad(functools.partial(train_loss, model), has_aux=True),
                          params, stats, images, jax.random.PRNGKey(1))
  (loss, new_stats), grads = compiled(params, stats, images, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss)) and float(loss) > 1.0
  flat = flax.traverse_util.flatten_dict(grads, sep='/')
  assert all(np.all(np.isfinite(g)) for g in flat.values())
  for name in ('backbone/stem_conv/kernel', 'backbone/body_7/conv2/kernel', 'backbone/output/output_dense/kernel',
               'fake_head/trace_conv0/kernel', 'fake_head/trace_conv1/kernel', 'fake_head/logit/kernel'):
    assert np.abs(flat[name]).max() > 0, name
  old, new = stats['backbone']['stem_bn']['mean'], new_stats['backbone']['stem_bn']['mean']
  assert np.abs(np.asarray(new) - np.asarray(old)).max() > 1e-4  # running statistics moved


def test_batchnorm_axis_name_averages_statistics_across_replicas():
  """Two replicas of half a batch each (vmap stands in for pmap) update BN exactly as one full batch does."""
  images = jax.random.normal(jax.random.PRNGKey(3), (8, 56, 56, 3))
  local = build_model({'arch': 'small_cnn', 'width': 0.25, 'fake_head': 'none', 'dropout': 0.0})
  synced = build_model({'arch': 'small_cnn', 'width': 0.25, 'fake_head': 'none', 'dropout': 0.0,
                        'bn_axis_name': 'batch'})
  variables = local.init(jax.random.PRNGKey(0), images[:1])
  apply = lambda m, x: m.apply(variables, x, train=True, mutable=['batch_stats'])
  halves = images.reshape(2, 4, 56, 56, 3)
  _, full = compile_fast(lambda x: apply(local, x), images)(images)
  _, replicas = compile_fast(jax.vmap(lambda x: apply(synced, x), axis_name='batch'), halves)(halves)
  for path, value in flax.traverse_util.flatten_dict(full['batch_stats'], sep='/').items():
    per_replica = flax.traverse_util.flatten_dict(replicas['batch_stats'], sep='/')[path]
    np.testing.assert_allclose(per_replica[0], value, rtol=1e-4, atol=1e-5, err_msg=path)
    np.testing.assert_array_equal(per_replica[0], per_replica[1])


def test_bfloat16_model_returns_float32_outputs():
  model = FaceModel(arch='ir_18', width=0.125, fake_head='features', dtype=jnp.bfloat16)
  out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, 56, 56, 3))))
  assert out['embedding'].dtype == jnp.float32 and out['embedding'].shape == (2, 512)
  assert out['fake_logit'].dtype == jnp.float32 and out['fake_logit'].shape == (2,)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables['params']))


def test_build_model_rejects_unknown_arch():
  with pytest.raises(ValueError, match="arch 'ir_152' is not one of"):
    build_model({'arch': 'ir_152'})


def test_space_to_depth_folds_every_pixel_into_a_half_size_map():
  from jaxface.models.face_model import fold_pixels  # pylint: disable=import-outside-toplevel
  images = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  folded = fold_pixels(images)
  assert folded.shape == (2, 2, 2, 12)
  # Position (i, j) holds the 2x2 block at rows 2i..2i+1, columns 2j..2j+1, row-major, channels last.
  np.testing.assert_array_equal(folded[1, 1, 0], images[1, 2:4, 0:2].reshape(-1))
  model = build_model({'arch': 'ir_18', 'width': 0.125, 'space_to_depth': True, 'dropout': 0.0})
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3))))
  stem = variables['params']['backbone']['stem_conv']['kernel']
  assert stem.shape[2] == 12  # the stem reads 12 channels at 56x56: a 56-size model's cost, every pixel seen
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 112, 112, 3))), variables)
  assert out['embedding'].shape == (2, 512) and out['fake_logit'].shape == (2,)


def test_the_removed_canonical_option_is_refused_in_one_line_and_its_old_zero_accepted():
  # Checkpoints written before 2026-12-07 carry fake_canonical_px: 0 in their config.json and must still load.
  assert build_model({'arch': 'ir_18', 'fake_canonical_px': 0}).fake_head == 'traces'
  with pytest.raises(ValueError, match='fake_canonical_px=56 was removed from the model'):
    build_model({'arch': 'ir_18', 'fake_canonical_px': 56})
