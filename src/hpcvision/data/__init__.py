"""Steps 1-2: lists, archive reading, extract, build, shards + manifest, verify, sample data; input config, presets, tf.data."""
