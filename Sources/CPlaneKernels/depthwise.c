// AVX-512 depthwise 3x3 convolution: see include/cplanekernels.h. The Swift version works a row at a
// time as nine axpys (y_row += tap * x_row), so each output is loaded and stored nine times; here
// sixteen outputs (or dx values, or weight-gradient columns) stay in registers while their nine taps
// are added, which leaves one load per tap. A tap whose column falls outside the plane is not added
// (a masked add), exactly as the Swift loops skip it, so the results are the same bits.

#include "cplanekernels.h"
#include "avx512_lanes.h"

#if defined(__x86_64__)

/// Output columns [lo, hi) whose tap at column offset `offset` lies inside a row of `width` (as
/// depthwiseColumns in Depthwise.swift).
__attribute__((always_inline))
static inline void tap_columns(long offset, long s, long width, long out_width, long *lo, long *hi) {
    long first = offset >= 0 ? 0 : (-offset + s - 1) / s;
    long last = width - 1 - offset;
    long end = last < 0 ? 0 : (last / s + 1 < out_width ? last / s + 1 : out_width);
    *lo = first;
    *hi = end > first ? end : first;
}

/// The valid output columns of each tap column b (tap_columns) and the nine taps, broadcast.
__attribute__((target("avx512f"), always_inline))
static inline void prepare_taps(const float *k, long s, long p, long d, long width, long out_width, long lo[3],
                                long hi[3], __m512 tap[9]) {
    for (int b = 0; b < 3; b++) tap_columns(b * d - p, s, width, out_width, &lo[b], &hi[b]);
    for (int t = 0; t < 9; t++) tap[t] = _mm512_set1_ps(k[t]);
}

__attribute__((target("avx512f"), always_inline))
static inline void forward(const float *x, long h, long w, float *y, long oh, long ow, const float *k, long s,
                           long p, long d) {
    long lo[3], hi[3];
    __m512 tap[9];
    prepare_taps(k, s, p, d, w, ow, lo, hi, tap);
    for (long oi = 0; oi < oh; oi++) {
        for (long j0 = 0; j0 < ow; j0 += 16) {
            __m512 acc = _mm512_setzero_ps();
            for (int a = 0; a < 3; a++) {
                const long i = oi * s - p + a * d;
                if (i < 0 || i >= h) continue;
                const float *row = x + i * w;
                for (int b = 0; b < 3; b++) {
                    const __mmask16 m = span16(lo[b] - j0, hi[b] - j0);
                    if (!m) continue;
                    const __m512 v = load_columns(row, w, j0 * s + b * d - p, s);
                    acc = _mm512_mask_add_ps(acc, m, acc, _mm512_mul_ps(tap[a * 3 + b], v));
                }
            }
            _mm512_mask_storeu_ps(y + oi * ow + j0, span16(0, ow - j0), acc);
        }
    }
}

__attribute__((target("avx512f")))
void segtrain_depthwise3x3_forward_avx512(const float *x, int height, int width, float *y, int out_height,
                                          int out_width, const float *k, int stride, int padding, int dilation) {
    if (stride == 1) forward(x, height, width, y, out_height, out_width, k, 1, padding, dilation);
    else forward(x, height, width, y, out_height, out_width, k, 2, padding, dilation);
}

/// The taps of dx row i: the (oi, a) pairs with oi*s - p + a*d = i, oi ascending (a descending).
/// Returns how many; rows[n] is dy's row oi, taps[n] = a.
__attribute__((always_inline))
static inline int row_taps(long i, long s, long p, long d, long oh, long *rows, int *taps) {
    int n = 0;
    for (int a = 2; a >= 0; a--) {
        const long t = i + p - a * d;
        if (t < 0 || t % s != 0 || t / s >= oh) continue;
        rows[n] = t / s;
        taps[n] = a;
        n++;
    }
    return n;
}

__attribute__((target("avx512f")))
static void input_gradient_stride1(float *dx, long h, long w, const float *dy, long oh, long ow, const float *k,
                                   long p, long d) {
    long lo[3], hi[3];
    __m512 tap[9];
    prepare_taps(k, 1, p, d, w, ow, lo, hi, tap);
    for (long i = 0; i < h; i++) {
        long rows[3];
        int taps[3];
        const int count = row_taps(i, 1, p, d, oh, rows, taps);
        if (count == 0) continue;
        float *out = dx + i * w;
        for (long j0 = 0; j0 < w; j0 += 16) {
            const __mmask16 inside = span16(0, w - j0);
            __m512 acc = _mm512_maskz_loadu_ps(inside, out + j0);
            for (int r = 0; r < count; r++) {
                const float *g = dy + rows[r] * ow;
                const int a = taps[r];
                for (int b = 0; b < 3; b++) {
                    // Lane t is column j0 + t, fed by dy column j0 + t - offset.
                    const long start = j0 - (b * d - p);
                    const __mmask16 m = span16(lo[b] - start, hi[b] - start);
                    if (!m) continue;
                    const __m512 v = _mm512_maskz_loadu_ps(m, g + start);
                    acc = _mm512_mask_add_ps(acc, m, acc, _mm512_mul_ps(tap[a * 3 + b], v));
                }
            }
            _mm512_mask_storeu_ps(out + j0, inside, acc);
        }
    }
}

