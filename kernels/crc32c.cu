// Batched CRC-32C (Castagnoli, zarr's `crc32c` codec) of many buffers in two launches.
//
// crc32c_segments          one thread per segment of at most `segment` bytes: the standard
//                          reflected CRC-32C (init and final xor 0xFFFFFFFF), byte at a time
//                          from a 256-entry table built in shared memory.
// crc32c_combine_segments  one CUDA block per buffer folds its segment CRCs left to right:
//                          crc(A + B) = crc(A) * x^(8 |B|) mod P  xor  crc(B)   (zlib's
//                          crc32_combine, with the Castagnoli polynomial).
// NumPy mirror: gpuzarr.engines.gpu.mirrors.crc32c_batch.

#define GZ_CRC32C_POLY 0x82F63B78u

extern "C" __global__ void crc32c_segments(
    const unsigned char* __restrict__ data,
    const long long* __restrict__ seg_offset,
    const long long* __restrict__ seg_length,
    const long long n_segments,
    unsigned int* __restrict__ seg_crc)
{
    __shared__ unsigned int table[256];
    for (int t = threadIdx.x; t < 256; t += blockDim.x) {
        unsigned int c = (unsigned int)t;
        for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ GZ_CRC32C_POLY : (c >> 1);
        table[t] = c;
    }
    __syncthreads();
    const long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= n_segments) return;
    const unsigned char* __restrict__ p = data + seg_offset[s];
    const long long n = seg_length[s];
    unsigned int crc = 0xFFFFFFFFu;
    for (long long k = 0; k < n; ++k) crc = table[(crc ^ p[k]) & 0xFFu] ^ (crc >> 8);
    seg_crc[s] = crc ^ 0xFFFFFFFFu;
}

__device__ __forceinline__ unsigned int gz_multmodp(unsigned int a, unsigned int b) {
    unsigned int m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1u)) == 0) break;
        }
        m >>= 1;
        b = (b & 1u) ? (b >> 1) ^ GZ_CRC32C_POLY : (b >> 1);
    }
    return p;
}

// x^(8 n) mod P: appending n zero bytes.
__device__ __forceinline__ unsigned int gz_x8n(long long n) {
    unsigned int p = 1u << 31;
    unsigned int sq = 1u << 30;
    for (int k = 0; k < 3; ++k) sq = gz_multmodp(sq, sq);
    while (n) {
        if (n & 1) p = gz_multmodp(sq, p);
        n >>= 1;
        sq = gz_multmodp(sq, sq);
    }
    return p;
}

extern "C" __global__ void crc32c_combine_segments(
    const unsigned int* __restrict__ seg_crc,
    const long long* __restrict__ seg_length,
    const long long* __restrict__ buffer_seg_start,
    const long long n_buffers,
    unsigned int* __restrict__ crc_out)
{
    __shared__ unsigned int part_crc[256];
    __shared__ long long part_len[256];
    const long long u = blockIdx.x;
    if (u >= n_buffers) return;
    const long long first = buffer_seg_start[u];
    const long long count = buffer_seg_start[u + 1] - first;
    const int threads = blockDim.x < 256 ? blockDim.x : 256;
    const long long per = (count + threads - 1) / threads;
    unsigned int acc = 0;
    long long len = 0;
    if (threadIdx.x < threads) {
        const long long lo = first + threadIdx.x * per;
        long long hi = lo + per;
        if (hi > first + count) hi = first + count;
        for (long long s = lo; s < hi; ++s) {
            const long long n = seg_length[s];
            acc = gz_multmodp(gz_x8n(n), acc) ^ seg_crc[s];
            len += n;
        }
        part_crc[threadIdx.x] = acc;
        part_len[threadIdx.x] = len;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int total = 0;
        for (int t = 0; t < threads; ++t) {
            if (part_len[t] == 0) continue;
            total = gz_multmodp(gz_x8n(part_len[t]), total) ^ part_crc[t];
        }
        crc_out[u] = total;
    }
}
