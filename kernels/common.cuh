// Device helpers shared by the kernels in this directory (each .cu includes this file;
// gpuzarr.engines.gpu.kernels.kernel_source inlines it for NVRTC, nvcc finds it beside the source).

// Last row r with row_tile_start[r] <= tile: maps a flat tile index of a launch onto the
// row (block, segment or piece) it belongs to; rows without tiles are skipped.
__device__ __forceinline__ long long gz_find_row(const long long* __restrict__ row_tile_start,
                                                 long long n_rows, long long tile) {
    long long lo = 0, hi = n_rows - 1;
    while (lo < hi) {
        long long mid = (lo + hi + 1) >> 1;
        if (row_tile_start[mid] <= tile) lo = mid; else hi = mid - 1;
    }
    return lo;
}
