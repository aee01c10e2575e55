// The encoders' pointwise ops: the residual add of ResNet's blocks (y = a + b, optionally fused with
// the ReLU that follows it: y = max(a + b, 0)) and MobileNetV2's ReLU6 (y = min(max(x, 0), 6)).
// Every element is independent, so any split over threads gives bitwise the same result. Each op
// has a naive twin (one plain loop, no pool) for the tests.
//
// Gradient conventions at the kinks, as PyTorch:
//   ReLU (fused)  dx = dy where y > 0, else 0 (threshold_backward on the result: 0 at y = 0).
//   ReLU6         dx = dy where 0 < x < 6, else 0, so the gradient is 0 AT both boundaries
//                 (hardtanh_backward: `x <= min || x >= max ? 0 : dy`). torchvision's ReLU6 runs in
//                 place, so autograd applies that test to the output y; it is the same test, since
//                 y = x strictly inside (0, 6) and y is 0 or 6 (a boundary) everywhere else. These
//                 kernels take y too, so the forward may overwrite x.

@inline(__always) private func checkSame(_ a: Tensor, _ b: Tensor, _ who: StaticString) {
    precondition(a.shape == b.shape, "\(who): shapes differ, \(a.shape) vs \(b.shape)")
}

// MARK: - Residual add

/// y = a + b, or with `relu` y = max(a + b, 0). a, b, y: (N, C, H, W); y may be the memory of a or b.
public func residualAddForward(_ y: Tensor, _ a: Tensor, _ b: Tensor, relu: Bool, pool: WorkerPool) {
    checkSame(y, a, "residualAddForward")
    checkSame(a, b, "residualAddForward")
    let (out, left, right) = (y.data, a.data, b.data)
    pool.parallelFor(y.count) { range, _ in
        if relu {
            for i in range { let s = left[i] + right[i]; out[i] = s > 0 ? s : 0 }
        } else {
            for i in range { out[i] = left[i] + right[i] }
        }
    }
}

/// Backward of residualAddForward: g = dy (times (y > 0) with `relu`) is added into da and into db
/// (each if given), or written over it with `overwriteA` / `overwriteB` (a gradient nothing wrote yet:
/// it need not be zeroed first). dy, y (the forward output, read only with `relu`), da, db: (N, C, H, W).
public func residualAddBackward(da: Tensor?, db: Tensor?, dy: Tensor, y: Tensor, relu: Bool,
                                overwriteA: Bool = false, overwriteB: Bool = false, pool: WorkerPool) {
    checkSame(dy, y, "residualAddBackward")
    if let da { checkSame(da, dy, "residualAddBackward") }
    if let db { checkSame(db, dy, "residualAddBackward") }
    let (up, out) = (dy.data, y.data)
    @inline(__always) func g(_ i: Int) -> Float { relu && !(out[i] > 0) ? 0 : up[i] }
    pool.parallelFor(dy.count) { range, _ in
        // ResNet's blocks write both gradients first: two plain stores per element, no read of them.
        if let a = da?.data, let b = db?.data, overwriteA && overwriteB {
            for i in range { let v = g(i); a[i] = v; b[i] = v }
            return
        }
        for i in range {
            let v = g(i)
            if let da { if overwriteA { da.data[i] = v } else { da.data[i] += v } }
            if let db { if overwriteB { db.data[i] = v } else { db.data[i] += v } }
        }
    }
}

/// Reference residual add, one plain loop.
public func residualAddForwardNaive(_ y: Tensor, _ a: Tensor, _ b: Tensor, relu: Bool) {
    checkSame(y, a, "residualAddForwardNaive")
    checkSame(a, b, "residualAddForwardNaive")
    for i in 0..<y.count { y[i] = relu ? max(a[i] + b[i], 0) : a[i] + b[i] }
}

/// Reference residual-add backward, one plain loop.
public func residualAddBackwardNaive(da: Tensor?, db: Tensor?, dy: Tensor, y: Tensor, relu: Bool) {
    checkSame(dy, y, "residualAddBackwardNaive")
    for i in 0..<dy.count {
        var g = dy[i]
        if relu && y[i] <= 0 { g = 0 }
        if let da { da[i] += g }
        if let db { db[i] += g }
    }
}

// MARK: - ReLU6

/// y = min(max(x, 0), 6) (PyTorch ReLU6 = Hardtanh(0, 6)). x, y: (N, C, H, W); y may be x's memory.
/// A NaN input stays NaN, as in PyTorch.
public func relu6Forward(_ y: Tensor, _ x: Tensor, pool: WorkerPool) {
    checkSame(y, x, "relu6Forward")
    let (src, dst) = (x.data, y.data)
    pool.parallelFor(x.count) { range, _ in
        for i in range {
            let v = src[i]
            dst[i] = v < 0 ? 0 : (v > 6 ? 6 : v)
        }
    }
}

/// dx += dy where 0 < y < 6, else nothing: the gradient is 0 at both boundaries (see the file
/// comment). dx, dy, y (the forward output): (N, C, H, W).
public func relu6Backward(dx: Tensor, dy: Tensor, y: Tensor, pool: WorkerPool) {
    checkSame(dx, dy, "relu6Backward")
    checkSame(dy, y, "relu6Backward")
    let (grad, up, out) = (dx.data, dy.data, y.data)
    pool.parallelFor(dx.count) { range, _ in
        for i in range where out[i] > 0 && out[i] < 6 { grad[i] += up[i] }
    }
}

/// Reference ReLU6 forward, one plain loop.
public func relu6ForwardNaive(_ y: Tensor, _ x: Tensor) {
    checkSame(y, x, "relu6ForwardNaive")
    for i in 0..<x.count { y[i] = x[i].isNaN ? x[i] : min(max(x[i], 0), 6) }
}

/// Reference ReLU6 backward from the INPUT x, PyTorch's hardtanh_backward: dx += (x <= 0 || x >= 6) ? 0 : dy.
public func relu6BackwardNaive(dx: Tensor, dy: Tensor, x: Tensor) {
    checkSame(dx, dy, "relu6BackwardNaive")
    checkSame(dy, x, "relu6BackwardNaive")
    for i in 0..<x.count where !(x[i] <= 0 || x[i] >= 6) { dx[i] += dy[i] }
}
