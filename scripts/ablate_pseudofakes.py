r"""Ablation: the same small model trained with and without pseudo-fakes; fake-detection AUC on the test pairs.

    python scripts/preprocess.py --data-dir ../shared/data/realfaces-dev --aligner mtcnn --out /tmp/dev-tfds
    python scripts/ablate_pseudofakes.py --tfds-dir /tmp/dev-tfds --out runs/ablate-pseudofakes

Both rows use `--config` (default: configs/default.py) on the prepared dataset with the same fake share per batch
(`config.data.fake_share`): 'with' fills part of it with pseudo-fakes made on the fly (self-blends, swaps, generator
traces; `config.data.pseudo_fakes.share`), 'without' fills all of it with the dataset's recorded fakes. Everything
else (seed, steps, model) is the same. Printed per row: fake-detection ROC AUC on the test pairs (per pair: does the
pair hold a generated photo; per photo where its label is known), and the test EERs.

On `../shared/data/realfaces-dev` the test fakes are LFW face-swaps and StyleGAN3 faces, the same two generators as
the recorded training fakes, so this measures whether pseudo-fakes hurt or help in-distribution; their purpose is the
generators the dataset does not hold. Runs resume: rerunning the command reuses finished rows.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import compare  # noqa: E402  pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--tfds-dir', required=True, help='a prepared jaxface_faces dataset (scripts/preprocess.py)')
  parser.add_argument('--out', required=True, help='folder for the two runs and the table')
  parser.add_argument('--config', default='default', help='config name in configs/ or a .py path')
  parser.add_argument('--share', type=float, default=0.125, help="pseudo-fake share of the batch in the 'with' row")
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='a config override for both rows (repeatable)')
  args = parser.parse_args(argv)
  if not compare.dataset_present(args.tfds_dir):
    return 2
  common = tuple(args.set)
  variants = [
      compare.Variant('with_pseudo_fakes', args.config, common + (f'data.pseudo_fakes.share={args.share}',)),
      compare.Variant('without_pseudo_fakes', args.config, common + ('data.pseudo_fakes.share=0.0',)),
  ]
  rows = compare.run(variants, pathlib.Path(args.out), args.tfds_dir)
  print()
  for row in rows:
    print(f'{row["name"]:>22}: fake-detection AUC on the test pairs {compare.fmt(row["fake_auc_pair"])} per pair, '
          f'{compare.fmt(row["fake_auc_image"])} per photo; test EER fused {compare.fmt(row["test_eer_fused"])}, '
          f'cosine {compare.fmt(row["test_eer_cosine"])}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
