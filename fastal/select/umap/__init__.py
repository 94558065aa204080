"""UMAP in torch: parameters (``params``), the fuzzy graph and initial layout (``graph``), the
estimator (``estimator``: fit/transform), and its SGD in torch (``sgd_torch``) and numba (``sgd_cpu``)."""
