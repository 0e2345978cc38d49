"""Pretrained IR-ResNet import: official AdaFace Lightning `.ckpt`, CVLFace `model.safetensors` or CVLFace
`pretrained_model/model.pt` -> a Flax checkpoint of the FaceModel backbone.

    python -m jaxface.convert SRC --arch ir_101 --out DIR [--bgr | --rgb] [--trust-pickle]
    python -m jaxface.convert mobilefacenet_ms1m.pt --arch mobilefacenet --out DIR   # foamliu/MobileFaceNet

MobileFaceNet reads ImageNet-normalised RGB: convert.json records `input_norm: 'imagenet'` (IR nets: 'unit', [-1, 1]),
and `check_converted` makes training refuse a config.model whose arch or input_norm differs.

DIR gets `variables/` (Orbax, {'params', 'batch_stats'} of the backbone alone) and `convert.json` (arch, input size,
colour order of the source, the key prefix found, keys left out). Training grafts the result in with
`graft_backbone(variables, load_converted(DIR))`, i.e. at `params['backbone']` and `batch_stats['backbone']` of
FaceModel (config.init_from = DIR).

Colour order: AdaFace's official weights were trained on BGR images; reversing the input-channel axis of the stem
kernel makes them an exact RGB model (the stem is linear in its input). CVLFace snapshots are already RGB. Defaults:
`.ckpt` = BGR, anything else = RGB; --bgr / --rgb override.

Safety: safetensors never runs code. `.ckpt` / `.pt` files are read with torch's `weights_only=True`; a file that
needs a full pickle load (Lightning checkpoints holding hyper-parameter objects) is refused unless --trust-pickle.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import pickle
import sys
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxface.models.iresnet import IR_UNITS, IResNet, output_grid
from jaxface.models.mobilefacenet import EMBEDDING_DIM as MOBILEFACENET_DIM, MobileFaceNet

MOBILEFACENET = 'mobilefacenet'

# Flax module name inside the backbone -> official PyTorch module path relative to the backbone.
_STEM = {'stem_conv': 'input_layer.0', 'stem_bn': 'input_layer.1', 'stem_prelu': 'input_layer.2'}
_UNIT = {'bn1': 'res_layer.0', 'conv1': 'res_layer.1', 'bn2': 'res_layer.2', 'prelu': 'res_layer.3',
         'conv2': 'res_layer.4', 'bn3': 'res_layer.5', 'shortcut_conv': 'shortcut_layer.0',
         'shortcut_bn': 'shortcut_layer.1'}
_OUTPUT = {'output_bn': 'output_layer.0', 'output_dense': 'output_layer.3', 'embedding_bn': 'output_layer.4'}
_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight', ('params', 'bias'): 'bias',
         ('params', 'alpha'): 'weight', ('batch_stats', 'mean'): 'running_mean',
         ('batch_stats', 'var'): 'running_var'}
# Prefixes under which the backbone sits: Lightning (model.), CVLFace HF wrapper (model.net.), CVLFace model.pt (net.).
_ANCHOR = 'input_layer.0.weight'


# What `save_converted` writes next to the weights (arch, input_norm, embedding_dim, ...): marks a converted folder.
INFO_FILE = 'convert.json'

class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message is one line naming the file or key and what to do."""


