"""Challenge data: reading and checking (challenge, check), generating (synthetic, render), the split plan (plan),
TFDS building (builder), the prepared dataset (prepared) and the tf.data pipeline (pipeline)."""
