r"""Leave-one-family-out: does a fake detector catch a generator family it never trained on?

    python research/fake_families/benchmark.py --out /work/runs/famfake --draws 3
    python research/fake_families/benchmark.py --quick --out /work/runs/famfake-quick

Rows, one per held-out unit: the six fake families of `catalog` and the three pseudo-fake kinds. A row's detector is
trained on the train split (by folder, `catalog.split_of`) of every other family's fakes and of every real source
except the held-out family's own look (`catalog.FAMILY_REALS`), plus (recipes with pseudo-fakes) pseudo-fakes made
from those reals, minus the held-out kind. It is tested on the held-out family's test-split fakes against reals of the
same look, test split:

    classic_swap  lfw_swap vs lfw_real           gan      stylegan2 + stylegan3 (brought to FFHQ's 128 px JPEG 75)
    dfdc          dfdc_fake vs dfdc_real         ae_swap  ffpp_deepfakes vs ffpp_youtube    reenact  ffpp_face2face vs ffpp_youtube
    t2i           t2i_sdxl + t2i_flux vs celeba_wild, lfw_real, ffpp_youtube reals, all brought to the t2i look
    self_blend / swap / trace   pseudo-fakes of test-split celeba_wild photos vs other test-split celeba_wild photos

Columns: per-photo AUC on the test set as it is and after each laundering of `views.LAUNDERINGS` (reals and fakes
alike), the head's AUC on its own training photos, and the best trivial probe (`probes`) on the same test set.
Several draws (--draws: seeds 0..N-1 pick the photos and the split) give mean and spread.

Recipes (`RECIPES`): which inputs the head reads (features x view) and what it trains on. Features are frozen
(`features`), cached per item under --out/features, so draws and recipes share them; the head is a standardised
logistic regression (C = --c), each training source weighted to the same total (classes balanced) when the recipe
says `balanced`.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a file: the repository root, for `research` and `jaxface`

from research.fake_families import catalog  # noqa: E402  pylint: disable=wrong-import-position
from research.fake_families import features as features_lib  # noqa: E402  pylint: disable=wrong-import-position
from research.fake_families import items as items_lib  # noqa: E402  pylint: disable=wrong-import-position
from research.fake_families import probes  # noqa: E402  pylint: disable=wrong-import-position
from research.fake_families import views  # noqa: E402  pylint: disable=wrong-import-position
from research.fake_families.items import Item  # noqa: E402  pylint: disable=wrong-import-position

FAMILY_ROWS = tuple(catalog.FAMILIES)
PSEUDO_ROWS = items_lib.PSEUDO_KINDS
T2I_REALS = ('celeba_wild', 'lfw_real', 'ffpp_youtube')
PSEUDO_BASES = ('celeba_wild', 'lfw_real', 'ffhq_real', 'dfdc_real', 'ffpp_youtube')  # square photos
# name -> what the head reads ('feature:view', or 'faces:aligned' for the fine-tuned detector), the pseudo-fake kinds
# it trains on, whether training sources are balanced, and the head ('linear' on frozen features, or 'finetune').
def _recipe(inputs, pseudo=(), balanced=True, head='linear', **kw):
  return dict(inputs=inputs, pseudo=tuple(pseudo), balanced=balanced, head=head, kw=kw)


RECIPES = {
    'mbf_aligned': _recipe(['mbf:aligned']),
    'lite0_aligned': _recipe(['lite0:aligned']),
    'lite0_native': _recipe(['lite0:native']),
    'npr_native': _recipe(['npr:native']),
    'lite0_both': _recipe(['lite0:aligned', 'lite0:native']),
    'lite0_both+pseudo': _recipe(['lite0:aligned', 'lite0:native'], PSEUDO_ROWS),
    'lite0_aligned+pseudo': _recipe(['lite0:aligned'], PSEUDO_ROWS),  # what the product's 'lite0' fake head reads
    'lite0_both+sbi': _recipe(['lite0:aligned', 'lite0:native'], ('self_blend',)),
    'lite0_both_unbalanced': _recipe(['lite0:aligned', 'lite0:native'], balanced=False),
    'all_feats+pseudo': _recipe(['lite0:aligned', 'lite0:native', 'npr:native', 'mbf:aligned'], PSEUDO_ROWS),
    'ft_lite0': _recipe(['faces:aligned'], head='finetune'),
    'ft_lite0+sbi': _recipe(['faces:aligned'], ('self_blend',), head='finetune'),
    'ft_lite0+pseudo': _recipe(['faces:aligned'], PSEUDO_ROWS, head='finetune'),
    'ft_lite0+sbi_only': _recipe(['faces:aligned'], ('self_blend',), head='finetune', fakes='pseudo_only'),
}


# ----------------------------------------------------------------------------------------------------------------------
# Photos of one draw.

def draw_items(photos: list[catalog.Photo], landmarks: items_lib.Landmarks, per_source: int, seed: int
               ) -> list[Item]:
  """Up to `per_source` photos with a face of each source (DFDC: folders, both photos), split by folder; pseudo-fakes
  of train reals (one per base photo, kinds in turn) and of test celeba_wild photos (one of each kind, a third each)."""
  rng = np.random.default_rng(seed)
  by_source: dict[str, list[catalog.Photo]] = {}
  for photo in photos:
    if photo.source in ('orl', 'yale', 'celeba_aligned'):
      continue  # grey or 89x109 crops: no family shares their look; kept out so they teach no shortcut
    by_source.setdefault(photo.source, []).append(photo)
  chosen = []
  for source, group in sorted(by_source.items()):
    if source == 'dfdc_fake':
      continue  # drawn with its real
    want = per_source * (2 if source == 'celeba_wild' else 1)
    order = rng.permutation(len(group))
    for position, index in enumerate(order):
      photo = group[index]
      if position % 64 == 0:  # align what the next candidates need (a no-op where preprocessing already did)
        chunk = [group[i].path for i in order[position:position + 64]]
        landmarks.ensure(chunk + ([p[:-len('0.jpg')] + '1.jpg' for p in chunk] if source == 'dfdc_real' else []))
      if landmarks.get(photo.path) is None:
        continue
      pair = []
      if source == 'dfdc_real':
        fake = photo.path[:-len('0.jpg')] + '1.jpg'
        twin = next((p for p in by_source['dfdc_fake'] if p.path == fake), None)
        if twin is None or landmarks.get(fake) is None:
          continue
        pair = [twin]
      chosen += [photo, *pair]
      want -= 1
      if want == 0:
        break
  out = [Item(p, '', catalog.split_of(p, seed)) for p in chosen]
  return out + _pseudo_items(out, rng)


def _pseudo_items(base: list[Item], rng: np.random.Generator) -> list[Item]:
  reals = [it for it in base if it.photo.source in PSEUDO_BASES]
  out = []
  donors = [it.photo.path for it in reals if it.split == 'train']
  for index, it in enumerate(reals):
    seed = int(rng.integers(1 << 30))
    if it.split == 'test' and it.photo.source != 'celeba_wild':
      continue
    kind = items_lib.PSEUDO_KINDS[index % 3]
    if it.split == 'test' and index % 2:
      continue  # half the test celeba_wild photos stay real: the pseudo rows' negatives
    arg = f'{seed}'
    if kind == 'swap':
      pool = donors if it.split == 'train' else [d.photo.path for d in reals if d.split == 'test' and d is not it]
      arg += ':' + pool[int(rng.integers(len(pool)))]
    out.append(Item(it.photo, f'{kind}:{arg}', it.split))
  return out


# ----------------------------------------------------------------------------------------------------------------------
# Rows: what trains and what tests.

def row_sets(row: str, items: list[Item]) -> tuple[list[Item], list[Item]]:
  """(training items, test items) of a row, before the recipe's pseudo-fake filter."""
  pseudo_bases = {it.photo.path for it in items if it.kind in PSEUDO_ROWS and it.split == 'test'}
  held_reals = set(catalog.FAMILY_REALS.get(row, ()))
  train = [it for it in items if it.split == 'train' and it.source != row and it.photo.family != row
           and it.photo.source not in held_reals]
  test_all = [it for it in items if it.split == 'test']
  if row in PSEUDO_ROWS:
    test = [it for it in test_all if it.kind == row or (it.kind == '' and it.photo.source == 'celeba_wild'
                                                        and it.photo.path not in pseudo_bases)]
  elif row == 't2i':
    test = [Item(it.photo, 'look:t2i', 'test') for it in test_all if it.kind == '' and (
        it.photo.family == 't2i' or (it.photo.source in T2I_REALS and it.photo.path not in pseudo_bases))]
  elif row == 'gan':
    test = [Item(it.photo, 'look:ffhq' if it.photo.source == 'stylegan3' else '', 'test') for it in test_all
            if it.kind == '' and (it.photo.family == 'gan' or it.photo.source == 'ffhq_real')]
  else:
    reals = catalog.FAMILY_REALS[row]
    test = [it for it in test_all if it.kind == '' and (it.photo.family == row or it.photo.source in reals)]
  return train, test


