// Lane masks and column loads for the AVX-512 kernels: included by CPlaneKernels' depthwise.c and
// maxpool.c and, by relative path, by CWinograd's winograd.c. Not part of any module's interface.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

/// Mask of the first n lanes of sixteen (none for n <= 0, all for n >= 16).
__attribute__((always_inline))
static inline __mmask16 lanes(long n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/// Lanes k of sixteen with lo <= k < hi.
__attribute__((always_inline))
static inline __mmask16 span16(long lo, long hi) { return lanes(hi) & (__mmask16)~lanes(lo); }

/// row[start + s*t] for sixteen t (stride s = 1 or 2), zero where the column is outside [0, width):
/// one masked load, or for s = 2 two and a two-source permute of their even floats.
__attribute__((target("avx512f"), always_inline))
static inline __m512 load_columns(const float *row, long width, long start, long s) {
    if (s == 1) return _mm512_maskz_loadu_ps(span16(-start, width - start), row + start);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    __m512 lo = _mm512_maskz_loadu_ps(span16(-start, width - start), row + start);
    __m512 hi = _mm512_maskz_loadu_ps(span16(-start - 16, width - start - 16), row + start + 16);
    return _mm512_permutex2var_ps(lo, even, hi);
}
#endif
