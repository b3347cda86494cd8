"""NVIDIA DALI integration: :class:`ExternalSource` feeds whole batches to ``fn.external_source``.

::

    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    import gpuzarr, gpuzarr.dali

    pipe = gpuzarr.dali.pipeline(gpuzarr.open_array("data.zarr/raw"), gpuzarr.RandomCrops((256, 256), seed=0),
                                 batch_size=32, device="gpu", flip=True, mean=[128] * 3, std=[64] * 3)
    for batch in DALIGenericIterator(pipe, ["raw"], last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True):
        x = batch[0]["raw"]

:class:`ExternalSource` is an iterable over the batches of one epoch, read by the loader
core (:class:`gpuzarr.loading.loader.EpochLoader`: this rank's share, equal on every
rank, read ahead on a background thread). Each ``iter()`` — DALI calls it at the start and
after each end of data with ``cycle="raise"`` — reads the next epoch (``epoch``, then
``epoch + 1``, ...; :meth:`ExternalSource.set_epoch` moves it). A batch is one array
(``device="gpu"``: CuPy, decoded and assembled on ``cuda_stream``, which
``fn.external_source`` gets too, so DALI's copy is ordered after the decode without a
device-wide sync; ``device="cpu"``: NumPy) or a tuple of them in the dict's order for a
dict of arrays (``num_outputs``). Output buffers come from a ring deep enough that DALI
can use them without copying (``no_copy=True``): a slot is written again only after
``prefetch_queue_depth`` + the read-ahead + 2 later batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from gpuzarr.errors import ConfigurationError, DeviceUnavailableError
from gpuzarr.loading.loader import Cut, EpochLoader

__all__ = ["ExternalSource", "pipeline"]


class _Ring:
    """Output buffers reused in turn: slot ``k`` of each array is written again ``depth`` batches later."""

    def __init__(self, depth: int, gpu: bool, stream: Any) -> None:
        self.depth = depth
        self.gpu = gpu
        self.stream = stream
        self.slots: list[dict[str | None, Any]] = [{} for _ in range(depth)]
        self.turn = 0

    def allocator(self) -> Any:
        slot = self.slots[self.turn % self.depth]
        self.turn += 1

        def allocate(name: str | None, shape: tuple[int, ...], dtype: Any) -> Any:
            buf = slot.get(name)
            if buf is None or buf.dtype != np.dtype(dtype) or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
                if self.gpu:
                    import cupy as cp

                    with self.stream:
                        buf = cp.empty(shape, dtype=dtype)
                else:
                    buf = np.empty(shape, dtype=dtype)
                slot[name] = buf
            return buf[: shape[0]]  # a leading-axis slice of a C-contiguous buffer stays contiguous

        return allocate


class _SourceLoader(EpochLoader):
    """The loader core writing into a ring of buffers, recording where each batch of the epoch ends."""

    def __init__(self, *args: Any, ring: _Ring, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ring = ring
        self.ends: list[int] = []

    def _allocator(self) -> Any:
        return self.ring.allocator()

    def _deliver(self, data: Any, cut: Cut, allocation: Any = None) -> Any:
        out = tuple(data.values()) if isinstance(data, dict) else data
        return (out, cut.hi)


class ExternalSource:
    """A batch source for ``fn.external_source(source=src, batch=True, cycle="raise", ...)``.

    ``arrays``: one handle, or a dict ``name → handle`` (then ``num_outputs=len(arrays)``,
    outputs in the dict's order; ``scale`` as in :class:`gpuzarr.torch.ZarrLoader`).
    ``device``: ``"gpu"`` (CuPy from the GPU engine on :attr:`cuda_stream`; a
    :class:`~gpuzarr.DeviceUnavailableError` without one) or ``"cpu"`` (NumPy).
    ``cuda_stream``: the stream to read on (a CuPy stream or a raw ``cudaStream_t``); by
    default a new non-blocking stream, which :meth:`external_source_kwargs` hands to DALI.
    ``prefetch_queue_depth``: the pipeline's, to size the buffer ring for ``no_copy``.
    """

    def __init__(self, arrays: Any, sampler: Any, batch_size: int, *, device: str = "gpu", scale: Any = None,
                 transform: Any = None, drop_last: bool = False, epoch: int = 0, cuda_stream: Any = None,
                 prefetch_queue_depth: int = 2, prefetch_batches: int = 2, rank: int | None = None,
                 world_size: int | None = None, **options: Any) -> None:
        if device not in ("gpu", "cpu"):
            raise ConfigurationError(f"device must be 'gpu' or 'cpu', not {device!r}")
        self.device = device
        self.cuda_stream: Any = None
        if device == "gpu":
            from gpuzarr.engines.base import resolve_device

            try:
                resolve_device("cuda")
            except DeviceUnavailableError as exc:
                raise DeviceUnavailableError(f"gpuzarr.dali.ExternalSource(device='gpu'): {exc}; "
                                             "use device='cpu' for a CPU pipeline") from exc
            import cupy as cp

            if cuda_stream is None:
                self.cuda_stream = cp.cuda.Stream(non_blocking=True)
            elif hasattr(cuda_stream, "ptr"):
                self.cuda_stream = cuda_stream
            else:
                self.cuda_stream = cp.cuda.ExternalStream(int(cuda_stream))
        depth = int(prefetch_queue_depth) + max(0, prefetch_batches) + 2
        self.ring = _Ring(depth, device == "gpu", self.cuda_stream)
        self.loader = _SourceLoader(arrays, sampler, batch_size, epoch=epoch, ring=self.ring,
                                    device="cuda" if device == "gpu" else "cpu", scale=scale, transform=transform,
                                    drop_last=drop_last, prefetch_batches=prefetch_batches, rank=rank,
                                    world_size=world_size, stream=self.cuda_stream, **options)
        self.names = [n for n in self.loader.source.names]
        self.num_outputs = None if self.loader.source.single else len(self.names)
        self._next_epoch = int(epoch)
        self._ends: list[int] = []
        self._started_at = 0

    # ------------------------------------------------------------ DALI protocol
    def __iter__(self) -> Iterator[Any]:
        loader = self.loader
        loader.set_epoch(self._next_epoch)
        self._next_epoch = loader.epoch + 1
        self._started_at = loader._resume or 0
        ends = self._ends = []
        for batch, end in loader:
            ends.append(end)
            yield batch

    def external_source_kwargs(self) -> dict[str, Any]:
        """Arguments for ``fn.external_source`` matching this source (source, batch, cycle, stream, outputs)."""
        kwargs: dict[str, Any] = {"source": self, "batch": True, "cycle": "raise",
                                  "device": "gpu" if self.device == "gpu" else "cpu"}
        if self.num_outputs is not None:
            kwargs["num_outputs"] = self.num_outputs
        if self.cuda_stream is not None:
            kwargs["cuda_stream"] = self.cuda_stream
        return kwargs

    # ------------------------------------------------------------ epochs and resume
    def set_epoch(self, epoch: int) -> None:
        """The epoch DALI's next ``iter()`` reads."""
        self._next_epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        return self.loader.batches_in_epoch(self._next_epoch if not self._ends else self.loader.epoch)

    def state_dict(self, consumed_batches: int | None = None) -> dict[str, int]:
        """Where to resume: after ``consumed_batches`` batches of the current epoch reached the training loop.

        DALI reads ahead (``prefetch_queue_depth`` batches), so the batches handed to DALI
        are more than those the loop has seen; pass the loop's count for an exact resume
        point. Without it, the point after the last batch handed to DALI.
        """
        if consumed_batches is None:
            return self.loader.state_dict()
        if not 0 <= consumed_batches <= len(self._ends):
            raise ConfigurationError(f"consumed_batches={consumed_batches}, but {len(self._ends)} batches of this epoch "
                             "were handed to DALI")
        sample = self._ends[consumed_batches - 1] if consumed_batches else self._started_at
        return {"epoch": self.loader.epoch, "sample": sample}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """The next ``iter()`` (DALI's first) resumes at ``state``."""
        self.loader.load_state_dict(state)
        self._next_epoch = self.loader.epoch


def pipeline(arrays: Any, sampler: Any, batch_size: int, *, device: str = "gpu", device_id: int | None = 0,
             num_threads: int = 2, prefetch_queue_depth: int = 2, flip: bool = False, mean: Any = None,
             std: Any = None, layout: str | None = None, seed: int = 0, no_copy: bool = True,
             **source_options: Any) -> Any:
    """A ready DALI pipeline: gpuzarr batches → optional random horizontal flip and normalisation → outputs.

    ``device="cpu"`` with ``device_id=None`` builds a CPU-only pipeline (no GPU needed).
    ``layout`` names the sample axes for DALI (default ``"HW"``, ``"CHW"``, ``"FCHW"`` by
    rank); ``flip`` mirrors each sample along ``W`` with probability ½ (``seed``), every
    array of a sample alike (a flow field's x component keeps its sign: negate it yourself);
    ``mean``/``std`` (per channel) normalise the first array to float32. The pipeline's outputs are the
    arrays in order; the :class:`ExternalSource` is ``pipe.gpuzarr_source``. Use with
    ``DALIGenericIterator(pipe, names, last_batch_policy=LastBatchPolicy.PARTIAL)``.
    """
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    if device == "gpu" and device_id is None:
        raise ConfigurationError("device='gpu' needs a device_id; device_id=None is for CPU-only pipelines")
    source = ExternalSource(arrays, sampler, batch_size, device=device, prefetch_queue_depth=prefetch_queue_depth,
                            **source_options)
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                    prefetch_queue_depth=prefetch_queue_depth)
    sample_ndim = len(_sample_shape(source))
    if layout is None:
        layout = {2: "HW", 3: "CHW", 4: "FCHW"}.get(sample_ndim)
    with pipe:
        kwargs = source.external_source_kwargs()
        kwargs["no_copy"] = no_copy
        if layout is not None:
            kwargs["layout"] = layout
        outs = fn.external_source(**kwargs)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        if flip or mean is not None or std is not None:
            if layout is None or "W" not in layout:
                raise ConfigurationError(f"flip / mean / std need a layout with a W axis (samples have {sample_ndim} axes)")
            mirror = fn.random.coin_flip(probability=0.5) if flip else 0
            norm: dict[str, Any] = {}
            if mean is not None:
                norm["mean"] = [float(m) for m in np.atleast_1d(mean)]
            if std is not None:
                norm["std"] = [float(s) for s in np.atleast_1d(std)]
            # the same coin for every array of a sample; mean/std normalise the first array (the images)
            done = []
            for i, o in enumerate(outs):
                if i == 0 and norm:
                    o = fn.crop_mirror_normalize(o, mirror=mirror, dtype=types.FLOAT, output_layout=layout, **norm)
                elif flip:
                    o = fn.flip(o, horizontal=mirror)
                done.append(o)
            outs = done
        pipe.set_outputs(*outs)
    pipe.gpuzarr_source = source
    return pipe


def _sample_shape(source: ExternalSource) -> tuple[int, ...]:
    """One sample's shape for the first array (after its transform's re-layout)."""
    loader = source.loader
    share = loader.share(loader.epoch)
    region = share.regions[0] if len(share) else None
    arr = loader.source.primary
    if region is None:
        return tuple(arr.shape)
    shape = tuple(arr.plan([region]).out_shape[1:])
    transform = loader.source.transforms[loader.source.names[0]]
    if transform is not None:
        shape = tuple(shape[a] for a in transform.output_axes(len(shape)))
    return shape
