// Batched assembly kernels: build a whole output batch from decoded chunks in one launch.
//
// copy_segments         dst[dst_offset[k] + e] = src[src_offset[k] + e] for every segment k
//                       (repacks nvCOMP inputs to aligned offsets in one launch).
// gather_pieces_copy_N  one launch for every (region, chunk) piece of a BatchPlan: each
//                       element of a piece is read from its decoded chunk (element strides
//                       src_strides, so a zarr `transpose` codec is just other strides;
//                       optional byte swap for a big-endian `bytes` codec) and written to
//                       its place in the batch (out_strides: squeezed axes have stride 0,
//                       a CHW<->HWC layout is a permutation of strides). N = itemsize.
// gather_pieces_convert the same, but each element is converted to double, optionally
//                       normalised per channel, (x - mean[c]) * inv_std[c], and stored as
//                       float16/float32/float64 (one rounding, like NumPy's astype).
//
// A chunk with chunk_offset < 0 was never written: its pieces get the fill value.
// Work is tiled: piece_tile_start (n_pieces + 1) is the prefix sum of tiles of
// tile_elems elements per piece; one CUDA block handles one tile.
// NumPy mirrors: gpuzarr.engines.gpu.mirrors.copy_segments / gather_pieces.

#define GZ_MAX_NDIM 16

#include "common.cuh"

extern "C" __global__ void copy_segments(
    const unsigned char* __restrict__ src,
    const long long* __restrict__ src_offset,
    unsigned char* __restrict__ dst,
    const long long* __restrict__ dst_offset,
    const long long* __restrict__ size,
    const long long* __restrict__ seg_tile_start,
    const long long n_segments,
    const long long tile_bytes)
{
    __shared__ long long s_seg;
    const long long tile = (long long)blockIdx.x;
    if (threadIdx.x == 0) s_seg = gz_find_row(seg_tile_start, n_segments, tile);
    __syncthreads();
    const long long k = s_seg;
    const long long lo = (tile - seg_tile_start[k]) * tile_bytes;
    long long hi = lo + tile_bytes;
    if (hi > size[k]) hi = size[k];
    const unsigned char* __restrict__ s = src + src_offset[k];
    unsigned char* __restrict__ d = dst + dst_offset[k];
    for (long long e = lo + threadIdx.x; e < hi; e += blockDim.x) d[e] = s[e];
}

struct GzPieceGeometry {
    long long src_base;   // element offset of the piece's first element in its chunk
    long long dst_base;   // element offset of the piece's first element in the batch
    long long chunk_byte; // byte offset of the chunk, or < 0 for a missing chunk
    long long channel0;   // channel index of the piece's first element along the channel axis
};

// Per-tile setup shared by both gather kernels: find the piece, stage its extent and
// strides in shared memory, and compute its base offsets.
__device__ __forceinline__ void gz_piece_setup(
    const long long* __restrict__ chunk_offset,
    const long long* __restrict__ piece_chunk,
    const long long* __restrict__ piece_region,
    const long long* __restrict__ piece_src_start,
    const long long* __restrict__ piece_dst_start,
    const long long* __restrict__ piece_extent,
    const long long* __restrict__ piece_tile_start,
    long long n_pieces, int ndim,
    const long long* __restrict__ src_strides,
    const long long* __restrict__ out_strides,
    long long sample_size, int channel_axis,
    long long* s_piece, long long* s_extent, long long* s_src_stride, long long* s_out_stride,
    GzPieceGeometry* s_geo)
{
    const long long tile = (long long)blockIdx.x;
    if (threadIdx.x == 0) {
        const long long p = gz_find_row(piece_tile_start, n_pieces, tile);
        *s_piece = p;
        long long src_base = 0, dst_base = 0;
        for (int d = 0; d < ndim; ++d) {
            src_base += piece_src_start[p * ndim + d] * src_strides[d];
            dst_base += piece_dst_start[p * ndim + d] * out_strides[d];
            s_extent[d] = piece_extent[p * ndim + d];
            s_src_stride[d] = src_strides[d];
            s_out_stride[d] = out_strides[d];
        }
        s_geo->src_base = src_base;
        s_geo->dst_base = piece_region[p] * sample_size + dst_base;
        s_geo->chunk_byte = chunk_offset[piece_chunk[p]];
        s_geo->channel0 = channel_axis >= 0 ? piece_dst_start[p * ndim + channel_axis] : 0;
    }
    __syncthreads();
}

// Element e (C order over the piece extent) → element offsets in chunk and batch.
__device__ __forceinline__ void gz_locate(long long e, int ndim, const long long* s_extent,
                                          const long long* s_src_stride, const long long* s_out_stride,
                                          int channel_axis, long long* src_el, long long* dst_el,
                                          long long* channel) {
    long long s = 0, o = 0, c = 0;
    for (int d = ndim - 1; d >= 0; --d) {
        const long long ext = s_extent[d];
        const long long x = e % ext;
        e /= ext;
        s += x * s_src_stride[d];
        o += x * s_out_stride[d];
        if (d == channel_axis) c = x;
    }
    *src_el = s;
    *dst_el = o;
    *channel = c;
}

