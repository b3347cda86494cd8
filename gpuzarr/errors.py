"""The one hierarchy of errors gpuzarr raises.

Every error names what it is about (the array, the chunk key, the region) so a user
can tell at a glance which input is bad. Each class also inherits the matching
built-in exception, so ``except FileNotFoundError`` or ``except IndexError`` keep
working for callers that do not know gpuzarr.
"""

from __future__ import annotations


class GpuzarrError(Exception):
    """Base class of every error gpuzarr raises on purpose."""


class ArrayNotFoundError(GpuzarrError, FileNotFoundError):
    """The path or URL does not exist, or holds no Zarr node."""


class NotAZarrArrayError(GpuzarrError, ValueError):
    """The path holds something, but not a Zarr array (a group, or foreign data)."""


class ConfigurationError(GpuzarrError, ValueError):
    """An argument or storage option is invalid: an unknown device or S3 client, a URL scheme no fetcher
    reads, a feature asked for without what it needs (``readahead`` without a cache)."""


class RegionError(GpuzarrError, IndexError):
    """A region is out of bounds, has an unsupported step, or differs in shape from the rest."""


class CorruptChunkError(GpuzarrError, ValueError):
    """A stored chunk cannot be decoded: truncated, corrupt header, bad checksum, wrong size."""

    def __init__(self, message: str, *, array: str = "", key: str = "") -> None:
        super().__init__(message)
        self.array = array
        self.key = key

    @classmethod
    def of_chunk(cls, array: str, key: str, problem: str) -> CorruptChunkError:
        """``"<array>: chunk '<key>' <problem>"``, carrying ``array`` and ``key``: the one way chunk errors are worded."""
        return cls(f"{array}: chunk {key!r} {problem}", array=array, key=key)


class UnsupportedCodecError(GpuzarrError, NotImplementedError):
    """The array uses a codec, data type or chunk grid that gpuzarr cannot read."""


class DeviceUnavailableError(GpuzarrError, RuntimeError):
    """``device="cuda"`` was asked for but no usable GPU stack is present."""


class GpuFallbackError(GpuzarrError, RuntimeError):
    """``strict=True`` and a chunk needed the CPU fallback on the GPU engine."""


class FetchError(GpuzarrError, OSError):
    """Reading bytes from storage failed after the retry budget was spent, or storage cannot be reached."""

    def __init__(self, message: str, *, key: str = "", array: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.array = array

    def naming(self, array: str) -> FetchError:
        """The same error (same class and key) with the array named, for layers that know it."""
        if self.array or (array and str(self).startswith(f"{array}:")):
            return self
        return type(self)(f"{array}: {self}", key=self.key, array=array)


class RangeNotSatisfiableError(FetchError):
    """A byte range reaches past the end of the stored object (e.g. a truncated shard)."""


class GpuzarrWarning(UserWarning):
    """Base class of gpuzarr's warnings."""


class CpuFallbackWarning(GpuzarrWarning):
    """Some chunks were decoded on the CPU because the GPU engine cannot decode their codec."""
