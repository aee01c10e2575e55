// AVX-512 versions of Winograd transforms: see include/cwinograd.h. Sixteen tiles (or columns) per
// vector, masked at the ends of rows instead of scalar tails, and the even/odd columns of a row
// picked by one two-source permute instead of a shuffle loop. Every value is computed by the same
// additions and subtractions, in the same order, as the portable Swift version.

#include "cwinograd.h"
#include "../CPlaneKernels/avx512_lanes.h"  // lanes()

#if defined(__x86_64__)
#include <immintrin.h>

/// The even and odd floats of p[0 ..< 32] (zeros from p[valid] on: the rest is not read): e[t] =
/// p[2t], o[t] = p[2t + 1] for sixteen t.
__attribute__((target("avx512f"), always_inline))
static inline void phases2(const float *p, long valid, __m512 *e, __m512 *o) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __m512 lo = _mm512_maskz_loadu_ps(lanes(valid), p), hi = _mm512_maskz_loadu_ps(lanes(valid - 16), p + 16);
    *e = _mm512_permutex2var_ps(lo, even, hi);
    *o = _mm512_permutex2var_ps(lo, odd, hi);
}

/// The four column phases of p[0 ..< 64] (zeros from p[valid] on): a[q][t] = p[4t + q] for sixteen
/// t, by two-source permutes (phases q and q + 1 of 32 floats in the low and high halves) and
/// 128-bit lane shuffles.
__attribute__((target("avx512f"), always_inline))
static inline void phases4(const float *p, long valid, __m512 a[4]) {
    const __m512i p01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const __m512i p23 = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    __m512 l0 = _mm512_maskz_loadu_ps(lanes(valid), p), l1 = _mm512_maskz_loadu_ps(lanes(valid - 16), p + 16);
    __m512 l2 = _mm512_maskz_loadu_ps(lanes(valid - 32), p + 32), l3 = _mm512_maskz_loadu_ps(lanes(valid - 48), p + 48);
    __m512 x01 = _mm512_permutex2var_ps(l0, p01, l1), y01 = _mm512_permutex2var_ps(l2, p01, l3);
    __m512 x23 = _mm512_permutex2var_ps(l0, p23, l1), y23 = _mm512_permutex2var_ps(l2, p23, l3);
    a[0] = _mm512_shuffle_f32x4(x01, y01, 0x44); a[1] = _mm512_shuffle_f32x4(x01, y01, 0xEE);
    a[2] = _mm512_shuffle_f32x4(x23, y23, 0x44); a[3] = _mm512_shuffle_f32x4(x23, y23, 0xEE);
}

/// Prefetches rows [first, first + count) of an h x w plane (clipped to it). The hardware
/// prefetchers lose the stream at the jumps between bands and planes, and the transforms then
/// wait on memory; prefetch_next asks for what comes after such a jump.
__attribute__((always_inline))
static inline void prefetch_rows(const float *plane, long h, long w, long first, long count) {
    long lo = first < 0 ? 0 : first, hi = first + count > h ? h : first + count;
    for (long r = lo; r < hi; r++)
        for (long j = 0; j < w; j += 16) _mm_prefetch((const char *)(plane + r * w + j), _MM_HINT_T0);
}

/// What the step after tile row ty of a band (tile rows [row_start, row_start + rows)) touches,
/// when tile row t touches rows [m t + offset, m t + offset + span) of its plane: the next tile
/// row's m new rows, or, at the band's end and if another plane follows, that plane's first rows.
__attribute__((always_inline))
static inline void prefetch_next(const float *plane, long h, long w, long m, long offset, long span, int ty,
                                 int row_start, int rows, int more_planes) {
    if (ty + 1 < row_start + rows) prefetch_rows(plane, h, w, m * ty + offset + span, m);
    else if (more_planes) prefetch_rows(plane + h * w, h, w, m * row_start + offset, span);
}

