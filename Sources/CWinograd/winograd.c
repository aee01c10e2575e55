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
            // The rows the next tile row adds (or the next channel's first rows): the hardware
            // prefetchers miss the jumps between bands and planes.
            {
                const float *next = ty + 1 < row_start + rows ? src + (y0 + 4) * w : src + h * w + (y0 + 2 - 2L * rows) * w;
                const float *first = x, *end = x + (long)channels * h * w;
                for (long j = 0; j < 2 * w + 16; j += 16) {
                    const float *q = next + j;
                    if (q >= first && q < end) _mm_prefetch((const char *)q, _MM_HINT_T0);
                }
            }
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

#else  // not x86_64: never called (Winograd.swift asks segtrain_gemm_avx512_usable first)

void segtrain_winograd_input_f2_avx512(const float *x, int channels, int height, int width, int tiles_wide,
                                       int row_start, int rows, float *v, long tiles, float *buffer) {
    (void)x; (void)channels; (void)height; (void)width; (void)tiles_wide; (void)row_start; (void)rows;
    (void)v; (void)tiles; (void)buffer;
}

#endif
