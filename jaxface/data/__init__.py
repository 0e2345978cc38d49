"""From photos to batches, one module per stage, in the order a photo goes through them:

    challenge     the challenge layout (people, meta.json, test pairs, labels.csv, exclude lists); any image -> RGB
    check         python -m jaxface.data.check: every problem of a data folder, one line each
    render, synthetic   python -m jaxface.data.synthetic: a hard, deterministic challenge-layout set (no TensorFlow)
    plan          which photos go where: held-out people, val pairs, test pairs (paths only)
    align_stage   photos -> aligned faces in the resumable cache (`jaxface.align` does the aligning)
    builder       aligned faces -> the `jaxface_faces` TFDS dataset (scripts/preprocess.py, jaxface.preprocess)
    prepared      reading a prepared dataset: open_prepared(TFDS_DIR) -> PreparedDataset (changes nothing)
    sources       what a training config trains on: its TFDS folder, or the synthetic demo set made once
    pseudofakes   self-blends, swaps, generator traces (TensorFlow ops)
    augment       training augmentation (TensorFlow ops)
    pipeline      tf.data: decode, pseudo-fake, augment, per-host shards, device-shaped batches
    data_config   the `config.data` section (no TensorFlow)

Imports point one way: nothing here imports the models, inference, verification, training, evaluation or the label
cleaner (`jaxface.clean`, which runs a model and sits above them); `jaxface.align` never imports this package
(tests/test_layout.py checks both).
"""
