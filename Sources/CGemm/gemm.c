// segtrain's single-precision GEMM for AVX-512 (declared in cgemm.h).
//
// Why it exists: on CPUs with AVX-512, OpenBLAS runs its AVX2 kernels whenever OPENBLAS_CORETYPE
// names an AVX2 family (a Zen 5 machine's environment set Haswell), and then segtrain's
// convolutions ran at about 115 GFLOP/s per core where PyTorch's oneDNN runs AVX-512. This kernel
// gives 190-240 GFLOP/s per core on the convolutions' shapes on that Zen 5, as OpenBLAS's own
// Cooperlake kernels do (docs/PERFORMANCE.md).
//
// The structure is the classic one (Goto; BLIS): C is cut into NC-wide column blocks; for each
// block of KC values of k, op(B) is packed into NR-wide micro-panels (k-major, zero-padded) and
// op(A) into MR-row micro-panels of MC rows (k-major, alpha applied, zero-padded); the micro-kernel
// multiplies one A micro-panel by one B micro-panel into an MR x NR tile of C held in 24 zmm
// registers (8 rows x 3 vectors of 16 floats): per k, three loads of B, eight broadcasts of A,
// 24 FMAs. Column edges use 1, 2 or 3 vectors and masked loads/stores, row edges store only the
// rows that exist, so no element outside the m x n window of C is read or written. A transposed A
// with alpha = 1 is not packed: its rows already hold a panel's 8 values per k, read in place.
//
// The whole file compiles for the baseline x86-64; only the functions marked avx512f use AVX-512,
// and they run only after segtrain_gemm_avx512_usable() said yes.

#include "cgemm.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum {
    MR = 8,     // rows of the micro-tile
    NR = 48,    // columns of the micro-tile: three vectors of 16 floats
    KC = 256,   // k per packed block (an A micro-panel is 8 KiB, a B micro-panel 48 KiB)
    MC = 96,    // rows of A packed at once (96 KiB, stays in L2); a multiple of MR
    NC = 2304   // columns of B packed at once (2.25 MiB); a multiple of NR
};

int segtrain_gemm_avx512_usable(void) {
    static int known = -1;  // -1: not asked yet; every thread computes the same answer
    int answer = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (answer < 0) {
        __builtin_cpu_init();
        answer = __builtin_cpu_supports("avx512f") ? 1 : 0;  // also requires the OS to save zmm state
        __atomic_store_n(&known, answer, __ATOMIC_RELAXED);
    }
    return answer;
}

// Each thread's packing buffers, allocated on its first call and freed when it exits.
static pthread_key_t buffer_key;
static pthread_once_t buffer_once = PTHREAD_ONCE_INIT;
static int buffer_key_made;

static void make_buffer_key(void) { buffer_key_made = pthread_key_create(&buffer_key, free) == 0; }

static float *thread_buffers(void) {
    pthread_once(&buffer_once, make_buffer_key);
    if (!buffer_key_made) return NULL;
    float *p = pthread_getspecific(buffer_key);
    if (p) return p;
    p = aligned_alloc(64, sizeof(float) * (MC * KC + KC * NC));
    if (!p) return NULL;
    if (pthread_setspecific(buffer_key, p) != 0) { free(p); return NULL; }
    return p;
}

