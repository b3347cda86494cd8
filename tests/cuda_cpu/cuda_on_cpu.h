// CUDA on the CPU: compile the kernels of kernels/*.cu UNCHANGED with the host C++ compiler and
// run them with CUDA's execution model (see tests/cuda_cpu/__init__.py, which builds and loads them).
//
// What this header maps:
//   __global__ / __device__ / __forceinline__ / __host__    plain (inline) C++ functions
//   threadIdx / blockIdx / blockDim / gridDim              per-thread values set by the launcher
//   __shared__                                              block-shared storage: static variables
//                                                          in one linker section, filled with the
//                                                          byte 0xA5 before every block (on a GPU
//                                                          shared memory starts undefined)
//   __syncthreads()                                         a barrier over the block's threads
//   __uint_as_float & co., __ldg, atomicAdd                 bit casts, plain load, sequential add
//
// Two ways to run a block's threads, both with blocks in turn:
//   fibers (default)  every CUDA thread is a ucontext fiber on one OS thread; they run one after
//                     another up to the next __syncthreads, in an order chosen by the schedule
//                     (forward, reverse or shuffled per phase), so a missing barrier or a read
//                     of shared memory another thread has not written yet shows up
//                     deterministically. A block in which some threads reach a barrier that
//                     others never reach (they returned) is reported as an error.
//   threads           every CUDA thread is an OS thread, __syncthreads is a pthread barrier
//                     (slow with 2 cores; used by a smaller test to show the same results).
// Blocks run forward, reversed or shuffled (the schedule), so no kernel may depend on block order.
// A memory fault (SIGSEGV/SIGBUS) inside a kernel run with fibers ends the launch with an error
// naming the block and thread instead of killing the process (a GPU reports an illegal address).

#pragma once

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <ucontext.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static __attribute__((section("gzcpu_shared"), aligned(16)))

namespace gzcpu {

thread_local uint3 tls_thread_idx;
thread_local uint3 tls_block_idx;
thread_local dim3 tls_block_dim;
thread_local dim3 tls_grid_dim;

}  // namespace gzcpu

#define threadIdx (::gzcpu::tls_thread_idx)
#define blockIdx (::gzcpu::tls_block_idx)
#define blockDim (::gzcpu::tls_block_dim)
#define gridDim (::gzcpu::tls_grid_dim)
#define warpSize 32

extern "C" char __start_gzcpu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_gzcpu_shared[] __attribute__((weak, visibility("hidden")));

namespace gzcpu {

constexpr unsigned char SHARED_POISON = 0xA5;
constexpr size_t FIBER_STACK = 64 * 1024;

enum class State { Ready, AtBarrier, Done };

struct Block;
thread_local Block* tls_block = nullptr;
thread_local int tls_fiber = -1;

// One launch's block being executed by fibers (mode 0) or OS threads (mode 1).
struct Block {
    int mode = 0;
    unsigned n_threads = 0;
    // fibers
    ucontext_t scheduler{};
    std::vector<ucontext_t> ctx;
    std::vector<State> state;
    char* stacks = nullptr;
    size_t stacks_bytes = 0;
    // threads
    pthread_barrier_t barrier{};
    std::vector<unsigned> sync_count;
    // the kernel invocation
    void (*thunk)(void*) = nullptr;
    void* thunk_arg = nullptr;
    std::string error;
    std::mutex error_lock;

    void fail(const std::string& what) {
        std::lock_guard<std::mutex> g(error_lock);
        if (error.empty()) error = what;
    }
};

inline void poison_shared() {
    char* lo = +__start_gzcpu_shared;
    char* hi = +__stop_gzcpu_shared;
    if (lo != nullptr && hi > lo) std::memset(lo, SHARED_POISON, size_t(hi - lo));
}

extern "C" size_t gzcpu_shared_bytes() {
    return size_t(+__stop_gzcpu_shared - +__start_gzcpu_shared);
}

inline void sync_threads() {
    Block* b = tls_block;
    if (b == nullptr) return;
    if (b->mode == 0) {
        const int me = tls_fiber;
        b->state[me] = State::AtBarrier;
        swapcontext(&b->ctx[me], &b->scheduler);
        // resumed by the scheduler after every thread of the block arrived; it restored our indices
    } else {
        b->sync_count[threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)] += 1;
        pthread_barrier_wait(&b->barrier);
    }
}

extern "C" inline void gzcpu_fiber_entry() {
    Block* b = tls_block;
    b->thunk(b->thunk_arg);
    b->state[tls_fiber] = State::Done;
    // returning resumes uc_link (the scheduler)
}

