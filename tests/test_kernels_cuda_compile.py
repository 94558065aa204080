"""The CUDA kernels compile for a real GPU (PTX, sm_90) even where no GPU is present.

numba's simulator runs kernels as Python and never type-checks them the way the CUDA target
does; compiling to PTX with NVVM catches typing and lowering errors without a GPU. It also checks
that no kernel issues an atomic. Runs in a subprocess because the test session uses the simulator.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, types
    import numpy as np
    import numba
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher
    from numba.cuda.cudadrv.error import NvvmSupportError

    # Device functions ask the driver for the current GPU's compute capability; there is none here.
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
    from fastal.kernels import cuda as K

    def arr(dtype, ndim):
        return numba.typeof(np.empty((1,) * ndim, dtype))

    i64, i32, f32 = arr(np.int64, 1), arr(np.int32, 1), arr(np.float32, 1)
    for kind, dtype in (("f32", np.float16), ("f32", np.float32), ("f64", np.float64), ("bf16", np.int16)):
        kernels = K.kernels(kind)
        acc = np.float64 if kind == "f64" else np.float32
        # rows, cols, indptr, row_top, row_bottom, row_weight, x0, x1, lx
        pixels = (i32, i32, i64, i64, i64, f32, i32, i32, f32)
        signatures = {
            "segment_sum": (arr(dtype, 2), i64, i64, arr(acc, 2)),
            "segment_argmax": (arr(dtype, 1), i64, i64, i64),
            "pool_features": (arr(dtype, 2), *pixels, arr(np.float32, 2)),
            "prediction_stats": (arr(dtype, 2), *pixels, f32, arr(np.int32, 2), arr(np.float32, 2)),
        }
        for name, signature in signatures.items():
            try:
                ptx, _ = cuda.compile_ptx(getattr(kernels, name).py_func, signature, cc=(9, 0))
            except NvvmSupportError as e:
                print("NVVM unavailable:", e)
                sys.exit(77)
            assert "atom." not in ptx, f"{name} ({kind}) uses atomics"
            print("ok", kind, np.dtype(dtype).name, name)
    """
)


def test_cuda_kernels_compile_to_ptx_without_atomics():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if result.returncode == 77:
        pytest.skip("libNVVM (CUDA toolkit) not installed: " + result.stdout.strip())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 16


def test_cuda_module_without_gpu_raises_one_clear_error():
    script = textwrap.dedent(
        """
        import torch
        from numba import cuda
        from fastal.errors import FastalError
        from fastal.kernels import cuda as K

        if cuda.is_available():
            raise SystemExit(77)
        try:
            K.superpixel_prediction_stats(torch.zeros(1, 2, 2, 2), torch.zeros(1, 4, 4, dtype=torch.int64), 1)
        except FastalError as e:
            print(e)
        """
    )
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    if result.returncode == 77:
        pytest.skip("a GPU is present")
    assert result.returncode == 0, result.stderr
    assert "numba.cuda finds no usable GPU" in result.stdout