# ----------------------------------------------------------------------------------------------------------------------
# Features, cached per item key.

class FeatureStore:
  """Features of items by (feature, view, launder), computed on demand and kept in --out/features/*.npz."""

  def __init__(self, root: pathlib.Path, landmarks: items_lib.Landmarks):
    self.root = root
    self.root.mkdir(parents=True, exist_ok=True)
    self.landmarks = landmarks
    self.tables: dict[str, dict[str, np.ndarray]] = {}
    self.probe_table: dict[str, dict[str, float]] = {}

  def _table(self, name: str) -> dict[str, np.ndarray]:
    if name not in self.tables:
      table = {}
      for path in sorted(self.root.glob(f'{name}.npz')) + sorted(self.root.glob(f'{name}.part*.npz')):
        table.update(np.load(path))
      self.tables[name] = table
    return self.tables[name]

  def _probes(self) -> dict[str, dict[str, float]]:
    if not self.probe_table and (self.root / 'probes.json').exists():
      self.probe_table.update(json.loads((self.root / 'probes.json').read_text()))
    return self.probe_table

  def probes_of(self, selected: list[Item]) -> list[dict[str, float]]:
    missing = [it for it in selected if it.key not in self._probes()]
    for it in missing:
      photo, marks, data = items_lib.render(it, self.landmarks)
      self.probe_table[it.key] = probes.read(photo, marks, data, None)
    if missing:
      (self.root / 'probes.json').write_text(json.dumps(self.probe_table))
    return [self.probe_table[it.key] for it in selected]

  def faces(self, selected: list[Item], launder: str | None = None) -> np.ndarray:
    """(N, 112, 112, 3) uint8 aligned faces of the items."""
    return self.get('faces:aligned', selected, launder).reshape(-1, 112, 112, 3)

  def get(self, feature_view: str, selected: list[Item], launder: str | None = None) -> np.ndarray:
    feature, view = feature_view.split(':')
    name = f'{feature}-{view}-{launder or "orig"}'
    table = self._table(name)
    missing = list(dict.fromkeys(it.key for it in selected if it.key not in table))
    by_key = {it.key: it for it in selected}
    for start in range(0, len(missing), 256):
      chunk = missing[start:start + 256]
      pixels = []
      for key in chunk:
        photo, marks, data = items_lib.render(by_key[key], self.landmarks, launder)
        pixels.append(views.aligned(photo, marks) if view == 'aligned' else views.native(photo, marks))
        if launder is None and key not in self._probes():
          self.probe_table[key] = probes.read(photo, marks, data, pixels[-1] if view == 'aligned' else None)
      values = (np.stack(pixels).reshape(len(pixels), -1) if feature == 'faces'
                else features_lib.EXTRACTORS[feature](np.stack(pixels)))
      table.update(zip(chunk, values))
      part = f'{name}.part{len(list(self.root.glob(f"{name}.part*.npz"))):05d}-{os.getpid()}.npz'
      np.savez(self.root / part, **dict(zip(chunk, values)))  # the pid: two runs sharing a folder never collide
      if launder is None:
        (self.root / 'probes.json').write_text(json.dumps(self.probe_table))
    return np.stack([table[it.key] for it in selected])


