// matmul.cu — float32 GEMM, C = op(A) · op(B), from the simplest kernel up a documented ladder.
//
// Every rung is its own `extern "C" __global__` kernel so the lesson and the benchmark can name it:
//
//   v1  naive            one thread per C element; every operand read straight from global memory
//                        (each A and B element is fetched K times by different threads).
//   v2  shared tiling    a TILE×TILE block of threads stages a TILE×TILE tile of A and of B in shared
//                        memory, then each thread reads TILE pairs from there: global traffic / TILE.
//   v3  register blocks  a 256-thread block computes a BM×BN = 128×128 tile of C; each thread owns a
//                        TM×TN = 8×8 sub-tile held in registers, so each shared-memory value it reads is
//                        used 8 times (arithmetic intensity up again). Tiles of A and B are loaded with
//                        float4 (16-byte) loads where the operand's contiguous length and base address allow
//                        it, and with guarded scalar loads otherwise. A is stored transposed in shared memory
//                        (As[k][m]) so the inner loop reads both operands as float4.
//   split-K              for the weight gradient dW = Xᵀ·dY, a long reduction (K = B·T) over a small output
//                        (d×4d): the K axis is cut into `splits` chunks, each chunk's product written to its own
//                        slice of a workspace by the v3 body, and `splitk_reduce` adds the slices in a fixed
//                        order (deterministic; no atomics).
//
// Layouts (suffix): which operand is read transposed, without ever materialising the transpose.
//   _nn  C = A · B      A (M, K) row-major, B (K, N)           the forward product
//   _nt  C = A · Bᵀ     A (M, K),           B stored (N, K)    dA = dC · Bᵀ in the backward
//   _tn  C = Aᵀ · B     A stored (K, M),    B (K, N)           dB = Aᵀ · dC in the backward
// C is (M, N) row-major. Any M, N, K ≥ 1: every load and store at the edges is guarded.
//
// Batched: blockIdx.z is the batch index; operand z starts at ptr + z·stride (stride 0 broadcasts one
// matrix over the batch). Launch geometry: grid (ceil(N/BN), ceil(M/BM), batch), block as noted per rung.
//
// Tile sizes are macros so the CPU emulator test can also run smaller ones (fewer host threads); the
// defaults below are what runs on the GPU and what the compile test checks with ptxas.
// References: S. Boehm, "How to optimize a CUDA matmul kernel for cuBLAS-like performance" (2022);
// the CUDA C++ Programming Guide, "Shared Memory" matrix-multiplication example.

#ifndef V1_BLOCK
#define V1_BLOCK 16  // v1 block: V1_BLOCK × V1_BLOCK threads, one C element each
#endif
#ifndef V2_TILE
#define V2_TILE 32  // v2 block: V2_TILE × V2_TILE threads and tiles
#endif
#ifndef V3_BM
#define V3_BM 128  // v3 tile of C per block (rows)
#endif
#ifndef V3_BN
#define V3_BN 128  // v3 tile of C per block (columns)
#endif
#ifndef V3_BK
#define V3_BK 8  // v3 depth of the A/B tiles staged in shared memory per step
#endif
#ifndef V3_TM
#define V3_TM 8  // v3 rows of C per thread
#endif
#ifndef V3_TN
#define V3_TN 8  // v3 columns of C per thread
#endif
#define V3_THREADS ((V3_BM / V3_TM) * (V3_BN / V3_TN))

static_assert(V3_BM % 4 == 0 && V3_BN % 4 == 0 && V3_BK % 4 == 0, "v3 tiles must be multiples of 4 (float4)");
static_assert(V3_TM % 4 == 0 && V3_TN % 4 == 0, "v3 thread tiles must be multiples of 4 (float4)");
static_assert(V3_BM % V3_TM == 0 && V3_BN % V3_TN == 0, "v3 thread tiles must divide the block tile");