// op(B)[0..kc), j0..) as NR-column micro-panels: panel r holds p[r*NR*kc + k*NR + j] = B(k, r*NR+j)
// (B not transposed; pack_b_transposed below packs a transposed one).
/// Mask of the first n columns of a 16-float vector (none for n <= 0, all for n >= 16).
__attribute__((target("avx512f"), always_inline))
static inline __mmask16 column_mask(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

// Three masked vector copies per row (zeros past the last column) instead of a memcpy and a
// memset call per row: the rows are short (48 floats), and narrow products have many of them.
__attribute__((target("avx512f")))
static void pack_b(int kc, int nc, const float *b, long ldb, float *p) {
    for (int j0 = 0; j0 < nc; j0 += NR, p += NR * kc) {
        int nr = nc - j0 < NR ? nc - j0 : NR;
        __mmask16 m0 = column_mask(nr), m1 = column_mask(nr - 16), m2 = column_mask(nr - 32);
        for (int k = 0; k < kc; k++) {
            const float *src = b + (long)k * ldb + j0;
            float *dst = p + k * NR;
            _mm512_storeu_ps(dst, _mm512_maskz_loadu_ps(m0, src));
            _mm512_storeu_ps(dst + 16, _mm512_maskz_loadu_ps(m1, src + 16));
            _mm512_storeu_ps(dst + 32, _mm512_maskz_loadu_ps(m2, src + 32));
        }
    }
}

// r[q][i] <- r[i][q]: a 16 x 16 transpose in four rounds of shuffles (pairs of floats, pairs of
// doubles, then 128-bit lanes twice).
__attribute__((target("avx512f"), always_inline))
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 16; g += 4) {
        __m512d t0 = _mm512_castps_pd(t[g]), t1 = _mm512_castps_pd(t[g + 1]);
        __m512d t2 = _mm512_castps_pd(t[g + 2]), t3 = _mm512_castps_pd(t[g + 3]);
        r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + 4 + i], 0x88);
            t[h + 4 + i] = _mm512_shuffle_f32x4(r[h + i], r[h + 4 + i], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
    }
}

// pack_b for a transposed B (B(k, j) = b[j * ldb + k]): rows of B^T are read 16 values of k at a
// time for 16 columns and transposed in registers, instead of one strided store per value.
__attribute__((target("avx512f")))
static void pack_b_transposed(int kc, int nc, const float *b, long ldb, float *p) {
    for (int j0 = 0; j0 < nc; j0 += NR, p += NR * kc) {
        int nr = nc - j0 < NR ? nc - j0 : NR;
        for (int g = 0; g < NR; g += 16) {
            for (int k0 = 0; k0 < kc; k0 += 16) {
                int kn = kc - k0 < 16 ? kc - k0 : 16;
                __mmask16 mask = kn == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << kn) - 1);
                __m512 r[16];
                for (int i = 0; i < 16; i++)
                    r[i] = g + i < nr ? _mm512_maskz_loadu_ps(mask, b + (long)(j0 + g + i) * ldb + k0) : _mm512_setzero_ps();
                transpose16(r);
                for (int q = 0; q < kn; q++) _mm512_store_ps(p + (long)(k0 + q) * NR + g, r[q]);
            }
        }
    }
}

// p[q*MR + i] = r[i][q] for q < kn: the eight rows of 16 values of k, transposed into kn panel rows of
// 8 floats. Two rounds of in-lane shuffles gather each 128-bit lane's four k positions for rows 0-3
// and rows 4-7, and one two-source permute a time joins the halves of two k positions (24 shuffles,
// where a 16 x 16 transpose of the eight rows and eight zero rows took 64).
__attribute__((target("avx512f"), always_inline))
static inline void store_transposed8x16(const __m512 r[8], int kn, float *p) {
    __m512 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);      // lane L: r0[4L] r1[4L] r0[4L+1] r1[4L+1]
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);  // lane L: r0[4L+2] r1[4L+2] r0[4L+3] r1[4L+3]
    }
    for (int h = 0; h < 2; h++) {  // u[4h + e], lane L: rows 4h..4h+3 at k = 4L + e
        __m512d a = _mm512_castps_pd(t[4 * h]), b = _mm512_castps_pd(t[4 * h + 1]);
        __m512d c = _mm512_castps_pd(t[4 * h + 2]), d = _mm512_castps_pd(t[4 * h + 3]);
        u[4 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * h + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * h + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    // Lanes 0 and 1 of both halves (k = e and 4 + e), then lanes 2 and 3 (k = 8 + e and 12 + e).
    const __m512i low = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i high = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int e = 0; e < 4; e++) {
        __m512 v[2] = {_mm512_permutex2var_ps(u[e], low, u[4 + e]), _mm512_permutex2var_ps(u[e], high, u[4 + e])};
        for (int j = 0; j < 2; j++) {
            int q = 8 * j + e;  // v[j] holds k = q (low 256 bits) and k = q + 4 (high 256 bits)
            if (q < kn) _mm256_store_ps(p + q * MR, _mm512_castps512_ps256(v[j]));
            if (q + 4 < kn)
                _mm256_store_ps(p + (q + 4) * MR, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[j]), 1)));
        }
    }
}