inline uint3 thread_of(unsigned t, const dim3& bd) {
    return uint3{t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
}

// Run one block with fibers; `order` of threads per phase from the schedule.
inline void run_block_fibers(Block& b, const dim3& bd, int schedule, std::mt19937_64& rng) {
    const unsigned n = b.n_threads;
    ucontext_t tmpl;
    getcontext(&tmpl);
    for (unsigned t = 0; t < n; ++t) {
        b.ctx[t] = tmpl;
        b.ctx[t].uc_stack.ss_sp = b.stacks + size_t(t) * FIBER_STACK;
        b.ctx[t].uc_stack.ss_size = FIBER_STACK;
        b.ctx[t].uc_link = &b.scheduler;
        makecontext(&b.ctx[t], gzcpu_fiber_entry, 0);
        b.state[t] = State::Ready;
    }
    std::vector<unsigned> order(n);
    for (unsigned t = 0; t < n; ++t) order[t] = t;
    if (schedule == 1) std::reverse(order.begin(), order.end());
    for (int phase = 0;; ++phase) {
        if (schedule == 2) std::shuffle(order.begin(), order.end(), rng);
        for (unsigned t : order) {
            if (b.state[t] == State::Done) continue;
            b.state[t] = State::Ready;
            tls_fiber = int(t);
            tls_thread_idx = thread_of(t, bd);
            swapcontext(&b.scheduler, &b.ctx[t]);
        }
        unsigned at_barrier = 0, done = 0;
        for (unsigned t = 0; t < n; ++t) {
            if (b.state[t] == State::AtBarrier) ++at_barrier;
            else if (b.state[t] == State::Done) ++done;
        }
        if (at_barrier == 0) break;
        if (done != 0) {
            // the stacks of the waiting fibers are abandoned (reinitialised by the next block)
            b.fail("__syncthreads() reached by " + std::to_string(at_barrier) + " threads of a block while " +
                   std::to_string(done) + " had returned (barrier in divergent code, phase " +
                   std::to_string(phase) + ")");
            return;
        }
    }
}

struct ThreadsShared {
    Block* b;
    const dim3* grid;
    const dim3* bd;
    const std::vector<uint3>* blocks;
};

inline void* os_thread_main(ThreadsShared* s, unsigned t) {
    Block& b = *s->b;
    tls_block = &b;
    tls_thread_idx = thread_of(t, *s->bd);
    tls_block_dim = *s->bd;
    tls_grid_dim = *s->grid;
    for (const uint3& blk : *s->blocks) {
        tls_block_idx = blk;
        if (pthread_barrier_wait(&b.barrier) == PTHREAD_BARRIER_SERIAL_THREAD) poison_shared();
        pthread_barrier_wait(&b.barrier);
        b.thunk(b.thunk_arg);
        const unsigned mine = b.sync_count[t];
        pthread_barrier_wait(&b.barrier);  // end of block: everyone's counts are final
        for (unsigned u = 0; u < b.n_threads; ++u) {
            if (b.sync_count[u] != mine) {
                b.fail("threads of a block called __syncthreads() a different number of times");
                break;
            }
        }
        pthread_barrier_wait(&b.barrier);
        b.sync_count[t] = 0;
    }
    return nullptr;
}

thread_local sigjmp_buf* tls_fault_jump = nullptr;
thread_local void* tls_fault_address = nullptr;
struct sigaction previous_segv, previous_bus;

inline void on_fault(int sig, siginfo_t* info, void* context) {
    if (tls_fault_jump != nullptr) {
        tls_fault_address = info->si_addr;
        siglongjmp(*tls_fault_jump, sig);
    }
    // not a fault of this library's kernels: pass it on to the handler installed before ours (another
    // kernel library's, Python's faulthandler, ...); with none, restore the default and fault again
    const struct sigaction& prev = sig == SIGSEGV ? previous_segv : previous_bus;
    if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction != nullptr) {
        prev.sa_sigaction(sig, info, context);
    } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler != nullptr) {
        prev.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);
    }
}

inline void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &previous_segv);
        sigaction(SIGBUS, &sa, &previous_bus);
    });
}

