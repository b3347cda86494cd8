"""The Numba kernel of :mod:`gpuzarr.engines.compiled` (imported only when that lane compiles).

:func:`run_chunks` is the whole per-chunk loop: source, CRC32C, decode, piece copies.
C functions are called through addresses passed in as integers (:func:`_call`
intrinsics), so nothing process-specific is baked into the compiled code and Numba's
on-disk cache stays valid across processes. Every check the Python path makes before
handing bytes to a C decoder is made here too (sizes, Blosc header fields); anything
unexpected only marks the chunk for the Python path, which reports it.

:func:`blosc_blocks` decodes Blosc1 chunks with Zstd inside block by block (the
block table and every stream size checked against the chunk first, by the rules of
:mod:`gpuzarr.codecs.blosc.format`), with its own byte and bit unshuffle; tests hold it
equal to c-blosc on every shuffle, item size, split and leftover block, and on damaged
chunks. A shuffled chunk whose piece rows are at least ``FUSE_MIN_ROW`` bytes is not
unshuffled into a whole decoded chunk and copied from there: each row is unshuffled from
its block into a block-sized buffer and copied straight into the batch, so rows no piece
reads are never unshuffled (measured on the 960² demo crops: 5% less CPU per batch).
"""

from __future__ import annotations

from mmap import MAP_SHARED, PROT_READ

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from gpuzarr.codecs.blosc.format import (
    FLAG_BITSHUFFLE,
    FLAG_DONT_SPLIT,
    FLAG_MEMCPYED,
    FLAG_RESERVED,
    FLAG_SHUFFLE,
    FORMAT_ZSTD,
    HEADER_BYTES,
    MAX_SPLITS,
    MIN_BUFFERSIZE,
    MODE_BITSHUFFLE,
    MODE_NONE,
    MODE_SHUFFLE,
    VERSION_FORMAT,
)
from gpuzarr.engines.compiled import MADV_POPULATE_READ

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
        if ret == "i":
            return builder.sext(result, _I64)
        return builder.ptrtoint(result, _I64) if ret == "p" else result

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
    elif len(args) == 5:
        def typer(typingctx, address, a, b, c, d, e):
            return sig, codegen
    else:
        def typer(typingctx, address, a, b, c, d, e, f):
            return sig, codegen
    return intrinsic(typer)


