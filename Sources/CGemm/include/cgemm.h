// segtrain's own single-precision GEMM for CPUs with AVX-512 (gemm.c). SegEngine's Gemm.swift
// decides when it runs; everything else calls OpenBLAS.
#pragma once

/// 1 when this CPU and OS run AVX-512F code (CPUID and XCR0, checked once), else 0.
int segtrain_gemm_avx512_usable(void);

/// Row-major C (m x n) = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T as in cblas_sgemm
/// (trans_a: A is k x m with leading dimension lda, else m x k). Single-threaded; safe to call from
/// several threads at once (each thread packs into its own buffers). Every element of C is summed
/// over k in increasing order, in blocks of 256 (a block's sum is added to the element), so the
/// result depends on the operands alone: not on alignment, threads, or earlier calls.
/// Returns 0, or -1 (C untouched) when the CPU lacks AVX-512F or the packing buffers of the
/// calling thread cannot be allocated.
int segtrain_sgemm_avx512(int trans_a, int trans_b, int m, int n, int k, float alpha,
                          const float *a, int lda, const float *b, int ldb,
                          float beta, float *c, int ldc);