// ---------------------------------------------------------------------------------------------------------
// Element access for each layout. A is logically (M, K) and B logically (K, N); TA / TB say the stored
// matrix is the transpose, so the leading dimension (row length in memory) changes with the layout.
template <bool TA>
__device__ __forceinline__ float load_a(const float* A, int m, int k, int M, int K) {
    return TA ? A[(long long)k * M + m] : A[(long long)m * K + k];
}
template <bool TB>
__device__ __forceinline__ float load_b(const float* B, int k, int n, int K, int N) {
    return TB ? B[(long long)n * K + k] : B[(long long)k * N + n];
}

// ---------------------------------------------------------------------------------------------------------
// v1: naive. Thread (tx, ty) of block (bx, by) computes C[by·16 + ty][bx·16 + tx].
template <bool TA, bool TB>
__device__ void sgemm_v1(const float* A, const float* B, float* C, int M, int N, int K,
                         long long sA, long long sB, long long sC) {
    A += blockIdx.z * sA;
    B += blockIdx.z * sB;
    C += blockIdx.z * sC;
    int n = blockIdx.x * V1_BLOCK + threadIdx.x;  // x is fastest: neighbouring threads, neighbouring columns
    int m = blockIdx.y * V1_BLOCK + threadIdx.y;
    if (m < M && n < N) {
        float acc = 0.f;
        for (int k = 0; k < K; ++k) acc += load_a<TA>(A, m, k, M, K) * load_b<TB>(B, k, n, K, N);
        C[(long long)m * N + n] = acc;
    }
}

// ---------------------------------------------------------------------------------------------------------
// v2: shared-memory tiling. Each step stages As = A[m0:m0+T, k0:k0+T] and Bs = B[k0:k0+T, n0:n0+T];
// out-of-range elements are staged as 0, so the inner loop needs no guards.
template <bool TA, bool TB>
__device__ void sgemm_v2(const float* A, const float* B, float* C, int M, int N, int K,
                         long long sA, long long sB, long long sC) {
    __shared__ float As[V2_TILE][V2_TILE + 1];  // +1: a column of As is read across a warp without conflicts
    __shared__ float Bs[V2_TILE][V2_TILE + 1];
    A += blockIdx.z * sA;
    B += blockIdx.z * sB;
    C += blockIdx.z * sC;
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int m = blockIdx.y * V2_TILE + ty, n = blockIdx.x * V2_TILE + tx;
    float acc = 0.f;
    for (int k0 = 0; k0 < K; k0 += V2_TILE) {
        // thread (ty, tx) stages As[ty][tx] = A[m][k0+tx] and Bs[ty][tx] = B[k0+ty][n]. For the transposed
        // layouts the roles of tx/ty swap so that neighbouring threads still read neighbouring addresses.
        if (!TA) {
            int k = k0 + tx;
            As[ty][tx] = (m < M && k < K) ? A[(long long)m * K + k] : 0.f;
        } else {
            int mm = blockIdx.y * V2_TILE + tx, k = k0 + ty;  // A stored (K, M): contiguous along m
            As[tx][ty] = (mm < M && k < K) ? A[(long long)k * M + mm] : 0.f;
        }
        if (!TB) {
            int k = k0 + ty;
            Bs[ty][tx] = (k < K && n < N) ? B[(long long)k * N + n] : 0.f;
        } else {
            int nn = blockIdx.x * V2_TILE + ty, k = k0 + tx;  // B stored (N, K): contiguous along k
            Bs[tx][ty] = (nn < N && k < K) ? B[(long long)nn * K + k] : 0.f;
        }
        __syncthreads();  // the tiles are complete before anyone reads them
#pragma unroll
        for (int kk = 0; kk < V2_TILE; ++kk) acc += As[ty][kk] * Bs[kk][tx];
        __syncthreads();  // everyone is done reading before the next step overwrites the tiles
    }
    if (m < M && n < N) C[(long long)m * N + n] = acc;
}