// cfg: grid x,y,z, block x,y,z, mode (0 fibers, 1 threads), schedule (0 forward, 1 reverse, 2 shuffled), seed
inline int launch(void (*thunk)(void*), void* arg, const long long* cfg, char* err, size_t err_len) {
    static std::mutex launch_lock;  // __shared__ is static storage: one launch at a time per library
    std::lock_guard<std::mutex> guard(launch_lock);
    const dim3 grid{unsigned(cfg[0]), unsigned(cfg[1]), unsigned(cfg[2])};
    const dim3 bd{unsigned(cfg[3]), unsigned(cfg[4]), unsigned(cfg[5])};
    const int mode = int(cfg[6]), schedule = int(cfg[7]);
    std::mt19937_64 rng(static_cast<unsigned long long>(cfg[8]));
    Block b;
    b.mode = mode;
    b.n_threads = bd.x * bd.y * bd.z;
    b.thunk = thunk;
    b.thunk_arg = arg;
    std::vector<uint3> blocks;
    blocks.reserve(size_t(grid.x) * grid.y * grid.z);
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) blocks.push_back(uint3{x, y, z});
    if (schedule == 1) std::reverse(blocks.begin(), blocks.end());
    if (schedule == 2) std::shuffle(blocks.begin(), blocks.end(), rng);
    if (mode == 0) {
        b.ctx.resize(b.n_threads);
        b.state.resize(b.n_threads);
        b.stacks_bytes = size_t(b.n_threads) * FIBER_STACK;
        void* mem = mmap(nullptr, b.stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
        if (mem == MAP_FAILED) {
            std::snprintf(err, err_len, "cannot map fiber stacks");
            return 1;
        }
        b.stacks = static_cast<char*>(mem);
        Block* saved_block = tls_block;
        tls_block = &b;
        tls_block_dim = bd;
        tls_grid_dim = grid;
        install_fault_handler();
        sigjmp_buf jump;
        if (sigsetjmp(jump, 1) != 0) {
            tls_fault_jump = nullptr;
            char what[256];
            std::snprintf(what, sizeof what, "memory fault at address %p in block (%u, %u, %u), thread (%u, %u, %u)",
                          tls_fault_address, tls_block_idx.x, tls_block_idx.y, tls_block_idx.z, tls_thread_idx.x,
                          tls_thread_idx.y, tls_thread_idx.z);
            b.fail(what);
        } else {
            tls_fault_jump = &jump;
            for (const uint3& blk : blocks) {
                tls_block_idx = blk;
                poison_shared();
                run_block_fibers(b, bd, schedule, rng);
                if (!b.error.empty()) break;
            }
            tls_fault_jump = nullptr;
        }
        tls_block = saved_block;
        tls_fiber = -1;
        munmap(mem, b.stacks_bytes);
    } else {
        pthread_barrier_init(&b.barrier, nullptr, b.n_threads);
        b.sync_count.assign(b.n_threads, 0);
        ThreadsShared shared{&b, &grid, &bd, &blocks};
        std::vector<std::thread> pool;
        pool.reserve(b.n_threads);
        for (unsigned t = 0; t < b.n_threads; ++t) pool.emplace_back(os_thread_main, &shared, t);
        for (auto& th : pool) th.join();
        pthread_barrier_destroy(&b.barrier);
    }
    if (!b.error.empty()) {
        std::snprintf(err, err_len, "%s", b.error.c_str());
        return 1;
    }
    return 0;
}

// ------------------------------------------------------------------ argument unpacking and signatures

template <typename T>
struct Code;
template <> struct Code<unsigned char> { static constexpr const char* s = "u8"; };
template <> struct Code<signed char> { static constexpr const char* s = "i8"; };
template <> struct Code<char> { static constexpr const char* s = "i8"; };
template <> struct Code<unsigned short> { static constexpr const char* s = "u16"; };
template <> struct Code<short> { static constexpr const char* s = "i16"; };
template <> struct Code<unsigned int> { static constexpr const char* s = "u32"; };
template <> struct Code<int> { static constexpr const char* s = "i32"; };
template <> struct Code<unsigned long long> { static constexpr const char* s = "u64"; };
template <> struct Code<long long> { static constexpr const char* s = "i64"; };
template <> struct Code<float> { static constexpr const char* s = "f32"; };
template <> struct Code<double> { static constexpr const char* s = "f64"; };

template <typename T>
std::string code_of() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) {
        return std::string(Code<std::remove_cv_t<std::remove_pointer_t<U>>>::s) + "*";
    } else {
        return Code<U>::s;
    }
}

template <typename... A>
struct Call {
    void (*fn)(A...);
    void** args;
};

template <typename... A, size_t... I>
void invoke(void (*fn)(A...), void** args, std::index_sequence<I...>) {
    fn(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <typename... A>
void thunk(void* p) {
    auto* c = static_cast<Call<A...>*>(p);
    invoke(c->fn, c->args, std::index_sequence_for<A...>{});
}

template <typename... A>
int launch_kernel(void (*fn)(A...), const long long* cfg, void** args, char* err, size_t err_len) {
    Call<A...> call{fn, args};
    return launch(&thunk<A...>, &call, cfg, err, err_len);
}

template <typename... A>
const char* signature(void (*)(A...)) {
    static const std::string s = [] {
        std::string out;
        ((out += (out.empty() ? "" : ","), out += code_of<A>()), ...);
        return out;
    }();
    return s.c_str();
}

}  // namespace gzcpu

#define __syncthreads() ::gzcpu::sync_threads()

// ------------------------------------------------------------------ intrinsics the kernels may use

__device__ __forceinline__ float __uint_as_float(unsigned int x) {
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}
__device__ __forceinline__ unsigned int __float_as_uint(float f) {
    unsigned int x;
    std::memcpy(&x, &f, sizeof x);
    return x;
}
__device__ __forceinline__ float __int_as_float(int x) {
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}
__device__ __forceinline__ int __float_as_int(float f) {
    int x;
    std::memcpy(&x, &f, sizeof x);
    return x;
}
__device__ __forceinline__ double __longlong_as_double(long long x) {
    double d;
    std::memcpy(&d, &x, sizeof d);
    return d;
}
__device__ __forceinline__ long long __double_as_longlong(double d) {
    long long x;
    std::memcpy(&x, &d, sizeof x);
    return x;
}
template <typename T>
__device__ __forceinline__ T __ldg(const T* p) {
    return *p;
}
template <typename T>
__device__ __forceinline__ T atomicAdd(T* p, T v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
