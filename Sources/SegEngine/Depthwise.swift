// Depthwise 3x3 convolution (PyTorch Conv2d(C, C, 3, stride, padding, dilation, groups=C, bias=False),
// MobileNetV2's inverted-residual middle layer): every channel convolved with its own 3x3 kernel.
// These layers do 9 multiply-adds per value read, so they are memory-bound: direct loops, no GEMM.
// The inner loops run along an output row as an axpy (y_row += w * x_row for stride 1, a strided
// read for stride 2), which LLVM vectorises; the weight gradient keeps one accumulator per output
// column and tap (elementwise, so also vectorised) and sums them once per channel at the end.
//
// Bitwise the same for any thread count: forward and input gradient are split over the N*C planes
// (each plane computed alone, taps in (a, b) order), the weight gradient over channels (each
// channel's sums run over images, rows and columns in one fixed order).
//
// Where the CPU has AVX-512 and the stride is 1 or 2, each plane's loops run in CPlaneKernels'
// depthwise.c instead: the same operations in the same order per value (so the same bits,
// PlaneKernelsAVX512Tests), with sixteen outputs kept in registers across their nine taps.

import CPlaneKernels

private func checkDepthwise(_ y: Tensor, _ x: Tensor, _ weight: Tensor, stride: Int, padding: Int, dilation: Int,
                            _ who: StaticString) {
    precondition(stride >= 1 && padding >= 0 && dilation >= 1,
                 "\(who): stride \(stride) padding \(padding) dilation \(dilation)")
    precondition(weight.n == x.c && weight.c == 1 && weight.h == 3 && weight.w == 3,
                 "\(who): weight \(weight.shape) must be (C, 1, 3, 3) for x \(x.shape)")
    let g = ConvGeometry(kernel: 3, stride: stride, padding: padding, dilation: dilation)
    precondition(y.n == x.n && y.c == x.c && y.h == g.output(x.h) && y.w == g.output(x.w),
                 "\(who): y \(y.shape) for x \(x.shape) and \(g) (want \(g.output(x.h))x\(g.output(x.w)))")
}

/// Output columns [lo, hi) whose tap at offset `offset` (= b*d - p) lies inside a row of `width`.
@inline(__always)
private func depthwiseColumns(offset: Int, stride s: Int, width: Int, outWidth: Int) -> (Int, Int) {
    let lo = offset >= 0 ? 0 : (-offset + s - 1) / s
    let last = width - 1 - offset
    let hi = last < 0 ? 0 : min(outWidth, last / s + 1)
    return (lo, max(lo, hi))
}

/// Floats of per-thread scratch depthwise3x3Backward needs (the weight gradient's 9 accumulator rows).
/// `width` is the input's.
public func depthwise3x3ScratchFloats(width: Int, stride: Int, padding: Int = 1, dilation: Int = 1) -> Int {
    9 * ConvGeometry(kernel: 3, stride: stride, padding: padding, dilation: dilation).output(width)
}

/// y[n, c, oi, oj] = sum_{a, b} weight[c, 0, a, b] * x[n, c, oi*s - p + a*d, oj*s - p + b*d] (zero outside). Overwrites y.
/// y: (N, C, Ho, Wo), Ho = floor((H + 2p - 2d - 1)/s) + 1  x: (N, C, H, W)  weight: (C, 1, 3, 3)
public func depthwise3x3Forward(_ y: Tensor, _ x: Tensor, weight: Tensor, stride: Int, padding: Int = 1,
                                dilation: Int = 1, pool: WorkerPool) {
    depthwise3x3Forward(y, x, weight: weight, stride: stride, padding: padding, dilation: dilation, pool: pool,
                        avx512: avx512Kernels)
}