def load_state_dict(path: str | pathlib.Path, trust_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads every tensor of a `.safetensors`, `.ckpt`, `.pt` or `.pth` file as float32 numpy arrays.

  A Lightning checkpoint's 'state_dict' entry is unwrapped. Raises ConversionError for a missing or unreadable file,
  or a pickle that needs more than torch's weights_only loader while `trust_pickle` is False.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConversionError(f'{path}: no such file (give the .ckpt, model.safetensors or model.pt to convert)')
  if path.suffix == '.safetensors':
    return _load_safetensors(path)
  try:
    import torch  # Only this reader needs torch; `import jaxface` must not.
  except ImportError:
    raise ConversionError(f'{path}: reading a PyTorch pickle needs torch (pip install jaxface[preprocess]), '
                          'or convert from a .safetensors file') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError:
    if not trust_pickle:
      raise ConversionError(f'{path}: needs a full pickle load, which can run code from the file; rerun with '
                            '--trust-pickle if you trust its source') from None
    obj = torch.load(path, map_location='cpu', weights_only=False)
  except Exception as e:  # Corrupt or foreign files: torch raises many types.
    raise ConversionError(f'{path}: not a readable PyTorch checkpoint ({type(e).__name__}: '
                          f'{str(e).splitlines()[0] if str(e) else ""})') from None
  if isinstance(obj, dict) and isinstance(obj.get('state_dict'), dict):
    obj = obj['state_dict']
  elif hasattr(obj, 'state_dict') and callable(obj.state_dict):
    obj = obj.state_dict()
  if not isinstance(obj, dict):
    raise ConversionError(f'{path}: holds a {type(obj).__name__}, not a state dict of tensors')
  return {k: v.detach().to(torch.float32).cpu().numpy() for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _load_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError, safe_open
  try:
    with safe_open(str(path), framework='np') as f:
      return {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}
  except (SafetensorError, TypeError, ValueError) as e:
    if 'bf16' in str(e).lower() or 'bfloat16' in str(e).lower():
      import torch  # numpy has no bfloat16; torch reads it without any pickle.
      with safe_open(str(path), framework='pt') as f:
        return {k: f.get_tensor(k).to(torch.float32).numpy() for k in f.keys()}
    raise ConversionError(f'{path}: not a readable safetensors file ({str(e).splitlines()[0]})') from None


def find_prefix(state: dict[str, np.ndarray], source: str = 'checkpoint') -> str:
  """The key prefix of the IR backbone ('model.', 'model.net.', 'net.' or ''), found from its stem conv."""
  found = sorted((k[:-len(_ANCHOR)] for k in state if k.endswith(_ANCHOR)), key=len)
  if not found:
    raise ConversionError(f'{source}: no key ends in {_ANCHOR!r}: not an AdaFace/CVLFace IR-ResNet checkpoint')
  return found[0]


def _torch_key(flax_path: tuple[str, ...]) -> str:
  """('params', 'body_3', 'conv1', 'kernel') -> 'body.3.res_layer.1.weight' (relative to the backbone prefix)."""
  collection, *modules, leaf = flax_path
  if modules[0] == 'output':
    module = _OUTPUT[modules[1]]
  elif modules[0].startswith('body_'):
    module = f'body.{modules[0][5:]}.{_UNIT[modules[1]]}'
  else:
    module = _STEM[modules[0]]
  return f'{module}.{_LEAF[collection, leaf]}'


def _transform(flax_path: tuple[str, ...], grid: int, bgr: bool) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                                            Callable[[tuple], tuple]]:
  """(PyTorch array -> Flax array, Flax shape -> expected PyTorch shape) for one leaf."""
  module, leaf = flax_path[-2], flax_path[-1]
  if leaf == 'kernel' and module == 'output_dense':
    def dense(w):
      # PyTorch flattens (C, H, W); the Flax map flattens (H, W, C).
      out = w.shape[0]
      return w.reshape(out, -1, grid, grid).transpose(2, 3, 1, 0).reshape(-1, out)
    return dense, lambda s: (s[1], s[0])
  if leaf == 'kernel':
    def conv(w):
      w = w.transpose(2, 3, 1, 0)
      return w[:, :, ::-1, :] if bgr and module == 'stem_conv' else w
    return conv, lambda s: (s[3], s[2], s[0], s[1])
  return (lambda w: w), (lambda s: tuple(s))


def backbone_shapes(arch: str, width: float = 1.0, input_size: int = 112,
                    embedding_dim: int = 512) -> dict[str, Any]:
  """Abstract {'params', 'batch_stats'} of the Flax IR backbone (no arrays are allocated)."""
  if arch not in IR_UNITS:
    raise ConversionError(f'--arch {arch!r}: convertible archs are {", ".join(IR_UNITS)}')
  net = IResNet(IR_UNITS[arch], width=width, embedding_dim=embedding_dim)
  return jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, input_size, input_size, 3))))


def _count_units(keys, prefix: str) -> int:
  indices = {int(k[len(prefix) + 5:].split('.')[0]) for k in keys if k.startswith(prefix + 'body.')}
  return max(indices) + 1 if indices else 0


