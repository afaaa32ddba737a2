"""Classifiers on features: the grid search, the precomputed-kernel SVM, metrics, and the threads
the fits run on."""
