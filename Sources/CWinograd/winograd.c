// AVX-512 versions of Winograd transforms: see include/cwinograd.h. Sixteen tiles (or columns) per
// vector, masked at the ends of rows instead of scalar tails, and the even/odd columns of a row
// picked by one two-source permute instead of a shuffle loop. Every value is computed by the same
// additions and subtractions, in the same order, as the portable Swift version.

#include "cwinograd.h"

#if defined(__x86_64__)
#include <immintrin.h>

/// Mask of the first n (<= 16) lanes.
__attribute__((target("avx512f"), always_inline))
static inline __mmask16 lanes(long n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/// Prefetches rows [first, first + count) of an h x w plane (clipped to it): the rows a band's next tile row
/// adds, or the next channel's first rows. The hardware prefetchers lose the stream at those jumps
/// between bands and planes, and the transforms then wait on memory.
__attribute__((always_inline))
static inline void prefetch_rows(const float *plane, long h, long w, long first, long count) {
    long lo = first < 0 ? 0 : first, hi = first + count > h ? h : first + count;
    for (long r = lo; r < hi; r++)
        for (long j = 0; j < w; j += 16) _mm_prefetch((const char *)(plane + r * w + j), _MM_HINT_T0);
}

__attribute__((target("avx512f")))
void segtrain_winograd_input_f2_avx512(const float *x, int channels, int height, int width, int tiles_wide,
                                       int row_start, int rows, float *v, long tiles, float *buffer) {
    const long h = height, w = width, tw = tiles_wide, rs = 2 * tw + 4;
    const long stride = (long)channels * tiles;
    float *p0 = buffer, *p1 = p0 + rs, *p2 = p1 + rs, *p3 = p2 + rs;
    const __m512 zero = _mm512_setzero_ps();
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    // Index p of a padded row is column p - 1: p = 0 and p > w stay zero.
    for (int r = 0; r < 4; r++) {
        float *p = buffer + r * rs;
        p[0] = 0;
        for (long j = w + 1; j < rs; j++) p[j] = 0;
    }
    for (int c = 0; c < channels; c++) {
        const float *src = x + (long)c * h * w;
        for (int ty = row_start; ty < row_start + rows; ty++) {
            const long y0 = 2L * ty - 1;
            const float *d[4];
            for (int i = 0; i < 4; i++) d[i] = (y0 + i >= 0 && y0 + i < h) ? src + (y0 + i) * w : 0;
            if (ty + 1 < row_start + rows) prefetch_rows(src, h, w, y0 + 4, 2);
            else if (c + 1 < channels) prefetch_rows(src + h * w, h, w, 2L * row_start - 1, 4);
            // B^T d down the columns (rows outside the image are zeros, as the Swift zero row).
            for (long j = 0; j < w; j += 16) {
                __mmask16 m = lanes(w - j);
                __m512 a0 = d[0] ? _mm512_maskz_loadu_ps(m, d[0] + j) : zero;
                __m512 a1 = d[1] ? _mm512_maskz_loadu_ps(m, d[1] + j) : zero;
                __m512 a2 = d[2] ? _mm512_maskz_loadu_ps(m, d[2] + j) : zero;
                __m512 a3 = d[3] ? _mm512_maskz_loadu_ps(m, d[3] + j) : zero;
                _mm512_mask_storeu_ps(p0 + j + 1, m, _mm512_sub_ps(a0, a2));
                _mm512_mask_storeu_ps(p1 + j + 1, m, _mm512_add_ps(a1, a2));
                _mm512_mask_storeu_ps(p2 + j + 1, m, _mm512_sub_ps(a2, a1));
                _mm512_mask_storeu_ps(p3 + j + 1, m, _mm512_sub_ps(a1, a3));
            }
            // (B^T d) B along each row: tile tx reads p[2tx ..< 2tx + 4].
            float *out = v + (long)c * tiles + (long)(ty - row_start) * tw;
            for (int i = 0; i < 4; i++) {
                const float *p = buffer + i * rs;
                float *o0 = out + (4L * i) * stride, *o1 = o0 + stride, *o2 = o1 + stride, *o3 = o2 + stride;
                for (long tx = 0; tx < tw; tx += 16) {
                    const long base = 2 * tx;
                    __m512 lo = _mm512_maskz_loadu_ps(lanes(rs - base), p + base);
                    __m512 hi = _mm512_maskz_loadu_ps(lanes(rs - base - 16), p + base + 16);
                    __m512 lo2 = _mm512_maskz_loadu_ps(lanes(rs - base - 2), p + base + 2);
                    __m512 hi2 = _mm512_maskz_loadu_ps(lanes(rs - base - 18), p + base + 18);
                    __m512 a0 = _mm512_permutex2var_ps(lo, even, hi), a1 = _mm512_permutex2var_ps(lo, odd, hi);
                    __m512 a2 = _mm512_permutex2var_ps(lo2, even, hi2), a3 = _mm512_permutex2var_ps(lo2, odd, hi2);
                    __mmask16 m = lanes(tw - tx);
                    _mm512_mask_storeu_ps(o0 + tx, m, _mm512_sub_ps(a0, a2));
                    _mm512_mask_storeu_ps(o1 + tx, m, _mm512_add_ps(a1, a2));
                    _mm512_mask_storeu_ps(o2 + tx, m, _mm512_sub_ps(a2, a1));
                    _mm512_mask_storeu_ps(o3 + tx, m, _mm512_sub_ps(a1, a3));
                }
            }
        }
    }
}

/// B^T applied to six values, as inputTransform6 in Winograd.swift (same operations, same order).
#define INPUT_TRANSFORM6(a0, a1, a2, a3, a4, a5, r0, r1, r2, r3, r4, r5) do {                       \
        const __m512 four_ = _mm512_set1_ps(4), five_ = _mm512_set1_ps(5), two_ = _mm512_set1_ps(2);   \
        __m512 s12 = _mm512_add_ps(a1, a2), d12 = _mm512_sub_ps(a1, a2);                               \
        __m512 s34 = _mm512_add_ps(a3, a4), d43 = _mm512_sub_ps(a4, a3);                               \
        __m512 e = _mm512_sub_ps(a4, a2), f = _mm512_sub_ps(a3, a1);                                   \
        r0 = _mm512_add_ps(_mm512_sub_ps(_mm512_mul_ps(four_, a0), _mm512_mul_ps(five_, a2)), a4);     \
        r1 = _mm512_sub_ps(s34, _mm512_mul_ps(four_, s12));                                            \
        r2 = _mm512_add_ps(d43, _mm512_mul_ps(four_, d12));                                            \
        r3 = _mm512_add_ps(e, _mm512_mul_ps(two_, f));                                                 \
        r4 = _mm512_sub_ps(e, _mm512_mul_ps(two_, f));                                                 \
        r5 = _mm512_add_ps(_mm512_sub_ps(_mm512_mul_ps(four_, a1), _mm512_mul_ps(five_, a3)), a5);     \
    } while (0)

