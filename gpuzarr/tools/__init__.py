"""User-facing tools around the library: the ``gpuzarr`` command line, ``info``, the demo, the benchmark."""