// Elements [lo, hi) of a piece (of extent s_extent) that tile `tile` of that piece covers.
__device__ __forceinline__ void gz_tile_elements(const long long* s_extent, int ndim, long long tile,
                                                 long long tile_elems, long long* lo, long long* hi) {
    long long count = 1;
    for (int d = 0; d < ndim; ++d) count *= s_extent[d];
    *lo = tile * tile_elems;
    *hi = *lo + tile_elems < count ? *lo + tile_elems : count;
}

template <int ITEMSIZE>
__device__ __forceinline__ void gather_copy_impl(
    const unsigned char* __restrict__ chunks, const long long* __restrict__ chunk_offset,
    const long long* __restrict__ piece_chunk, const long long* __restrict__ piece_region,
    const long long* __restrict__ piece_src_start, const long long* __restrict__ piece_dst_start,
    const long long* __restrict__ piece_extent, const long long* __restrict__ piece_tile_start,
    long long n_pieces, int ndim, const long long* __restrict__ src_strides,
    const long long* __restrict__ out_strides, long long sample_size, long long tile_elems,
    int swap_bytes, const unsigned char* __restrict__ fill, unsigned char* __restrict__ out)
{
    __shared__ long long s_piece, s_extent[GZ_MAX_NDIM], s_src_stride[GZ_MAX_NDIM], s_out_stride[GZ_MAX_NDIM];
    __shared__ GzPieceGeometry s_geo;
    gz_piece_setup(chunk_offset, piece_chunk, piece_region, piece_src_start, piece_dst_start, piece_extent,
                   piece_tile_start, n_pieces, ndim, src_strides, out_strides, sample_size, -1,
                   &s_piece, s_extent, s_src_stride, s_out_stride, &s_geo);
    long long lo, hi;
    gz_tile_elements(s_extent, ndim, (long long)blockIdx.x - piece_tile_start[s_piece], tile_elems, &lo, &hi);
    const bool missing = s_geo.chunk_byte < 0;
    for (long long e = lo + threadIdx.x; e < hi; e += blockDim.x) {
        long long src_el, dst_el, channel;
        gz_locate(e, ndim, s_extent, s_src_stride, s_out_stride, -1, &src_el, &dst_el, &channel);
        unsigned char* d = out + (s_geo.dst_base + dst_el) * ITEMSIZE;
        if (missing) {
#pragma unroll
            for (int k = 0; k < ITEMSIZE; ++k) d[k] = fill[k];
        } else {
            const unsigned char* s = chunks + s_geo.chunk_byte + (s_geo.src_base + src_el) * ITEMSIZE;
            if (swap_bytes) {
#pragma unroll
                for (int k = 0; k < ITEMSIZE; ++k) d[k] = s[ITEMSIZE - 1 - k];
            } else {
#pragma unroll
                for (int k = 0; k < ITEMSIZE; ++k) d[k] = s[k];
            }
        }
    }
}

#define GZ_GATHER_COPY(N)                                                                              \
    extern "C" __global__ void gather_pieces_copy_##N(                                                 \
        const unsigned char* __restrict__ chunks, const long long* __restrict__ chunk_offset,          \
        const long long* __restrict__ piece_chunk, const long long* __restrict__ piece_region,         \
        const long long* __restrict__ piece_src_start, const long long* __restrict__ piece_dst_start,  \
        const long long* __restrict__ piece_extent, const long long* __restrict__ piece_tile_start,    \
        const long long n_pieces, const int ndim, const long long* __restrict__ src_strides,           \
        const long long* __restrict__ out_strides, const long long sample_size,                        \
        const long long tile_elems, const int swap_bytes, const unsigned char* __restrict__ fill,      \
        unsigned char* __restrict__ out) {                                                             \
        gather_copy_impl<N>(chunks, chunk_offset, piece_chunk, piece_region, piece_src_start,          \
                            piece_dst_start, piece_extent, piece_tile_start, n_pieces, ndim,           \
                            src_strides, out_strides, sample_size, tile_elems, swap_bytes, fill, out); \
    }

GZ_GATHER_COPY(1)
GZ_GATHER_COPY(2)
GZ_GATHER_COPY(4)
GZ_GATHER_COPY(8)
GZ_GATHER_COPY(16)

// dtype codes shared with gpuzarr.engines.gpu.kernels.DTYPE_CODES
#define GZ_BOOL 0
#define GZ_U1 1
#define GZ_I1 2
#define GZ_U2 3
#define GZ_I2 4
#define GZ_U4 5
#define GZ_I4 6
#define GZ_U8 7
#define GZ_I8 8
#define GZ_F2 9
#define GZ_F4 10
#define GZ_F8 11