// ---------------------------------------------------------------------------------------------------------
// v3: 2D register blocking with float4 loads. Reduction over k in [k_begin, k_end) (split-K uses a chunk).
//
// Shared memory: As[BK][BM] (A transposed: m contiguous), Bs[BK][BN]. Thread t owns rows
// tr·TM .. tr·TM+TM-1 and columns tc·TN .. tc·TN+TN-1 of the block's C tile, tr = t / (BN/TN), tc = t % (BN/TN).
// Loading a tile: the block's V3_THREADS threads sweep the tile in float4 "quads" along the operand's
// contiguous axis. A quad is read with one float4 load when the whole quad is in range and the operand is
// 16-byte aligned with a row length that is a multiple of 4; otherwise element by element with guards.
template <bool TA, bool TB>
__device__ __forceinline__ void v3_load_tiles(const float* A, const float* B, float (*As)[V3_BM],
                                              float (*Bs)[V3_BN], int M, int N, int K, int m0, int n0,
                                              int k0, int k_end, bool vecA, bool vecB) {
    const int tid = threadIdx.x;
    // ---- A tile: logical A[m0 : m0+BM, k0 : k0+BK] -> As[k][m]
    if (!TA) {  // A (M, K): quads run along k
        for (int q = tid; q < V3_BM * V3_BK / 4; q += V3_THREADS) {
            int r = q / (V3_BK / 4), kq = (q % (V3_BK / 4)) * 4;  // tile row r, tile column kq..kq+3
            int m = m0 + r, k = k0 + kq;
            float4 v;
            if (vecA && m < M && k + 3 < k_end) {
                v = *reinterpret_cast<const float4*>(&A[(long long)m * K + k]);
            } else {
                v.x = (m < M && k + 0 < k_end) ? A[(long long)m * K + k + 0] : 0.f;
                v.y = (m < M && k + 1 < k_end) ? A[(long long)m * K + k + 1] : 0.f;
                v.z = (m < M && k + 2 < k_end) ? A[(long long)m * K + k + 2] : 0.f;
                v.w = (m < M && k + 3 < k_end) ? A[(long long)m * K + k + 3] : 0.f;
            }
            As[kq + 0][r] = v.x;
            As[kq + 1][r] = v.y;
            As[kq + 2][r] = v.z;
            As[kq + 3][r] = v.w;
        }
    } else {  // A stored (K, M): quads run along m, stored straight into As[k][m..m+3]
        for (int q = tid; q < V3_BM * V3_BK / 4; q += V3_THREADS) {
            int kr = q / (V3_BM / 4), mq = (q % (V3_BM / 4)) * 4;
            int k = k0 + kr, m = m0 + mq;
            float4 v;
            if (vecA && k < k_end && m + 3 < M) {
                v = *reinterpret_cast<const float4*>(&A[(long long)k * M + m]);
            } else {
                v.x = (k < k_end && m + 0 < M) ? A[(long long)k * M + m + 0] : 0.f;
                v.y = (k < k_end && m + 1 < M) ? A[(long long)k * M + m + 1] : 0.f;
                v.z = (k < k_end && m + 2 < M) ? A[(long long)k * M + m + 2] : 0.f;
                v.w = (k < k_end && m + 3 < M) ? A[(long long)k * M + m + 3] : 0.f;
            }
            *reinterpret_cast<float4*>(&As[kr][mq]) = v;
        }
    }
    // ---- B tile: logical B[k0 : k0+BK, n0 : n0+BN] -> Bs[k][n]
    if (!TB) {  // B (K, N): quads run along n
        for (int q = tid; q < V3_BN * V3_BK / 4; q += V3_THREADS) {
            int kr = q / (V3_BN / 4), nq = (q % (V3_BN / 4)) * 4;
            int k = k0 + kr, n = n0 + nq;
            float4 v;
            if (vecB && k < k_end && n + 3 < N) {
                v = *reinterpret_cast<const float4*>(&B[(long long)k * N + n]);
            } else {
                v.x = (k < k_end && n + 0 < N) ? B[(long long)k * N + n + 0] : 0.f;
                v.y = (k < k_end && n + 1 < N) ? B[(long long)k * N + n + 1] : 0.f;
                v.z = (k < k_end && n + 2 < N) ? B[(long long)k * N + n + 2] : 0.f;
                v.w = (k < k_end && n + 3 < N) ? B[(long long)k * N + n + 3] : 0.f;
            }
            *reinterpret_cast<float4*>(&Bs[kr][nq]) = v;
        }
    } else {  // B stored (N, K): quads run along k, scattered into Bs[k..k+3][n]
        for (int q = tid; q < V3_BN * V3_BK / 4; q += V3_THREADS) {
            int r = q / (V3_BK / 4), kq = (q % (V3_BK / 4)) * 4;
            int n = n0 + r, k = k0 + kq;
            float4 v;
            if (vecB && n < N && k + 3 < k_end) {
                v = *reinterpret_cast<const float4*>(&B[(long long)n * K + k]);
            } else {
                v.x = (n < N && k + 0 < k_end) ? B[(long long)n * K + k + 0] : 0.f;
                v.y = (n < N && k + 1 < k_end) ? B[(long long)n * K + k + 1] : 0.f;
                v.z = (n < N && k + 2 < k_end) ? B[(long long)n * K + k + 2] : 0.f;
                v.w = (n < N && k + 3 < k_end) ? B[(long long)n * K + k + 3] : 0.f;
            }
            Bs[kq + 0][r] = v.x;
            Bs[kq + 1][r] = v.y;
            Bs[kq + 2][r] = v.z;
            Bs[kq + 3][r] = v.w;
        }
    }
}

