"""CUDA C++ sources of gpuzarr, installed as package ``gpuzarr._kernels``."""
