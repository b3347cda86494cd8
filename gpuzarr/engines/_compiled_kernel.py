"""The Numba kernel of :mod:`gpuzarr.engines.compiled` (imported only when that lane compiles).

:func:`run_chunks` is the whole per-chunk loop: source, CRC32C, decode, piece copies.
C functions are called through addresses passed in as integers (:func:`_call`
intrinsics), so nothing process-specific is baked into the compiled code and Numba's
on-disk cache stays valid across processes. Every check the Python path makes before
handing bytes to a C decoder is made here too (sizes, Blosc header fields); anything
unexpected only marks the chunk for the Python path, which reports it.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_I8P = ir.IntType(8).as_pointer()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)

# C argument kinds: "p" pointer, "i" int (32-bit), "l" long / size_t / off_t (64-bit)
_LLVM = {"p": _I8P, "i": _I32, "l": _I64}



def _c_function(signature: str, *, variadic: bool = False):
    """An intrinsic ``f(address, *args) -> int64`` calling the C function at ``address``.

    ``signature`` is the C return kind then the argument kinds (``"l" + "ipll"`` is
    ``long f(int, void*, long, long)``). Every argument is passed from Numba as int64
    and narrowed here; an ``int`` result is sign-extended back to int64.
    """
    ret, args = signature[0], signature[1:]
    sig = types.int64(types.int64, *([types.int64] * len(args)))

    def codegen(context, builder, signature_, llargs):
        fnty = ir.FunctionType(_LLVM[ret], [_LLVM[k] for k in args], var_arg=variadic)
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        cargs = []
        for kind, value in zip(args, llargs[1:], strict=True):
            if kind == "p":
                cargs.append(builder.inttoptr(value, _I8P))
            elif kind == "i":
                cargs.append(builder.trunc(value, _I32))
            else:
                cargs.append(value)
        result = builder.call(fn, cargs)
        return builder.sext(result, _I64) if ret == "i" else result

    # Numba types an intrinsic by its Python signature: one fixed arity each
    if len(args) == 1:
        def typer(typingctx, address, a):
            return sig, codegen
    elif len(args) == 2:
        def typer(typingctx, address, a, b):
            return sig, codegen
    elif len(args) == 3:
        def typer(typingctx, address, a, b, c):
            return sig, codegen
    elif len(args) == 4:
        def typer(typingctx, address, a, b, c, d):
            return sig, codegen
    else:
        def typer(typingctx, address, a, b, c, d, e):
            return sig, codegen
    return intrinsic(typer)


_open = _c_function("ipi", variadic=True)        # int open(const char *, int, ...)
_pread = _c_function("lipll")                     # ssize_t pread(int, void *, size_t, off_t)
_lseek = _c_function("lili")                      # off_t lseek(int, off_t, int)
_close = _c_function("ii")                        # int close(int)
_crc32c = _c_function("ipl")                      # uint32_t crc32c_value(const uint8_t *, size_t)
_zstd = _c_function("lpplpl")                     # size_t ZSTD_decompressDCtx(ctx, dst, cap, src, size)
_blosc = _c_function("ippli")                     # int blosc_decompress_ctx(src, dst, destsize, nthreads)


@intrinsic
def _load_u32(typingctx, address):
    """The little-endian uint32 at ``address`` (no alignment assumed), as int64."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, llargs):
        ptr = builder.inttoptr(llargs[0], _I32.as_pointer())
        value = builder.load(ptr, align=1)
        return builder.zext(value, _I64)

    return sig, codegen


@intrinsic
def _memcpy(typingctx, dst, src, nbytes):
    """``memcpy(dst, src, nbytes)`` on raw addresses."""
    sig = types.void(types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, llargs):
        d = builder.inttoptr(llargs[0], _I8P)
        s = builder.inttoptr(llargs[1], _I8P)
        cgutils.raw_memcpy(builder, d, s, llargs[2], 1)
        return context.get_dummy_value()

    return sig, codegen


# per-chunk status (see gpuzarr.engines.compiled)
_DONE = 1
_UNREADABLE = 2   # open/read failed, or the object is larger than the input buffer
_CORRUPT = 3      # checksum, header or decode failure: the Python path names it
_PARTIAL = 4      # a Blosc chunk of several blocks: the Python path decodes only what is needed
_WHOLE_FILE, _FILE_RANGE, _MEMORY = 0, 1, 2
_RAW, _BLOSC, _ZSTD = 0, 1, 2