__attribute__((target("avx512f")))
void segtrain_winograd_input_f2_avx512(const float *x, int channels, int height, int width, int tiles_wide,
                                       int row_start, int rows, float *v, long tiles, float *buffer) {
    const long h = height, w = width, tw = tiles_wide, rs = 2 * tw + 4;
    const long stride = (long)channels * tiles;
    float *p0 = buffer, *p1 = p0 + rs, *p2 = p1 + rs, *p3 = p2 + rs;
    const __m512 zero = _mm512_setzero_ps();
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
            prefetch_next(src, h, w, 2, -1, 4, ty, row_start, rows, c + 1 < channels);
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
                    __m512 a0, a1, a2, a3;
                    phases2(p + base, rs - base, &a0, &a1);
                    phases2(p + base + 2, rs - base - 2, &a2, &a3);
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
        __m512 s12_ = _mm512_add_ps(a1, a2), d12_ = _mm512_sub_ps(a1, a2);                               \
        __m512 s34_ = _mm512_add_ps(a3, a4), d43_ = _mm512_sub_ps(a4, a3);                               \
        __m512 e_ = _mm512_sub_ps(a4, a2), f_ = _mm512_sub_ps(a3, a1);                                   \
        r0 = _mm512_add_ps(_mm512_sub_ps(_mm512_mul_ps(four_, a0), _mm512_mul_ps(five_, a2)), a4);     \
        r1 = _mm512_sub_ps(s34_, _mm512_mul_ps(four_, s12_));                                            \
        r2 = _mm512_add_ps(d43_, _mm512_mul_ps(four_, d12_));                                            \
        r3 = _mm512_add_ps(e_, _mm512_mul_ps(two_, f_));                                                 \
        r4 = _mm512_sub_ps(e_, _mm512_mul_ps(two_, f_));                                                 \
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
    for (int c = 0; c < channels; c++) {
        const float *src = x + (long)c * h * w;
        for (int ty = row_start; ty < row_start + rows; ty++) {
            const long y0 = 4L * ty - 1;
            const float *d[6];
            for (int i = 0; i < 6; i++) d[i] = (y0 + i >= 0 && y0 + i < h) ? src + (y0 + i) * w : 0;
            prefetch_next(src, h, w, 4, -1, 6, ty, row_start, rows, c + 1 < channels);
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
                    __m512 ph[4];
                    phases4(p + base, rs - base, ph);
                    __m512 a0 = ph[0], a1 = ph[1], a2 = ph[2], a3 = ph[3];
                    __m512 next = _mm512_maskz_loadu_ps(lanes(rs - base - 64) & 3, p + base + 64);
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

/// A^T applied to six values, as outputTransform6 in Winograd.swift: four outputs.
#define OUTPUT_TRANSFORM6(m0, m1, m2, m3, m4, m5, r0, r1, r2, r3) do {                              \
        __m512 p1_ = _mm512_add_ps(m1, m2), q1_ = _mm512_sub_ps(m1, m2);                                 \
        __m512 p2_ = _mm512_add_ps(m3, m4), q2_ = _mm512_sub_ps(m3, m4);                                 \
        r0 = _mm512_add_ps(_mm512_add_ps(m0, p1_), p2_);                                                 \
        r1 = _mm512_add_ps(q1_, _mm512_mul_ps(_mm512_set1_ps(2), q2_));                                  \
        r2 = _mm512_add_ps(p1_, _mm512_mul_ps(_mm512_set1_ps(4), p2_));                                  \
        r3 = _mm512_add_ps(_mm512_add_ps(q1_, _mm512_mul_ps(_mm512_set1_ps(8), q2_)), m5);               \
    } while (0)

/// Writes `count` (<= 16) values to out as writeTileRow does: out += value with `accumulate`, else
/// max(value, 0) with `relu` (Swift's max: +0 for -0, NaN kept), else the value.
__attribute__((target("avx512f"), always_inline))
static inline void put_row(float *out, long count, __m512 value, int accumulate, int relu) {
    __mmask16 m = lanes(count);
    if (!m) return;
    if (accumulate) {
        value = _mm512_add_ps(_mm512_maskz_loadu_ps(m, out), value);
    } else if (relu) {
        const __m512 zero = _mm512_setzero_ps();
        value = _mm512_mask_mov_ps(value, _mm512_cmp_ps_mask(zero, value, _CMP_GE_OQ), zero);
    }
    _mm512_mask_storeu_ps(out, m, value);
}

__attribute__((target("avx512f")))
void segtrain_winograd_output_f2_avx512(const float *mt, long tiles, float *y, int channels, int height, int width,
                                        int tiles_wide, int row_start, int rows, const float *bias,
                                        int accumulate, int relu) {
    const long h = height, w = width, tw = tiles_wide, stride = (long)channels * tiles;
    // Two phases of sixteen tiles -> 32 consecutive columns.
    const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int o = 0; o < channels; o++) {
        float *dst = y + (long)o * h * w;
        const __m512 b = _mm512_set1_ps(bias ? bias[o] : 0.0f);
        for (int ty = row_start; ty < row_start + rows; ty++) {
            const float *src = mt + (long)o * tiles + (long)(ty - row_start) * tw;
            const long oy = 2L * ty;
            prefetch_next(dst, h, w, 2, 0, 2, ty, row_start, rows, o + 1 < channels);
            for (long tx = 0; tx < tw; tx += 16) {
                __mmask16 m = lanes(tw - tx);
                __m512 a[16];
                for (int xi = 0; xi < 16; xi++) a[xi] = _mm512_maskz_loadu_ps(m, src + xi * stride + tx);
                __m512 s00 = _mm512_add_ps(_mm512_add_ps(a[0], a[4]), a[8]);
                __m512 s01 = _mm512_add_ps(_mm512_add_ps(a[1], a[5]), a[9]);
                __m512 s02 = _mm512_add_ps(_mm512_add_ps(a[2], a[6]), a[10]);
                __m512 s03 = _mm512_add_ps(_mm512_add_ps(a[3], a[7]), a[11]);
                __m512 s10 = _mm512_sub_ps(_mm512_sub_ps(a[4], a[8]), a[12]);
                __m512 s11 = _mm512_sub_ps(_mm512_sub_ps(a[5], a[9]), a[13]);
                __m512 s12 = _mm512_sub_ps(_mm512_sub_ps(a[6], a[10]), a[14]);
                __m512 s13 = _mm512_sub_ps(_mm512_sub_ps(a[7], a[11]), a[15]);
                __m512 r[2][2];
                r[0][0] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s00, s01), s02), b);
                r[0][1] = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s01, s02), s03), b);
                r[1][0] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s10, s11), s12), b);
                r[1][1] = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s11, s12), s13), b);
                for (int rr = 0; rr < 2 && oy + rr < h; rr++) {
                    float *out = dst + (oy + rr) * w + 2 * tx;
                    const long left = w - 2 * tx;
                    put_row(out, left, _mm512_permutex2var_ps(r[rr][0], first, r[rr][1]), accumulate, relu);
                    put_row(out + 16, left - 16, _mm512_permutex2var_ps(r[rr][0], second, r[rr][1]), accumulate, relu);
                }
            }
        }
    }
}

