"""Engines: the two executors of one :class:`~gpuzarr.plan.planner.BatchPlan`.

An engine takes the plan, the encoded bytes of each distinct chunk (``None`` for a
chunk never written) and the array's :class:`~gpuzarr.codecs.chain.DecodeChain`, and
returns the stacked batch. :mod:`gpuzarr.engines.cpu` uses NumPy and a thread pool;
:mod:`gpuzarr.engines.gpu.engine` uses nvCOMP, CuPy and the kernels in ``kernels/``.
Which one runs is decided in exactly one place, :func:`gpuzarr.engines.device.resolve_engine`.

Engine interface (duck-typed)::

    engine.name: str                         # "cpu" or "cuda"
    engine.loads_deferred_reads: bool        # encoded may be DeferredReads (loaded by the decoding thread)
    engine.takes_device_batches(chain) -> bool   # encoded may be one DeviceBatch already in GPU memory
    engine.decode_and_assemble(
        plan, encoded, chain, fill_value, *, keys, array_name, transform=None,
    ) -> numpy.ndarray | cupy.ndarray        # shape plan.out_shape (or as transformed)

``keys[u]`` is the chunk key of ``plan.chunk_coords[u]`` (for error messages; a lazy
:class:`gpuzarr.storage.reader.ChunkKeys` that builds a key only when one is read);
``transform`` is an optional :class:`gpuzarr.plan.transform.OutputTransform` (cast,
per-channel normalisation, layout) fused into assembly.
"""
