// 2x2 max pooling, stride 2, floor on odd sizes (PyTorch MaxPool2d(2)). Work is split over the
// N*C planes. Backward recomputes each window's winner from x instead of keeping an index buffer.

@inline(__always) private func checkPoolShapes(_ pooled: Tensor, _ full: Tensor, _ who: StaticString) {
    precondition(pooled.n == full.n && pooled.c == full.c && pooled.h == full.h / 2 && pooled.w == full.w / 2,
                 "\(who): pooled \(pooled.shape) must be (N, C, H/2, W/2) of \(full.shape)")
}

/// Position (0...3, row-major in the window) of the first maximum of a 2x2 window whose top-left
/// element is `p`; strict comparisons keep the first one on ties.
@inline(__always) private func firstMaxInWindow(_ p: UnsafeMutablePointer<Float>, rowStride: Int) -> (Int, Float) {
    var best = 0, value = p[0]
    if p[1] > value { best = 1; value = p[1] }
    if p[rowStride] > value { best = 2; value = p[rowStride] }
    if p[rowStride + 1] > value { best = 3; value = p[rowStride + 1] }
    return (best, value)
}

/// y = max over each 2x2 window of x.  x: (N, C, H, W)  y: (N, C, H/2, W/2) with floor on odd
/// sizes (PyTorch MaxPool2d(2)); an odd last row/column of x is ignored.
public func maxPool2x2Forward(_ y: Tensor, _ x: Tensor, pool: WorkerPool) {
    checkPoolShapes(y, x, "maxPool2x2Forward")
    let inW = x.w, outH = y.h, outW = y.w
    pool.parallelFor(x.n * x.c) { planes, _ in
        for q in planes {
            let src = x.data + q * x.shape.plane, dst = y.data + q * y.shape.plane
            for i in 0..<outH {
                let row = src + 2 * i * inW, out = dst + i * outW
                for j in 0..<outW { out[j] = firstMaxInWindow(row + 2 * j, rowStride: inW).1 }
            }
        }
    }
}

/// Adds dy into dx at the first maximum of each window in row-major order (recomputed from x, no
/// index buffer); an odd last row/column gets no gradient.
/// dx: (N, C, H, W)  dy: (N, C, H/2, W/2)  x: (N, C, H, W), the forward input.
public func maxPool2x2Backward(dx: Tensor, dy: Tensor, x: Tensor, pool: WorkerPool) {
    precondition(dx.shape == x.shape, "maxPool2x2Backward: dx \(dx.shape) differs from x \(x.shape)")
    checkPoolShapes(dy, x, "maxPool2x2Backward")
    let inW = x.w, outH = dy.h, outW = dy.w
    pool.parallelFor(x.n * x.c) { planes, _ in
        for q in planes {
            let src = x.data + q * x.shape.plane, grad = dx.data + q * x.shape.plane
            let up = dy.data + q * dy.shape.plane
            for i in 0..<outH {
                for j in 0..<outW {
                    let corner = 2 * i * inW + 2 * j
                    let best = firstMaxInWindow(src + corner, rowStride: inW).0
                    grad[corner + (best >> 1) * inW + (best & 1)] += up[i * outW + j]
                }
            }
        }
    }
}
