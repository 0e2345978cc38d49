r"""The challenge recipe at IR-50: cheaper than IR-101, same schedule; for fewer GPUs.

  python -m jaxface.convert third_party/weights/adaface_ir50_webface4m.ckpt --arch ir_50 --out runs/ir50_init
  python -m jaxface.train --config configs/kryptonite_ir50.py --config.data.tfds_dir=TFDS --workdir runs/ir50

Starts from the official AdaFace IR-50 (WebFace4M, a BGR Lightning .ckpt: the converter flips the stem to RGB).
What it should reach: below the reference write-up's best public triplet results (EER ~0.045) on the val pairs.
Batch 512 fits 4x 40 GB GPUs at bfloat16.

**Never run at full size** (as configs/kryptonite_ir101.py): only its `:runlocal` smoke size runs, in CI
(tests/test_configs.py; IR-18 depth there). `runs/ir50_init` is what the convert command above writes; TFDS is
scripts/preprocess.py's --out, as in configs/kryptonite_ir101.py.
"""
from configs import default as default_lib
from configs import kryptonite_ir101


def get_config(runlocal: bool = False):
  config = kryptonite_ir101.get_config()
  config.model.arch = 'ir_50'
  config.init_from = 'runs/ir50_init'
  return default_lib.shrink(config) if runlocal else config
