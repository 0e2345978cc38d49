r"""Does the fake head generalise? Leave-one-source-out over every fake source, laundered test photos, shortcut probes.

    python -m research.fake_generalisation.benchmark --quick --out runs/fakegen-quick  # under 5 min on 2 CPU cores
    python -m research.fake_generalisation.benchmark --out runs/fakegen                 # the benchmark (baseline)
    python -m research.fake_generalisation.benchmark --out runs/fakegen --ablate        # + the item-3 recipes (cached)
    python -m research.fake_generalisation.benchmark --out runs/fakegen4 --draws 3 --recipes baseline,canonical56
        # three photo draws (--seed 0, 1, 2 in --out/seed<N>), mean +- sd and the paired change against the baseline
        # in --out/summary.md: one draw moves a row by up to 0.3, so recipes are ranked over several

Photos: realfaces-dev (ORL, Yale, LFW reals; LFW face swaps = its 250 px fakes, StyleGAN3 = its 256 px fakes) and
realfaces-train (celeba_wild, celeba_aligned, ffhq_real reals; StyleGAN2 fakes), from their train/ folders, at most
--per-source photos of each source (seeded), aligned with the MTCNN landmarks of the align caches that
scripts/preprocess.py wrote (photos the cache lacks or where no face was found are left out). Pseudo-fakes
(`jaxface.data.pseudofakes`: self_blend, swap, trace) are made from the aligned real faces: one per real photo for
training (kinds in turn), and one of each kind from half of the celeba_wild people for testing. Each training
pseudo-fake comes with its real twin (`pseudofakes.real_twin`: the same change on the whole photo, no seam), which
only the twins recipes train on.

Rows, one per held-out fake source, each with held-out real sources; the head trains on everything else (no photo of
the held-out sources, no pseudo-fake made from a held-out real source) and is tested on the held-out fakes against
the held-out reals:
    lfw_swap vs lfw_real | stylegan3 vs ffhq_real | stylegan2 vs ffhq_real | self_blend, swap, trace vs celeba_wild
Laundered table: the same test photos (reals and fakes alike) resized x0.5 / x1.5, JPEG 50 / 75, blur sigma 1,
greyscale (`launder` here); recorded photos are laundered as files and re-aligned with their landmarks
(scaled with the photo), pseudo-fake rows launder the aligned faces of reals and fakes alike. Probes: AUC of trivial
detectors (side, saturation, JPEG luminance table, file size) on the original files of each test set (a pseudo-fake's
file is its base photo's), and two the head can see: the face's eye distance in photo pixels (face_px) and the
aligned face's sharpness (face_sharpness, log variance of the Laplacian over the inner face). Each row also reports
the head's AUC on its own training photos (train_auc): a low one means it did not learn, not that it did not
transfer. The head: `fakebench` here (the project's FakeHead on a frozen pretrained MobileFaceNet,
runs/mbf_ms1m_init, which never saw any of these fakes). Inputs are cached in --out/inputs.npz, completed there
with what a later --recipes needs (twins, training launderings, canonical views), and the recipes already in
--out/results.json for the same photos and settings are kept (--rerun trains them again), so an interrupted run
resumes at the recipe it was in.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT))

from jaxface.align import template  # noqa: E402  pylint: disable=wrong-import-position
from jaxface.align.cache import AlignCache  # noqa: E402  pylint: disable=wrong-import-position
from jaxface.metrics import roc_auc  # noqa: E402  pylint: disable=wrong-import-position
from research.fake_generalisation import launder as launder_lib  # noqa: E402  pylint: disable=wrong-import-position

PSEUDO_KINDS = ('self_blend', 'swap', 'trace')
ROWS = (('lfw_swap', ('lfw_real',)), ('stylegan3', ('ffhq_real',)), ('stylegan2', ('ffhq_real',)),
        ('self_blend', ('celeba_wild',)), ('swap', ('celeba_wild',)), ('trace', ('celeba_wild',)))
# name -> (fields, balance_sources); --ablate runs them in this order. The script acts on the fields steps_x, twins,
# canonical, canonical_scope, traces_only, sharpness_bins, detector, fake_families, fake_count and family_heads (see
# run_recipe); the rest are fakebench.Recipe fields.
RECIPES = {
    'baseline': ({}, False),
    'launder_aug': ({'launder_prob': 0.5}, False),
    'source_balanced': ({}, True),
    'input_embedding': ({'mode': 'embedding'}, False),
    'launder_aug+balanced': ({'launder_prob': 0.5}, True),
    'input_features': ({'mode': 'features'}, False),
    'budget_x3': ({'steps_x': 3}, False),  # is the fixed budget what holds the head back?
    'train_stem': ({'train_stem': True}, False),  # the fake loss tunes the stem too, as in training
    'budget_x3+stem': ({'steps_x': 3, 'train_stem': True}, False),
    # Each training pseudo-fake's seamless real twin (pseudofakes.real_twin) joins the reals: the pseudo-fakes' softer
    # inner face then no longer says "fake"; what is left is the seam, the blend and the generator pattern.
    'twins': ({'twins': True}, False),
    # Every face (training and test, reals and fakes alike) brought down to one resolution before the head and the
    # backbone see it: area-downsampled to 56 px and back, so a source's sharpness cannot predict the label.
    'canonical56': ({'canonical': 56}, False),
    'twins+canonical56': ({'twins': True, 'canonical': 56}, False),
    'canonical40': ({'canonical': 40}, False),
    'canonical56+budget_x3': ({'canonical': 56, 'steps_x': 3}, False),
    'canonical40+budget_x3': ({'canonical': 40, 'steps_x': 3}, False),
    # What a model could do for a few MFLOPs: only the trace branch (stem map, noise residual) reads the canonical
    # face; the embedding and the stage-2 statistics still come from the photo as it is.
    'canonical56_traces': ({'canonical': 56, 'canonical_scope': 'traces'}, False),
    # The head reads the trace branch only (stem map and noise residual): the identity embedding and the stage-2
    # statistics, which say a lot about a photo's source (grey ORL crops, CelebA's low resolution), are zeroed.
    'traces_only': ({'traces_only': True}, False),
    'twins+traces_only': ({'twins': True, 'traces_only': True}, False),
    'twins+budget_x3': ({'twins': True, 'steps_x': 3}, False),
    # The draws hold face sharpness (the shortcut both ways: pseudo-fakes softer than reals, StyleGAN3 sharper than
    # FFHQ) equally distributed for reals and fakes: 8 pooled quantile bins of the training faces the head sees, each
    # half real, half fake (fakebench.sampling_weights' strata), so sharpness alone predicts nothing in training.
    'sharpness_strata': ({'sharpness_bins': 8}, False),
    'canonical56+sharpness_strata': ({'canonical': 56, 'sharpness_bins': 8}, False),
    'twins+sharpness_strata': ({'twins': True, 'sharpness_bins': 8}, False),
    # Frequency features instead of the head: a logistic regression on each face's 1-D power spectrum
    # (fakebench.spectrum_features), the classic GAN-upsampling detector; same photos, weights and test rows.
    'spectrum': ({'detector': 'spectrum'}, False),
    'spectrum+sharpness_strata': ({'detector': 'spectrum', 'sharpness_bins': 8}, False),
    # Does the number of fake families the head trains on matter more than the recipe? canonical56 with the training
    # fakes cut to 100 photos drawn from 1, 2 or all of the row's training fake sources (a seeded draw per row and
    # photo draw), so the three differ only in how many generators the 100 come from.
    'canonical56+fakes100_families1': ({'canonical': 56, 'fake_families': 1, 'fake_count': 100}, False),
    'canonical56+fakes100_families2': ({'canonical': 56, 'fake_families': 2, 'fake_count': 100}, False),
    'canonical56+fakes100_all': ({'canonical': 56, 'fake_count': 100}, False),
    # One head per fake family the row trains on (FAMILIES: GAN faces, blended faces), each against all the training
    # reals; a photo scores the larger of the heads' scores, each standardised on the training reals. Trained on one
    # family, the head transfers within it (StyleGAN2 -> StyleGAN3 0.65) and falls below chance across (StyleGAN ->
    # blends 0.35-0.43): in one head the two families' cues cancel.
    'canonical56+family_heads': ({'canonical': 56, 'family_heads': True}, False),
}
FAMILIES = {'stylegan2': 'gan', 'stylegan3': 'gan', 'lfw_swap': 'blend', 'self_blend': 'blend', 'swap': 'blend',
            'trace': 'blend'}
PROBE_COLUMNS = (*launder_lib.PROBES, 'face_px', 'face_sharpness')
FACE_JPEG = 95  # what the align cache and the prepared datasets store; every face here is stored the same way


@dataclasses.dataclass
class Item:
  """One test or training face. `photo` is a file path (recorded photos) or None (the face itself is the photo)."""
  source: str
  label: int
  photo: str | None
  landmarks: np.ndarray  # in the photo's pixels (the template for face-level items)
  face: np.ndarray  # (112, 112, 3) uint8
  probe_file: str  # the original file the shortcut probes read
  base_source: str  # the real source a pseudo-fake is made from; the item's own source otherwise
  role: str = 'pool'  # 'pool' | 'test_real' (celeba_wild half A) | 'test_fake' (pseudo-fakes of half B) | 'base'
  #                   | 'twin' (a training pseudo-fake's real twin, source 'twin_<kind>'; used by the twins recipes)
  face_px: float = 0.0  # eye distance in the original photo's pixels (the base photo's for a pseudo-fake)


def _jpeg_face(face: np.ndarray) -> np.ndarray:
  return launder_lib.jpeg(face, FACE_JPEG)


def _align(photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
  matrix = template.similarity_transform(landmarks, template.template_for_size(112))
  return _jpeg_face(template.warp_face(photo, matrix, 112))


def _open_cache(root: pathlib.Path) -> AlignCache:
  found = sorted(root.glob('mtcnn-*/settings.json'))
  if not found:
    raise SystemExit(f'{root}: no MTCNN align cache; run scripts/preprocess.py --aligner mtcnn first (its '
                     'OUT/_align_cache), or scripts/rekey_align_cache.py if the photos were copied again')
  settings = json.loads(found[0].read_text())
  return AlignCache(root, settings['aligner'], settings['settings'])


def _cached(cache: AlignCache, path: str):
  """The cached face of a photo. The cache keys photos by content, but an entry of a cache written before that is
  found by its absolute path as spelled then, so '<repo>/../shared/...' (what `--data-dir ../shared/...` gave) is
  tried as well as the plain path; a hit links the entry under its content key."""
  found = cache.get(path)
  if found is None and pathlib.Path(path).is_relative_to(ROOT.parent):
    found = cache.get(ROOT / '..' / pathlib.Path(path).relative_to(ROOT.parent))
  return found


def _source_of(data: str, person_source: str, side: tuple[int, int]) -> str:
  if data == 'train':
    return 'stylegan2' if person_source == 'stylegan2_fake' else person_source
  if person_source.startswith(('orl', 'yale')):
    return person_source.split('_')[0]
  if person_source == 'fake':
    return {250: 'lfw_swap', 256: 'stylegan3'}.get(side[0], f'fake{side[0]}')
  return person_source


def load_items(data_dirs: dict[str, pathlib.Path], caches: dict[str, AlignCache], per_source: int, seed: int
               ) -> list[Item]:
  """Up to `per_source` aligned photos of each source (celeba_wild: twice that, for the pseudo-fake test half)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  by_source: dict[str, list[tuple[str, str, int, str]]] = {}
  for data, folder in data_dirs.items():
    meta = json.loads((folder / 'train' / 'meta.json').read_text())
    sources = json.loads((folder / 'train' / 'sources.json').read_text())
    for key, label in sorted(meta.items()):
      path = folder / 'train' / 'images' / key
      person_source = sources[key.split('/')[0]]
      side = (0, 0)
      if person_source == 'fake':
        with Image.open(path) as image:
          side = image.size
      source = _source_of(data, person_source, side)
      by_source.setdefault(source, []).append((str(path), data, int(label), key.split('/')[0]))
  rng = np.random.default_rng(seed)
  items = []
  for source, entries in sorted(by_source.items()):
    want = per_source * (2 if source == 'celeba_wild' else 1)
    for index in rng.permutation(len(entries)):
      path, data, label, person = entries[index]
      cached = _cached(caches[data], path)
      if cached is None or not cached.found:
        continue
      face = np.asarray(Image.open(io.BytesIO(cached.jpeg)).convert('RGB'))
      eyes = float(np.linalg.norm(cached.landmarks[1] - cached.landmarks[0]))
      items.append(Item(source, label, path, cached.landmarks, face, path, source, role=person, face_px=eyes))
      want -= 1
      if want == 0:
        break
  return _split_celeba_wild(items)


