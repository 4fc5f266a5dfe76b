"""Evaluation measures beyond image accuracy (image accuracy is in :mod:`parasnn.evaluate`)."""
