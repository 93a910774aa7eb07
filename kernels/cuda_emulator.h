// cuda_emulator.h — run unmodified CUDA kernel source on the CPU, for tests and teaching (not a product).
//
// Included before a .cu file and compiled with `g++ -std=c++20 -pthread` (see minillm/cuda_emulator.py,
// which also generates one `extern "C"` launcher per kernel). The model:
//   * blocks run one after another; the threads of a block are real host threads (one per CUDA thread),
//     so `__syncthreads()` is a `std::barrier` and races between threads are real races that
//     `-fsanitize=thread` can report (a CPU stand-in for `compute-sanitizer --tool racecheck`);
//   * `__shared__` becomes `static`: one copy per kernel instantiation, reused by each block in turn —
//     exactly per-block shared memory when blocks do not overlap (a barrier separates consecutive blocks);
//   * `threadIdx`/`blockIdx` are thread_local, `blockDim`/`gridDim` global;
//   * float4/make_float4, the fast-math intrinsics (__expf, __logf, __int_as_float) and min/max map to
//     their C++ equivalents. Warp shuffles, atomics, dynamic shared memory and textures are not provided:
//     the kernels in kernels/ do not use them (add them here if a kernel ever does).
// What it cannot show: speed, warp-level behaviour (divergence, bank conflicts, coalescing), or the
// GPU's float rounding of fast intrinsics. Those are for the compile check (ptxas) and a real GPU.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* emu_block_barrier = nullptr;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
using std::max;
using std::min;

// Run `body` (a call of the kernel with its arguments) over the grid: each block's threads are started
// together and meet at a barrier after the kernel returns, so the next block starts only when the
// previous one is completely done (its shared memory is free to reuse).
template <class Body>
void emu_launch(dim3 grid, dim3 block, Body body) {
    gridDim = grid;
    blockDim = block;
    const unsigned nt = block.x * block.y * block.z;
    std::barrier<> bar(nt);
    emu_block_barrier = &bar;
    std::vector<std::thread> threads;
    threads.reserve(nt);
    for (unsigned t = 0; t < nt; ++t) {
        threads.emplace_back([&, t] {
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            for (unsigned bz = 0; bz < grid.z; ++bz)
                for (unsigned by = 0; by < grid.y; ++by)
                    for (unsigned bx = 0; bx < grid.x; ++bx) {
                        blockIdx = dim3(bx, by, bz);
                        body();
                        bar.arrive_and_wait();  // block done: shared memory may be reused
                    }
        });
    }
    for (auto& th : threads) th.join();
    emu_block_barrier = nullptr;
}
