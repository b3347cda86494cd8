// Batched Blosc1 unshuffle: every block of a batch of chunks in one launch.
//
// Block b of the batch is block_size[b] bytes. Its stored (shuffled) form is the
// concatenation of block_nsplits[b] streams of block_size[b] / nsplits bytes each,
// stream s at arena + stream_offset[block_stream_start[b] + s] (a decoded nvCOMP
// output, or a raw stream read straight from the uploaded chunks). Output byte p of
// the block goes to out[block_out_offset[b] + p] and is taken from stored byte q:
//
//   mode 0 (none)        q = p
//   mode 1 (byte shuffle, c-blosc unshuffle): n = size / typesize; for p < n*typesize
//                        q = (p % typesize) * n + p / typesize; tail bytes copied
//   mode 2 (bit shuffle, c-blosc 1.x bitunshuffle): if n % 8 == 0, bit k of output
//                        byte p = i*typesize + j is bit (i % 8) of stored byte
//                        (j*8 + k) * (n/8) + i/8, tail bytes copied; if n % 8 != 0 the
//                        whole block is copied (c-blosc 1.x leaves it unshuffled)
//
// Work is cut into tiles of tile_bytes output bytes; block_tile_start (n_blocks + 1)
// is the prefix sum of tiles per block and one CUDA block handles one tile, so a batch
// of many small and a few huge blocks balances across the GPU. NumPy mirror:
// gpuzarr.engines.gpu.mirrors.unshuffle_blocks.

#define GZ_MODE_NONE 0
#define GZ_MODE_SHUFFLE 1
#define GZ_MODE_BITSHUFFLE 2

#include "common.cuh"

__device__ __forceinline__ unsigned char gz_stored_byte(const unsigned char* __restrict__ arena,
                                                        const long long* __restrict__ stream_offset,
                                                        long long first, long long nsplits,
                                                        long long neblock, long long q) {
    long long s = 0;
    if (nsplits > 1) {
        s = q / neblock;
        if (s > nsplits - 1) s = nsplits - 1;
    }
    return arena[stream_offset[first + s] + (q - s * neblock)];
}

extern "C" __global__ void blosc_unshuffle_blocks(
    const unsigned char* __restrict__ arena,
    const long long* __restrict__ stream_offset,
    const long long* __restrict__ block_stream_start,
    const long long* __restrict__ block_nsplits,
    const long long* __restrict__ block_size,
    const long long* __restrict__ block_typesize,
    const long long* __restrict__ block_mode,
    const long long* __restrict__ block_out_offset,
    const long long* __restrict__ block_tile_start,
    const long long n_blocks,
    const long long tile_bytes,
    unsigned char* __restrict__ out)
{
    __shared__ long long s_block;
    const long long tile = (long long)blockIdx.x;
    if (threadIdx.x == 0) s_block = gz_find_row(block_tile_start, n_blocks, tile);
    __syncthreads();
    const long long b = s_block;

    const long long size = block_size[b];
    long long ts = block_typesize[b];
    if (ts < 1) ts = 1;
    const long long mode = block_mode[b];
    long long nsplits = block_nsplits[b];
    if (nsplits < 1) nsplits = 1;
    long long neblock = size / nsplits;
    if (neblock < 1) neblock = 1;
    const long long first = block_stream_start[b];
    const long long n = size / ts;
    const long long body = n * ts;
    const bool bit_ok = (n % 8) == 0;
    const long long n8 = n / 8;
    unsigned char* __restrict__ dst = out + block_out_offset[b];

    const long long lo = (tile - block_tile_start[b]) * tile_bytes;
    long long hi = lo + tile_bytes;
    if (hi > size) hi = size;

    for (long long p = lo + threadIdx.x; p < hi; p += blockDim.x) {
        unsigned char value;
        if (mode == GZ_MODE_NONE || p >= body || (mode == GZ_MODE_BITSHUFFLE && !bit_ok)) {
            value = gz_stored_byte(arena, stream_offset, first, nsplits, neblock, p);
        } else {
            const long long i = p / ts;
            const long long j = p - i * ts;
            if (mode == GZ_MODE_SHUFFLE) {
                value = gz_stored_byte(arena, stream_offset, first, nsplits, neblock, j * n + i);
            } else {
                const unsigned int shift = (unsigned int)(i & 7);
                const long long col = i >> 3;
                unsigned int acc = 0;
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const long long q = (j * 8 + k) * n8 + col;
                    const unsigned int byte = gz_stored_byte(arena, stream_offset, first, nsplits, neblock, q);
                    acc |= ((byte >> shift) & 1u) << k;
                }
                value = (unsigned char)acc;
            }
        }
        dst[p] = value;
    }
}