_open = _c_function("ipi", variadic=True)        # int open(const char *, int, ...)
_pread = _c_function("lipll")                     # ssize_t pread(int, void *, size_t, off_t)
_lseek = _c_function("lili")                      # off_t lseek(int, off_t, int)
_close = _c_function("ii")                        # int close(int)
_crc32c = _c_function("ipl")                      # uint32_t crc32c_value(const uint8_t *, size_t)
_zstd = _c_function("lpplpl")                     # size_t ZSTD_decompressDCtx(ctx, dst, cap, src, size)
_blosc = _c_function("ippli")                     # int blosc_decompress_ctx(src, dst, destsize, nthreads)
_mmap = _c_function("ppliiil")                    # void *mmap(void *, size_t, int prot, int flags, int fd, off_t)
_munmap = _c_function("ipl")                      # int munmap(void *, size_t)
_madvise = _c_function("ipli")                    # int madvise(void *, size_t, int)


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
def _load_u8(typingctx, address):
    """The byte at ``address``, as int64."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, llargs):
        ptr = builder.inttoptr(llargs[0], _I8P)
        return builder.zext(builder.load(ptr), _I64)

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
_PARTIAL = 4      # a Blosc chunk read in part whose blocks this code does not decode (not Zstd inside)
_WHOLE_FILE, _FILE_RANGE, _MEMORY = 0, 1, 2
_RAW, _BLOSC, _ZSTD = 0, 1, 2


# ----------------------------------------------------------------------------- Blosc1 blocks
# The rules are c-blosc 1.21's ``blosc_d`` (written down in gpuzarr.codecs.blosc.format):
# a block is ``nsplits`` streams, each an int32 size and its bytes (stored raw when the size
# equals the stream's decoded size); byte shuffle when flag 0x01 and typesize > 1, else bit
# shuffle when flag 0x04 and the block holds at least one item.
_BLOSC_OK = 0
_BLOSC_OTHER = -1  # a container this code leaves to c-blosc (not Zstd inside, memcpyed, another version, reserved flag)
_U7, _U14, _U28 = np.uint64(7), np.uint64(14), np.uint64(28)
_M7, _M14, _M28 = np.uint64(0x00AA00AA00AA00AA), np.uint64(0x0000CCCC0000CCCC), np.uint64(0x00000000F0F0F0F0)


@njit(nogil=True, cache=True, inline="always")
def _transpose8(x):
    """The 8×8 bit matrix in ``x`` (row ``r`` = byte ``r``) transposed: bit ``c`` of byte ``r`` to bit ``r`` of byte ``c``."""
    t = (x ^ (x >> _U7)) & _M7
    x = x ^ t ^ (t << _U7)
    t = (x ^ (x >> _U14)) & _M14
    x = x ^ t ^ (t << _U14)
    t = (x ^ (x >> _U28)) & _M28
    return x ^ t ^ (t << _U28)


@njit(nogil=True, cache=True, inline="always")
def _bit_group(src, q, rows):
    """Byte ``q`` of each of the eight bit planes ``rows`` bytes apart at ``src``, transposed: eight unshuffled bytes."""
    x = (np.uint64(src[q]) | (np.uint64(src[q + rows]) << np.uint64(8))
         | (np.uint64(src[q + 2 * rows]) << np.uint64(16)) | (np.uint64(src[q + 3 * rows]) << np.uint64(24))
         | (np.uint64(src[q + 4 * rows]) << np.uint64(32)) | (np.uint64(src[q + 5 * rows]) << np.uint64(40))
         | (np.uint64(src[q + 6 * rows]) << np.uint64(48)) | (np.uint64(src[q + 7 * rows]) << np.uint64(56)))
    return _transpose8(x)


@njit(nogil=True, cache=True)
def _bit_planes(src, s0, rows, dst64):
    """Eight bit planes of ``rows`` bytes at ``src[s0:]`` back to ``8 * rows`` bytes (as uint64 words in ``dst64``)."""
    for j in range(rows):
        dst64[j] = _bit_group(src, s0 + j, rows)


@njit(nogil=True, cache=True)
def _bit_range(src, s0, g0, g1, rows, dst64):
    """Words ``g0:g1`` of :func:`_bit_planes` (``dst64[g0:g1]``), the others untouched.

    Written over views that start at ``g0``, with ``rows`` checked positive, so the compiler
    sees no negative index and vectorises the loop as it does :func:`_bit_planes` (4× faster
    than indexing from ``g0``, measured).
    """
    if rows <= 0 or g1 <= g0:
        return
    planes = src[s0 + g0:]
    words = dst64[g0:g1]
    for j in range(g1 - g0):
        words[j] = _bit_group(planes, j, rows)


@njit(nogil=True, cache=True)
def _byte_unshuffle(src, stride, dst, d0, count, typesize):
    """``dst[d0 + i * typesize + t] = src[t * stride + i]`` for ``count`` items (c-blosc's ``unshuffle`` without its
    tail when ``count == stride``, the block's item count)."""
    for i in range(count):
        o = d0 + i * typesize
        for t in range(typesize):
            dst[o + t] = src[t * stride + i]


@njit(nogil=True, cache=True, inline="always")
def _shuffle_mode(flags, typesize):
    """The chunk's shuffle: byte shuffle when flag 0x01 and items of more than a byte, else bit shuffle when 0x04.

    :func:`gpuzarr.codecs.blosc.format.shuffle_mode` for one chunk, before the per-block rule
    (a bit-shuffled block smaller than one item is stored as it is), which the caller applies.
    """
    if flags & FLAG_SHUFFLE and typesize > 1:
        return MODE_SHUFFLE
    if flags & FLAG_BITSHUFFLE:
        return MODE_BITSHUFFLE
    return MODE_NONE


@njit(nogil=True, cache=True)
def _unshuffle_block(tmp, tmp2, dst, d0, bsize, typesize, mode):
    """The block of ``bsize`` stored bytes in ``tmp`` unshuffled into ``dst[d0:d0 + bsize]`` (``tmp2``: scratch)."""
    n = bsize // typesize
    done = 0
    if mode == MODE_SHUFFLE:
        _byte_unshuffle(tmp, n, dst, d0, n, typesize)
        done = n * typesize
    elif mode == MODE_BITSHUFFLE and n % 8 == 0:  # c-blosc 1.x copies a block of another item count as it is
        rows = n // 8
        if typesize == 1:
            _bit_planes(tmp, 0, rows, dst[d0:d0 + n].view(np.uint64))
        else:
            planes = tmp2[:n * typesize].view(np.uint64)
            for t in range(typesize):
                _bit_planes(tmp, 8 * t * rows, rows, planes[t * rows:(t + 1) * rows])
            _byte_unshuffle(tmp2, n, dst, d0, n, typesize)
        done = n * typesize
    for p in range(done, bsize):  # the tail that is not a whole item (or the whole unshuffled block)
        dst[d0 + p] = tmp[p]


@njit(nogil=True, cache=True)
def _unshuffle_range(tmp, tmp2, block, bsize, typesize, mode, lo, hi):
    """Bytes ``lo:hi`` of the block whose stored bytes are in ``tmp``, unshuffled into ``block[lo:hi]``.

    :func:`_unshuffle_block` for one range: only the whole items (bit shuffle: groups of
    eight items) that hold a byte of the range are unshuffled, so rows no piece reads cost
    nothing. The loops are those of :func:`_unshuffle_block`, which the compiler vectorises.
    """
    n = bsize // typesize
    done = 0
    if mode == MODE_SHUFFLE:
        done = n * typesize
        i0, i1 = lo // typesize, min((hi + typesize - 1) // typesize, n)
        if i0 < i1:
            _byte_unshuffle(tmp[i0:], n, block, i0 * typesize, i1 - i0, typesize)
    elif mode == MODE_BITSHUFFLE and n % 8 == 0:
        done = n * typesize
        rows = n // 8
        group = 8 * typesize  # the bytes of eight items
        g0, g1 = lo // group, min((hi + group - 1) // group, rows)
        if typesize == 1:
            _bit_range(tmp, 0, g0, g1, rows, block[:8 * rows].view(np.uint64))
        else:
            planes = tmp2[:n * typesize].view(np.uint64)
            for t in range(typesize):
                _bit_range(tmp, 8 * t * rows, g0, g1, rows, planes[t * rows:(t + 1) * rows])
            if g0 < g1:
                _byte_unshuffle(tmp2[8 * g0:], n, block, 8 * g0 * typesize, 8 * (g1 - g0), typesize)
    for p in range(max(lo, done), hi):  # the tail that is not a whole item (or the whole block, as stored)
        block[p] = tmp[p]


@njit(nogil=True, cache=True)
def blosc_blocks(src, body, dst, needed, tmp, tmp2, f_zstd, zstd_ctx, segments, out, block):
    """Decode the ``needed`` blocks (all when ``needed`` is empty) of the Blosc1 chunk at address ``src`` into ``dst``.

    The header was checked by the caller (``cbytes == body``, ``nbytes == dst.size``).
    Returns ``_BLOSC_OK``, ``_BLOSC_OTHER`` (nothing written) or ``_CORRUPT``: a block start,
    stream size or stream outside the chunk, or a stream that does not decode to its size.
    ``tmp``, ``tmp2`` (and ``block``, used only with ``segments``) hold at least one block.

    With ``segments`` (rows ``(chunk byte offset, length, out offset)``, sorted by chunk
    offset, each inside the chunk), the decoded chunk goes to ``out`` instead: each
    segment's bytes are unshuffled into ``block`` (a block's worth, hot in cache) and copied
    to its out offset, so the rows no segment reads are never unshuffled and nothing
    passes through ``dst``, which then holds only the blocks stored without shuffle.
    """
    version = _load_u8(src)
    flags = _load_u8(src + 2)
    typesize = _load_u8(src + 3)
    nbytes = dst.size
    blocksize = _load_u32(src + 8)
    if (version != VERSION_FORMAT or flags & (FLAG_MEMCPYED | FLAG_RESERVED) or (flags >> 5) != FORMAT_ZSTD or typesize < 1
            or blocksize <= 0 or blocksize > tmp.size):
        return _BLOSC_OTHER
    if not flags & FLAG_DONT_SPLIT and 1 < typesize <= MAX_SPLITS and blocksize % typesize:
        return _BLOSC_OTHER  # split streams of unequal size: no encoder writes that, c-blosc judges it
    nblocks = (nbytes + blocksize - 1) // blocksize
    table_end = HEADER_BYTES + 4 * nblocks
    if table_end > body:
        return _CORRUPT
    mode = _shuffle_mode(flags, typesize)
    dst_addr = dst.ctypes.data
    tmp_addr = tmp.ctypes.data
    nseg = segments.shape[0]
    out_addr = out.ctypes.data
    block_addr = block.ctypes.data
    seg = 0  # the first segment that may reach the block
    for b in range(nblocks):
        if needed.size and not needed[b]:
            continue
        d0 = b * blocksize
        bsize = min(blocksize, nbytes - d0)
        leftover = bsize < blocksize
        nsplits = 1
        if not flags & FLAG_DONT_SPLIT and typesize <= MAX_SPLITS and bsize // typesize >= MIN_BUFFERSIZE and not leftover:
            nsplits = typesize
        neblock = bsize // nsplits
        cursor = np.int64(_load_u32(src + HEADER_BYTES + 4 * b))
        if cursor < table_end or cursor > body:
            return _CORRUPT
        block_mode = mode if (mode != MODE_BITSHUFFLE or bsize >= typesize) else MODE_NONE
        direct = block_mode == MODE_NONE  # no shuffle: streams decode straight into place
        base = dst_addr + d0 if direct else tmp_addr
        for j in range(nsplits):
            if cursor + 4 > body:
                return _CORRUPT
            csize = np.int64(_load_u32(src + cursor))
            if csize >= 0x80000000 or csize > body - cursor - 4:
                return _CORRUPT
            stream = src + cursor + 4
            if csize == neblock:
                _memcpy(base + j * neblock, stream, neblock)
            elif _zstd(f_zstd, zstd_ctx, base + j * neblock, neblock, stream, csize) != neblock:
                return _CORRUPT  # a zstd error code is a huge size_t: never equal
            cursor += 4 + csize
        if nseg:
            d1 = d0 + bsize
            while seg < nseg and segments[seg, 0] + segments[seg, 1] <= d0:
                seg += 1
            whole = False  # most of the block is read: one unshuffle of all of it beats one per row
            if not direct:
                covered = 0
                j = seg
                while j < nseg and segments[j, 0] < d1:
                    covered += max(0, min(segments[j, 0] + segments[j, 1], d1) - max(segments[j, 0], d0))
                    j += 1
                whole = 2 * covered >= bsize
                if whole:
                    _unshuffle_block(tmp, tmp2, block, 0, bsize, typesize, block_mode)
            j = seg
            while j < nseg and segments[j, 0] < d1:
                lo = max(segments[j, 0], d0)
                hi = min(segments[j, 0] + segments[j, 1], d1)
                if lo < hi:
                    o = segments[j, 2] + lo - segments[j, 0]
                    if direct:
                        _memcpy(out_addr + o, dst_addr + lo, hi - lo)
                    else:
                        if not whole:
                            _unshuffle_range(tmp, tmp2, block, bsize, typesize, block_mode, lo - d0, hi - d0)
                        _memcpy(out_addr + o, block_addr + lo - d0, hi - lo)
                j += 1
        elif not direct:
            _unshuffle_block(tmp, tmp2, dst, d0, bsize, typesize, block_mode)
    return _BLOSC_OK


@njit(nogil=True, cache=True, inline="always")
def _first_row(index, extents, q, outer):
    """Start the odometer over piece ``q``'s outer axes: ``(bytes per row, rows)``; no rows when the piece is empty."""
    run = extents[q, outer]
    total = 1
    for d in range(outer):
        total *= extents[q, d]
        index[d] = 0
    if run <= 0:
        total = 0
    return run, max(total, 0)


@njit(nogil=True, cache=True, inline="always")
def _row_offsets(index, outer, so, do, src_strides, dst_strides):
    """The odometer's row: ``so`` and ``do`` (the piece's first row, in the chunk and in ``out``) stepped along."""
    for d in range(outer):
        so += index[d] * src_strides[d]
        do += index[d] * dst_strides[d]
    return so, do


@njit(nogil=True, cache=True, inline="always")
def _next_row(index, extents, q, outer):
    """Advance the odometer ``index`` to piece ``q``'s next row (the last outer axis fastest)."""
    d = outer - 1
    while d >= 0:
        index[d] += 1
        if index[d] < extents[q, d]:
            return
        index[d] = 0
        d -= 1


@njit(nogil=True, cache=True)
def _mark_blocks(needed, blocksize, q0, q1, src_offsets, extents, src_strides, index):
    """Mark in ``needed`` every block a byte of pieces ``q0:q1`` lies in (the rows the piece copies read)."""
    needed[:] = False
    outer = extents.shape[1] - 1
    for q in range(q0, q1):
        run, total = _first_row(index, extents, q, outer)
        for _ in range(total):
            so = src_offsets[q]
            for d in range(outer):
                so += index[d] * src_strides[d]
            b1 = min((so + run - 1) // blocksize, needed.size - 1)
            for b in range(so // blocksize, b1 + 1):
                needed[b] = True
            _next_row(index, extents, q, outer)


#: the shortest piece row (bytes) unshuffled straight into the batch; a chunk with shorter rows is
#: unshuffled whole and copied, as a row of a few bytes would redo the group transpose of its neighbours
FUSE_MIN_ROW = 64


@njit(nogil=True, cache=True)
def _count_segments(q0, q1, extents, index):
    """How many rows pieces ``q0:q1`` copy, or 0 when one is shorter than ``FUSE_MIN_ROW``.

    The table costs 24 bytes a row, against at least ``FUSE_MIN_ROW`` bytes each row writes
    into the batch: a fraction of the output, never more.
    """
    outer = extents.shape[1] - 1
    count = 0
    for q in range(q0, q1):
        run, total = _first_row(index, extents, q, outer)
        if total and run < FUSE_MIN_ROW:
            return 0
        count += total
    return count


@njit(nogil=True, cache=True)
def _fill_segments(segments, q0, q1, src_offsets, dst_offsets, extents, src_strides, dst_strides, index):
    """The rows of pieces ``q0:q1`` as ``(chunk offset, bytes, out offset)``, sorted by chunk offset; returns how many.

    A row that continues the one before it in the chunk and in ``out`` extends it.
    """
    outer = extents.shape[1] - 1
    r = 0
    ordered = True
    last = -1
    for q in range(q0, q1):
        run, total = _first_row(index, extents, q, outer)
        for _ in range(total):
            so, do = _row_offsets(index, outer, src_offsets[q], dst_offsets[q], src_strides, dst_strides)
            if r and so == segments[r - 1, 0] + segments[r - 1, 1] and do == segments[r - 1, 2] + segments[r - 1, 1]:
                segments[r - 1, 1] += run  # the row goes on where the last one ended, in the chunk and in ``out``
            else:
                segments[r, 0] = so
                segments[r, 1] = run
                segments[r, 2] = do
                ordered = ordered and so >= last
                last = so
                r += 1
            _next_row(index, extents, q, outer)
    if not ordered:
        segments[:r, :] = segments[:r][np.argsort(segments[:r, 0], kind="mergesort")]
    return r


@njit(nogil=True, cache=True)
def _segment_blocks(needed, blocksize, segments):
    """Mark in ``needed`` every block a byte of ``segments`` lies in."""
    needed[:] = False
    for j in range(segments.shape[0]):
        b1 = min((segments[j, 0] + segments[j, 1] - 1) // blocksize, needed.size - 1)
        for b in range(segments[j, 0] // blocksize, b1 + 1):
            needed[b] = True


@njit(nogil=True, cache=True)
def run_chunks(first, stop, order, kinds, path_index, path_offsets, paths, starts, lengths, codec, crc,
               partial, inbuf, scratch, out, piece_offsets, src_offsets, dst_offsets, extents,
               src_strides, dst_strides, functions, zstd_ctx, open_flags, map_min, page, status):
    """Chunks ``order[first:stop]``: read, check, decode, copy their pieces into ``out``; ``status`` says how each went.

    ``order`` lists the chunks file by file and by offset within a file, so a shard
    is opened once per run of its inner chunks and read front to back. With ``partial``,
    only the Blosc blocks that hold a byte of a chunk's pieces are decoded.

    A file read of at least ``map_min`` bytes (0: none) is mapped instead of copied: the
    open file is mapped once (``mmap`` of its size at that moment, nothing read yet), and
    each chunk's page-aligned range is read in with ``madvise(MADV_POPULATE_READ)``, which
    reads every page or fails with an error code, so an I/O error or a range past the end
    never becomes a SIGBUS in the decoder: a failed map or populate, or a range past the
    mapped size, falls back to ``pread``. ``page`` is the page size.
    """
    f_open, f_pread, f_lseek, f_close = functions[0], functions[1], functions[2], functions[3]
    f_crc, f_zstd, f_blosc = functions[4], functions[5], functions[6]
    f_mmap, f_munmap, f_madvise = functions[7], functions[8], functions[9]
    in_addr = inbuf.ctypes.data
    in_size = inbuf.size
    chunk_bytes = scratch.size
    scratch_addr = scratch.ctypes.data
    out_addr = out.ctypes.data
    paths_addr = paths.ctypes.data
    outer = extents.shape[1] - 1
    index = np.zeros(max(outer, 1), dtype=np.int64)
    tmp = np.empty(0, dtype=np.uint8)  # one Blosc block as stored, and the bit planes of one (grown to fit)
    tmp2 = np.empty(0, dtype=np.uint8)
    block = np.empty(0, dtype=np.uint8)  # one unshuffled block, rows copied out of it into ``out``
    needed = np.zeros(0, dtype=np.bool_)
    every = np.zeros(0, dtype=np.bool_)
    segments = np.zeros((0, 3), dtype=np.int64)  # one chunk's piece rows (see blosc_blocks), grown to fit
    fd = -1
    fd_path = -1
    fmap = 0  # the mapping of the open file's first fmap_len bytes (0: none), unmapped when another opens
    fmap_len = 0
    fmap_tried = False
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
                if fmap:
                    _munmap(f_munmap, fmap, fmap_len)
                    fmap = 0
                fmap_tried = False
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
            src = 0
            if 0 < map_min <= n:
                if not fmap_tried:
                    fmap_tried = True
                    size = n if kind == _WHOLE_FILE else _lseek(f_lseek, fd, 0, 2)
                    if size > 0:
                        addr = _mmap(f_mmap, 0, size, PROT_READ, MAP_SHARED, fd, 0)
                        if addr != -1:  # MAP_FAILED
                            fmap = addr
                            fmap_len = size
                if fmap and offset + n <= fmap_len:
                    lead = offset % page  # madvise starts on a page
                    if _madvise(f_madvise, fmap + offset - lead, n + lead, MADV_POPULATE_READ) == 0:
                        src = fmap + offset
            if src == 0:
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
            if body < HEADER_BYTES:
                status[u] = _CORRUPT
                continue
            nbytes = _load_u32(src + 4)
            blocksize = _load_u32(src + 8)
            cbytes = _load_u32(src + 12)
            if cbytes != body or nbytes != chunk_bytes:
                status[u] = _CORRUPT
                continue
            if 0 < blocksize <= chunk_bytes and tmp.size < blocksize:
                tmp = np.empty(blocksize, dtype=np.uint8)
                tmp2 = np.empty(blocksize, dtype=np.uint8)
                block = np.empty(blocksize, dtype=np.uint8)
            nseg = 0
            if out.size and _shuffle_mode(_load_u8(src + 2), _load_u8(src + 3)) != MODE_NONE:
                nseg = _count_segments(piece_offsets[u], piece_offsets[u + 1], extents, index)
                if nseg:
                    if segments.shape[0] < nseg:
                        segments = np.empty((nseg, 3), dtype=np.int64)
                    nseg = _fill_segments(segments[:nseg], piece_offsets[u], piece_offsets[u + 1], src_offsets,
                                          dst_offsets, extents, src_strides, dst_strides, index)
            want = every
            if partial and 0 < blocksize < nbytes:
                nblocks = (nbytes + blocksize - 1) // blocksize
                if needed.size < nblocks:
                    needed = np.zeros(nblocks, dtype=np.bool_)
                want = needed[:nblocks]
                if nseg:
                    _segment_blocks(want, blocksize, segments[:nseg])
                else:
                    _mark_blocks(want, blocksize, piece_offsets[u], piece_offsets[u + 1], src_offsets, extents,
                                 src_strides, index)
                if want.all():
                    want = every
            got = blosc_blocks(src, body, scratch, want, tmp, tmp2, f_zstd, zstd_ctx, segments[:nseg], out, block)
            if got == _BLOSC_OK and nseg:
                status[u] = _DONE  # the pieces are in ``out`` already
                continue
            if got == _BLOSC_OTHER:
                if want.size:  # read in part, and c-blosc decodes whole chunks only: the Python path's
                    status[u] = _PARTIAL
                    continue
                if _blosc(f_blosc, src, scratch_addr, chunk_bytes, 1) != chunk_bytes:
                    status[u] = _CORRUPT
                    continue
            elif got != _BLOSC_OK:
                status[u] = _CORRUPT
                continue
        else:
            if _zstd(f_zstd, zstd_ctx, scratch_addr, chunk_bytes, src, body) != chunk_bytes:
                status[u] = _CORRUPT  # a zstd error code is a huge size_t: never equal
                continue
        # ---- pieces: the outer axes walked like an odometer, the last axis one memcpy (an empty
        # ``out`` decodes only: how the host benchmark times the codecs alone)
        for q in range(piece_offsets[u], piece_offsets[u + 1] if out.size else piece_offsets[u]):
            run, total = _first_row(index, extents, q, outer)
            s0 = chunk + src_offsets[q]
            d0 = out_addr + dst_offsets[q]
            for _ in range(total):
                so, do = _row_offsets(index, outer, s0, d0, src_strides, dst_strides)
                _memcpy(do, so, run)
                _next_row(index, extents, q, outer)
        status[u] = _DONE
    if fmap:
        _munmap(f_munmap, fmap, fmap_len)
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
           np.zeros(10, dtype=np.int64), 0, 0, 0, 4096, np.zeros(1, dtype=np.int8))