__attribute__((target("avx512f")))
void segtrain_winograd_output_f4_avx512(const float *mt, long tiles, float *y, int channels, int height, int width,
                                        int tiles_wide, int row_start, int rows, const float *bias,
                                        int accumulate, int relu) {
    const long h = height, w = width, tw = tiles_wide, stride = (long)channels * tiles;
    for (int o = 0; o < channels; o++) {
        float *dst = y + (long)o * h * w;
        const __m512 b = _mm512_set1_ps(bias ? bias[o] : 0.0f);
        for (int ty = row_start; ty < row_start + rows; ty++) {
            const float *src = mt + (long)o * tiles + (long)(ty - row_start) * tw;
            const long oy = 4L * ty;
            prefetch_next(dst, h, w, 4, 0, 4, ty, row_start, rows, o + 1 < channels);
            for (long tx = 0; tx < tw; tx += 16) {
                __mmask16 m = lanes(tw - tx);
                // A^T m down the columns: col[r][j] = row r of A^T m, column j.
                __m512 col[4][6];
                for (int j = 0; j < 6; j++) {
                    __m512 a[6];
                    for (int i = 0; i < 6; i++) a[i] = _mm512_maskz_loadu_ps(m, src + (6 * i + j) * stride + tx);
                    OUTPUT_TRANSFORM6(a[0], a[1], a[2], a[3], a[4], a[5], col[0][j], col[1][j], col[2][j], col[3][j]);
                }
                // (A^T m) A along each row, + bias; the four column phases interleaved into 64 columns.
                for (int r = 0; r < 4 && oy + r < h; r++) {
                    __m512 q0, q1, q2, q3;
                    OUTPUT_TRANSFORM6(col[r][0], col[r][1], col[r][2], col[r][3], col[r][4], col[r][5], q0, q1, q2, q3);
                    q0 = _mm512_add_ps(q0, b); q1 = _mm512_add_ps(q1, b);
                    q2 = _mm512_add_ps(q2, b); q3 = _mm512_add_ps(q3, b);
                    __m512 t0 = _mm512_unpacklo_ps(q0, q1), t1 = _mm512_unpackhi_ps(q0, q1);
                    __m512 t2 = _mm512_unpacklo_ps(q2, q3), t3 = _mm512_unpackhi_ps(q2, q3);
                    __m512 u0 = _mm512_shuffle_ps(t0, t2, 0x44), u1 = _mm512_shuffle_ps(t0, t2, 0xEE);
                    __m512 u2 = _mm512_shuffle_ps(t1, t3, 0x44), u3 = _mm512_shuffle_ps(t1, t3, 0xEE);
                    __m512 lo01 = _mm512_shuffle_f32x4(u0, u1, 0x44), lo23 = _mm512_shuffle_f32x4(u2, u3, 0x44);
                    __m512 hi01 = _mm512_shuffle_f32x4(u0, u1, 0xEE), hi23 = _mm512_shuffle_f32x4(u2, u3, 0xEE);
                    float *out = dst + (oy + r) * w + 4 * tx;
                    const long left = w - 4 * tx;
                    put_row(out, left, _mm512_shuffle_f32x4(lo01, lo23, 0x88), accumulate, relu);
                    put_row(out + 16, left - 16, _mm512_shuffle_f32x4(lo01, lo23, 0xDD), accumulate, relu);
                    put_row(out + 32, left - 32, _mm512_shuffle_f32x4(hi01, hi23, 0x88), accumulate, relu);
                    put_row(out + 48, left - 48, _mm512_shuffle_f32x4(hi01, hi23, 0xDD), accumulate, relu);
                }
            }
        }
    }
}

