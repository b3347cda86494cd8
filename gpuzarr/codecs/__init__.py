"""Codecs: how stored chunk bytes become arrays.

:mod:`gpuzarr.codecs.chain` turns an array's codec list into decode steps (the one
decode entry of the CPU engine); :mod:`gpuzarr.codecs.blosc` holds the Blosc1
format rules once, the batch parser of the GPU path, its NumPy reference, and the
partial (block-wise) decoder of the CPU engine.
"""
