// AVX-512 versions of SegEngine's per-plane ops that run without GEMM (depthwise.c, maxpool.c). The Swift
// versions in SegEngine stay the portable path and the reference: these compute the same float
// operations in the same order, so their results are the same bits (PlaneKernelsAVX512Tests checks
// it), and SegEngine calls them only where segtrain_gemm_avx512_usable() says yes.
#pragma once

/// Depthwise 3x3 forward of one plane, as depthwise3x3Forward in Depthwise.swift:
/// y[oi][oj] = sum over taps (a, b) in row-major order of k[3a + b] * x[oi*s - p + a*d][oj*s - p + b*d],
/// taps outside the plane skipped, summed from 0. x is height x width, y out_height x out_width
/// (overwritten), stride 1 or 2.
void segtrain_depthwise3x3_forward_avx512(const float *x, int height, int width, float *y, int out_height,
                                          int out_width, const float *k, int stride, int padding, int dilation);

/// Depthwise 3x3 input gradient of one plane, as depthwise3x3Backward's dx: adds
/// k[3a + b] * dy[oi][oj] into dx[oi*s - p + a*d][oj*s - p + b*d] for every in-plane tap, each dx value
/// receiving its terms in the order of the Swift loops (oi ascending, then b ascending). Stride 1 or 2.
void segtrain_depthwise3x3_input_gradient_avx512(float *dx, int height, int width, const float *dy, int out_height,
                                                 int out_width, const float *k, int stride, int padding, int dilation);

/// Depthwise 3x3 weight gradient of one plane, as depthwise3x3Backward's dweight before its final
/// sums: acc[(3a + b) * out_width + oj] += dy[oi][oj] * x[oi*s - p + a*d][oj*s - p + b*d] for oi
/// ascending, every in-plane tap. acc holds 9 * out_width floats. Stride 1 or 2.
void segtrain_depthwise3x3_weight_gradient_avx512(const float *x, int height, int width, const float *dy,
                                                  int out_height, int out_width, int stride, int padding,
                                                  int dilation, float *acc);

/// Max pooling 3x3, stride 2, padding `padding` (0 or 1) of one plane, as maxPoolForward in
/// MaxPool3x3.swift: each window's in-plane positions scanned rows outer, columns inner, from value
/// -infinity, a position taken when its value is greater or NaN. Writes the winners' values to y
/// (out_height x out_width) if y is not NULL, and adds dy[oi][oj] into dx at each window's winner,
/// oi then oj ascending, if dx is not NULL.
void segtrain_max_pool3x3s2_avx512(const float *x, int height, int width, int padding, float *y,
                                   const float *dy, float *dx, int out_height, int out_width);
