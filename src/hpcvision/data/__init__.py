"""Step 1-2 of the workflow: archives, file lists, sample data, TFRecords, tf.data input."""