/// depthwise3x3Forward with the choice of loops: CPlaneKernels' (if `avx512` and stride 1 or 2) or Swift's.
func depthwise3x3Forward(_ y: Tensor, _ x: Tensor, weight: Tensor, stride: Int, padding: Int, dilation: Int,
                         pool: WorkerPool, avx512: Bool) {
    checkDepthwise(y, x, weight, stride: stride, padding: padding, dilation: dilation, "depthwise3x3Forward")
    let (channels, h, w, outH, outW) = (x.c, x.h, x.w, y.h, y.w)
    let (s, p, d) = (stride, padding, dilation)
    let fast = avx512 && s <= 2
    pool.parallelFor(x.n * channels) { planes, _ in
        for q in planes {
            let src = x.data + q * x.shape.plane, dst = y.data + q * y.shape.plane
            let kernel = weight.data + (q % channels) * 9
            if fast {
                segtrain_depthwise3x3_forward_avx512(src, Int32(h), Int32(w), dst, Int32(outH), Int32(outW), kernel,
                                                     Int32(s), Int32(p), Int32(d))
                continue
            }
            dst.update(repeating: 0, count: outH * outW)
            for oi in 0..<outH {
                let out = dst + oi * outW
                for a in 0..<3 {
                    let i = oi * s - p + a * d
                    if i < 0 || i >= h { continue }
                    for b in 0..<3 {
                        let offset = b * d - p
                        let (lo, hi) = depthwiseColumns(offset: offset, stride: s, width: w, outWidth: outW)
                        let tap = kernel[a * 3 + b], row = src + i * w + offset
                        if s == 1 {
                            for oj in lo..<hi { out[oj] += tap * row[oj] }
                        } else {
                            for oj in lo..<hi { out[oj] += tap * row[oj * s] }
                        }
                    }
                }
            }
        }
    }
}

/// Backward of depthwise3x3Forward: adds dL/dx into dx and dL/dweight into dweight (each if given).
/// dx, x: (N, C, H, W)  dy: (N, C, Ho, Wo)  dweight, weight: (C, 1, 3, 3)
/// scratch: depthwise3x3ScratchFloats per thread (for the weight gradient).
public func depthwise3x3Backward(dx: Tensor?, dweight: Tensor?, dy: Tensor, x: Tensor, weight: Tensor, stride: Int,
                                 padding: Int = 1, dilation: Int = 1, pool: WorkerPool, scratch: Scratch) {
    depthwise3x3Backward(dx: dx, dweight: dweight, dy: dy, x: x, weight: weight, stride: stride, padding: padding,
                         dilation: dilation, pool: pool, scratch: scratch, avx512: avx512Kernels)
}