def convert_state_dict(state: dict[str, np.ndarray], arch: str, *, bgr: bool,
                       source: str = 'checkpoint') -> tuple[dict[str, Any], dict[str, Any]]:
  """Official IR state dict -> ({'params', 'batch_stats'} of the Flax backbone as numpy float32, info dict).

  Raises ConversionError naming the key for a wrong architecture, a missing key, an extra backbone key or a shape
  mismatch. Keys outside the backbone prefix (e.g. `head.kernel`) are left out and listed in info['left_out'].
  """
  prefix = find_prefix(state, source)
  if arch not in IR_UNITS:
    raise ConversionError(f'{source}: --arch {arch!r} is not one of {", ".join(IR_UNITS)}')
  dense_key = prefix + 'output_layer.3.weight'
  if dense_key not in state:
    raise ConversionError(f'{source}: missing key {dense_key} (the embedding layer)')
  cells = state[dense_key].shape[1] / state[prefix + 'output_layer.0.weight'].shape[0] \
      if prefix + 'output_layer.0.weight' in state else 0
  sizes = {output_grid(s) ** 2: s for s in (112, 56)}
  if cells not in sizes:
    raise ConversionError(f'{source}: key {dense_key} has shape {tuple(state[dense_key].shape)}: not a 112x112 or '
                          '56x56 IR net')
  input_size, embedding_dim = sizes[cells], state[dense_key].shape[0]
  units, expected_units = _count_units(state, prefix), sum(IR_UNITS[arch])
  if units != expected_units:
    guess = [a for a, u in IR_UNITS.items() if sum(u) == units]
    key = f'{prefix}body.{max(units, expected_units) - 1}.res_layer.0.weight'
    raise ConversionError(f'{source}: wrong architecture: --arch {arch} has {expected_units} units but the checkpoint '
                          f'has {units} ({guess[0] if guess else "unknown arch"}); key {key} '
                          f'{"is extra" if units > expected_units else "is missing"}')
  grid = output_grid(input_size)
  abstract = backbone_shapes(arch, 1.0, input_size, embedding_dim)
  flat = flax.traverse_util.flatten_dict(abstract)
  converted, used = {}, set()
  for path, leaf in flat.items():
    key = prefix + _torch_key(path)
    if key not in state:
      raise ConversionError(f'{source}: missing key {key} for --arch {arch}')
    forward, torch_shape = _transform(path, grid, bgr)
    if tuple(state[key].shape) != torch_shape(leaf.shape):
      raise ConversionError(f'{source}: key {key} has shape {tuple(state[key].shape)} but --arch {arch} expects '
                            f'{torch_shape(leaf.shape)}')
    converted[path] = np.ascontiguousarray(forward(state[key]), np.float32)
    used.add(key)
  def in_backbone(key):
    # Under a non-empty prefix everything is backbone; a bare state dict may hold other top-level modules.
    return key.startswith(prefix) and (bool(prefix) or key.split('.')[0] in ('input_layer', 'body', 'output_layer'))
  for key in sorted(state):
    if in_backbone(key) and key not in used and not key.endswith('num_batches_tracked'):
      raise ConversionError(f'{source}: unexpected key {key} for --arch {arch} (wrong --arch or not an IR net)')
  left_out = sorted(k for k in state if not in_backbone(k))
  info = {'arch': arch, 'width': 1.0, 'input_size': input_size, 'embedding_dim': int(embedding_dim),
          'input_norm': 'unit', 'source_bgr': bool(bgr), 'prefix': prefix, 'left_out': left_out}
  return flax.traverse_util.unflatten_dict(converted), info


