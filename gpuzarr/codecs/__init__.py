"""Codecs: how stored chunk bytes become arrays.

:mod:`gpuzarr.codecs.chain` turns an array's codec list into decode steps (the one
decode entry of the CPU engine); :mod:`gpuzarr.codecs.blosc` parses and validates
Blosc1 containers for the GPU path and holds its NumPy reference.
"""
