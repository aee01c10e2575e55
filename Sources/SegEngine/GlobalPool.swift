// Global average pooling: PyTorch AdaptiveAvgPool2d(1) (the pooling branch of DeepLabV3+'s ASPP).
// Each (n, c) plane becomes its mean, summed in Double and rounded to Float once; the backward
// spreads dy / (H * W) over the plane. Work is split over the N*C planes.

@inline(__always) private func checkGlobalPoolShapes(_ pooled: Tensor, _ full: Tensor, _ who: StaticString) {
    precondition(pooled.n == full.n && pooled.c == full.c && pooled.h == 1 && pooled.w == 1 && full.shape.plane > 0,
                 "\(who): pooled \(pooled.shape) must be (N, C, 1, 1) of a non-empty \(full.shape)")
}

/// y[n, c] = mean of x[n, c, :, :] (accumulated in Double).  x: (N, C, H, W)  y: (N, C, 1, 1)
public func globalAveragePoolForward(_ y: Tensor, _ x: Tensor, pool: WorkerPool) {
    checkGlobalPoolShapes(y, x, "globalAveragePoolForward")
    let plane = x.shape.plane
    pool.parallelFor(x.n * x.c) { planes, _ in
        for q in planes {
            let src = x.data + q * plane
            var sum = 0.0
            for i in 0..<plane { sum += Double(src[i]) }
            y.data[q] = Float(sum / Double(plane))
        }
    }
}

/// dx[n, c, :, :] += dy[n, c] / (H * W).  dx: (N, C, H, W)  dy: (N, C, 1, 1)
public func globalAveragePoolBackward(dx: Tensor, dy: Tensor, pool: WorkerPool) {
    checkGlobalPoolShapes(dy, dx, "globalAveragePoolBackward")
    let plane = dx.shape.plane
    pool.parallelFor(dx.n * dx.c) { planes, _ in
        for q in planes {
            let grad = dx.data + q * plane
            let share = dy.data[q] / Float(plane)
            for i in 0..<plane { grad[i] += share }
        }
    }
}

/// Reference for globalAveragePoolForward.  x: (N, C, H, W)  y: (N, C, 1, 1)
public func globalAveragePoolForwardNaive(_ y: Tensor, _ x: Tensor) {
    checkGlobalPoolShapes(y, x, "globalAveragePoolForwardNaive")
    for n in 0..<x.n {
        for c in 0..<x.c {
            var sum = 0.0
            for i in 0..<x.h { for j in 0..<x.w { sum += Double(x[n, c, i, j]) } }
            y[n, c, 0, 0] = Float(sum / Double(x.h * x.w))
        }
    }
}

/// Reference for globalAveragePoolBackward.  dx: (N, C, H, W)  dy: (N, C, 1, 1)
public func globalAveragePoolBackwardNaive(dx: Tensor, dy: Tensor) {
    checkGlobalPoolShapes(dy, dx, "globalAveragePoolBackwardNaive")
    for n in 0..<dx.n {
        for c in 0..<dx.c {
            for i in 0..<dx.h { for j in 0..<dx.w { dx[n, c, i, j] += dy[n, c, 0, 0] / Float(dx.h * dx.w) } }
        }
    }
}