/// A applied to four values, as gradientTransform4 in Winograd.swift: six outputs.
#define GRADIENT_TRANSFORM4(a0, a1, a2, a3, r0, r1, r2, r3, r4, r5) do {                            \
        __m512 p_ = _mm512_add_ps(a0, a2), q_ = _mm512_add_ps(a1, a3);                                 \
        __m512 p4_ = _mm512_add_ps(a0, _mm512_mul_ps(_mm512_set1_ps(4), a2));                          \
        __m512 q2_ = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(2), a1), _mm512_mul_ps(_mm512_set1_ps(8), a3)); \
        r0 = a0; r1 = _mm512_add_ps(p_, q_); r2 = _mm512_sub_ps(p_, q_);                               \
        r3 = _mm512_add_ps(p4_, q2_); r4 = _mm512_sub_ps(p4_, q2_); r5 = a3;                           \
    } while (0)

/// -a as Swift's SIMD negation computes it: 0 - a (+0 for a zero of either sign).
__attribute__((target("avx512f"), always_inline))
static inline __m512 negate(__m512 a) { return _mm512_sub_ps(_mm512_setzero_ps(), a); }

__attribute__((target("avx512f")))
void segtrain_winograd_output_gradient_f2_avx512(const float *dy, int channels, int height, int width, int tiles_wide,
                                                 int row_start, int rows, float *dm, long tiles) {
    const long h = height, w = width, tw = tiles_wide, stride = (long)channels * tiles;
    const __m512 zero = _mm512_setzero_ps();
    for (int o = 0; o < channels; o++) {
        const float *src = dy + (long)o * h * w;
        for (int ty = row_start; ty < row_start + rows; ty++) {
            const long oy = 2L * ty;
            prefetch_next(src, h, w, 2, 0, 2, ty, row_start, rows, o + 1 < channels);
            const float *row0 = src + oy * w, *row1 = oy + 1 < h ? src + (oy + 1) * w : 0;
            float *out = dm + (long)o * tiles + (long)(ty - row_start) * tw;
            for (long tx = 0; tx < tw; tx += 16) {
                const long base = 2 * tx;
                __m512 a00, a01, a10 = zero, a11 = zero;
                phases2(row0 + base, w - base, &a00, &a01);
                if (row1) phases2(row1 + base, w - base, &a10, &a11);
                __m512 r1a = _mm512_add_ps(a00, a10), r1b = _mm512_add_ps(a01, a11);
                __m512 r2a = _mm512_sub_ps(a00, a10), r2b = _mm512_sub_ps(a01, a11);
                __m512 v[16];
                v[0] = a00; v[1] = _mm512_add_ps(a00, a01); v[2] = _mm512_sub_ps(a00, a01); v[3] = negate(a01);
                v[4] = r1a; v[5] = _mm512_add_ps(r1a, r1b); v[6] = _mm512_sub_ps(r1a, r1b); v[7] = negate(r1b);
                v[8] = r2a; v[9] = _mm512_add_ps(r2a, r2b); v[10] = _mm512_sub_ps(r2a, r2b); v[11] = negate(r2b);
                v[12] = negate(a10); v[13] = _mm512_sub_ps(negate(a10), a11); v[14] = _mm512_add_ps(negate(a10), a11);
                v[15] = a11;
                __mmask16 m = lanes(tw - tx);
                for (int xi = 0; xi < 16; xi++) _mm512_mask_storeu_ps(out + xi * stride + tx, m, v[xi]);
            }
        }
    }
}