__device__ __forceinline__ double gz_half_to_double(unsigned int h) {
    const unsigned int sign = (h & 0x8000u) << 16;
    const unsigned int exp = (h >> 10) & 0x1fu;
    const unsigned int mant = h & 0x3ffu;
    if (exp == 0) {
        const double v = (double)mant * 5.9604644775390625e-8;  // 2^-24
        return sign ? -v : v;
    }
    if (exp == 31) return (double)__uint_as_float(sign | 0x7f800000u | (mant << 13));
    return (double)__uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// double → IEEE half bits, round to nearest even (NumPy's float64 → float16).
__device__ __forceinline__ unsigned short gz_double_to_half(double v) {
    const unsigned long long x = (unsigned long long)__double_as_longlong(v);
    const unsigned int sign = (unsigned int)((x >> 48) & 0x8000ull);
    const int exp = (int)((x >> 52) & 0x7ffull);
    const unsigned long long mant = x & 0xFFFFFFFFFFFFFull;
    if (exp == 0x7ff) return (unsigned short)(sign | 0x7c00u | (mant ? 0x200u : 0u));
    const int e = exp - 1023 + 15;
    if (e >= 31) return (unsigned short)(sign | 0x7c00u);
    if (e < -10) return (unsigned short)sign;
    unsigned long long m;
    int shift;
    unsigned int base;
    if (e <= 0) {
        m = mant | (1ull << 52);
        shift = 43 - e;
        base = 0;
    } else {
        m = mant;
        shift = 42;
        base = (unsigned int)e << 10;
    }
    unsigned long long h = m >> shift;
    const unsigned long long rem = m & ((1ull << shift) - 1ull);
    const unsigned long long halfway = 1ull << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1ull))) ++h;
    return (unsigned short)(sign | (base + (unsigned int)h));
}

__device__ __forceinline__ double gz_load_as_double(const unsigned char* s, int code, int itemsize, int swap) {
    unsigned long long bits = 0;
    for (int k = 0; k < itemsize; ++k) {
        const unsigned long long byte = s[swap ? itemsize - 1 - k : k];
        bits |= byte << (8 * k);
    }
    switch (code) {
        case GZ_BOOL: return bits ? 1.0 : 0.0;
        case GZ_U1: return (double)(unsigned char)bits;
        case GZ_I1: return (double)(signed char)bits;
        case GZ_U2: return (double)(unsigned short)bits;
        case GZ_I2: return (double)(short)bits;
        case GZ_U4: return (double)(unsigned int)bits;
        case GZ_I4: return (double)(int)bits;
        case GZ_U8: return (double)bits;
        case GZ_I8: return (double)(long long)bits;
        case GZ_F2: return gz_half_to_double((unsigned int)bits);
        case GZ_F4: return (double)__uint_as_float((unsigned int)bits);
        default: return __longlong_as_double((long long)bits);
    }
}

extern "C" __global__ void gather_pieces_convert(
    const unsigned char* __restrict__ chunks, const long long* __restrict__ chunk_offset,
    const long long* __restrict__ piece_chunk, const long long* __restrict__ piece_region,
    const long long* __restrict__ piece_src_start, const long long* __restrict__ piece_dst_start,
    const long long* __restrict__ piece_extent, const long long* __restrict__ piece_tile_start,
    const long long n_pieces, const int ndim, const long long* __restrict__ src_strides,
    const long long* __restrict__ out_strides, const long long sample_size, const long long tile_elems,
    const int swap_bytes, const int src_code, const int src_itemsize, const double fill_value,
    const int dst_code, const int normalise, const int channel_axis,
    const double* __restrict__ mean, const double* __restrict__ inv_std,
    unsigned char* __restrict__ out)
{
    __shared__ long long s_piece, s_extent[GZ_MAX_NDIM], s_src_stride[GZ_MAX_NDIM], s_out_stride[GZ_MAX_NDIM];
    __shared__ GzPieceGeometry s_geo;
    gz_piece_setup(chunk_offset, piece_chunk, piece_region, piece_src_start, piece_dst_start, piece_extent,
                   piece_tile_start, n_pieces, ndim, src_strides, out_strides, sample_size, channel_axis,
                   &s_piece, s_extent, s_src_stride, s_out_stride, &s_geo);
    long long lo, hi;
    gz_tile_elements(s_extent, ndim, (long long)blockIdx.x - piece_tile_start[s_piece], tile_elems, &lo, &hi);
    const bool missing = s_geo.chunk_byte < 0;
    for (long long e = lo + threadIdx.x; e < hi; e += blockDim.x) {
        long long src_el, dst_el, channel;
        gz_locate(e, ndim, s_extent, s_src_stride, s_out_stride, channel_axis, &src_el, &dst_el, &channel);
        double x = missing ? fill_value
                           : gz_load_as_double(chunks + s_geo.chunk_byte + (s_geo.src_base + src_el) * src_itemsize,
                                               src_code, src_itemsize, swap_bytes);
        if (normalise) {
            const long long c = channel_axis >= 0 ? s_geo.channel0 + channel : 0;
            x = (x - mean[c]) * inv_std[c];
        }
        const long long at = s_geo.dst_base + dst_el;
        if (dst_code == GZ_F2) {
            reinterpret_cast<unsigned short*>(out)[at] = gz_double_to_half(x);
        } else if (dst_code == GZ_F4) {
            reinterpret_cast<float*>(out)[at] = (float)x;
        } else {
            reinterpret_cast<double*>(out)[at] = x;
        }
    }
}