def _split_celeba_wild(items: list[Item]) -> list[Item]:
  """celeba_wild people split in two halves: A (test reals of the pseudo-fake rows), B (bases of their fakes)."""
  people = sorted({it.role for it in items if it.source == 'celeba_wild'})
  half_b = set(people[len(people) // 2:])
  for it in items:
    if it.source == 'celeba_wild':
      it.photo, it.landmarks = None, template.template_for_size(112)  # laundered as faces, like their fakes
      it.role = 'base' if it.role in half_b else 'test_real'
    else:
      it.role = 'pool'
  return items


def make_pseudo_fakes(items: list[Item], seed: int) -> list[Item]:
  """Training pseudo-fakes (one per real pool photo, kinds in turn) each followed by its real twin (role 'twin',
  label 0, `pseudofakes.real_twin` with the same seed and donor), and test ones (each kind of every base photo).

  Only the real items of `items` are read, in order, so the same reals and seed give the same fakes again.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], 'GPU')
  from jaxface.data import pseudofakes  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed + 1)
  reals = [it for it in items if it.label == 0 and it.role != 'twin']
  by_source: dict[str, list[Item]] = {}
  for it in reals:
    by_source.setdefault(it.source, []).append(it)
  out, counter = [], 0

  def make(kind: str, it: Item, role: str) -> list[Item]:
    nonlocal counter
    counter += 1
    s = tf.constant([seed, counter], tf.int64)
    donor = None
    if kind == 'swap':
      pool = [d for d in by_source[it.source] if d is not it and d.role == it.role] or by_source[it.source]
      donor = pool[rng.integers(len(pool))].face
      face = pseudofakes.swap(it.face, donor, s)
    else:
      face = getattr(pseudofakes, kind)(it.face, s)
    made = [Item(kind, 1, None, template.template_for_size(112), np.asarray(face), it.probe_file, it.source, role,
                 it.face_px)]
    if role == 'pool':
      twin = pseudofakes.real_twin(kind, it.face, s, donor=donor)
      made.append(Item(f'twin_{kind}', 0, None, template.template_for_size(112), np.asarray(twin), it.probe_file,
                       it.source, 'twin', it.face_px))
    return made

  for k, it in enumerate(reals):
    if it.role == 'base':
      out += [fake for kind in PSEUDO_KINDS for fake in make(kind, it, 'test_fake')]
    out += make(PSEUDO_KINDS[k % 3], it, 'pool')
  return out


def canonical_faces(faces: np.ndarray, px: int) -> np.ndarray:
  """(N, S, S, 3) uint8 faces area-downsampled to px x px and bilinearly back to S: one resolution for every source."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  size = faces.shape[1]
  out = [np.asarray(Image.fromarray(f).resize((px, px), Image.Resampling.BOX).resize((size, size),
                                                                                     Image.Resampling.BILINEAR))
         for f in faces]
  return np.stack(out) if out else faces.copy()


def _photo_of(it: Item) -> np.ndarray:
  return launder_lib.read_photo(it.photo) if it.photo else it.face


def launder_item(it: Item, name: str | None, rng: np.random.Generator | None = None) -> np.ndarray:
  """The item's face after laundering its photo (`name` of LAUNDERINGS, or None for a random chain)."""
  photo = _photo_of(it)
  photo, scale = launder_lib.launder(photo, name) if name else launder_lib.random_launder(photo, rng)
  return _align(photo, (np.asarray(it.landmarks, np.float64) + 0.5) * scale - 0.5)


def build_inputs(items: list[Item], backbone) -> dict[str, object]:
  """Backbone features of every face (originals) and of each LAUNDERINGS of the test items (from their photos)."""
  from research.fake_generalisation import fakebench  # pylint: disable=import-outside-toplevel
  t0 = time.time()
  inputs = {'original': fakebench.backbone_features(backbone, np.stack([it.face for it in items]))}
  print(f'  originals: {len(items)} faces, {time.time() - t0:.0f} s', flush=True)
  test = np.array([is_test_item(it) for it in items])
  for name in launder_lib.LAUNDERINGS:
    t0 = time.time()
    faces = np.stack([launder_item(items[i], name) for i in np.flatnonzero(test)])
    inputs[name] = fakebench.backbone_features(backbone, faces)
    print(f'  {name}: {len(faces)} faces, {time.time() - t0:.0f} s', flush=True)
  inputs['test_index'] = np.flatnonzero(test)
  return inputs


def _add_twins(items: list[Item], inputs: dict, backbone, seed: int) -> list[Item]:
  """Items read from an inputs.npz written before the twins: makes the pseudo-fakes again from the same reals and
  seed, checks they are the stored ones bit for bit, and appends their twins (items and features) at the end."""
  from research.fake_generalisation import fakebench  # pylint: disable=import-outside-toplevel
  made = make_pseudo_fakes(items, seed)
  stored = np.stack([it.face for it in items if it.source in PSEUDO_KINDS])
  again = np.stack([it.face for it in made if it.role != 'twin'])
  if stored.shape != again.shape or not np.array_equal(stored, again):
    raise SystemExit('the stored pseudo-fakes differ from those this code makes of the same photos; delete '
                     '--out/inputs.npz to build the inputs again')
  twins = [it for it in made if it.role == 'twin']
  inputs['original'] = fakebench.HeadInputs.concatenate(
      [inputs['original'], fakebench.backbone_features(backbone, np.stack([it.face for it in twins]))])
  print(f'  {len(twins)} real twins of the training pseudo-fakes added', flush=True)
  return items + twins


def complete_inputs(items: list[Item], inputs: dict, backbone, seed: int, train_launder: bool,
                    canonical: set[int]) -> tuple[list[Item], bool]:
  """Adds what the recipes need and the inputs lack -> (items, whether anything was added).

  Twins (items from a file written before them), 'train_launder' (a random laundering chain of every face, reals and
  fakes alike, face-level since pseudo-fakes have no photo), and for each px in `canonical` the 'c{px}/...' views:
  every face above brought to px (`canonical_faces`), the backbone run again on it.
  """
  from research.fake_generalisation import fakebench  # pylint: disable=import-outside-toplevel
  changed = False
  if not any(it.role == 'twin' for it in items):
    items, changed = _add_twins(items, inputs, backbone, seed), True
  n = len(items)
  if train_launder and len(inputs.get('train_launder', ())) != n:
    t0 = time.time()
    rng = np.random.default_rng(seed + 2)
    faces = np.stack([launder_item(dataclasses.replace(it, photo=None, landmarks=template.template_for_size(112)),
                                   None, rng) for it in items])
    inputs['train_launder'] = fakebench.backbone_features(backbone, faces)
    print(f'  random laundering for training: {len(faces)} faces, {time.time() - t0:.0f} s', flush=True)
    changed = True
  for px in sorted(canonical):
    for base in ('original', *launder_lib.LAUNDERINGS, *(('train_launder',) if train_launder else ())):
      key = f'c{px}/{base}'
      if len(inputs.get(key, ())) != len(inputs[base]):
        t0 = time.time()
        inputs[key] = fakebench.backbone_features(backbone, canonical_faces(inputs[base].faces, px))
        print(f'  {key}: {len(inputs[key])} faces, {time.time() - t0:.0f} s', flush=True)
        changed = True
  return items, changed


def is_test_item(it: Item) -> bool:
  """Whether an item is in some row's test set."""
  if it.role in ('test_real', 'test_fake'):
    return True
  return it.role == 'pool' and it.source in {f for f, _ in ROWS[:3]} | {r for _, rs in ROWS[:3] for r in rs}


def row_split(items: list[Item], fake: str, reals: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices) of one leave-one-source-out row."""
  pseudo_row = fake in PSEUDO_KINDS
  train, test = [], []
  for i, it in enumerate(items):
    held = it.source in (fake, f'twin_{fake}') or it.source in reals or it.base_source in reals
    if not held and it.role != 'test_fake':
      train.append(i)
    elif pseudo_row and ((it.role == 'test_fake' and it.source == fake) or it.role == 'test_real'):
      test.append(i)
    elif not pseudo_row and it.role == 'pool' and (it.source == fake or it.source in reals):
      test.append(i)
  return np.array(train), np.array(test)


def probe_table(items: list[Item], splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
  """AUC (better direction) of each trivial detector on each row's test set, read off the original files."""
  cache: dict[str, dict[str, float]] = {}
  out = {}
  for fake, (_, test) in splits.items():
    values = [cache.setdefault(items[i].probe_file, launder_lib.probe_values(items[i].probe_file)) for i in test]
    labels = np.array([items[i].label for i in test])
    out[fake] = {p: launder_lib.probe_auc(labels, np.array([v[p] for v in values])) for p in launder_lib.PROBES}
    # Not file properties but ones the head can see: how many photo pixels the face had, and how sharp the aligned
    # face is (a pseudo-fake's inner face is softer than its photo's, a GAN's often sharper than a camera's).
    out[fake]['face_px'] = launder_lib.probe_auc(labels, np.array([items[i].face_px for i in test]))
    out[fake]['face_sharpness'] = launder_lib.probe_auc(labels, face_sharpness(np.stack([items[i].face for i in test])))
  return out


def face_sharpness(faces: np.ndarray) -> np.ndarray:
  """(N, S, S, 3) uint8 aligned faces -> (N,) log variance of the grey Laplacian over the inner face (middle half)."""
  grey = faces.astype(np.float64).mean(-1)
  lap = 4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:]
  s = lap.shape[1]
  return np.log(lap[:, s // 4:s - s // 4, s // 4:s - s // 4].var(axis=(1, 2)) + 1e-3)


def _view(inputs: dict, canonical: int, traces_only: bool = False, canonical_scope: str = 'all') -> dict:
  """The inputs a recipe reads: the originals' (canonical 0) or those of the faces brought to `canonical` px (scope
  'all': the backbone ran on them too; 'traces': only the faces, which the stem and the residual read, are the
  canonical ones, the embedding and stage-2 statistics the originals'); with traces_only the embedding and stage-2
  statistics zeroed (constant: the head cannot read them)."""
  if canonical_scope not in ('all', 'traces'):
    raise ValueError(f"canonical_scope must be 'all' or 'traces', got {canonical_scope!r}")
  prefix = f'c{canonical}/' if canonical else ''
  views = {name[len(prefix):]: v for name, v in inputs.items()
           if name.startswith(prefix) and name != 'test_index' and '/' not in name[len(prefix):]}
  if canonical and canonical_scope == 'traces':
    views = {name: dataclasses.replace(inputs[name], faces=v.faces) for name, v in views.items()}
  if traces_only:
    views = {name: dataclasses.replace(v, embedding=np.zeros_like(v.embedding), stage2_mean=np.zeros_like(
        v.stage2_mean), stage2_var=np.zeros_like(v.stage2_var)) for name, v in views.items()}
  return views


def _cut_fakes(train: np.ndarray, labels: np.ndarray, sources: np.ndarray, families: int, count: int,
               seed: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
  """`train` with its fakes cut to `count` photos (0: all) of `families` of its fake sources (0: all), both drawn
  with `seed` -> (indices, the fake sources kept)."""
  rng = np.random.default_rng(seed)
  fakes = train[labels[train] == 1]
  names = sorted(set(sources[fakes]))
  kept = sorted(rng.choice(names, families, replace=False)) if 0 < families < len(names) else names
  pool = fakes[np.isin(sources[fakes], kept)]
  if count and count < len(pool):
    pool = rng.choice(pool, count, replace=False)
  return np.sort(np.concatenate([train[labels[train] == 0], pool])), [str(k) for k in kept]


def _family_heads(train: np.ndarray, labels: np.ndarray, sources: np.ndarray, balanced: bool, strata, view: dict,
                  stem, recipe):
  """One head per FAMILIES family among the training fakes, each on all training reals and that family's fakes ->
  a scorer: per photo the largest of the heads' scores, each standardised by its scores on the training reals."""
  from research.fake_generalisation import fakebench  # pylint: disable=import-outside-toplevel
  if recipe.launder_prob > 0:
    raise ValueError('family_heads does not take launder_prob')
  reals = train[labels[train] == 0]
  family_of = np.array([FAMILIES.get(str(src), '') if label else '' for src, label in zip(sources[train],
                                                                                          labels[train])])
  heads = []
  for family in sorted(set(family_of) - {''}):
    part = np.sort(np.concatenate([reals, train[family_of == family]]))
    cut = None if strata is None else strata[np.searchsorted(train, part)]
    weights = fakebench.sampling_weights(labels[part], sources[part], balanced, cut)
    variables = fakebench.train_head(stem, view['original'].take(part), labels[part], weights, recipe)
    on_reals = fakebench.score_head(variables, stem, view['original'].take(reals), recipe.mode)
    heads.append((variables, float(on_reals.mean()), float(on_reals.std()) + 1e-6))
  return lambda inp: np.max([(fakebench.score_head(v, stem, inp, recipe.mode) - mu) / sd for v, mu, sd in heads],
                            axis=0)


def run_recipe(name: str, items: list[Item], inputs: dict, stem, splits, args) -> dict[str, dict[str, float]]:
  """Trains one head per row with recipe `name` -> {row: {'original': AUC, laundering: AUC, ...}}."""
  from research.fake_generalisation import fakebench  # pylint: disable=import-outside-toplevel
  fields, balanced = dict(RECIPES[name][0]), RECIPES[name][1]
  steps = args.steps * fields.pop('steps_x', 1)
  twins = fields.pop('twins', False)
  sharpness_bins = fields.pop('sharpness_bins', 0)
  detector = fields.pop('detector', 'head')
  fake_families, fake_count = fields.pop('fake_families', 0), fields.pop('fake_count', 0)
  family_heads = fields.pop('family_heads', False)
  view = _view(inputs, fields.pop('canonical', 0), fields.pop('traces_only', False),
               fields.pop('canonical_scope', 'all'))
  recipe = fakebench.Recipe(**{'steps': steps, 'batch_size': args.batch_size, 'seed': args.seed, **fields})
  labels = np.array([it.label for it in items])
  sources = np.array([it.source for it in items])
  is_twin = np.array([it.role == 'twin' for it in items])
  test_pos = {int(i): k for k, i in enumerate(inputs['test_index'])}
  # Per photo, of the faces the head sees; each row bins its own training photos' values.
  sharpness = face_sharpness(view['original'].faces) if sharpness_bins else None
  table = {}
  for row_index, (fake, (train, test)) in enumerate(splits.items()):
    t0 = time.time()
    if not twins:
      train = train[~is_twin[train]]
    kept = sorted(set(sources[train][labels[train] == 1]))
    if fake_families or fake_count:
      train, kept = _cut_fakes(train, labels, sources, fake_families, fake_count, (args.seed, row_index))
    strata = None if sharpness is None else fakebench.quantile_strata(sharpness[train], sharpness_bins)
    weights = fakebench.sampling_weights(labels[train], sources[train], balanced, strata)
    if detector == 'spectrum':
      spectra = lambda inp: fakebench.spectrum_features(inp.faces)
      model = fakebench.train_spectrum(spectra(view['original'].take(train)), labels[train], weights)
      score = lambda inp, model=model: model.decision_function(spectra(inp))
    elif family_heads:
      score = _family_heads(train, labels, sources, balanced, strata, view, stem, recipe)
    else:
      laundered = view['train_launder'].take(train) if recipe.launder_prob > 0 else None
      variables = fakebench.train_head(stem, view['original'].take(train), labels[train], weights, recipe, laundered)
      score = lambda inp, variables=variables: fakebench.score_head(variables, stem, inp, recipe.mode)
    row = {'original': roc_auc(labels[test], score(view['original'].take(test)))}
    at = np.array([test_pos[int(i)] for i in test])
    for wash in launder_lib.LAUNDERINGS:
      row[wash] = roc_auc(labels[test], score(view[wash].take(at)))
    # How well the head separates the photos it trained on: a low figure means it did not learn, not that it did
    # not transfer.
    row['train_auc'] = roc_auc(labels[train], score(view['original'].take(train)))
    row['train_photos'], row['test_reals'], row['test_fakes'] = len(train), int((labels[test] == 0).sum()), int(
        labels[test].sum())
    row['seconds'] = round(time.time() - t0, 1)
    row['train_fake_sources'] = kept
    table[fake] = row
    print(f'  [{name}] {fake:>10}: AUC {row["original"]:.3f}, JPEG 75 {row["jpeg_75"]:.3f}, x0.5 '
          f'{row["resize_0.5"]:.3f}, train {row["train_auc"]:.3f} ({row["seconds"]:.0f} s)', flush=True)
  return table


def _markdown(results: dict) -> str:
  """The tables of the study's README: per recipe, AUC per held-out source, original and laundered; the probes."""
  washes = launder_lib.LAUNDERINGS
  lines = []
  for name, table in results['recipes'].items():
    lines += [f'\n{name}: per-photo AUC, held-out source (test reals / fakes)\n',
              '| held out | vs reals | n | AUC | ' + ' | '.join(washes) + ' | train AUC | best probe |',
              '|---' * (6 + len(washes)) + '|']
    for fake, reals in ROWS:
      row, probes = table[fake], results['probes'][fake]
      best = max(probes, key=probes.get)
      lines.append(f'| {fake} | {", ".join(reals)} | {row["test_reals"]}/{row["test_fakes"]} | {row["original"]:.3f} | '
                   + ' | '.join(f'{row[w]:.3f}' for w in washes) + f' | {row.get("train_auc", float("nan")):.3f} | '
                   f'{best} {probes[best]:.3f} |')
    mean = np.mean([table[f]['original'] for f, _ in ROWS])
    lines.append(f'| mean | | | {mean:.3f} | ' + ' | '.join(f'{np.mean([table[f][w] for f, _ in ROWS]):.3f}'
                                                        for w in washes) + ' | | |')
  lines += ['\nShortcut probes: AUC (better direction) on the original files of each test set\n',
            '| held out | ' + ' | '.join(PROBE_COLUMNS) + ' |', '|---' * (1 + len(PROBE_COLUMNS)) + '|']
  for fake, _ in ROWS:
    lines.append(f'| {fake} | ' + ' | '.join(f'{results["probes"][fake].get(p, float("nan")):.3f}'
                                              for p in PROBE_COLUMNS) + ' |')
  return '\n'.join(lines) + '\n'


def _merge_recipes(results: dict, args) -> None:
  """Adds the recipes already in --out/results.json (a run with other --recipes, same photos) to `results`."""
  path = args.out / 'results.json'
  if path.is_file():
    earlier = json.loads(path.read_text())
    same = ('per_source', 'seed', 'steps', 'batch_size')
    if all(earlier.get('settings', {}).get(k) == str(getattr(args, k)) for k in same):
      results['recipes'] = {**earlier['recipes'], **results['recipes']}


_ITEM_FIELDS = ('source', 'label', 'probe_file', 'base_source', 'role', 'face_px')
_INPUT_FIELDS = ('faces', 'embedding', 'stage2_mean', 'stage2_var')


def _read_inputs(cache_file: pathlib.Path, key: str):
  """(items, inputs) from --out/inputs.npz when it was built with the same --per-source and --seed, else None.

  The items come back from the file too (their photo list and faces), so a later run with other --recipes scores the
  same photos even where the align caches changed in between.
  """
  from research.fake_generalisation import fakebench  # pylint: disable=import-outside-toplevel
  if not cache_file.is_file():
    return None
  stored = np.load(cache_file)
  if str(stored['key']) != key or 'item/source' not in stored.files:
    return None
  inputs = {'test_index': stored['test_index']}
  for name in {k.rsplit('/', 1)[0] for k in stored.files if '/' in k} - {'item'}:
    inputs[name] = fakebench.HeadInputs(*(stored[f'{name}/{f}'] for f in _INPUT_FIELDS))
  meta = {f: stored[f'item/{f}'] for f in _ITEM_FIELDS}
  text = lambda field, i: str(meta[field][i])
  items = [Item(text('source', i), int(meta['label'][i]), None, template.template_for_size(112), face,
                text('probe_file', i), text('base_source', i), text('role', i), float(meta['face_px'][i]))
           for i, face in enumerate(inputs['original'].faces)]
  print(f'{len(items)} faces and their inputs read from {cache_file}', flush=True)
  return items, inputs


def _save_inputs(cache_file: pathlib.Path, key: str, items: list[Item], inputs: dict) -> None:
  flat = {f'{n}/{f}': getattr(v, f) for n, v in inputs.items() if n != 'test_index' for f in _INPUT_FIELDS}
  flat.update({f'item/{f}': np.array([getattr(it, f) for it in items]) for f in _ITEM_FIELDS})
  np.savez(cache_file.with_suffix('.tmp.npz'), key=key, test_index=inputs['test_index'], **flat)
  cache_file.with_suffix('.tmp.npz').replace(cache_file)  # a run killed while writing keeps the old file


def _prepare(args, names: list[str]) -> tuple[list[Item], dict, dict]:
  """Items, cached inputs (built once, then read from --out/inputs.npz and completed for `names`) and the frozen
  backbone's stem."""
  from jaxface import convert, fakebench  # pylint: disable=import-outside-toplevel
  backbone = convert.load_converted(args.backbone)
  cache_file, key = args.out / 'inputs.npz', f'{args.per_source}-{args.seed}'
  cached = _read_inputs(cache_file, key)
  if cached is None:
    for folder in (args.dev, args.train):
      if not (folder / 'train' / 'meta.json').is_file():
        raise SystemExit(f'{folder}: no train/meta.json; pass --dev/--train (the realfaces-dev/-train folders)')
    caches = {'dev': _open_cache(args.dev_cache), 'train': _open_cache(args.train_cache)}
    t0 = time.time()
    items = load_items({'dev': args.dev, 'train': args.train}, caches, args.per_source, args.seed)
    items += make_pseudo_fakes(items, args.seed)
    counts = {}
    for it in items:
      counts[f'{it.source}/{it.role}'] = counts.get(f'{it.source}/{it.role}', 0) + 1
    print(' '.join(f'{k}:{v}' for k, v in sorted(counts.items())))
    print(f'{len(items)} faces ({time.time() - t0:.0f} s to read and make pseudo-fakes)', flush=True)
    inputs = build_inputs(items, backbone)
  else:
    items, inputs = cached
  fields = [RECIPES[n][0] for n in names]
  items, changed = complete_inputs(items, inputs, backbone, args.seed,
                                   any(f.get('launder_prob', 0) > 0 for f in fields),
                                   {f['canonical'] for f in fields if f.get('canonical')})
  if cached is None or changed:
    _save_inputs(cache_file, key, items, inputs)
  return items, inputs, fakebench.stem_variables(backbone)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--quick', action='store_true', help='20 photos per source, 30 steps of 16 (under 5 min)')
  parser.add_argument('--ablate', action='store_true', help='also the item-3 recipes: ' + ', '.join(RECIPES))
  parser.add_argument('--out', type=pathlib.Path, default=ROOT / 'runs' / 'fake_generalisation')
  parser.add_argument('--dev', type=pathlib.Path, default=ROOT.parent / 'shared' / 'data' / 'realfaces-dev')
  parser.add_argument('--train', type=pathlib.Path, default=ROOT.parent / 'shared' / 'data' / 'realfaces-train')
  parser.add_argument('--dev-cache', type=pathlib.Path, default=ROOT / 'runs' / 'rd-mtcnn' / '_align_cache',
                      help="realfaces-dev's MTCNN align cache root")
  parser.add_argument('--train-cache', type=pathlib.Path, default=ROOT / 'runs' / 'rt-mtcnn' / '_align_cache',
                      help="realfaces-train's MTCNN align cache root")
  parser.add_argument('--backbone', type=pathlib.Path, default=ROOT / 'runs' / 'mbf_ms1m_init')
  parser.add_argument('--per-source', type=int, default=None, help='photos per source (default 100, quick 20)')
  parser.add_argument('--steps', type=int, default=None, help='head training steps (default 80, quick 30)')
  parser.add_argument('--batch-size', type=int, default=None, help='head training batch (default 32, quick 16)')
  parser.add_argument('--recipes', default=None, help='comma-separated recipe names (default: baseline, or all '
                      'with --ablate)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--draws', type=int, default=1,
                      help='photo draws (--seed, --seed+1, ...), each in --out/seed<N>, with a mean +- sd summary in '
                      '--out/summary.md: one draw moves a row by up to 0.3, so recipes are ranked over several')
  parser.add_argument('--rerun', action='store_true',
                      help='train the recipes again that --out/results.json already holds for these photos and '
                      'settings (by default they are kept: an interrupted run resumes at the recipe it was in)')
  args = parser.parse_args(argv)
  args.per_source = args.per_source or (20 if args.quick else 100)
  args.steps = args.steps or (30 if args.quick else 80)
  args.batch_size = args.batch_size or (16 if args.quick else 32)
  names = args.recipes.split(',') if args.recipes else (list(RECIPES) if args.ablate else ['baseline'])
  unknown = [n for n in names if n not in RECIPES]
  if unknown:
    raise SystemExit(f'--recipes: unknown {unknown}; use names from {", ".join(RECIPES)}')
  if args.draws <= 1:
    run_draw(args, names)
    return 0
  outs = []
  for k in range(args.draws):
    draw = argparse.Namespace(**{**vars(args), 'seed': args.seed + k, 'out': args.out / f'seed{args.seed + k}'})
    print(f'draw {k + 1} of {args.draws}: --seed {draw.seed}, {draw.out}', flush=True)
    run_draw(draw, names)
    outs.append(draw.out)
  summary = summarise([json.loads((o / 'results.json').read_text()) for o in outs], names)
  (args.out / 'summary.json').write_text(json.dumps(summary, indent=1))
  text = _summary_markdown(summary)
  (args.out / 'summary.md').write_text(text)
  print(text)
  print(f'summary of {args.draws} draws in {args.out / "summary.json"} and {args.out / "summary.md"}')
  return 0


def run_draw(args, names: list[str]) -> dict:
  """One photo draw (--seed): inputs, probes, every recipe in `names` -> results (also --out/results.json)."""
  args.out.mkdir(parents=True, exist_ok=True)
  start = time.time()
  items, inputs, stem = _prepare(args, names)
  splits = {fake: row_split(items, fake, reals) for fake, reals in ROWS}
  results = {'settings': {k: str(v) for k, v in vars(args).items()}, 'probes': probe_table(items, splits),
             'recipes': {}}
  _merge_recipes(results, args)
  for name in names:
    if name in results['recipes'] and not args.rerun:
      print(f'  [{name}] kept from {args.out / "results.json"} (same photos and settings; --rerun trains it again)')
      continue
    results['recipes'][name] = run_recipe(name, items, inputs, stem, splits, args)
    _merge_recipes(results, args)
    (args.out / 'results.json').write_text(json.dumps(results, indent=1))  # kept after every recipe
  results['seconds'] = round(time.time() - start, 1)
  (args.out / 'results.json').write_text(json.dumps(results, indent=1))
  text = _markdown(results)
  (args.out / 'tables.md').write_text(text)
  print(text)
  print(f'{results["seconds"]:.0f} s; results in {args.out / "results.json"} and {args.out / "tables.md"}')
  return results


SUMMARY_COLUMNS = ('original', 'jpeg_75', 'resize_0.5', 'train_auc')


def summarise(draws: list[dict], names: list[str]) -> dict:
  """Mean and standard deviation over photo draws of each recipe's per-row AUCs, of the row mean, and of each row's
  best probe; and each recipe's change against 'baseline' draw by draw (paired: the same photos)."""
  out = {'draws': len(draws), 'recipes': {}, 'probes': {}}
  stat = lambda values: {'mean': float(np.mean(values)), 'sd': float(np.std(values, ddof=1)) if len(values) > 1
                         else 0.0, 'values': [float(v) for v in values]}
  for fake, _ in ROWS:
    out['probes'][fake] = stat([max(d['probes'][fake].values()) for d in draws])
  for name in names:
    # A recipe added later, or stopped, may lack some draws: it is summarised over those it has ('draws').
    have = [d for d in draws if name in d['recipes']]
    if not have:
      continue
    tables = [d['recipes'][name] for d in have]
    entry = {'draws': len(have)}
    entry.update({fake: {c: stat([t[fake].get(c, np.nan) for t in tables]) for c in SUMMARY_COLUMNS}
                  for fake, _ in ROWS})
    entry['mean'] = {c: stat([np.mean([t[f].get(c, np.nan) for f, _ in ROWS]) for t in tables])
                     for c in SUMMARY_COLUMNS}
    entry['min'] = stat([min(t[f]['original'] for f, _ in ROWS) for t in tables])
    if name != 'baseline' and all('baseline' in d['recipes'] for d in have):
      base = [np.mean([d['recipes']['baseline'][f]['original'] for f, _ in ROWS]) for d in have]
      entry['mean_minus_baseline'] = stat([m - b for m, b in zip(entry['mean']['original']['values'], base)])
    out['recipes'][name] = entry
  return out


def _summary_markdown(summary: dict) -> str:
  """Per recipe: AUC per held-out source on the original test photos, mean +- sd over the draws."""
  pm = lambda s: f'{s["mean"]:.3f} +- {s["sd"]:.3f}'
  lines = [f'\nPer-photo AUC on the original test photos, mean +- sd over {summary["draws"]} photo draws (fewer where '
           'the draws column says so)\n',
           '| recipe | draws | ' + ' | '.join(f for f, _ in ROWS) + ' | mean | mean JPEG 75 | mean x0.5 | min | '
           'train AUC | mean - baseline |', '|---' * (len(ROWS) + 8) + '|']
  for name, e in summary['recipes'].items():
    delta = pm(e['mean_minus_baseline']) if 'mean_minus_baseline' in e else ''
    lines.append(f'| {name} | {e["draws"]} | ' + ' | '.join(pm(e[f]['original']) for f, _ in ROWS)
                 + f' | {pm(e["mean"]["original"])} | {pm(e["mean"]["jpeg_75"])} | {pm(e["mean"]["resize_0.5"])} | '
                 f'{pm(e["min"])} | {pm(e["mean"]["train_auc"])} | {delta} |')
  lines.append(f'| best probe | {summary["draws"]} | ' + ' | '.join(pm(summary['probes'][f]) for f, _ in ROWS)
               + ' | | | | | | |')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  sys.exit(main())
