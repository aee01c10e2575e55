// Max pooling with a square window, stride and padding, as PyTorch's MaxPool2d(k, s, p) (ceil_mode
// off): the ResNet stem's MaxPool2d(3, stride 2, padding 1) is the default. The padding acts as
// -infinity (it never wins), output side floor((H + 2p - k)/s) + 1, and PyTorch requires p <= k/2, so
// every window holds at least one real value. Pooling.swift's maxPool2x2 stays the UNet's kernel.
//
// The winner of a window, forward and backward, is found exactly as PyTorch's CPU kernel does: scan
// the window's in-image positions in row-major order (rows outer, columns inner) starting from value
// -infinity and the first in-image position, and take a position when `value > best || value.isNaN`.
// So on ties the FIRST maximum in scan order wins (it gets the whole gradient), a NaN always wins (the
// last NaN in scan order if several), and a window of -infinity values routes its gradient to its
// first in-image position. Backward recomputes the winner from x (no index buffer).
//
// Work is split over the N*C planes; windows overlap, but each plane's gradient is added by one
// thread in a fixed order, so the results are bitwise the same for any thread count.
//
// Where the CPU has AVX-512, the 3x3 stride-2 pool (padding 0 or 1) runs in CPlaneKernels'
// maxpool.c: sixteen windows at a time, the same winners and values
// (PlaneKernelsAVX512Tests), the backward adds in the same order.

import CPlaneKernels

/// Whether CPlaneKernels' AVX-512 loops run for this pool: ResNet's 3x3, stride 2, on an AVX-512 CPU.
private func maxPoolAVX512(kernel: Int, stride: Int, padding: Int, avx512: Bool) -> Bool {
    avx512 && kernel == 3 && stride == 2 && padding <= 1
}

private func checkMaxPool(_ y: Tensor, _ x: Tensor, kernel: Int, stride: Int, padding: Int, _ who: StaticString) {
    precondition(kernel >= 1 && stride >= 1 && padding >= 0 && 2 * padding <= kernel,
                 "\(who): kernel \(kernel) stride \(stride) padding \(padding) (PyTorch needs padding <= kernel/2)")
    let g = ConvGeometry(kernel: kernel, stride: stride, padding: padding)
    precondition(y.n == x.n && y.c == x.c && y.h == g.output(x.h) && y.w == g.output(x.w),
                 "\(who): y \(y.shape) for x \(x.shape) and \(g) (want \(g.output(x.h))x\(g.output(x.w)))")
}

/// Offset in the plane and value of the winner (see the file comment) of the window whose rows are
/// [i0, i1) and columns [j0, j1), already clipped to the image.
@inline(__always)
private func windowWinner(_ plane: UnsafePointer<Float>, width: Int, _ i0: Int, _ i1: Int, _ j0: Int, _ j1: Int)
    -> (Int, Float) {
    var best = i0 * width + j0, value = -Float.infinity
    for i in i0..<i1 {
        let row = i * width
        for j in j0..<j1 {
            let v = plane[row + j]
            if v > value || v.isNaN { value = v; best = row + j }
        }
    }
    return (best, value)
}

/// y = max over each k x k window (stride s, padding p, padding = -infinity) of x.
/// x: (N, C, H, W)  y: (N, C, Ho, Wo), Ho = floor((H + 2p - k)/s) + 1. Defaults: ResNet's stem pool.
public func maxPoolForward(_ y: Tensor, _ x: Tensor, kernel: Int = 3, stride: Int = 2, padding: Int = 1,
                           pool: WorkerPool) {
    maxPoolForward(y, x, kernel: kernel, stride: stride, padding: padding, pool: pool, avx512: avx512Kernels)
}

