// exercise_tiled_matmul.cu — lesson 14's exercise: the shared-memory tiled matmul (rung v2 of matmul.cu, for
// C = A·B only, no batch) with its inner loop left for you to write.
//
// C (M, N) = A (M, K) · B (K, N), all row-major float32. Grid (ceil(N/TILE), ceil(M/TILE)), block (TILE, TILE):
// thread (tx, ty) of block (bx, by) computes C[by·TILE + ty][bx·TILE + tx]. Per step k0 the block stages
// As = A[m0 : m0+TILE, k0 : k0+TILE] and Bs = B[k0 : k0+TILE, n0 : n0+TILE] in shared memory (elements
// outside the matrices as 0, so the inner loop needs no guards), waits, and every thread adds its TILE
// products to acc.
//
// minillm/exercises/kernels.py (check "14.tiled_matmul_cuda") puts your snippet in place of the marker line
// and runs the kernel on the CPU emulator. As it stands, the file compiles and computes C = 0.
//
// Guard cells: row TILE and column TILE of both tiles hold NaN, so a loop that reads one element past the
// tile shows up as NaN in C instead of as a silently wrong number.

#ifndef TILE
#define TILE 8
#endif

extern "C" __global__ void tiled_matmul(const float* A, const float* B, float* C, int M, int N, int K) {
    __shared__ float As[TILE + 1][TILE + 1];  // As[r][c] = A[m0 + r][k0 + c]; [TILE][*], [*][TILE]: guards
    __shared__ float Bs[TILE + 1][TILE + 1];  // Bs[r][c] = B[k0 + r][n0 + c]
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int m = blockIdx.y * TILE + ty, n = blockIdx.x * TILE + tx;
    const float guard = __int_as_float(0x7fc00000);  // NaN
    if (tx == 0) As[ty][TILE] = Bs[ty][TILE] = guard;
    if (ty == 0) As[TILE][tx] = Bs[TILE][tx] = guard;
    if (tx == 0 && ty == 0) As[TILE][TILE] = Bs[TILE][TILE] = guard;
    float acc = 0.f;  // this thread's C[m][n], summed over all the tiles
    for (int k0 = 0; k0 < K; k0 += TILE) {
        As[ty][tx] = (m < M && k0 + tx < K) ? A[(long long)m * K + k0 + tx] : 0.f;
        Bs[ty][tx] = (k0 + ty < K && n < N) ? B[(long long)(k0 + ty) * N + n] : 0.f;
        __syncthreads();  // the tiles are complete before anyone reads them
        // ---- the inner loop: add row ty of As times column tx of Bs (TILE products) into acc
        /* YOUR INNER LOOP */
        __syncthreads();  // everyone is done reading before the next step overwrites the tiles
    }
    if (m < M && n < N) C[(long long)m * N + n] = acc;
}