/// depthwise3x3Backward with the choice of loops: CPlaneKernels' (if `avx512` and stride 1 or 2) or Swift's.
func depthwise3x3Backward(dx: Tensor?, dweight: Tensor?, dy: Tensor, x: Tensor, weight: Tensor, stride: Int,
                          padding: Int, dilation: Int, pool: WorkerPool, scratch: Scratch, avx512: Bool) {
    let who: StaticString = "depthwise3x3Backward"
    checkDepthwise(dy, x, weight, stride: stride, padding: padding, dilation: dilation, who)
    if let dx { precondition(dx.shape == x.shape, "\(who): dx \(dx.shape) for x \(x.shape)") }
    if let dweight { precondition(dweight.shape == weight.shape, "\(who): dweight \(dweight.shape) for weight \(weight.shape)") }
    let (channels, batch, h, w, outH, outW) = (x.c, x.n, x.h, x.w, dy.h, dy.w)
    let (s, p, d) = (stride, padding, dilation)
    let fast = avx512 && s <= 2

    if let dx {
        pool.parallelFor(batch * channels) { planes, _ in
            for q in planes {
                let up = dy.data + q * dy.shape.plane, grad = dx.data + q * x.shape.plane
                let kernel = weight.data + (q % channels) * 9
                if fast {
                    segtrain_depthwise3x3_input_gradient_avx512(grad, Int32(h), Int32(w), up, Int32(outH), Int32(outW),
                                                                kernel, Int32(s), Int32(p), Int32(d))
                    continue
                }
                for oi in 0..<outH {
                    let g = up + oi * outW
                    for a in 0..<3 {
                        let i = oi * s - p + a * d
                        if i < 0 || i >= h { continue }
                        for b in 0..<3 {
                            let offset = b * d - p
                            let (lo, hi) = depthwiseColumns(offset: offset, stride: s, width: w, outWidth: outW)
                            let tap = kernel[a * 3 + b], row = grad + i * w + offset
                            if s == 1 {
                                for oj in lo..<hi { row[oj] += tap * g[oj] }
                            } else {
                                for oj in lo..<hi { row[oj * s] += tap * g[oj] }
                            }
                        }
                    }
                }
            }
        }
    }

    guard let dweight else { return }
    scratch.require(9 * outW, "depthwise3x3")
    precondition(scratch.threadCount >= pool.threadCount, "\(who): scratch has fewer threads than the pool")
    pool.parallelFor(channels) { channelRange, t in
        // acc[tap * outW + oj] sums dy[n, c, oi, oj] * x[n, c, tap's row, tap's column] over n and oi.
        let acc = scratch.buffer(t)
        for c in channelRange {
            acc.update(repeating: 0, count: 9 * outW)
            for n in 0..<batch {
                let up = dy.plane(n, c), src = x.plane(n, c)
                if fast {
                    segtrain_depthwise3x3_weight_gradient_avx512(src, Int32(h), Int32(w), up, Int32(outH), Int32(outW),
                                                                 Int32(s), Int32(p), Int32(d), acc)
                    continue
                }
                for oi in 0..<outH {
                    let g = up + oi * outW
                    for a in 0..<3 {
                        let i = oi * s - p + a * d
                        if i < 0 || i >= h { continue }
                        for b in 0..<3 {
                            let offset = b * d - p
                            let (lo, hi) = depthwiseColumns(offset: offset, stride: s, width: w, outWidth: outW)
                            let sums = acc + (a * 3 + b) * outW, row = src + i * w + offset
                            if s == 1 {
                                for oj in lo..<hi { sums[oj] += g[oj] * row[oj] }
                            } else {
                                for oj in lo..<hi { sums[oj] += g[oj] * row[oj * s] }
                            }
                        }
                    }
                }
            }
            for tap in 0..<9 {
                var total = 0.0
                let sums = acc + tap * outW
                for oj in 0..<outW { total += Double(sums[oj]) }
                dweight.data[c * 9 + tap] += Float(total)
            }
        }
    }
}

/// Reference forward: direct loops over every output and tap, double accumulation.
public func depthwise3x3ForwardNaive(_ y: Tensor, _ x: Tensor, weight: Tensor, stride: Int, padding: Int = 1,
                                     dilation: Int = 1) {
    checkDepthwise(y, x, weight, stride: stride, padding: padding, dilation: dilation, "depthwise3x3ForwardNaive")
    for n in 0..<y.n {
        for c in 0..<y.c {
            for oi in 0..<y.h {
                for oj in 0..<y.w {
                    var sum = 0.0
                    for a in 0..<3 {
                        for b in 0..<3 {
                            let i = oi * stride - padding + a * dilation, j = oj * stride - padding + b * dilation
                            if i < 0 || i >= x.h || j < 0 || j >= x.w { continue }
                            sum += Double(weight[c, 0, a, b]) * Double(x[n, c, i, j])
                        }
                    }
                    y[n, c, oi, oj] = Float(sum)
                }
            }
        }
    }
}

/// Reference backward: direct loops in float. Adds into dx and dweight (each if given).
public func depthwise3x3BackwardNaive(dx: Tensor?, dweight: Tensor?, dy: Tensor, x: Tensor, weight: Tensor, stride: Int,
                                      padding: Int = 1, dilation: Int = 1) {
    checkDepthwise(dy, x, weight, stride: stride, padding: padding, dilation: dilation, "depthwise3x3BackwardNaive")
    for n in 0..<dy.n {
        for c in 0..<dy.c {
            for oi in 0..<dy.h {
                for oj in 0..<dy.w {
                    let g = dy[n, c, oi, oj]
                    for a in 0..<3 {
                        for b in 0..<3 {
                            let i = oi * stride - padding + a * dilation, j = oj * stride - padding + b * dilation
                            if i < 0 || i >= x.h || j < 0 || j >= x.w { continue }
                            if let dweight { dweight[c, 0, a, b] += g * x[n, c, i, j] }
                            if let dx { dx[n, c, i, j] += g * weight[c, 0, a, b] }
                        }
                    }
                }
            }
        }
    }
}