def _mobilefacenet_key(flax_path: tuple[str, ...]) -> str:
  """('params', 'features_3', 'expand', 'conv', 'kernel') -> 'features.3.conv.0.0.weight' (foamliu's names)."""
  collection, *modules, leaf = flax_path
  top = modules[0]
  if top.startswith('features_'):
    # Every block of the real net expands (t != 1), so conv.0 is the expansion, conv.1 the depthwise ConvBNReLU.
    part = {('expand', 'conv'): 'conv.0.0', ('expand', 'bn'): 'conv.0.1', ('depthwise', 'conv'): 'conv.1.0',
            ('depthwise', 'bn'): 'conv.1.1', ('project', 'conv'): 'conv.2', ('project', 'bn'): 'conv.3'}
    module = f'features.{top[9:]}.{part[modules[1], modules[2]]}'
  elif top in ('conv1', 'conv2'):
    module = f'{top}.{0 if modules[1] == "conv" else 1}'
  elif top.startswith(('dw_conv_', 'gdconv_')):
    module = top.replace('dw_conv_', 'dw_conv.', 1).replace('gdconv_', 'gdconv.', 1)
  else:
    module = top  # conv3, bn
  return f'{module}.{_LEAF[collection, leaf]}'


def _mobilefacenet_transform(flax_path: tuple[str, ...]) -> tuple[Callable, Callable]:
  if flax_path[-2:] == ('conv3', 'kernel'):
    # A 1x1 conv on the 1x1 map is the Dense of the Flax net: (O, I, 1, 1) -> (I, O).
    return (lambda w: w[:, :, 0, 0].T), (lambda s: (s[1], s[0], 1, 1))
  if flax_path[-1] == 'kernel':
    return (lambda w: w.transpose(2, 3, 1, 0)), (lambda s: (s[3], s[2], s[0], s[1]))
  return (lambda w: w), (lambda s: tuple(s))


def convert_mobilefacenet(state: dict[str, np.ndarray], source: str = 'checkpoint',
                          width: float = 1.0) -> tuple[dict[str, Any], dict[str, Any]]:
  """foamliu MobileFaceNet state dict -> ({'params', 'batch_stats'} of the Flax backbone as numpy float32, info).

  Strict: a missing, extra or mis-shaped key raises ConversionError naming it; num_batches_tracked is dropped.
  """
  net = MobileFaceNet(width=width)
  abstract = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3))))
  converted, used = {}, set()
  for path, leaf in flax.traverse_util.flatten_dict(abstract).items():
    key = _mobilefacenet_key(path)
    if key not in state:
      raise ConversionError(f'{source}: missing key {key} for --arch {MOBILEFACENET}')
    forward, torch_shape = _mobilefacenet_transform(path)
    if tuple(state[key].shape) != torch_shape(leaf.shape):
      raise ConversionError(f'{source}: key {key} has shape {tuple(state[key].shape)} but --arch {MOBILEFACENET} '
                            f'expects {torch_shape(leaf.shape)}')
    converted[path] = np.ascontiguousarray(forward(state[key]), np.float32)
    used.add(key)
  for key in sorted(state):
    if key not in used and not key.endswith('num_batches_tracked'):
      raise ConversionError(f'{source}: unexpected key {key} for --arch {MOBILEFACENET} (not foamliu MobileFaceNet)')
  info = {'arch': MOBILEFACENET, 'width': width, 'input_size': 112, 'embedding_dim': MOBILEFACENET_DIM,
          'input_norm': 'imagenet', 'source_bgr': False, 'prefix': '', 'left_out': []}
  return flax.traverse_util.unflatten_dict(converted), info


def check_converted(path: str | pathlib.Path, model_config) -> None:
  """Raises ConversionError (one line) when config.model's arch, input_norm or embedding_dim differ from DIR's.

  Folders converted before input_norm was recorded hold IR nets, which read [-1, 1] ('unit').
  """
  info = read_convert_info(path)
  # (field, what an old convert.json without it means, config.model's default)
  for field, recorded_default, config_default in (('arch', None, None), ('input_norm', 'unit', 'unit'),
                                                  ('embedding_dim', None, 512)):
    want = info.get(field, recorded_default)
    have = model_config.get(field, config_default)
    if want is not None and have != want:
      raise ConversionError(f'{path}: converted with {field}={want!r} but config.model.{field} is {have!r}; '
                            f'rerun with --config.model.{field}={want}')


def save_converted(variables: dict[str, Any], out_dir: str | pathlib.Path, info: dict[str, Any]) -> pathlib.Path:
  """Writes OUT/variables (Orbax) and OUT/convert.json. Refuses to overwrite an earlier conversion."""
  import orbax.checkpoint as ocp
  out_dir = pathlib.Path(out_dir).absolute()
  target = out_dir / 'variables'
  if target.exists():
    raise ConversionError(f'{target}: already exists; choose another --out or delete it')
  out_dir.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(target, variables)
  (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + '\n')
  return out_dir


