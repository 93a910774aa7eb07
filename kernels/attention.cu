// attention.cu — fused scaled-dot-product attention in the FlashAttention style (float32).
//
//   O = softmax(S) V,  S = Q Kᵀ · scale with disallowed pairs set to MASKED_SCORE (-1e9, the value the
//   composed path in minillm/functional.py uses, so both paths agree even for a row with no allowed key).
//
// Layout: Q (BH, Tq, d), K (BH, Tk, d), V (BH, Tk, d), O like Q; BH = batch × heads flattened; d ≤ 128.
// Masks: `causal` aligned to the end (query i may see key j ≤ i + Tk − Tq, as in F.causal_mask) and an
// optional key-padding mask kpm (BH, Tk) of bytes, 1 = this key may be attended to.
//
// Forward (flash_fwd_d64 / flash_fwd_d128; Dao et al. 2022, FlashAttention-2 2023, Algorithm 1):
//   a block owns BM query rows of one (batch, head) and sweeps the keys in tiles of BN. Per row it keeps the
//   running max m, the running sum l = Σ exp(s − m) and the unnormalised output acc = Σ exp(s − m)·v. When a
//   new tile raises the max to m', the old sums are rescaled by exp(m − m') (online softmax), so the T×T
//   score matrix never exists; only a BM×BN tile lives in shared memory. At the end O = acc / l and the row's
//   log-sum-exp is saved in two parts, Mrow = m and Lrow = log l (LSE = m + log l), for the backward. (Two
//   parts because for a fully masked row m = -1e9 and m + log l would round back to -1e9 in float32.)
//   With `causal`, key tiles entirely in the future of every row of the block are skipped — unless some row
//   of the block has no allowed key at all, in which case softmax over all-equal -1e9 scores is the uniform
//   average over every key (what the composed path gives), so the remaining tiles are swept too.
//   flash_fwd_v2_d64 is the same algorithm with 2D register blocking (each thread a 4×2 block of S and a
//   4×4 block of O, float4 shared-memory reads): ~4× fewer shared-memory reads per multiply-add than v1.
//   minillm.cuda uses v2 for d <= 64 and v1 (flash_fwd_d128) above; v1 stays as the readable version.
//
// Backward (FlashAttention-2, Algorithm 2), recomputing P tile by tile from the saved statistics:
//   attn_bwd_preprocess   Drow[i] = Σ_c dO[i,c]·O[i,c]   (= Σ_j P_ij dP_ij, needed by every dS row)
//   flash_bwd_dkdv_d*     a block owns BN keys; sweeping the query tiles it recomputes
//                         P_ij = exp(S_ij − M_i − log l_i), dP_ij = dO_i·V_j, dS_ij = P_ij (dP_ij − D_i)
//                         (0 where the pair is masked: a masked score is a constant), and accumulates
//                         dV_j += Σ_i P_ij dO_i,  dK_j += scale Σ_i dS_ij Q_i  in registers.
//   flash_bwd_dq_d*       a block owns BM queries; sweeping the key tiles, dQ_i += scale Σ_j dS_ij K_j.
//   Two passes instead of atomics: every output element is written by exactly one thread, deterministic.
//   flash_bwd_dkdv_v2_d64 / flash_bwd_dq_v2_d64: the same two passes register-blocked (4 keys × 4
//   queries of Sᵀ/dPᵀ and 4 × 8 of dK/dV per thread; 4 queries × 4 keys and 4 × 8 of dQ), for d <= 64.
//
// Threads: ATTN_TPR (4) threads share one row (query row in fwd/dq, key row in dkdv); each owns the
// columns c ≡ part (mod 4) of the row's accumulators. Shared-memory rows are padded by one float so the
// column-wise reads of a warp fall in different banks. All tiles fit the 48 KB static shared memory limit.
// Tile sizes are macros so the CPU emulator test can run smaller ones; the defaults are the GPU's.

#ifndef ATTN_TPR
#define ATTN_TPR 4
#endif
// forward tiles (query rows per block, keys per step) for d <= 64 and d <= 128
#ifndef FWD64_BM
#define FWD64_BM 64
#endif
#ifndef FWD64_BN
#define FWD64_BN 32
#endif
#ifndef FWD128_BM
#define FWD128_BM 32
#endif
#ifndef FWD128_BN
#define FWD128_BN 16
#endif
// forward v2 (register-blocked, d <= 64): query rows per block, keys per step
#ifndef FWD2_BM
#define FWD2_BM 64
#endif
#ifndef FWD2_BN
#define FWD2_BN 32
#endif
// backward v2 (register-blocked, d <= 64): dK/dV keys per block and queries per step; dQ queries per
// block and keys per step
#ifndef BWD2_BN
#define BWD2_BN 32
#endif
#ifndef BWD2_BM
#define BWD2_BM 32
#endif
#ifndef DQ2_BM
#define DQ2_BM 32
#endif
#ifndef DQ2_BN
#define DQ2_BN 32
#endif
// backward tiles (queries per step/block, keys per block/step)
#ifndef BWD64_BM
#define BWD64_BM 32
#endif
#ifndef BWD64_BN
#define BWD64_BN 32
#endif
#ifndef BWD128_BM
#define BWD128_BM 16
#endif
#ifndef BWD128_BN
#define BWD128_BN 16
#endif

#define MASKED_SCORE (-1.0e9f)
#define NEG_INF (-__int_as_float(0x7f800000))

// May query qi attend to key kj? (kpm_row: this (batch, head)'s key-padding row, or null.)
__device__ __forceinline__ bool attn_allowed(int qi, int kj, int Tq, int Tk, int causal,
                                             const unsigned char* kpm_row) {
    if (causal && kj > qi + (Tk - Tq)) return false;
    if (kpm_row != nullptr && kpm_row[kj] == 0) return false;
    return true;
}