template <bool TA, bool TB>
__device__ void sgemm_v3(const float* A, const float* B, float* C, int M, int N, int K, int k_begin,
                         int k_end) {
    __shared__ __align__(16) float As[V3_BK][V3_BM];
    __shared__ __align__(16) float Bs[V3_BK][V3_BN];
    const int tid = threadIdx.x;
    const int tr = tid / (V3_BN / V3_TN), tc = tid % (V3_BN / V3_TN);
    const int m0 = blockIdx.y * V3_BM, n0 = blockIdx.x * V3_BN;
    // float4 loads need 16-byte aligned rows: base address and the stored row length (leading dimension)
    const int ldA = TA ? M : K, ldB = TB ? K : N;
    const bool vecA = (ldA % 4 == 0) && (((unsigned long long)A & 15ull) == 0);
    const bool vecB = (ldB % 4 == 0) && (((unsigned long long)B & 15ull) == 0);

    float acc[V3_TM][V3_TN];
#pragma unroll
    for (int i = 0; i < V3_TM; ++i)
#pragma unroll
        for (int j = 0; j < V3_TN; ++j) acc[i][j] = 0.f;
    float regM[V3_TM], regN[V3_TN];

    for (int k0 = k_begin; k0 < k_end; k0 += V3_BK) {
        v3_load_tiles<TA, TB>(A, B, As, Bs, M, N, K, m0, n0, k0, k_end, vecA, vecB);
        __syncthreads();  // tiles complete
#pragma unroll
        for (int kk = 0; kk < V3_BK; ++kk) {
#pragma unroll
            for (int i = 0; i < V3_TM; i += 4) {
                float4 a = *reinterpret_cast<const float4*>(&As[kk][tr * V3_TM + i]);
                regM[i] = a.x; regM[i + 1] = a.y; regM[i + 2] = a.z; regM[i + 3] = a.w;
            }
#pragma unroll
            for (int j = 0; j < V3_TN; j += 4) {
                float4 b = *reinterpret_cast<const float4*>(&Bs[kk][tc * V3_TN + j]);
                regN[j] = b.x; regN[j + 1] = b.y; regN[j + 2] = b.z; regN[j + 3] = b.w;
            }
#pragma unroll
            for (int i = 0; i < V3_TM; ++i)
#pragma unroll
                for (int j = 0; j < V3_TN; ++j) acc[i][j] += regM[i] * regN[j];
        }
        __syncthreads();  // reads done before the next tiles overwrite As/Bs
    }
    // ---- store the TM×TN sub-tile (float4 stores when the row is aligned and fully in range)
    const bool vecC = (N % 4 == 0) && (((unsigned long long)C & 15ull) == 0);
#pragma unroll
    for (int i = 0; i < V3_TM; ++i) {
        int m = m0 + tr * V3_TM + i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < V3_TN; j += 4) {
            int n = n0 + tc * V3_TN + j;
            float* dst = &C[(long long)m * N + n];
            if (vecC && n + 3 < N) {
                *reinterpret_cast<float4*>(dst) = make_float4(acc[i][j], acc[i][j + 1], acc[i][j + 2], acc[i][j + 3]);
            } else {
                if (n + 0 < N) dst[0] = acc[i][j + 0];
                if (n + 1 < N) dst[1] = acc[i][j + 1];
                if (n + 2 < N) dst[2] = acc[i][j + 2];
                if (n + 3 < N) dst[3] = acc[i][j + 3];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The kernels. Signature (all rungs, all layouts):
//   (A, B, C, M, N, K, strideA, strideB, strideC)   ints are int32, strides int64 (elements)
// v1: block (V1_BLOCK, V1_BLOCK); v2: block (V2_TILE, V2_TILE); v3: block (V3_THREADS).

#define SGEMM_V1(name, TA, TB)                                                                               \
    extern "C" __global__ void name(const float* A, const float* B, float* C, int M, int N, int K,          \
                                    long long sA, long long sB, long long sC) {                             \
        sgemm_v1<TA, TB>(A, B, C, M, N, K, sA, sB, sC);                                                     \
    }
#define SGEMM_V2(name, TA, TB)                                                                               \
    extern "C" __global__ void name(const float* A, const float* B, float* C, int M, int N, int K,          \
                                    long long sA, long long sB, long long sC) {                             \
        sgemm_v2<TA, TB>(A, B, C, M, N, K, sA, sB, sC);                                                     \
    }
#define SGEMM_V3(name, TA, TB)                                                                               \
    extern "C" __global__ void __launch_bounds__(V3_THREADS)                                                \
        name(const float* A, const float* B, float* C, int M, int N, int K, long long sA, long long sB,     \
             long long sC) {                                                                                \
        sgemm_v3<TA, TB>(A + blockIdx.z * sA, B + blockIdx.z * sB, C + blockIdx.z * sC, M, N, K, 0, K);    \
    }

SGEMM_V1(sgemm_v1_nn, false, false)
SGEMM_V1(sgemm_v1_nt, false, true)
SGEMM_V1(sgemm_v1_tn, true, false)
SGEMM_V2(sgemm_v2_nn, false, false)
SGEMM_V2(sgemm_v2_nt, false, true)
SGEMM_V2(sgemm_v2_tn, true, false)
SGEMM_V3(sgemm_v3_nn, false, false)
SGEMM_V3(sgemm_v3_nt, false, true)
SGEMM_V3(sgemm_v3_tn, true, false)

// Split-K for C = Aᵀ·B with a long K (the weight gradient over B·T rows): blockIdx.z = split index s,
// which reduces k in [s·k_chunk, min(K, (s+1)·k_chunk)) into workspace W[s] (M×N). k_chunk must be a
// multiple of V3_BK (the wrapper rounds it) so every chunk but the last is whole tiles.
// Grid (ceil(N/BN), ceil(M/BM), splits), block (V3_THREADS).
extern "C" __global__ void __launch_bounds__(V3_THREADS)
    sgemm_v3_tn_splitk(const float* A, const float* B, float* W, int M, int N, int K, int k_chunk) {
    int k_begin = blockIdx.z * k_chunk;
    int k_end = min(K, k_begin + k_chunk);
    sgemm_v3<true, false>(A, B, W + (long long)blockIdx.z * M * N, M, N, K, k_begin, k_end);
}

// C[i] = Σ_s W[s][i] in a fixed order. Grid (ceil(MN/256)), block (256).
extern "C" __global__ void splitk_reduce(const float* W, float* C, long long MN, int splits) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < MN) {
        float acc = 0.f;
        for (int s = 0; s < splits; ++s) acc += W[s * MN + i];
        C[i] = acc;
    }
}