@njit(nogil=True, cache=True)
def run_chunks(first, stop, order, kinds, path_index, path_offsets, paths, starts, lengths, codec, crc,
               whole_blosc_only, inbuf, scratch, out, piece_offsets, src_offsets, dst_offsets, extents,
               src_strides, dst_strides, functions, zstd_ctx, open_flags, status):
    """Chunks ``order[first:stop]``: read, check, decode, copy their pieces into ``out``; ``status`` says how each went.

    ``order`` lists the chunks file by file and by offset within a file, so a shard
    is opened once per run of its inner chunks and read front to back.
    """
    f_open, f_pread, f_lseek, f_close = functions[0], functions[1], functions[2], functions[3]
    f_crc, f_zstd, f_blosc = functions[4], functions[5], functions[6]
    in_addr = inbuf.ctypes.data
    in_size = inbuf.size
    chunk_bytes = scratch.size
    scratch_addr = scratch.ctypes.data
    out_addr = out.ctypes.data
    paths_addr = paths.ctypes.data
    outer = extents.shape[1] - 1
    index = np.zeros(max(outer, 1), dtype=np.int64)
    fd = -1
    fd_path = -1
    for k in range(first, stop):
        u = order[k]
        kind = kinds[u]
        if kind > _MEMORY:
            continue
        # ---- the encoded bytes: (src, n)
        if kind == _MEMORY:
            src = starts[u]
            n = lengths[u]
        else:
            p = path_index[u]
            if p != fd_path:
                if fd >= 0:
                    _close(f_close, fd)
                fd = _open(f_open, paths_addr + path_offsets[p], open_flags)
                fd_path = p if fd >= 0 else -1
                if fd < 0:
                    status[u] = _UNREADABLE
                    continue
            if kind == _WHOLE_FILE:
                offset = 0
                n = _lseek(f_lseek, fd, 0, 2)
            else:
                offset = starts[u]
                n = lengths[u]
            if n < 0 or n > in_size:
                status[u] = _UNREADABLE
                continue
            done = 0
            while done < n:
                got = _pread(f_pread, fd, in_addr + done, n - done, offset + done)
                if got <= 0:
                    break
                done += got
            if done < n:
                status[u] = _UNREADABLE
                continue
            src = in_addr
        # ---- checksum
        body = n
        if crc:
            if n < 4:
                status[u] = _CORRUPT
                continue
            body = n - 4
            if (_crc32c(f_crc, src, body) & 0xFFFFFFFF) != _load_u32(src + body):
                status[u] = _CORRUPT
                continue
        # ---- decode into scratch (raw bytes are copied from where they are)
        chunk = scratch_addr
        if codec == _RAW:
            if body != chunk_bytes:
                status[u] = _CORRUPT
                continue
            chunk = src
        elif codec == _BLOSC:
            if body < 16:
                status[u] = _CORRUPT
                continue
            nbytes = _load_u32(src + 4)
            blocksize = _load_u32(src + 8)
            cbytes = _load_u32(src + 12)
            if cbytes != body or nbytes != chunk_bytes:
                status[u] = _CORRUPT
                continue
            if whole_blosc_only and 0 < blocksize < nbytes:
                status[u] = _PARTIAL
                continue
            if _blosc(f_blosc, src, scratch_addr, chunk_bytes, 1) != chunk_bytes:
                status[u] = _CORRUPT
                continue
        else:
            if _zstd(f_zstd, zstd_ctx, scratch_addr, chunk_bytes, src, body) != chunk_bytes:
                status[u] = _CORRUPT  # a zstd error code is a huge size_t: never equal
                continue
        # ---- pieces: the outer axes walked like an odometer, the last axis one memcpy
        for q in range(piece_offsets[u], piece_offsets[u + 1]):
            run = extents[q, outer]
            total = 1
            for d in range(outer):
                total *= extents[q, d]
                index[d] = 0
            if run <= 0 or total <= 0:
                continue
            s0 = chunk + src_offsets[q]
            d0 = out_addr + dst_offsets[q]
            for _ in range(total):
                so = s0
                do = d0
                for d in range(outer):
                    so += index[d] * src_strides[d]
                    do += index[d] * dst_strides[d]
                _memcpy(do, so, run)
                d = outer - 1
                while d >= 0:
                    index[d] += 1
                    if index[d] < extents[q, d]:
                        break
                    index[d] = 0
                    d -= 1
        status[u] = _DONE
    if fd >= 0:
        _close(f_close, fd)


def warm_up(kernel) -> None:
    """Compile (or load) the one specialisation the engine calls, on a tiny batch that touches no file."""
    i64 = np.zeros(2, dtype=np.int64)
    kinds = np.full(1, 3, dtype=np.int8)
    scratch = np.zeros(8, dtype=np.uint8)
    kernel(0, 1, np.zeros(1, dtype=np.int64), kinds, np.zeros(1, dtype=np.int64), i64, np.zeros(1, dtype=np.uint8), i64, i64, 0, False, False,
           scratch.copy(), scratch, scratch.copy(), np.zeros(2, dtype=np.int64), i64, i64,
           np.zeros((1, 2), dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64),
           np.zeros(7, dtype=np.int64), 0, 0, np.zeros(1, dtype=np.int8))
