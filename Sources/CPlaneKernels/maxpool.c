// AVX-512 max pooling 3x3 stride 2 (ResNet's stem pool): see include/cplanekernels.h. Sixteen windows
// at a time: each of their nine positions is compared in the Swift scan order, and a lane takes the
// position when its value is greater or NaN (two compares and two masked moves), so the winners and
// their values are the ones the Swift loop finds. The backward pass adds dy at the winners one by
// one in output order, as the Swift loop does (windows overlap, so the adds cannot be a scatter).

#include "cplanekernels.h"
#include "avx512_lanes.h"

#if defined(__x86_64__)

__attribute__((target("avx512f")))
void segtrain_max_pool3x3s2_avx512(const float *x, int height, int width, int padding, float *y,
                                   const float *dy, float *dx, int out_height, int out_width) {
    const long h = height, w = width, p = padding, oh = out_height, ow = out_width;
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int winners[16];
    for (long oi = 0; oi < oh; oi++) {
        const long top = 2 * oi - p;
        const long i0 = top < 0 ? 0 : top, i1 = top + 3 > h ? h : top + 3;
        for (long oj0 = 0; oj0 < ow; oj0 += 16) {
            const __mmask16 inside = span16(0, ow - oj0);
            // Lane t's window starts at column 2 (oj0 + t) - p; its first in-plane position is
            // (i0, max(that, 0)).
            const __m512i left = _mm512_sub_epi32(_mm512_add_epi32(_mm512_add_epi32(lane, lane),
                                                                   _mm512_set1_epi32((int)(2 * oj0))),
                                                  _mm512_set1_epi32((int)p));
            __m512i best = _mm512_add_epi32(_mm512_max_epi32(left, _mm512_setzero_si512()),
                                            _mm512_set1_epi32((int)(i0 * w)));
            __m512 value = _mm512_set1_ps(-__builtin_inff());
            for (long i = i0; i < i1; i++) {
                const float *row = x + i * w;
                for (long b = 0; b < 3; b++) {
                    // Columns 2 (oj0 + t) - p + b, zero-filled outside the row and masked out below.
                    const long start = 2 * oj0 - p + b;
                    const __m512 v = load_columns(row, w, start, 2);
                    // Lane t's column is start + 2t: in the row when -start <= 2t < w - start.
                    const __m512i column = _mm512_add_epi32(_mm512_add_epi32(lane, lane), _mm512_set1_epi32((int)start));
                    const __mmask16 valid = _mm512_cmpge_epi32_mask(column, _mm512_setzero_si512()) &
                                            _mm512_cmplt_epi32_mask(column, _mm512_set1_epi32((int)w)) & inside;
                    const __mmask16 take = valid & (_mm512_cmp_ps_mask(v, value, _CMP_GT_OQ) |
                                                    _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
                    value = _mm512_mask_mov_ps(value, take, v);
                    best = _mm512_mask_mov_epi32(best, take, _mm512_add_epi32(column, _mm512_set1_epi32((int)(i * w))));
                }
            }
            if (y) _mm512_mask_storeu_ps(y + oi * ow + oj0, inside, value);
            if (dx) {
                _mm512_storeu_si512(winners, best);
                const float *up = dy + oi * ow + oj0;
                const long n = ow - oj0 < 16 ? ow - oj0 : 16;
                for (long t = 0; t < n; t++) dx[winners[t]] += up[t];
            }
        }
    }
}

#else

// Not x86-64: SegEngine never calls this (segtrain_gemm_avx512_usable() is 0).
void segtrain_max_pool3x3s2_avx512(const float *x, int height, int width, int padding, float *y,
                                   const float *dy, float *dx, int out_height, int out_width) {}

#endif