def load_converted(path: str | pathlib.Path) -> dict[str, Any]:
  """{'params', 'batch_stats'} of the backbone from a `python -m jaxface.convert` output directory.

  Graft them at FaceModel's `params['backbone']` / `batch_stats['backbone']` (see `graft_backbone`).
  """
  import orbax.checkpoint as ocp
  path = pathlib.Path(path).absolute()
  target = path / 'variables'
  if not target.is_dir():
    raise ConversionError(f'{path}: no converted checkpoint here (expected {target}; run python -m jaxface.convert)')
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(target)
  return {'params': restored['params'], 'batch_stats': restored['batch_stats']}


def read_convert_info(path: str | pathlib.Path) -> dict[str, Any]:
  """The convert.json written next to a converted checkpoint: arch, input_size, source_bgr, prefix, left_out."""
  return json.loads((pathlib.Path(path) / INFO_FILE).read_text())


def graft_backbone(variables: dict[str, Any], converted: dict[str, Any]) -> dict[str, Any]:
  """FaceModel variables with the backbone replaced by `converted`; shapes must agree leaf by leaf.

  Raises ConversionError naming the first leaf that differs (e.g. a config.model.arch other than the converted one).
  """
  out = {}
  for collection in ('params', 'batch_stats'):
    mine = flax.traverse_util.flatten_dict(variables[collection]['backbone'])
    theirs = flax.traverse_util.flatten_dict(converted[collection])
    for key in sorted(set(mine) | set(theirs)):
      name = '/'.join((collection, 'backbone') + key)
      if key not in theirs or key not in mine:
        raise ConversionError(f'converted backbone {"lacks" if key not in theirs else "has extra"} {name}: '
                              'config.model.arch/width must match the converted checkpoint')
      if tuple(mine[key].shape) != tuple(theirs[key].shape):
        raise ConversionError(f'converted backbone {name} has shape {tuple(theirs[key].shape)}, the model '
                              f'{tuple(mine[key].shape)}: config.model.arch/width/input_size must match')
    out[collection] = {**variables[collection],
                       'backbone': jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), variables[collection]['backbone'],
                                                converted[collection])}
  return {**variables, **out}


def main(argv: list[str] | None = None) -> int:
  """CLI entry point; returns the exit status (2 for a bad input, with one line on stderr)."""
  parser = argparse.ArgumentParser(prog='python -m jaxface.convert', description=__doc__.split('\n\n')[0])
  parser.add_argument('src', help='AdaFace .ckpt, CVLFace model.safetensors or pretrained_model/model.pt')
  parser.add_argument('--arch', required=True, choices=sorted([*IR_UNITS, MOBILEFACENET]))
  parser.add_argument('--out', required=True, help='output directory')
  colour = parser.add_mutually_exclusive_group()
  colour.add_argument('--bgr', dest='bgr', action='store_true', default=None,
                      help='source weights expect BGR input (default for .ckpt)')
  colour.add_argument('--rgb', dest='bgr', action='store_false', help='source expects RGB (default otherwise)')
  parser.add_argument('--trust-pickle', action='store_true',
                      help='allow a full pickle load (runs code from the file) when weights_only loading fails')
  args = parser.parse_args(argv)
  bgr = args.bgr if args.bgr is not None else args.src.endswith('.ckpt')
  try:
    state = load_state_dict(args.src, trust_pickle=args.trust_pickle)
    if args.arch == MOBILEFACENET:
      bgr = False
      variables, info = convert_mobilefacenet(state, source=args.src)
    else:
      variables, info = convert_state_dict(state, args.arch, bgr=bgr, source=args.src)
    info['source'] = str(args.src)
    out = save_converted(variables, args.out, info)
  except ConversionError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{args.src} -> {out} ({args.arch}, {info["input_size"]}x{info["input_size"]}, '
        f'{"BGR source, stem flipped to RGB" if bgr else "RGB source"}; left out: {len(info["left_out"])} keys)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
