// Pointwise activations (ReLU, sigmoid) and softmax over channels. Every element (every pixel
// for softmax) is independent, so any split over threads gives bitwise the same result.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@inline(__always) private func checkSameShape(_ a: Tensor, _ b: Tensor, _ who: StaticString) {
    precondition(a.shape == b.shape, "\(who): shapes differ, \(a.shape) vs \(b.shape)")
}

// MARK: - ReLU

/// y = max(x, 0).  x: (N, C, H, W)  y: (N, C, H, W); y may be the same memory as x.
public func reluForward(_ y: Tensor, _ x: Tensor, pool: WorkerPool) {
    checkSameShape(y, x, "reluForward")
    let src = x.data, dst = y.data
    pool.parallelFor(x.count) { range, _ in
        for i in range { dst[i] = src[i] > 0 ? src[i] : 0 }
    }
}

/// dx += dy * (y > 0).  dx, dy, y: (N, C, H, W); y is the forward output.
public func reluBackward(dx: Tensor, dy: Tensor, y: Tensor, pool: WorkerPool) {
    checkSameShape(dx, dy, "reluBackward")
    checkSameShape(dy, y, "reluBackward")
    let g = dx.data, up = dy.data, out = y.data
    pool.parallelFor(dx.count) { range, _ in
        for i in range where out[i] > 0 { g[i] += up[i] }
    }
}

/// dy = dy * (y > 0), in place: the ReLU backward where dy is not needed afterwards (the model's
/// activation gradients), so no separate dx buffer and no zeroing are needed.
/// dy, y: (N, C, H, W); y is the forward output.
public func reluBackwardInPlace(_ dy: Tensor, y: Tensor, pool: WorkerPool) {
    checkSameShape(dy, y, "reluBackwardInPlace")
    let g = dy.data, out = y.data
    pool.parallelFor(dy.count) { range, _ in
        for i in range where !(out[i] > 0) { g[i] = 0 }
    }
}

// MARK: - Sigmoid

/// y = 1 / (1 + exp(-x)), computed without overflow for large |x| (sigmoid(-1000) = 0,
/// sigmoid(1000) = 1).  x: (N, C, H, W)  y: (N, C, H, W); y may be the same memory as x.
public func sigmoidForward(_ y: Tensor, _ x: Tensor, pool: WorkerPool) {
    checkSameShape(y, x, "sigmoidForward")
    let src = x.data, dst = y.data
    pool.parallelFor(x.count) { range, _ in
        for i in range {
            let v = src[i]
            if v >= 0 {
                dst[i] = 1 / (1 + expf(-v))
            } else {
                let e = expf(v)  // in (0, 1): no overflow
                dst[i] = e / (1 + e)
            }
        }
    }
}

/// dx += dy * y * (1 - y).  dx, dy, y: (N, C, H, W); y is the forward output.
public func sigmoidBackward(dx: Tensor, dy: Tensor, y: Tensor, pool: WorkerPool) {
    checkSameShape(dx, dy, "sigmoidBackward")
    checkSameShape(dy, y, "sigmoidBackward")
    let g = dx.data, up = dy.data, out = y.data
    pool.parallelFor(dx.count) { range, _ in
        for i in range { g[i] += up[i] * out[i] * (1 - out[i]) }
    }
}

// MARK: - Softmax over channels

/// y[n, :, p] = softmax(x[n, :, p]) over the C channels of each pixel p, with the pixel's maximum
/// subtracted first (stable for logits like 1000).  x: (N, C, H, W)  y: (N, C, H, W); y may be
/// the same memory as x.
public func softmaxForward(_ y: Tensor, _ x: Tensor, pool: WorkerPool) {
    checkSameShape(y, x, "softmaxForward")
    let channels = x.c, plane = x.shape.plane
    precondition(channels >= 1, "softmaxForward: needs at least one channel, got \(x.shape)")
    let src = x.data, dst = y.data
    pool.parallelFor(x.n * plane) { range, _ in
        for pixel in range {
            let n = pixel / plane, p = pixel % plane
            let base = n * channels * plane + p
            var maximum = src[base]
            for c in 1..<channels { maximum = max(maximum, src[base + c * plane]) }
            var sum: Float = 0
            for c in 0..<channels {
                let e = expf(src[base + c * plane] - maximum)
                dst[base + c * plane] = e
                sum += e
            }
            let inverse = 1 / sum  // sum >= 1: the maximum contributes exp(0)
            for c in 0..<channels { dst[base + c * plane] *= inverse }
        }
    }
}

/// dx[c] += y[c] * (dy[c] - sum_k dy[k] * y[k]) per pixel.  dx, dy, y: (N, C, H, W); y is the
/// forward output.
public func softmaxBackward(dx: Tensor, dy: Tensor, y: Tensor, pool: WorkerPool) {
    checkSameShape(dx, dy, "softmaxBackward")
    checkSameShape(dy, y, "softmaxBackward")
    let channels = y.c, plane = y.shape.plane
    let g = dx.data, up = dy.data, out = y.data
    pool.parallelFor(y.n * plane) { range, _ in
        for pixel in range {
            let n = pixel / plane, p = pixel % plane
            let base = n * channels * plane + p
            var dot: Float = 0
            for c in 0..<channels { dot += up[base + c * plane] * out[base + c * plane] }
            for c in 0..<channels {
                let i = base + c * plane
                g[i] += out[i] * (up[i] - dot)
            }
        }
    }
}
