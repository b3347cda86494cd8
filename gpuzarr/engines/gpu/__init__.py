"""The GPU engine: nvCOMP batched decode, kernel launchers and their NumPy mirrors.

:mod:`.engine` orchestrates a batch on the device, :mod:`.kernels` loads and launches the
CUDA sources of ``kernels/`` through CuPy, and :mod:`.mirrors` holds the NumPy mirror of
every kernel (the oracle the tests compare the kernels with). Importing this package does
not import CuPy.
"""
