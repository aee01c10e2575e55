// AVX-512 versions of Winograd F(2x2, 3x3) transforms (winograd.c). SegEngine's Winograd.swift keeps
// the portable versions, which stay the reference: these compute the same float operations in the
// same order, so their results are the same bits (WinogradAVX512Tests checks it), and Winograd.swift
// calls them only where segtrain_gemm_avx512_usable() says yes.
#pragma once

/// F(2x2) input transform of tile rows [row_start, row_start + rows) of one image, as
/// transformInputF2 in Winograd.swift: x is (channels, height, width); tile t = (ty - row_start) *
/// tiles_wide + tx of channel c reads the 4x4 patch at rows 2ty - 1 ..< 2ty + 3 and columns
/// 2tx - 1 ..< 2tx + 3 (zero outside the image) and writes its 16 values to
/// v[xi * channels * tiles + c * tiles + t], xi = 4i + j. `buffer` holds 4 * (2 * tiles_wide + 4)
/// floats (the padded rows after the transform down the columns).
void segtrain_winograd_input_f2_avx512(const float *x, int channels, int height, int width, int tiles_wide,
                                       int row_start, int rows, float *v, long tiles, float *buffer);

/// F(4x4) input transform, as transformInputF4 in Winograd.swift: tile (ty, tx) reads the 6x6 patch
/// at rows 4ty - 1 ..< 4ty + 5 and columns 4tx - 1 ..< 4tx + 5 and writes its 36 values to
/// v[xi * channels * tiles + c * tiles + t], xi = 6i + j. `buffer` holds 6 * (4 * tiles_wide + 4) floats.
void segtrain_winograd_input_f4_avx512(const float *x, int channels, int height, int width, int tiles_wide,
                                       int row_start, int rows, float *v, long tiles, float *buffer);

/// F(2x2) and F(4x4) output transforms, as transformOutputF2/F4 in Winograd.swift: for channel o and
/// tile t of tile rows [row_start, row_start + rows), the m x m outputs A^T M A + bias[o] (bias may be
/// NULL: + 0) of M[xi * channels * tiles + o * tiles + t] go to y (channels, height, width), rows and
/// columns past the image's edge dropped: y += them with `accumulate`, else max(., 0) with `relu`
/// (+0 for -0, NaN kept, as Swift's max), else y = them.
void segtrain_winograd_output_f2_avx512(const float *m, long tiles, float *y, int channels, int height, int width,
                                        int tiles_wide, int row_start, int rows, const float *bias,
                                        int accumulate, int relu);
void segtrain_winograd_output_f4_avx512(const float *m, long tiles, float *y, int channels, int height, int width,
                                        int tiles_wide, int row_start, int rows, const float *bias,
                                        int accumulate, int relu);

/// F(2x2) and F(4x4) output-gradient transforms, as transformOutputGradientF2/F4 in Winograd.swift:
/// the m x m tile (ty, tx) of channel o of dy (channels, height, width; zero outside the image) goes
/// to dm[xi * channels * tiles + o * tiles + t] as A g A^T.
void segtrain_winograd_output_gradient_f2_avx512(const float *dy, int channels, int height, int width, int tiles_wide,
                                                 int row_start, int rows, float *dm, long tiles);
void segtrain_winograd_output_gradient_f4_avx512(const float *dy, int channels, int height, int width, int tiles_wide,
                                                 int row_start, int rows, float *dm, long tiles);

/// Row `row` of the transformed weights, as transformAllWeights in Winograd.swift, for the `count`
/// columns from `first` (all of them: first 0, count cout forward, cin for the input gradient):
/// forward, U^T[xi] holds (G g G^T)[xi] of kernel (o, c) at u[xi * cin * count + c * count + o - first]
/// (row c); for the input gradient, of the kernel flipped 180 degrees at
/// u[xi * cout * count + o * count + c - first] (row o). `tile` 2 or 4 (16 or 36 points xi); weight is
/// (cout, cin, 3, 3).
void segtrain_winograd_weights_avx512(const float *weight, int cout, int cin, int row, int for_input_gradient,
                                      int tile, int first, int count, float *u);
