"""KMeans in torch: the estimator (``estimator``: k-means++ seeding, Lloyd's iterations), the
numba CPU kernels (``cpu``) and Yinyang group bounds (``bounds``)."""