/// maxPoolForward with the choice of loops: CPlaneKernels' (if `avx512` and a 3x3 stride-2 pool) or Swift's.
func maxPoolForward(_ y: Tensor, _ x: Tensor, kernel: Int, stride: Int, padding: Int, pool: WorkerPool,
                    avx512: Bool) {
    checkMaxPool(y, x, kernel: kernel, stride: stride, padding: padding, "maxPoolForward")
    let (h, w, outH, outW) = (x.h, x.w, y.h, y.w)
    let fast = maxPoolAVX512(kernel: kernel, stride: stride, padding: padding, avx512: avx512)
    pool.parallelFor(x.n * x.c) { planes, _ in
        for q in planes {
            let src = UnsafePointer(x.data + q * x.shape.plane), dst = y.data + q * y.shape.plane
            if fast {
                segtrain_max_pool3x3s2_avx512(src, Int32(h), Int32(w), Int32(padding), dst, nil, nil,
                                              Int32(outH), Int32(outW))
                continue
            }
            for oi in 0..<outH {
                let top = oi * stride - padding
                let i0 = max(top, 0), i1 = min(top + kernel, h)
                for oj in 0..<outW {
                    let left = oj * stride - padding
                    dst[oi * outW + oj] = windowWinner(src, width: w, i0, i1, max(left, 0), min(left + kernel, w)).1
                }
            }
        }
    }
}

/// Adds dy into dx at each window's winner (see the file comment), recomputed from x.
/// dx, x: (N, C, H, W)  dy: (N, C, Ho, Wo)
public func maxPoolBackward(dx: Tensor, dy: Tensor, x: Tensor, kernel: Int = 3, stride: Int = 2, padding: Int = 1,
                            pool: WorkerPool) {
    maxPoolBackward(dx: dx, dy: dy, x: x, kernel: kernel, stride: stride, padding: padding, pool: pool,
                    avx512: avx512Kernels)
}

/// maxPoolBackward with the choice of loops: CPlaneKernels' (if `avx512` and a 3x3 stride-2 pool) or Swift's.
func maxPoolBackward(dx: Tensor, dy: Tensor, x: Tensor, kernel: Int, stride: Int, padding: Int, pool: WorkerPool,
                     avx512: Bool) {
    precondition(dx.shape == x.shape, "maxPoolBackward: dx \(dx.shape) differs from x \(x.shape)")
    checkMaxPool(dy, x, kernel: kernel, stride: stride, padding: padding, "maxPoolBackward")
    let (h, w, outH, outW) = (x.h, x.w, dy.h, dy.w)
    let fast = maxPoolAVX512(kernel: kernel, stride: stride, padding: padding, avx512: avx512)
    pool.parallelFor(x.n * x.c) { planes, _ in
        for q in planes {
            let src = UnsafePointer(x.data + q * x.shape.plane), grad = dx.data + q * x.shape.plane
            let up = dy.data + q * dy.shape.plane
            if fast {
                segtrain_max_pool3x3s2_avx512(src, Int32(h), Int32(w), Int32(padding), nil, up, grad,
                                              Int32(outH), Int32(outW))
                continue
            }
            for oi in 0..<outH {
                let top = oi * stride - padding
                let i0 = max(top, 0), i1 = min(top + kernel, h)
                for oj in 0..<outW {
                    let left = oj * stride - padding
                    let best = windowWinner(src, width: w, i0, i1, max(left, 0), min(left + kernel, w)).0
                    grad[best] += up[oi * outW + oj]
                }
            }
        }
    }
}

/// Reference forward and backward in one: plain loops over the padded window (padding read as
/// -infinity), one plane at a time. Writes y and, when given, adds dy into dx at the winners.
/// Same shapes and tie rule as maxPoolForward/Backward.
public func maxPoolNaive(y: Tensor, dx: Tensor?, dy: Tensor?, x: Tensor, kernel: Int = 3, stride: Int = 2,
                         padding: Int = 1) {
    checkMaxPool(y, x, kernel: kernel, stride: stride, padding: padding, "maxPoolNaive")
    for n in 0..<x.n {
        for c in 0..<x.c {
            for oi in 0..<y.h {
                for oj in 0..<y.w {
                    var best: (Int, Int)? = nil
                    var value = -Float.infinity
                    for a in 0..<kernel {
                        for b in 0..<kernel {
                            let i = oi * stride - padding + a, j = oj * stride - padding + b
                            // Padding is -infinity: it never wins, not even over a window of -infinity.
                            guard i >= 0 && i < x.h && j >= 0 && j < x.w else { continue }
                            let v = x[n, c, i, j]
                            if best == nil { best = (i, j) }
                            if v > value || v.isNaN { value = v; best = (i, j) }
                        }
                    }
                    y[n, c, oi, oj] = value
                    if let dx, let dy, let best { dx[n, c, best.0, best.1] += dy[n, c, oi, oj] }
                }
            }
        }
    }
}