__attribute__((target("avx512f")))
void segtrain_winograd_input_f4_avx512(const float *x, int channels, int height, int width, int tiles_wide,
                                       int row_start, int rows, float *v, long tiles, float *buffer) {
    const long h = height, w = width, tw = tiles_wide, rs = 4 * tw + 4;
    const long stride = (long)channels * tiles;
    float *t[6];
    for (int r = 0; r < 6; r++) {
        t[r] = buffer + r * rs;
        t[r][0] = 0;
        for (long j = w + 1; j < rs; j++) t[r][j] = 0;
    }
    const __m512 zero = _mm512_setzero_ps();
    // From 32 floats (lo, hi): phase q of the first 32 in the low 8 lanes and phase q + 1 in the
    // high 8 (q = 0: p01, q = 2: p23), phase k being the floats at 4s + k.
    const __m512i p01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const __m512i p23 = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    for (int c = 0; c < channels; c++) {
        const float *src = x + (long)c * h * w;
        for (int ty = row_start; ty < row_start + rows; ty++) {
            const long y0 = 4L * ty - 1;
            const float *d[6];
            for (int i = 0; i < 6; i++) d[i] = (y0 + i >= 0 && y0 + i < h) ? src + (y0 + i) * w : 0;
            if (ty + 1 < row_start + rows) prefetch_rows(src, h, w, y0 + 6, 4);
            else if (c + 1 < channels) prefetch_rows(src + h * w, h, w, 4L * row_start - 1, 6);
            // B^T d down the columns, into the padded rows (index p = column + 1).
            for (long j = 0; j < w; j += 16) {
                __mmask16 m = lanes(w - j);
                __m512 a[6], r[6];
                for (int i = 0; i < 6; i++) a[i] = d[i] ? _mm512_maskz_loadu_ps(m, d[i] + j) : zero;
                INPUT_TRANSFORM6(a[0], a[1], a[2], a[3], a[4], a[5], r[0], r[1], r[2], r[3], r[4], r[5]);
                for (int i = 0; i < 6; i++) _mm512_mask_storeu_ps(t[i] + j + 1, m, r[i]);
            }
            // (B^T d) B along each row: tile tx reads p[4tx ..< 4tx + 6].
            float *out = v + (long)c * tiles + (long)(ty - row_start) * tw;
            for (int i = 0; i < 6; i++) {
                const float *p = t[i];
                float *o = out + (6L * i) * stride;
                for (long tx = 0; tx < tw; tx += 16) {
                    const long base = 4 * tx;
                    __m512 l0 = _mm512_maskz_loadu_ps(lanes(rs - base), p + base);
                    __m512 l1 = _mm512_maskz_loadu_ps(lanes(rs - base - 16), p + base + 16);
                    __m512 l2 = _mm512_maskz_loadu_ps(lanes(rs - base - 32), p + base + 32);
                    __m512 l3 = _mm512_maskz_loadu_ps(lanes(rs - base - 48), p + base + 48);
                    __m512 next = _mm512_maskz_loadu_ps(lanes(rs - base - 64) & 3, p + base + 64);
                    __m512 x01 = _mm512_permutex2var_ps(l0, p01, l1), y01 = _mm512_permutex2var_ps(l2, p01, l3);
                    __m512 x23 = _mm512_permutex2var_ps(l0, p23, l1), y23 = _mm512_permutex2var_ps(l2, p23, l3);
                    __m512 a0 = _mm512_shuffle_f32x4(x01, y01, 0x44), a1 = _mm512_shuffle_f32x4(x01, y01, 0xEE);
                    __m512 a2 = _mm512_shuffle_f32x4(x23, y23, 0x44), a3 = _mm512_shuffle_f32x4(x23, y23, 0xEE);
                    // Phases 0 and 1 one tile on: p[4(t + 1)] and p[4(t + 1) + 1].
                    __m512 n1 = _mm512_permutexvar_ps(_mm512_set1_epi32(1), next);
                    __m512 a4 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(next), _mm512_castps_si512(a0), 1));
                    __m512 a5 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(n1), _mm512_castps_si512(a1), 1));
                    __m512 r[6];
                    INPUT_TRANSFORM6(a0, a1, a2, a3, a4, a5, r[0], r[1], r[2], r[3], r[4], r[5]);
                    __mmask16 m = lanes(tw - tx);
                    for (int k = 0; k < 6; k++) _mm512_mask_storeu_ps(o + k * stride + tx, m, r[k]);
                }
            }
        }
    }
}

#else  // not x86_64: never called (Winograd.swift asks segtrain_gemm_avx512_usable first)

void segtrain_winograd_input_f2_avx512(const float *x, int channels, int height, int width, int tiles_wide,
                                       int row_start, int rows, float *v, long tiles, float *buffer) {
    (void)x; (void)channels; (void)height; (void)width; (void)tiles_wide; (void)row_start; (void)rows;
    (void)v; (void)tiles; (void)buffer;
}

void segtrain_winograd_input_f4_avx512(const float *x, int channels, int height, int width, int tiles_wide,
                                       int row_start, int rows, float *v, long tiles, float *buffer) {
    (void)x; (void)channels; (void)height; (void)width; (void)tiles_wide; (void)row_start; (void)rows;
    (void)v; (void)tiles; (void)buffer;
}

#endif