__attribute__((target("avx512f")))
void segtrain_winograd_output_gradient_f4_avx512(const float *dy, int channels, int height, int width, int tiles_wide,
                                                 int row_start, int rows, float *dm, long tiles) {
    const long h = height, w = width, tw = tiles_wide, stride = (long)channels * tiles;
    const __m512 zero = _mm512_setzero_ps();
    for (int o = 0; o < channels; o++) {
        const float *src = dy + (long)o * h * w;
        for (int ty = row_start; ty < row_start + rows; ty++) {
            const long oy = 4L * ty;
            prefetch_next(src, h, w, 4, 0, 4, ty, row_start, rows, o + 1 < channels);
            float *out = dm + (long)o * tiles + (long)(ty - row_start) * tw;
            for (long tx = 0; tx < tw; tx += 16) {
                const long base = 4 * tx;
                // g[r][q]: row r, column phase q of sixteen tiles (zero outside the image).
                __m512 g[4][4];
                for (int r = 0; r < 4; r++) {
                    if (oy + r >= h) { g[r][0] = g[r][1] = g[r][2] = g[r][3] = zero; continue; }
                    phases4(src + (oy + r) * w + base, w - base, g[r]);
                }
                // A g down each column q: col[q][i].
                __m512 col[4][6];
                for (int q = 0; q < 4; q++)
                    GRADIENT_TRANSFORM4(g[0][q], g[1][q], g[2][q], g[3][q],
                                        col[q][0], col[q][1], col[q][2], col[q][3], col[q][4], col[q][5]);
                // (A g) A^T along each row i.
                __mmask16 m = lanes(tw - tx);
                for (int i = 0; i < 6; i++) {
                    __m512 v0, v1, v2, v3, v4, v5;
                    GRADIENT_TRANSFORM4(col[0][i], col[1][i], col[2][i], col[3][i], v0, v1, v2, v3, v4, v5);
                    float *d = out + 6L * i * stride + tx;
                    _mm512_mask_storeu_ps(d, m, v0); _mm512_mask_storeu_ps(d + stride, m, v1);
                    _mm512_mask_storeu_ps(d + 2 * stride, m, v2); _mm512_mask_storeu_ps(d + 3 * stride, m, v3);
                    _mm512_mask_storeu_ps(d + 4 * stride, m, v4); _mm512_mask_storeu_ps(d + 5 * stride, m, v5);
                }
            }
        }
    }
}

