"""Integrations of gpuzarr into other libraries (zarr-python's codec pipeline)."""
