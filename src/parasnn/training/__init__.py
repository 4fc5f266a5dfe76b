"""Training ANNs (ReLU, QCFS, signed) for conversion."""