// op(A)[i0.., 0..kc) as MR-row micro-panels: panel r holds p[r*MR*kc + k*MR + i] = alpha * A(i0+r*MR+i, k)
// (zero rows pad the last panel). A row-major A is read 16 values of k at a time for its 8 rows and
// transposed in registers (store_transposed8x16); a transposed A is copied 8 floats (one row of the
// panel) at a time.
__attribute__((target("avx512f")))
static void pack_a_vector(int mc, int kc, const float *a, long lda, int trans, float alpha, float *p) {
    __m512 scale = _mm512_set1_ps(alpha);
    for (int i0 = 0; i0 < mc; i0 += MR, p += MR * kc) {
        int mr = mc - i0 < MR ? mc - i0 : MR;
        __mmask16 rows = (__mmask16)((1u << mr) - 1);
        if (!trans) {
            for (int k0 = 0; k0 < kc; k0 += 16) {
                int kn = kc - k0 < 16 ? kc - k0 : 16;
                __mmask16 mask = kn == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << kn) - 1);
                __m512 r[MR];
                for (int i = 0; i < MR; i++)
                    r[i] = i < mr ? _mm512_mul_ps(scale, _mm512_maskz_loadu_ps(mask, a + (long)(i0 + i) * lda + k0))
                                  : _mm512_setzero_ps();
                store_transposed8x16(r, kn, p + (long)k0 * MR);
            }
        } else {
            for (int k = 0; k < kc; k++) {
                __m512 v = _mm512_mul_ps(scale, _mm512_maskz_loadu_ps(rows, a + (long)k * lda + i0));
                _mm256_store_ps(p + (long)k * MR, _mm512_castps512_ps256(v));
            }
        }
    }
}

// C tile (mr x up to 16*nv columns, the last vector masked by `last`) (+)= A panel * B panel.
__attribute__((target("avx512f"), always_inline))
static inline void micro_tile(int nv, int kc, const float *a, long as, const float *b, float *c, long ldc,
                              int mr, __mmask16 last, int accumulate) {
    __m512 acc[MR][3];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < 3; j++) acc[i][j] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++, a += as, b += NR) {
        __m512 b0 = _mm512_load_ps(b);
        __m512 b1 = nv > 1 ? _mm512_load_ps(b + 16) : b0;
        __m512 b2 = nv > 2 ? _mm512_load_ps(b + 32) : b0;
#pragma unroll
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            if (nv > 1) acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
            if (nv > 2) acc[i][2] = _mm512_fmadd_ps(ai, b2, acc[i][2]);
        }
    }
#pragma unroll
    for (int i = 0; i < MR; i++) {
        if (i >= mr) break;
        float *row = c + (long)i * ldc;
#pragma unroll
        for (int j = 0; j < 3; j++) {
            if (j >= nv) break;
            __mmask16 mask = j == nv - 1 ? last : (__mmask16)0xFFFF;
            __m512 v = acc[i][j];
            if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, row + 16 * j));
            _mm512_mask_storeu_ps(row + 16 * j, mask, v);
        }
    }
}

__attribute__((target("avx512f"), noinline))
static void micro_tile1(int kc, const float *a, long as, const float *b, float *c, long ldc, int mr, __mmask16 last,
                        int acc) {
    micro_tile(1, kc, a, as, b, c, ldc, mr, last, acc);
}
__attribute__((target("avx512f"), noinline))
static void micro_tile2(int kc, const float *a, long as, const float *b, float *c, long ldc, int mr, __mmask16 last,
                        int acc) {
    micro_tile(2, kc, a, as, b, c, ldc, mr, last, acc);
}
__attribute__((target("avx512f"), noinline))
static void micro_tile3(int kc, const float *a, long as, const float *b, float *c, long ldc, int mr, __mmask16 last,
                        int acc) {
    micro_tile(3, kc, a, as, b, c, ldc, mr, last, acc);
}