# ----------------------------------------------------------------------------------------------------------------------
# The head.

def source_weights(train: list[Item], balanced: bool) -> np.ndarray:
  """Each (class, source) gets the same total weight within its class; the two classes weigh the same."""
  labels = np.array([it.is_fake for it in train])
  if not balanced:
    return np.where(labels == 1, 0.5 / max(labels.sum(), 1), 0.5 / max((1 - labels).sum(), 1)) * len(train)
  sources = np.array([it.source for it in train])
  weights = np.zeros(len(train))
  for label in (0, 1):
    names = sorted(set(sources[labels == label]))
    for name in names:
      mask = (labels == label) & (sources == name)
      weights[mask] = 0.5 / len(names) / mask.sum()
  return weights * len(train)


def fit_head(x: np.ndarray, labels: np.ndarray, weights: np.ndarray, c: float):
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.pipeline import make_pipeline  # pylint: disable=import-outside-toplevel
  from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
  model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
  model.fit(x, labels, logisticregression__sample_weight=weights)
  return model


def auc(labels, scores) -> float:
  from jaxface.metrics import roc_auc  # pylint: disable=import-outside-toplevel
  return roc_auc(np.asarray(labels), np.asarray(scores, np.float64))


def run_row(row: str, recipe: str, items: list[Item], store: FeatureStore, args, seed: int, trained: dict) -> dict:
  """One row: 'family' holds that family (or pseudo kind) out; 'seen:family' trains on every family (one detector per
  recipe and draw, kept in `trained`) and tests on that family's test photos, which it never trained on."""
  spec = RECIPES[recipe]
  seen = row.startswith('seen:')
  unit = row.split(':')[-1]
  train, test = row_sets(unit, items)
  if seen:
    train = [it for it in items if it.split == 'train']
  train = [it for it in train if it.kind == '' or it.kind in spec['pseudo']]
  if spec['kw'].get('fakes') == 'pseudo_only':  # reals and pseudo-fakes only: no recorded fake of any family
    train = [it for it in train if it.is_fake == 0 or it.kind in PSEUDO_ROWS]
  labels = np.array([it.is_fake for it in train])
  read = lambda selected, launder=None: np.concatenate([store.get(fv, selected, launder) for fv in spec['inputs']], 1)
  weights = source_weights(train, spec['balanced'])
  if spec['head'] == 'finetune':
    read = lambda selected, launder=None: store.faces(selected, launder)
  key = (recipe, 'seen' if seen else row)
  if key not in trained:
    if spec['head'] == 'finetune':
      from research.fake_families import finetune  # pylint: disable=import-outside-toplevel  (JAX)
      kw = {k: v for k, v in spec['kw'].items() if k != 'fakes'}
      trained[key] = finetune.train(store.faces(train), labels, weights, seed=seed, **kw)
    else:
      trained[key] = fit_head(read(train), labels, weights, args.c).decision_function
  score = trained[key]
  test_labels = np.array([it.is_fake for it in test])
  result = {'train_auc': auc(labels, score(read(train))), 'n_test_fake': int(test_labels.sum()),
            'n_test_real': int((1 - test_labels).sum()), 'n_train': len(train)}
  for launder in (None, *args.launderings):
    result[launder or 'auc'] = auc(test_labels, score(read(test, launder)))
  result['probes'] = probes.table(store.probes_of(test), test_labels)
  return result


