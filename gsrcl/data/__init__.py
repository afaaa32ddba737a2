"""Data: readers of every format, labelled datasets, preprocessing fitted on training cells, and
the splits."""