int segtrain_sgemm_avx512(int trans_a, int trans_b, int m, int n, int k, float alpha,
                          const float *a, int lda, const float *b, int ldb,
                          float beta, float *c, int ldc) {
    if (!segtrain_gemm_avx512_usable()) return -1;
    if (m <= 0 || n <= 0) return 0;
    float *packed_a = NULL, *packed_b = NULL;
    if (k > 0 && alpha != 0) {
        float *buffers = thread_buffers();
        if (!buffers) return -1;
        packed_a = buffers;
        packed_b = buffers + MC * KC;
    }
    // beta other than 0 and 1: scale C first, then accumulate into it.
    if (beta != 0 && beta != 1)
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c[(long)i * ldc + j] *= beta;
    if (!packed_a) {  // nothing to add: C = beta * C
        if (beta == 0)
            for (int i = 0; i < m; i++) memset(c + (long)i * ldc, 0, sizeof(float) * n);
        return 0;
    }
    for (int jc = 0; jc < n; jc += NC) {
        int nc = n - jc < NC ? n - jc : NC;
        for (int pc = 0; pc < k; pc += KC) {
            int kc = k - pc < KC ? k - pc : KC;
            if (trans_b) pack_b_transposed(kc, nc, b + (long)jc * ldb + pc, ldb, packed_b);
            else pack_b(kc, nc, b + (long)pc * ldb + jc, ldb, packed_b);
            int accumulate = pc > 0 || beta != 0;
            for (int ic = 0; ic < m; ic += MC) {
                int mc = m - ic < MC ? m - ic : MC;
                // A transposed and unscaled: its rows are the panels' k-rows already (8 floats at a
                // stride of lda), so full panels are read in place; only a last partial one is packed.
                int direct = trans_a && alpha == 1;
                const float *a_block = trans_a ? a + (long)pc * lda + ic : a + (long)ic * lda + pc;
                int packed_from = direct ? mc / MR * MR : 0;
                if (packed_from < mc)
                    pack_a_vector(mc - packed_from, kc, trans_a ? a_block + packed_from : a_block + (long)packed_from * lda,
                                  lda, trans_a, alpha, packed_a);
                for (int jr = 0; jr < nc; jr += NR) {
                    int nr = nc - jr < NR ? nc - jr : NR;
                    int nv = (nr + 15) / 16;
                    __mmask16 last = nr % 16 == 0 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nr % 16)) - 1);
                    const float *bp = packed_b + (long)jr * kc;
                    for (int ir = 0; ir < mc; ir += MR) {
                        int mr = mc - ir < MR ? mc - ir : MR;
                        const float *ap = ir < packed_from ? a_block + ir : packed_a + (long)(ir - packed_from) * kc;
                        long as = ir < packed_from ? lda : MR;
                        float *cp = c + (long)(ic + ir) * ldc + jc + jr;
                        if (nv == 3) micro_tile3(kc, ap, as, bp, cp, ldc, mr, last, accumulate);
                        else if (nv == 2) micro_tile2(kc, ap, as, bp, cp, ldc, mr, last, accumulate);
                        else micro_tile1(kc, ap, as, bp, cp, ldc, mr, last, accumulate);
                    }
                }
            }
        }
    }
    return 0;
}

#else  // not x86_64: OpenBLAS does all of it

int segtrain_gemm_avx512_usable(void) { return 0; }

int segtrain_sgemm_avx512(int trans_a, int trans_b, int m, int n, int k, float alpha,
                          const float *a, int lda, const float *b, int ldb,
                          float beta, float *c, int ldc) {
    (void)trans_a; (void)trans_b; (void)m; (void)n; (void)k; (void)alpha;
    (void)a; (void)lda; (void)b; (void)ldb; (void)beta; (void)c; (void)ldc;
    return -1;
}

#endif