__attribute__((target("avx512f")))
void segtrain_winograd_weights_avx512(const float *weight, int cout, int cin, int row, int for_input_gradient,
                                      int tile, int first_column, int count, float *u) {
    const long columns = count, stride = (long)(for_input_gradient ? cout : cin) * count;
    // Lane l of column block k is kernel (o, c) = (first_column + k + l, row) forward, (row,
    // first_column + k + l) for the input gradient; its nine values are gathered from the weight
    // (O, I, 3, 3).
    const int lane_stride = for_input_gradient ? 9 : cin * 9;
    const float *first = (for_input_gradient ? weight + (long)row * cin * 9 : weight + (long)row * 9)
                         + (long)first_column * lane_stride;
    const __m512i lane = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(lane_stride));
    const __m512 zero = _mm512_setzero_ps();
    float *out = u + (long)row * columns;
    for (long k = 0; k < columns; k += 16) {
        const __mmask16 m = lanes(columns - k);
        const float *base = first + k * lane_stride;
        __m512 g[3][3];
        for (int i = 0; i < 3; i++) {
            for (int j = 0; j < 3; j++) {
                const int index = for_input_gradient ? (2 - i) * 3 + (2 - j) : i * 3 + j;
                g[i][j] = _mm512_mask_i32gather_ps(zero, m, _mm512_add_epi32(lane, _mm512_set1_epi32(index)), base, 4);
            }
        }
        if (tile == 4) {
            // weightTransform3: (g0/4, -(s + g1)/6, -(s - g1)/6, g0/24 + g1/12 + g2/6, g0/24 - g1/12 + g2/6, g2),
            // s = g0 + g2, down each column j, then along each of the six rows.
            const __m512 quarter = _mm512_set1_ps(0.25f), six = _mm512_set1_ps(6), twelve = _mm512_set1_ps(12);
            const __m512 twentyfour = _mm512_set1_ps(24);
#define WEIGHT_TRANSFORM3(g0, g1, g2, r) do {                                                          \
                __m512 s_ = _mm512_add_ps(g0, g2);                                                    \
                __m512 a_ = _mm512_div_ps(g0, twentyfour), b_ = _mm512_div_ps(g1, twelve);            \
                __m512 c_ = _mm512_div_ps(g2, six);                                                   \
                r[0] = _mm512_mul_ps(quarter, g0);                                                    \
                r[1] = _mm512_div_ps(_mm512_sub_ps(zero, _mm512_add_ps(s_, g1)), six);                \
                r[2] = _mm512_div_ps(_mm512_sub_ps(zero, _mm512_sub_ps(s_, g1)), six);                \
                r[3] = _mm512_add_ps(_mm512_add_ps(a_, b_), c_);                                      \
                r[4] = _mm512_add_ps(_mm512_sub_ps(a_, b_), c_);                                      \
                r[5] = g2;                                                                            \
            } while (0)
            __m512 col[3][6];
            for (int j = 0; j < 3; j++) WEIGHT_TRANSFORM3(g[0][j], g[1][j], g[2][j], col[j]);
            for (int i = 0; i < 6; i++) {
                __m512 r[6];
                WEIGHT_TRANSFORM3(col[0][i], col[1][i], col[2][i], r);
                for (int q = 0; q < 6; q++) _mm512_mask_storeu_ps(out + (6L * i + q) * stride + k, m, r[q]);
            }
#undef WEIGHT_TRANSFORM3
        } else {
            // G g: per column (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2), then the same along each row.
            const __m512 half = _mm512_set1_ps(0.5f);
            __m512 col[3][4];
            for (int j = 0; j < 3; j++) {
                col[j][0] = g[0][j];
                col[j][1] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(g[0][j], g[1][j]), g[2][j]));
                col[j][2] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(g[0][j], g[1][j]), g[2][j]));
                col[j][3] = g[2][j];
            }
            for (int i = 0; i < 4; i++) {
                __m512 a = col[0][i], b = col[1][i], c = col[2][i];
                float *o = out + (4L * i) * stride + k;
                _mm512_mask_storeu_ps(o, m, a);
                _mm512_mask_storeu_ps(o + stride, m, _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(a, b), c)));
                _mm512_mask_storeu_ps(o + 2 * stride, m, _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(a, b), c)));
                _mm512_mask_storeu_ps(o + 3 * stride, m, c);
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

void segtrain_winograd_output_f2_avx512(const float *mt, long tiles, float *y, int channels, int height, int width,
                                        int tiles_wide, int row_start, int rows, const float *bias,
                                        int accumulate, int relu) {
    (void)mt; (void)tiles; (void)y; (void)channels; (void)height; (void)width; (void)tiles_wide;
    (void)row_start; (void)rows; (void)bias; (void)accumulate; (void)relu;
}

void segtrain_winograd_output_f4_avx512(const float *mt, long tiles, float *y, int channels, int height, int width,
                                        int tiles_wide, int row_start, int rows, const float *bias,
                                        int accumulate, int relu) {
    segtrain_winograd_output_f2_avx512(mt, tiles, y, channels, height, width, tiles_wide, row_start, rows, bias,
                                       accumulate, relu);
}

void segtrain_winograd_output_gradient_f2_avx512(const float *dy, int channels, int height, int width, int tiles_wide,
                                                 int row_start, int rows, float *dm, long tiles) {
    (void)dy; (void)channels; (void)height; (void)width; (void)tiles_wide; (void)row_start; (void)rows;
    (void)dm; (void)tiles;
}

void segtrain_winograd_output_gradient_f4_avx512(const float *dy, int channels, int height, int width, int tiles_wide,
                                                 int row_start, int rows, float *dm, long tiles) {
    segtrain_winograd_output_gradient_f2_avx512(dy, channels, height, width, tiles_wide, row_start, rows, dm, tiles);
}

void segtrain_winograd_weights_avx512(const float *weight, int cout, int cin, int row, int for_input_gradient,
                                      int tile, int first_column, int count, float *u) {
    (void)weight; (void)cout; (void)cin; (void)row; (void)for_input_gradient; (void)tile; (void)first_column;
    (void)count; (void)u;
}

#endif