// Number of key tiles that can hold an allowed key for query rows [q0, q0 + rows): all of them unless causal.
__device__ __forceinline__ int attn_causal_tiles(int q0, int rows, int Tq, int Tk, int BN, int causal) {
    int n_kt = (Tk + BN - 1) / BN;
    if (!causal) return n_kt;
    int last_q = min(Tq, q0 + rows) - 1;
    int jmax = last_q + (Tk - Tq);  // the last key any row of the block may see
    return jmax < 0 ? 0 : min(n_kt, jmax / BN + 1);
}

// Stage rows [r0, r0 + R) of a (T, d) matrix into S[R][HD+1] (rows past T as zeros; columns ≥ d unused).
template <int R, int HD, int NT>
__device__ __forceinline__ void attn_stage(float (*S)[HD + 1], const float* X, int r0, int T, int d) {
    for (int idx = threadIdx.x; idx < R * d; idx += NT) {
        int r = idx / d, c = idx % d;
        S[r][c] = (r0 + r < T) ? X[(long long)(r0 + r) * d + c] : 0.f;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Forward. Grid (ceil(Tq/BM), BH), block (BM·TPR).
template <int HD, int BM, int BN>
__device__ void flash_fwd(const float* Q, const float* K, const float* V, float* O, float* Mrow, float* Lrow,
                          const unsigned char* kpm, int has_mask, int Tq, int Tk, int d, float scale,
                          int causal) {
    constexpr int NT = BM * ATTN_TPR, CPT = HD / ATTN_TPR;
    __shared__ float Qs[BM][HD + 1];
    __shared__ float Ks[BN][HD + 1];
    __shared__ float Vs[BN][HD + 1];
    __shared__ float Ss[BM][BN + 1];
    __shared__ int dead[BM];
    const int tid = threadIdx.x, row = tid / ATTN_TPR, part = tid % ATTN_TPR;
    const long long bh = blockIdx.y;
    const int q0 = blockIdx.x * BM, qi = q0 + row;
    Q += bh * Tq * d;
    K += bh * Tk * d;
    V += bh * Tk * d;
    O += bh * Tq * d;
    Mrow += bh * Tq;
    Lrow += bh * Tq;
    const unsigned char* kpm_row = has_mask ? kpm + bh * Tk : nullptr;

    attn_stage<BM, HD, NT>(Qs, Q, q0, Tq, d);
    float m = NEG_INF, l = 0.f, acc[CPT];
#pragma unroll
    for (int cc = 0; cc < CPT; ++cc) acc[cc] = 0.f;

    const int n_kt = (Tk + BN - 1) / BN;
    const int kt_end = attn_causal_tiles(q0, BM, Tq, Tk, BN, causal);
    int any_dead = 0;
    for (int kt = 0; kt < n_kt; ++kt) {
        if (kt >= kt_end) {  // every remaining key is in the future of every row of this block
            if (kt == kt_end) {
                if (part == 0) dead[row] = (qi < Tq && m <= MASKED_SCORE) ? 1 : 0;
                __syncthreads();
                for (int r = 0; r < BM; ++r) any_dead |= dead[r];  // same answer in every thread
            }
            if (!any_dead) break;
        }
        const int k0 = kt * BN;
        __syncthreads();  // the previous tile's readers are done (and Qs is staged, on the first tile)
        attn_stage<BN, HD, NT>(Ks, K, k0, Tk, d);
        attn_stage<BN, HD, NT>(Vs, V, k0, Tk, d);
        __syncthreads();
        // scores of this thread's keys j ≡ part (mod TPR)
        for (int j = part; j < BN; j += ATTN_TPR) {
            const int kj = k0 + j;
            float s = NEG_INF;  // keys past Tk do not exist: weight exactly 0
            if (kj < Tk) {
                float dot = 0.f;
                for (int c = 0; c < d; ++c) dot += Qs[row][c] * Ks[j][c];
                s = attn_allowed(qi, kj, Tq, Tk, causal, kpm_row) ? dot * scale : MASKED_SCORE;
            }
            Ss[row][j] = s;
        }
        __syncthreads();
        // online softmax update of this row (each of its TPR threads does the same scalar work)
        float m_tile = NEG_INF;
        for (int j = 0; j < BN; ++j) m_tile = fmaxf(m_tile, Ss[row][j]);
        const float m_new = fmaxf(m, m_tile);  // finite: every tile holds at least one existing key
        const float alpha = __expf(m - m_new);  // 0 on the first tile (m = -inf)
        l *= alpha;
#pragma unroll
        for (int cc = 0; cc < CPT; ++cc) acc[cc] *= alpha;
        for (int j = 0; j < BN; ++j) {
            const float p = __expf(Ss[row][j] - m_new);
            l += p;
#pragma unroll
            for (int cc = 0; cc < CPT; ++cc) {
                const int c = part + ATTN_TPR * cc;
                if (c < d) acc[cc] += p * Vs[j][c];
            }
        }
        m = m_new;
    }
    if (qi < Tq) {
        const float inv_l = 1.f / l;
#pragma unroll
        for (int cc = 0; cc < CPT; ++cc) {
            const int c = part + ATTN_TPR * cc;
            if (c < d) O[(long long)qi * d + c] = acc[cc] * inv_l;
        }
        if (part == 0) {
            Mrow[qi] = m;
            Lrow[qi] = logf(l);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Forward v2 (d <= 64): the same algorithm with 2D register blocking, as matmul v3 does for GEMM.
// A block of (BM/4)·16 threads owns BM query rows; thread (ty, tx) = (tid / 16, tid % 16) owns rows
// ty·4 .. ty·4+3, the keys tx·KN .. tx·KN+KN-1 of each key tile (KN = BN/16) for S = Q Kᵀ, and the output
// columns tx·4 .. tx·4+3 for O += P V. Q and K are staged transposed (QsT[c][row], KsT[c][key]) so a row
// quad of Q is one float4 read; P goes through shared memory (Ps[key][row]) because every thread needs the
// whole P tile for its output columns. Per multiply-add it reads shared memory ~0.25 times (v1: ~1.1).
// The row max of a tile is reduced over the 16 threads of a row group through `red`; the row sum l is
// kept per thread (over its own keys) and reduced once at the end.
// Grid (ceil(Tq/BM), BH), block ((BM/4)·16).
template <int BM, int BN>
__device__ void flash_fwd_v2(const float* Q, const float* K, const float* V, float* O, float* Mrow,
                             float* Lrow, const unsigned char* kpm, int has_mask, int Tq, int Tk, int d,
                             float scale, int causal) {
    constexpr int HD = 64, TX = 16, RM = 4, NT = (BM / RM) * TX, KN = BN / TX, CN = HD / TX;
    static_assert(BM % RM == 0 && BN % TX == 0, "v2 tiles: BM multiple of 4, BN multiple of 16");
    __shared__ __align__(16) float QsT[HD][BM];
    __shared__ __align__(16) float KsT[HD][BN];
    __shared__ __align__(16) float Vs[BN][HD];
    __shared__ __align__(16) float Ps[BN][BM];
    __shared__ __align__(16) float red[BM][TX];
    __shared__ int dead[BM];
    const int tid = threadIdx.x, ty = tid / TX, tx = tid % TX;
    const long long bh = blockIdx.y;
    const int q0 = blockIdx.x * BM;
    Q += bh * Tq * d;
    K += bh * Tk * d;
    V += bh * Tk * d;
    O += bh * Tq * d;
    Mrow += bh * Tq;
    Lrow += bh * Tq;
    const unsigned char* kpm_row = has_mask ? kpm + bh * Tk : nullptr;

    for (int idx = tid; idx < BM * d; idx += NT) {  // QsT[c][r] = Q[q0 + r][c]
        int r = idx / d, c = idx % d;
        QsT[c][r] = (q0 + r < Tq) ? Q[(long long)(q0 + r) * d + c] : 0.f;
    }
    float m[RM], lp[RM], acc[RM][CN];
#pragma unroll
    for (int r = 0; r < RM; ++r) {
        m[r] = NEG_INF;
        lp[r] = 0.f;
#pragma unroll
        for (int c = 0; c < CN; ++c) acc[r][c] = 0.f;
    }
    const int n_kt = (Tk + BN - 1) / BN;
    const int kt_end = attn_causal_tiles(q0, BM, Tq, Tk, BN, causal);
    int any_dead = 0;
    for (int kt = 0; kt < n_kt; ++kt) {
        if (kt >= kt_end) {  // as in v1: remaining tiles only matter for rows with no allowed key
            if (kt == kt_end) {
                if (tx == 0)
#pragma unroll
                    for (int r = 0; r < RM; ++r) dead[ty * RM + r] = (q0 + ty * RM + r < Tq && m[r] <= MASKED_SCORE);
                __syncthreads();
                for (int r = 0; r < BM; ++r) any_dead |= dead[r];
            }
            if (!any_dead) break;
        }
        const int k0 = kt * BN;
        __syncthreads();  // previous tile's readers of KsT/Vs/Ps are done
        for (int idx = tid; idx < BN * d; idx += NT) {
            int j = idx / d, c = idx % d;
            bool ok = k0 + j < Tk;
            KsT[c][j] = ok ? K[(long long)(k0 + j) * d + c] : 0.f;
            Vs[j][c] = ok ? V[(long long)(k0 + j) * d + c] : 0.f;
        }
        __syncthreads();
        // S for rows ty·4+r and keys tx·KN+kk
        float s[RM][KN];
#pragma unroll
        for (int r = 0; r < RM; ++r)
#pragma unroll
            for (int kk = 0; kk < KN; ++kk) s[r][kk] = 0.f;
        for (int c = 0; c < d; ++c) {
            const float4 q4 = *reinterpret_cast<const float4*>(&QsT[c][ty * RM]);
#pragma unroll
            for (int kk = 0; kk < KN; ++kk) {
                const float kv = KsT[c][tx * KN + kk];
                s[0][kk] += q4.x * kv;
                s[1][kk] += q4.y * kv;
                s[2][kk] += q4.z * kv;
                s[3][kk] += q4.w * kv;
            }
        }
        float pmax[RM];
#pragma unroll
        for (int r = 0; r < RM; ++r) {
            const int qi = q0 + ty * RM + r;
            pmax[r] = NEG_INF;
#pragma unroll
            for (int kk = 0; kk < KN; ++kk) {
                const int kj = k0 + tx * KN + kk;
                float v = NEG_INF;
                if (kj < Tk) v = attn_allowed(qi, kj, Tq, Tk, causal, kpm_row) ? s[r][kk] * scale : MASKED_SCORE;
                s[r][kk] = v;
                pmax[r] = fmaxf(pmax[r], v);
            }
            red[ty * RM + r][tx] = pmax[r];
        }
        __syncthreads();
        float alpha[RM];
#pragma unroll
        for (int r = 0; r < RM; ++r) {
            float m_tile = NEG_INF;
#pragma unroll
            for (int t = 0; t < TX; t += 4) {
                const float4 v = *reinterpret_cast<const float4*>(&red[ty * RM + r][t]);
                m_tile = fmaxf(m_tile, fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
            }
            const float m_new = fmaxf(m[r], m_tile);  // finite: the tile holds an existing key
            alpha[r] = __expf(m[r] - m_new);
            m[r] = m_new;
            lp[r] *= alpha[r];
#pragma unroll
            for (int c = 0; c < CN; ++c) acc[r][c] *= alpha[r];
        }
#pragma unroll
        for (int kk = 0; kk < KN; ++kk) {
            float p[RM];
#pragma unroll
            for (int r = 0; r < RM; ++r) {
                p[r] = __expf(s[r][kk] - m[r]);
                lp[r] += p[r];
            }
            *reinterpret_cast<float4*>(&Ps[tx * KN + kk][ty * RM]) = make_float4(p[0], p[1], p[2], p[3]);
        }
        __syncthreads();
        for (int j = 0; j < BN; ++j) {
            const float4 p4 = *reinterpret_cast<const float4*>(&Ps[j][ty * RM]);
            const float4 v4 = *reinterpret_cast<const float4*>(&Vs[j][tx * CN]);
            const float pr[RM] = {p4.x, p4.y, p4.z, p4.w}, vc[CN] = {v4.x, v4.y, v4.z, v4.w};
#pragma unroll
            for (int r = 0; r < RM; ++r)
#pragma unroll
                for (int c = 0; c < CN; ++c) acc[r][c] += pr[r] * vc[c];
        }
    }
    // l = Σ over the row group's 16 threads of their partial sums (all red readers passed a barrier since)
#pragma unroll
    for (int r = 0; r < RM; ++r) red[ty * RM + r][tx] = lp[r];
    __syncthreads();
#pragma unroll
    for (int r = 0; r < RM; ++r) {
        const int qi = q0 + ty * RM + r;
        float l = 0.f;
        for (int t = 0; t < TX; ++t) l += red[ty * RM + r][t];
        if (qi < Tq) {
            const float inv_l = 1.f / l;
#pragma unroll
            for (int c = 0; c < CN; ++c) {
                const int col = tx * CN + c;
                if (col < d) O[(long long)qi * d + col] = acc[r][c] * inv_l;
            }
            if (tx == 0) {
                Mrow[qi] = m[r];
                Lrow[qi] = logf(l);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Backward step 1: Drow[r] = Σ_c dO[r, c] · O[r, c] over all BH·Tq rows. Grid (ceil(rows/256)), block (256).
extern "C" __global__ void attn_bwd_preprocess(const float* O, const float* dO, float* Drow, long long rows,
                                               int d) {
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r < rows) {
        float acc = 0.f;
        for (int c = 0; c < d; ++c) acc += dO[r * d + c] * O[r * d + c];
        Drow[r] = acc;
    }
}

// Backward step 2: dK, dV for BN keys per block. Grid (ceil(Tk/BN), BH), block (BN·TPR).
template <int HD, int BM, int BN>
__device__ void flash_bwd_dkdv(const float* Q, const float* K, const float* V, const float* dO,
                               const float* Mrow, const float* Lrow, const float* Drow, float* dK, float* dV,
                               const unsigned char* kpm, int has_mask, int Tq, int Tk, int d, float scale,
                               int causal) {
    constexpr int NT = BN * ATTN_TPR, CPT = HD / ATTN_TPR;
    __shared__ float Ks[BN][HD + 1];
    __shared__ float Vs[BN][HD + 1];
    __shared__ float Qs[BM][HD + 1];
    __shared__ float dOs[BM][HD + 1];
    __shared__ float Ps[BN][BM + 1];
    __shared__ float dSs[BN][BM + 1];
    __shared__ float Ms[BM], Ls[BM], Ds[BM];
    const int tid = threadIdx.x, krow = tid / ATTN_TPR, part = tid % ATTN_TPR;
    const long long bh = blockIdx.y;
    const int k0 = blockIdx.x * BN, kj = k0 + krow;
    Q += bh * Tq * d;
    dO += bh * Tq * d;
    K += bh * Tk * d;
    V += bh * Tk * d;
    dK += bh * Tk * d;
    dV += bh * Tk * d;
    Mrow += bh * Tq;
    Lrow += bh * Tq;
    Drow += bh * Tq;
    const unsigned char* kpm_row = has_mask ? kpm + bh * Tk : nullptr;

    attn_stage<BN, HD, NT>(Ks, K, k0, Tk, d);
    attn_stage<BN, HD, NT>(Vs, V, k0, Tk, d);
    float dk[CPT], dv[CPT];
#pragma unroll
    for (int cc = 0; cc < CPT; ++cc) dk[cc] = dv[cc] = 0.f;

    const int n_qt = (Tq + BM - 1) / BM;
    // With `causal`, query rows before q_first see none of this block's keys; their tiles matter only if
    // they hold a row with no allowed key at all (its P is uniform over every key, so it feeds dV).
    int qt_first = 0;
    if (causal) {
        int q_first = max(0, k0 - (Tk - Tq));
        qt_first = min(n_qt, q_first / BM);
    }
    for (int qt = 0; qt < n_qt; ++qt) {
        const int q0 = qt * BM;
        __syncthreads();  // previous step's readers are done (and Ks/Vs are staged, on the first step)
        for (int r = tid; r < BM; r += NT) {
            const bool ok = q0 + r < Tq;
            Ms[r] = ok ? Mrow[q0 + r] : 0.f;
            Ls[r] = ok ? Lrow[q0 + r] : 0.f;
            Ds[r] = ok ? Drow[q0 + r] : 0.f;
        }
        __syncthreads();
        if (qt < qt_first) {
            int any_dead = 0;
            for (int r = 0; r < BM; ++r) any_dead |= (q0 + r < Tq && Ms[r] <= MASKED_SCORE) ? 1 : 0;
            if (!any_dead) continue;  // same decision in every thread
        }
        attn_stage<BM, HD, NT>(Qs, Q, q0, Tq, d);
        attn_stage<BM, HD, NT>(dOs, dO, q0, Tq, d);
        __syncthreads();
        for (int i = part; i < BM; i += ATTN_TPR) {
            const int qi = q0 + i;
            float p = 0.f, ds = 0.f;
            if (qi < Tq && kj < Tk) {
                const bool ok = attn_allowed(qi, kj, Tq, Tk, causal, kpm_row);
                float qk = 0.f, dp = 0.f;
                for (int c = 0; c < d; ++c) {
                    qk += Qs[i][c] * Ks[krow][c];
                    dp += dOs[i][c] * Vs[krow][c];
                }
                const float s = ok ? qk * scale : MASKED_SCORE;
                p = __expf((s - Ms[i]) - Ls[i]);
                ds = ok ? p * (dp - Ds[i]) : 0.f;
            }
            Ps[krow][i] = p;
            dSs[krow][i] = ds;
        }
        __syncthreads();
        for (int i = 0; i < BM; ++i) {
            const float p = Ps[krow][i], ds = dSs[krow][i];
#pragma unroll
            for (int cc = 0; cc < CPT; ++cc) {
                const int c = part + ATTN_TPR * cc;
                if (c < d) {
                    dv[cc] += p * dOs[i][c];
                    dk[cc] += ds * Qs[i][c];
                }
            }
        }
    }
    if (kj < Tk) {
#pragma unroll
        for (int cc = 0; cc < CPT; ++cc) {
            const int c = part + ATTN_TPR * cc;
            if (c < d) {
                dK[(long long)kj * d + c] = dk[cc] * scale;
                dV[(long long)kj * d + c] = dv[cc];
            }
        }
    }
}

// Backward step 3: dQ for BM queries per block. Grid (ceil(Tq/BM), BH), block (BM·TPR).
template <int HD, int BM, int BN>
__device__ void flash_bwd_dq(const float* Q, const float* K, const float* V, const float* dO,
                             const float* Mrow, const float* Lrow, const float* Drow, float* dQ,
                             const unsigned char* kpm, int has_mask, int Tq, int Tk, int d, float scale,
                             int causal) {
    constexpr int NT = BM * ATTN_TPR, CPT = HD / ATTN_TPR;
    __shared__ float Qs[BM][HD + 1];
    __shared__ float dOs[BM][HD + 1];
    __shared__ float Ks[BN][HD + 1];
    __shared__ float Vs[BN][HD + 1];
    __shared__ float dSs[BM][BN + 1];
    const int tid = threadIdx.x, row = tid / ATTN_TPR, part = tid % ATTN_TPR;
    const long long bh = blockIdx.y;
    const int q0 = blockIdx.x * BM, qi = q0 + row;
    Q += bh * Tq * d;
    dO += bh * Tq * d;
    dQ += bh * Tq * d;
    K += bh * Tk * d;
    V += bh * Tk * d;
    const unsigned char* kpm_row = has_mask ? kpm + bh * Tk : nullptr;
    const bool live = qi < Tq;
    const float m = live ? Mrow[bh * Tq + qi] : 0.f;
    const float logl = live ? Lrow[bh * Tq + qi] : 0.f;
    const float D = live ? Drow[bh * Tq + qi] : 0.f;

    attn_stage<BM, HD, NT>(Qs, Q, q0, Tq, d);
    attn_stage<BM, HD, NT>(dOs, dO, q0, Tq, d);
    float dq[CPT];
#pragma unroll
    for (int cc = 0; cc < CPT; ++cc) dq[cc] = 0.f;
    // masked pairs have dS = 0, so key tiles past the causal limit contribute nothing here
    const int kt_end = attn_causal_tiles(q0, BM, Tq, Tk, BN, causal);
    for (int kt = 0; kt < kt_end; ++kt) {
        const int k0 = kt * BN;
        __syncthreads();
        attn_stage<BN, HD, NT>(Ks, K, k0, Tk, d);
        attn_stage<BN, HD, NT>(Vs, V, k0, Tk, d);
        __syncthreads();
        for (int j = part; j < BN; j += ATTN_TPR) {
            const int kj = k0 + j;
            float ds = 0.f;
            if (live && kj < Tk && attn_allowed(qi, kj, Tq, Tk, causal, kpm_row)) {
                float qk = 0.f, dp = 0.f;
                for (int c = 0; c < d; ++c) {
                    qk += Qs[row][c] * Ks[j][c];
                    dp += dOs[row][c] * Vs[j][c];
                }
                const float p = __expf((qk * scale - m) - logl);
                ds = p * (dp - D);
            }
            dSs[row][j] = ds;
        }
        __syncthreads();
        for (int j = 0; j < BN; ++j) {
            const float ds = dSs[row][j];
#pragma unroll
            for (int cc = 0; cc < CPT; ++cc) {
                const int c = part + ATTN_TPR * cc;
                if (c < d) dq[cc] += ds * Ks[j][c];
            }
        }
    }
    if (live) {
#pragma unroll
        for (int cc = 0; cc < CPT; ++cc) {
            const int c = part + ATTN_TPR * cc;
            if (c < d) dQ[(long long)qi * d + c] = dq[cc] * scale;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Backward v2 (d <= 64): the two backward kernels with 2D register blocking (like forward v2).
// dK/dV: a block of (BN/4)·8 threads owns BN keys; thread (ty, tx) = (tid / 8, tid % 8) owns keys
// ty·4 .. ty·4+3 and, per query step, queries tx + 8u (u < BM/8) of Sᵀ and dPᵀ, then the columns
// tx·8 .. tx·8+7 of dK and dV. K and V are staged transposed (float4 over 4 keys), Q and dO row-major with
// rows padded to HD+4 floats (conflict-free column reads, float4-aligned row reads).
// Grid (ceil(Tk/BN), BH), block ((BN/4)·8).
template <int BM, int BN>
__device__ void flash_bwd_dkdv_v2(const float* Q, const float* K, const float* V, const float* dO,
                                  const float* Mrow, const float* Lrow, const float* Drow, float* dK, float* dV,
                                  const unsigned char* kpm, int has_mask, int Tq, int Tk, int d, float scale,
                                  int causal) {
    constexpr int HD = 64, TX = 8, NT = (BN / 4) * TX, QN = BM / TX, CN = HD / TX;
    static_assert(BN % 4 == 0 && BM % TX == 0, "dkdv v2 tiles: BN multiple of 4, BM multiple of 8");
    __shared__ __align__(16) float KsT[HD][BN];
    __shared__ __align__(16) float VsT[HD][BN];
    __shared__ __align__(16) float Qs[BM][HD + 4];
    __shared__ __align__(16) float dOs[BM][HD + 4];
    __shared__ __align__(16) float Ps[BM][BN];
    __shared__ __align__(16) float dSs[BM][BN];
    __shared__ float Ms[BM], Ls[BM], Ds[BM];
    const int tid = threadIdx.x, ty = tid / TX, tx = tid % TX;
    const long long bh = blockIdx.y;
    const int k0 = blockIdx.x * BN;
    Q += bh * Tq * d;
    dO += bh * Tq * d;
    K += bh * Tk * d;
    V += bh * Tk * d;
    dK += bh * Tk * d;
    dV += bh * Tk * d;
    Mrow += bh * Tq;
    Lrow += bh * Tq;
    Drow += bh * Tq;
    const unsigned char* kpm_row = has_mask ? kpm + bh * Tk : nullptr;

    for (int idx = tid; idx < BN * d; idx += NT) {
        int j = idx / d, c = idx % d;
        bool ok = k0 + j < Tk;
        KsT[c][j] = ok ? K[(long long)(k0 + j) * d + c] : 0.f;
        VsT[c][j] = ok ? V[(long long)(k0 + j) * d + c] : 0.f;
    }
    float dk[4][CN], dv[4][CN];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < CN; ++c) dk[r][c] = dv[r][c] = 0.f;

    const int n_qt = (Tq + BM - 1) / BM;
    int qt_first = 0;  // as in v1: earlier query tiles see none of these keys unless a row is fully masked
    if (causal) qt_first = min(n_qt, max(0, k0 - (Tk - Tq)) / BM);
    for (int qt = 0; qt < n_qt; ++qt) {
        const int q0 = qt * BM;
        __syncthreads();  // previous step's readers are done (and KsT/VsT staged, on the first step)
        for (int r = tid; r < BM; r += NT) {
            const bool ok = q0 + r < Tq;
            Ms[r] = ok ? Mrow[q0 + r] : 0.f;
            Ls[r] = ok ? Lrow[q0 + r] : 0.f;
            Ds[r] = ok ? Drow[q0 + r] : 0.f;
        }
        __syncthreads();
        if (qt < qt_first) {
            int any_dead = 0;
            for (int r = 0; r < BM; ++r) any_dead |= (q0 + r < Tq && Ms[r] <= MASKED_SCORE) ? 1 : 0;
            if (!any_dead) continue;  // same decision in every thread
        }
        for (int idx = tid; idx < BM * d; idx += NT) {
            int i = idx / d, c = idx % d;
            bool ok = q0 + i < Tq;
            Qs[i][c] = ok ? Q[(long long)(q0 + i) * d + c] : 0.f;
            dOs[i][c] = ok ? dO[(long long)(q0 + i) * d + c] : 0.f;
        }
        __syncthreads();
        float st[4][QN], dpt[4][QN];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int u = 0; u < QN; ++u) st[r][u] = dpt[r][u] = 0.f;
        for (int c = 0; c < d; ++c) {
            const float4 k4 = *reinterpret_cast<const float4*>(&KsT[c][ty * 4]);
            const float4 v4 = *reinterpret_cast<const float4*>(&VsT[c][ty * 4]);
            const float kr[4] = {k4.x, k4.y, k4.z, k4.w}, vr[4] = {v4.x, v4.y, v4.z, v4.w};
#pragma unroll
            for (int u = 0; u < QN; ++u) {
                const float qv = Qs[tx + TX * u][c], ov = dOs[tx + TX * u][c];
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    st[r][u] += kr[r] * qv;
                    dpt[r][u] += vr[r] * ov;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < QN; ++u) {
            const int i = tx + TX * u, qi = q0 + i;
            float p[4], ds[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int kj = k0 + ty * 4 + r;
                p[r] = 0.f;
                ds[r] = 0.f;
                if (qi < Tq && kj < Tk) {
                    const bool ok = attn_allowed(qi, kj, Tq, Tk, causal, kpm_row);
                    const float s = ok ? st[r][u] * scale : MASKED_SCORE;
                    p[r] = __expf((s - Ms[i]) - Ls[i]);
                    ds[r] = ok ? p[r] * (dpt[r][u] - Ds[i]) : 0.f;
                }
            }
            *reinterpret_cast<float4*>(&Ps[i][ty * 4]) = make_float4(p[0], p[1], p[2], p[3]);
            *reinterpret_cast<float4*>(&dSs[i][ty * 4]) = make_float4(ds[0], ds[1], ds[2], ds[3]);
        }
        __syncthreads();
        for (int i = 0; i < BM; ++i) {
            const float4 p4 = *reinterpret_cast<const float4*>(&Ps[i][ty * 4]);
            const float4 s4 = *reinterpret_cast<const float4*>(&dSs[i][ty * 4]);
            const float pr[4] = {p4.x, p4.y, p4.z, p4.w}, sr[4] = {s4.x, s4.y, s4.z, s4.w};
            float oc[CN], qc[CN];
#pragma unroll
            for (int c = 0; c < CN; c += 4) {
                const float4 o4 = *reinterpret_cast<const float4*>(&dOs[i][tx * CN + c]);
                const float4 q4 = *reinterpret_cast<const float4*>(&Qs[i][tx * CN + c]);
                oc[c] = o4.x; oc[c + 1] = o4.y; oc[c + 2] = o4.z; oc[c + 3] = o4.w;
                qc[c] = q4.x; qc[c + 1] = q4.y; qc[c + 2] = q4.z; qc[c + 3] = q4.w;
            }
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int c = 0; c < CN; ++c) {
                    dv[r][c] += pr[r] * oc[c];
                    dk[r][c] += sr[r] * qc[c];
                }
        }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int kj = k0 + ty * 4 + r;
        if (kj >= Tk) continue;
#pragma unroll
        for (int c = 0; c < CN; ++c) {
            const int col = tx * CN + c;
            if (col < d) {
                dK[(long long)kj * d + col] = dk[r][c] * scale;
                dV[(long long)kj * d + col] = dv[r][c];
            }
        }
    }
}

// dQ v2: a block of (BM/4)·8 threads owns BM queries; thread (ty, tx) owns queries ty·4 .. ty·4+3, per key
// step the keys tx + 8u (u < BN/8) of S and dP, then the columns tx·8 .. tx·8+7 of dQ.
// Grid (ceil(Tq/BM), BH), block ((BM/4)·8).
template <int BM, int BN>
__device__ void flash_bwd_dq_v2(const float* Q, const float* K, const float* V, const float* dO,
                                const float* Mrow, const float* Lrow, const float* Drow, float* dQ,
                                const unsigned char* kpm, int has_mask, int Tq, int Tk, int d, float scale,
                                int causal) {
    constexpr int HD = 64, TX = 8, NT = (BM / 4) * TX, KN = BN / TX, CN = HD / TX;
    static_assert(BM % 4 == 0 && BN % TX == 0, "dq v2 tiles: BM multiple of 4, BN multiple of 8");
    __shared__ __align__(16) float QsT[HD][BM];
    __shared__ __align__(16) float dOsT[HD][BM];
    __shared__ __align__(16) float Ks[BN][HD + 4];
    __shared__ __align__(16) float Vs[BN][HD + 4];
    __shared__ __align__(16) float dSs[BN][BM];
    const int tid = threadIdx.x, ty = tid / TX, tx = tid % TX;
    const long long bh = blockIdx.y;
    const int q0 = blockIdx.x * BM;
    Q += bh * Tq * d;
    dO += bh * Tq * d;
    dQ += bh * Tq * d;
    K += bh * Tk * d;
    V += bh * Tk * d;
    const unsigned char* kpm_row = has_mask ? kpm + bh * Tk : nullptr;
    float m[4], logl[4], D[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int qi = q0 + ty * 4 + r;
        const bool live = qi < Tq;
        m[r] = live ? Mrow[bh * Tq + qi] : 0.f;
        logl[r] = live ? Lrow[bh * Tq + qi] : 0.f;
        D[r] = live ? Drow[bh * Tq + qi] : 0.f;
    }
    for (int idx = tid; idx < BM * d; idx += NT) {
        int i = idx / d, c = idx % d;
        bool ok = q0 + i < Tq;
        QsT[c][i] = ok ? Q[(long long)(q0 + i) * d + c] : 0.f;
        dOsT[c][i] = ok ? dO[(long long)(q0 + i) * d + c] : 0.f;
    }
    float dq[4][CN];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < CN; ++c) dq[r][c] = 0.f;
    const int kt_end = attn_causal_tiles(q0, BM, Tq, Tk, BN, causal);  // masked pairs have dS = 0
    for (int kt = 0; kt < kt_end; ++kt) {
        const int k0 = kt * BN;
        __syncthreads();
        for (int idx = tid; idx < BN * d; idx += NT) {
            int j = idx / d, c = idx % d;
            bool ok = k0 + j < Tk;
            Ks[j][c] = ok ? K[(long long)(k0 + j) * d + c] : 0.f;
            Vs[j][c] = ok ? V[(long long)(k0 + j) * d + c] : 0.f;
        }
        __syncthreads();
        float s[4][KN], dp[4][KN];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int u = 0; u < KN; ++u) s[r][u] = dp[r][u] = 0.f;
        for (int c = 0; c < d; ++c) {
            const float4 q4 = *reinterpret_cast<const float4*>(&QsT[c][ty * 4]);
            const float4 o4 = *reinterpret_cast<const float4*>(&dOsT[c][ty * 4]);
            const float qr[4] = {q4.x, q4.y, q4.z, q4.w}, orr[4] = {o4.x, o4.y, o4.z, o4.w};
#pragma unroll
            for (int u = 0; u < KN; ++u) {
                const float kv = Ks[tx + TX * u][c], vv = Vs[tx + TX * u][c];
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    s[r][u] += qr[r] * kv;
                    dp[r][u] += orr[r] * vv;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < KN; ++u) {
            const int j = tx + TX * u, kj = k0 + j;
            float ds[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int qi = q0 + ty * 4 + r;
                ds[r] = 0.f;
                if (qi < Tq && kj < Tk && attn_allowed(qi, kj, Tq, Tk, causal, kpm_row)) {
                    const float p = __expf((s[r][u] * scale - m[r]) - logl[r]);
                    ds[r] = p * (dp[r][u] - D[r]);
                }
            }
            *reinterpret_cast<float4*>(&dSs[j][ty * 4]) = make_float4(ds[0], ds[1], ds[2], ds[3]);
        }
        __syncthreads();
        for (int j = 0; j < BN; ++j) {
            const float4 s4 = *reinterpret_cast<const float4*>(&dSs[j][ty * 4]);
            const float sr[4] = {s4.x, s4.y, s4.z, s4.w};
            float kc[CN];
#pragma unroll
            for (int c = 0; c < CN; c += 4) {
                const float4 k4 = *reinterpret_cast<const float4*>(&Ks[j][tx * CN + c]);
                kc[c] = k4.x; kc[c + 1] = k4.y; kc[c + 2] = k4.z; kc[c + 3] = k4.w;
            }
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int c = 0; c < CN; ++c) dq[r][c] += sr[r] * kc[c];
        }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int qi = q0 + ty * 4 + r;
        if (qi >= Tq) continue;
#pragma unroll
        for (int c = 0; c < CN; ++c) {
            const int col = tx * CN + c;
            if (col < d) dQ[(long long)qi * d + col] = dq[r][c] * scale;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The kernels: one instantiation for d <= 64 and one for d <= 128.
#define ATTN_FWD_ARGS                                                                                       \
    const float *Q, const float *K, const float *V, float *O, float *Mrow, float *Lrow,                    \
        const unsigned char *kpm, int has_mask, int Tq, int Tk, int d, float scale, int causal
#define ATTN_BWD_ARGS                                                                                       \
    const float *Q, const float *K, const float *V, const float *dO, const float *Mrow, const float *Lrow, \
        const float *Drow, const unsigned char *kpm, int has_mask, int Tq, int Tk, int d, float scale,      \
        int causal

extern "C" __global__ void __launch_bounds__(FWD64_BM * ATTN_TPR) flash_fwd_d64(ATTN_FWD_ARGS) {
    flash_fwd<64, FWD64_BM, FWD64_BN>(Q, K, V, O, Mrow, Lrow, kpm, has_mask, Tq, Tk, d, scale, causal);
}
extern "C" __global__ void __launch_bounds__(FWD128_BM * ATTN_TPR) flash_fwd_d128(ATTN_FWD_ARGS) {
    flash_fwd<128, FWD128_BM, FWD128_BN>(Q, K, V, O, Mrow, Lrow, kpm, has_mask, Tq, Tk, d, scale, causal);
}
extern "C" __global__ void __launch_bounds__((FWD2_BM / 4) * 16) flash_fwd_v2_d64(ATTN_FWD_ARGS) {
    flash_fwd_v2<FWD2_BM, FWD2_BN>(Q, K, V, O, Mrow, Lrow, kpm, has_mask, Tq, Tk, d, scale, causal);
}
extern "C" __global__ void __launch_bounds__(BWD64_BN * ATTN_TPR)
    flash_bwd_dkdv_d64(ATTN_BWD_ARGS, float* dK, float* dV) {
    flash_bwd_dkdv<64, BWD64_BM, BWD64_BN>(Q, K, V, dO, Mrow, Lrow, Drow, dK, dV, kpm, has_mask, Tq, Tk, d,
                                           scale, causal);
}
extern "C" __global__ void __launch_bounds__(BWD128_BN * ATTN_TPR)
    flash_bwd_dkdv_d128(ATTN_BWD_ARGS, float* dK, float* dV) {
    flash_bwd_dkdv<128, BWD128_BM, BWD128_BN>(Q, K, V, dO, Mrow, Lrow, Drow, dK, dV, kpm, has_mask, Tq, Tk,
                                              d, scale, causal);
}
extern "C" __global__ void __launch_bounds__(BWD64_BM * ATTN_TPR) flash_bwd_dq_d64(ATTN_BWD_ARGS, float* dQ) {
    flash_bwd_dq<64, BWD64_BM, BWD64_BN>(Q, K, V, dO, Mrow, Lrow, Drow, dQ, kpm, has_mask, Tq, Tk, d, scale,
                                         causal);
}
extern "C" __global__ void __launch_bounds__(BWD128_BM * ATTN_TPR) flash_bwd_dq_d128(ATTN_BWD_ARGS, float* dQ) {
    flash_bwd_dq<128, BWD128_BM, BWD128_BN>(Q, K, V, dO, Mrow, Lrow, Drow, dQ, kpm, has_mask, Tq, Tk, d,
                                            scale, causal);
}
extern "C" __global__ void __launch_bounds__((BWD2_BN / 4) * 8)
    flash_bwd_dkdv_v2_d64(ATTN_BWD_ARGS, float* dK, float* dV) {
    flash_bwd_dkdv_v2<BWD2_BM, BWD2_BN>(Q, K, V, dO, Mrow, Lrow, Drow, dK, dV, kpm, has_mask, Tq, Tk, d, scale,
                                        causal);
}
extern "C" __global__ void __launch_bounds__((DQ2_BM / 4) * 8) flash_bwd_dq_v2_d64(ATTN_BWD_ARGS, float* dQ) {
    flash_bwd_dq_v2<DQ2_BM, DQ2_BN>(Q, K, V, dO, Mrow, Lrow, Drow, dQ, kpm, has_mask, Tq, Tk, d, scale, causal);
}