__attribute__((target("avx512f")))
static void input_gradient_stride2(float *dx, long h, long w, const float *dy, long oh, long ow, const float *k,
                                   long p, long d) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    long lo[3], hi[3];
    __m512 tap[9];
    prepare_taps(k, 2, p, d, w, ow, lo, hi, tap);
    for (long i = 0; i < h; i++) {
        long rows[3];
        int taps[3];
        const int count = row_taps(i, 2, p, d, oh, rows, taps);
        if (count == 0) continue;
        float *out = dx + i * w;
        // Thirty-two columns j0 + u at a time, split by parity: e[t] is column j0 + 2t, o[t] j0 + 2t + 1.
        for (long j0 = 0; j0 < w; j0 += 32) {
            const __mmask16 in0 = span16(0, w - j0), in1 = span16(0, w - j0 - 16);
            const __m512 l0 = _mm512_maskz_loadu_ps(in0, out + j0), l1 = _mm512_maskz_loadu_ps(in1, out + j0 + 16);
            __m512 e = _mm512_permutex2var_ps(l0, even, l1), o = _mm512_permutex2var_ps(l0, odd, l1);
            for (int r = 0; r < count; r++) {
                const float *g = dy + rows[r] * ow;
                const int a = taps[r];
                for (int b = 0; b < 3; b++) {
                    // Column j takes dy column (j - offset) / 2 when j - offset is even.
                    const long offset = b * d - p, parity = offset & 1;
                    const long start = (j0 + parity - offset) / 2;
                    const __mmask16 m = span16(lo[b] - start, hi[b] - start);
                    if (!m) continue;
                    const __m512 v = _mm512_mul_ps(tap[a * 3 + b], _mm512_maskz_loadu_ps(m, g + start));
                    if (parity) o = _mm512_mask_add_ps(o, m, o, v);
                    else e = _mm512_mask_add_ps(e, m, e, v);
                }
            }
            _mm512_mask_storeu_ps(out + j0, in0, _mm512_permutex2var_ps(e, low, o));
            _mm512_mask_storeu_ps(out + j0 + 16, in1, _mm512_permutex2var_ps(e, high, o));
        }
    }
}

void segtrain_depthwise3x3_input_gradient_avx512(float *dx, int height, int width, const float *dy, int out_height,
                                                 int out_width, const float *k, int stride, int padding, int dilation) {
    if (stride == 1) input_gradient_stride1(dx, height, width, dy, out_height, out_width, k, padding, dilation);
    else input_gradient_stride2(dx, height, width, dy, out_height, out_width, k, padding, dilation);
}

__attribute__((target("avx512f"), always_inline))
static inline void weight_gradient(const float *x, long h, long w, const float *dy, long oh, long ow, long s, long p,
                                   long d, float *acc) {
    long lo[3], hi[3];
    for (int b = 0; b < 3; b++) tap_columns(b * d - p, s, w, ow, &lo[b], &hi[b]);
    // Sixteen columns at a time over the whole plane, their nine sums in registers.
    for (long j0 = 0; j0 < ow; j0 += 16) {
        const __mmask16 inside = span16(0, ow - j0);
        __mmask16 m[3];
        for (int b = 0; b < 3; b++) m[b] = span16(lo[b] - j0, hi[b] - j0);
        __m512 sum[9];
        for (int t = 0; t < 9; t++) sum[t] = _mm512_maskz_loadu_ps(inside, acc + t * ow + j0);
        for (long oi = 0; oi < oh; oi++) {
            const __m512 g = _mm512_maskz_loadu_ps(inside, dy + oi * ow + j0);
            for (int a = 0; a < 3; a++) {
                const long i = oi * s - p + a * d;
                if (i < 0 || i >= h) continue;
                const float *row = x + i * w;
                for (int b = 0; b < 3; b++) {
                    if (!m[b]) continue;
                    const __m512 v = load_columns(row, w, j0 * s + b * d - p, s);
                    sum[a * 3 + b] = _mm512_mask_add_ps(sum[a * 3 + b], m[b], sum[a * 3 + b], _mm512_mul_ps(g, v));
                }
            }
        }
        for (int t = 0; t < 9; t++) _mm512_mask_storeu_ps(acc + t * ow + j0, inside, sum[t]);
    }
}

__attribute__((target("avx512f")))
void segtrain_depthwise3x3_weight_gradient_avx512(const float *x, int height, int width, const float *dy,
                                                  int out_height, int out_width, int stride, int padding,
                                                  int dilation, float *acc) {
    if (stride == 1) weight_gradient(x, height, width, dy, out_height, out_width, 1, padding, dilation, acc);
    else weight_gradient(x, height, width, dy, out_height, out_width, 2, padding, dilation, acc);
}

#else

// Not x86-64: SegEngine never calls these (segtrain_gemm_avx512_usable() is 0).
void segtrain_depthwise3x3_forward_avx512(const float *x, int height, int width, float *y, int out_height,
                                          int out_width, const float *k, int stride, int padding, int dilation) {}
void segtrain_depthwise3x3_input_gradient_avx512(float *dx, int height, int width, const float *dy, int out_height,
                                                 int out_width, const float *k, int stride, int padding, int dilation) {}
void segtrain_depthwise3x3_weight_gradient_avx512(const float *x, int height, int width, const float *dy,
                                                  int out_height, int out_width, int stride, int padding,
                                                  int dilation, float *acc) {}

#endif