# ----------------------------------------------------------------------------------------------------------------------

def run_draw(args, seed: int, photos, landmarks) -> dict:
  out_file = args.out / f'seed{seed}.json'
  results = json.loads(out_file.read_text()) if out_file.exists() else {}
  items = draw_items(photos, landmarks, args.per_source, seed)
  store = FeatureStore(args.out / 'features', landmarks)
  trained = {}
  for recipe in args.recipes:
    for row in args.rows:
      if f'{recipe}/{row}' in results:
        continue
      start = time.perf_counter()
      results[f'{recipe}/{row}'] = run_row(row, recipe, items, store, args, seed, trained)
      r = results[f'{recipe}/{row}']
      print(f'seed {seed} {recipe:24s} {row:18s} auc {r["auc"]:.3f} ' +
            ' '.join(f'{k} {r[k]:.3f}' for k in args.launderings) +
            f' train {r["train_auc"]:.3f} probe {r["probes"]["best"]:.3f} ({r["probes"]["best_name"]})'
            f' [{time.perf_counter() - start:.0f} s]', flush=True)
      out_file.write_text(json.dumps(results, indent=1))
  return results


def summarise(draws: list[dict], args) -> str:
  lines = [f'# Leave-one-family-out, {len(draws)} draws (seeds {", ".join(map(str, range(len(draws))))}), '
           f'--per-source {args.per_source}', '']
  cols = ['auc', *args.launderings, 'train_auc']
  for recipe in args.recipes:
    lines += [f'## {recipe}', '', '| row | ' + ' | '.join(cols) + ' | best probe |',
              '|---' * (len(cols) + 2) + '|']
    for row in args.rows:
      got = [d[f'{recipe}/{row}'] for d in draws if f'{recipe}/{row}' in d]
      if not got:
        continue
      cells = [f'{np.mean([g[c] for g in got]):.3f} +- {np.std([g[c] for g in got]):.3f}' for c in cols]
      best = np.mean([g['probes']['best'] for g in got])
      names = sorted({g['probes']['best_name'] for g in got})
      lines.append(f'| {row} | ' + ' | '.join(cells) + f' | {best:.3f} ({", ".join(names)}) |')
    means = [np.mean([d[f'{recipe}/{row}']['auc'] for d in draws]) for row in args.rows
             if all(f'{recipe}/{row}' in d for d in draws)]
    lines += ['', f'mean over rows: {np.mean(means):.3f}', '']
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', type=pathlib.Path, required=True)
  parser.add_argument('--caches', nargs='+', default=['/work/runs/zoo-mtcnn/_align_cache',
                                                       '/work/runs/rt-mtcnn/_align_cache',
                                                       '/work/runs/rd-mtcnn/_align_cache'],
                      help='MTCNN align caches of scripts/preprocess.py; photos none holds are aligned into the first')
  parser.add_argument('--draws', type=int, default=3)
  parser.add_argument('--per-source', type=int, default=300)
  parser.add_argument('--recipes', default='lite0_both')
  parser.add_argument('--rows', default=','.join(FAMILY_ROWS + PSEUDO_ROWS))
  parser.add_argument('--launderings', default=','.join(views.LAUNDERINGS))
  parser.add_argument('--c', type=float, default=0.05)
  parser.add_argument('--quick', action='store_true', help='1 draw, 80 photos per source, JPEG 75 and x0.5 only')
  args = parser.parse_args(argv)
  if args.quick:
    args.draws, args.per_source, args.launderings = 1, 80, 'jpeg_75,resize_0.5'
  args.recipes = args.recipes.split(',')
  args.rows = args.rows.split(',')
  args.launderings = [name for name in args.launderings.split(',') if name]
  args.out.mkdir(parents=True, exist_ok=True)
  photos = catalog.list_photos()
  landmarks = items_lib.Landmarks(args.caches)
  draws = [run_draw(args, seed, photos, landmarks) for seed in range(args.draws)]
  summary = summarise(draws, args)
  (args.out / 'summary.md').write_text(summary)
  print(summary)
  return 0


if __name__ == '__main__':
  sys.exit(main())
