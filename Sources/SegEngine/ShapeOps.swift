// Shape ops of the UNet decoder: channel concatenation (skip + upsampled) and zero padding of the
// upsampled map to the skip's size; flips for test-time augmentation. Work is split over the N*C
// planes of the larger tensor.

// MARK: - Concatenation along channels

@inline(__always) private func checkConcatShapes(_ y: Shape, _ a: Shape, _ b: Shape, _ who: StaticString) {
    precondition(a.n == y.n && b.n == y.n && a.h == y.h && b.h == y.h && a.w == y.w && b.w == y.w
                 && a.c + b.c == y.c,
                 "\(who): \(y) must be (N, Ca + Cb, H, W) of a \(a) and b \(b)")
}

/// y = [a, b] along channels.  a: (N, Ca, H, W)  b: (N, Cb, H, W)  y: (N, Ca + Cb, H, W)
public func concatChannelsForward(_ y: Tensor, _ a: Tensor, _ b: Tensor, pool: WorkerPool) {
    checkConcatShapes(y.shape, a.shape, b.shape, "concatChannelsForward")
    let ca = a.c, cb = b.c, plane = y.shape.plane
    pool.parallelFor(y.n * y.c) { planes, _ in
        for q in planes {
            let n = q / y.c, c = q % y.c
            let src = c < ca ? a.data + (n * ca + c) * plane : b.data + (n * cb + c - ca) * plane
            (y.data + q * plane).update(from: src, count: plane)
        }
    }
}

/// da += dy[:, 0..<Ca], db += dy[:, Ca...]; a nil gradient is skipped.
/// da: (N, Ca, H, W)  db: (N, Cb, H, W)  dy: (N, Ca + Cb, H, W). With a nil gradient the other
/// one's channel count fixes the split.
public func concatChannelsBackward(da: Tensor?, db: Tensor?, dy: Tensor, pool: WorkerPool) {
    guard da != nil || db != nil else { return }
    let ca = da?.c ?? (dy.c - db!.c), cb = dy.c - ca
    precondition(ca >= 0 && cb >= 0, "concatChannelsBackward: gradients have more channels than dy \(dy.shape)")
    let aShape = Shape(dy.n, ca, dy.h, dy.w), bShape = Shape(dy.n, cb, dy.h, dy.w)
    if let da { precondition(da.shape == aShape, "concatChannelsBackward: da \(da.shape), expected \(aShape)") }
    if let db { precondition(db.shape == bShape, "concatChannelsBackward: db \(db.shape), expected \(bShape)") }
    let plane = dy.shape.plane
    pool.parallelFor(dy.n * dy.c) { planes, _ in
        for q in planes {
            let n = q / dy.c, c = q % dy.c
            let dst: UnsafeMutablePointer<Float>
            if c < ca {
                guard let da else { continue }
                dst = da.data + (n * ca + c) * plane
            } else {
                guard let db else { continue }
                dst = db.data + (n * cb + c - ca) * plane
            }
            let src = dy.data + q * plane
            for i in 0..<plane { dst[i] += src[i] }
        }
    }
}

// MARK: - Zero padding to a larger size

@inline(__always) private func checkPadShapes(_ big: Shape, _ small: Shape, _ who: StaticString) {
    precondition(big.n == small.n && big.c == small.c && big.h >= small.h && big.w >= small.w,
                 "\(who): padded \(big) must be (N, C, H >= h, W >= w) of \(small)")
}

/// Zero-pads x into y, placing x at top = (H - h) / 2, left = (W - w) / 2 (PyTorch UNet's F.pad
/// split: diff // 2 before, the rest after).  x: (N, C, h, w)  y: (N, C, H, W), H >= h, W >= w
public func padToForward(_ y: Tensor, _ x: Tensor, pool: WorkerPool) {
    checkPadShapes(y.shape, x.shape, "padToForward")
    let h = x.h, w = x.w, bigW = y.w
    let top = (y.h - h) / 2, left = (y.w - w) / 2
    pool.parallelFor(y.n * y.c) { planes, _ in
        for q in planes {
            let dst = y.data + q * y.shape.plane, src = x.data + q * x.shape.plane
            if h != y.h || w != y.w { dst.update(repeating: 0, count: y.shape.plane) }
            for i in 0..<h {
                (dst + (top + i) * bigW + left).update(from: src + i * w, count: w)
            }
        }
    }
}

/// dx += the (h, w) window of dy that padToForward filled from x.
/// dx: (N, C, h, w)  dy: (N, C, H, W), H >= h, W >= w
public func padToBackward(dx: Tensor, dy: Tensor, pool: WorkerPool) {
    checkPadShapes(dy.shape, dx.shape, "padToBackward")
    let h = dx.h, w = dx.w, bigW = dy.w
    let top = (dy.h - h) / 2, left = (dy.w - w) / 2
    pool.parallelFor(dx.n * dx.c) { planes, _ in
        for q in planes {
            let grad = dx.data + q * dx.shape.plane, up = dy.data + q * dy.shape.plane
            for i in 0..<h {
                let row = grad + i * w, upRow = up + (top + i) * bigW + left
                for j in 0..<w { row[j] += upRow[j] }
            }
        }
    }
}

// MARK: - Flips (test-time augmentation)

/// Mirrors every plane of `x` in place: left-right (`horizontal`) or top-bottom. Its own inverse.
public func flipInPlace(_ x: Tensor, horizontal: Bool, pool: WorkerPool) {
    let h = x.h, w = x.w
    pool.parallelFor(x.n * x.c) { planes, _ in
        for q in planes {
            let p = x.data + q * h * w
            if horizontal {
                for y in 0..<h { for i in 0..<(w / 2) { swap(&p[y * w + i], &p[y * w + w - 1 - i]) } }
            } else {
                for y in 0..<(h / 2) { for i in 0..<w { swap(&p[y * w + i], &p[(h - 1 - y) * w + i]) } }
            }
        }
    }
}

// MARK: - Concatenation as channel slices (n-ary, DeepLabV3+'s ASPP branches)

/// y[:, offset ..< offset + x.c] = x.   y: (N, C, H, W), x: (N, Cx, H, W), offset + Cx <= C
public func concatChannelsForward(_ y: Tensor, _ x: Tensor, at offset: Int, pool: WorkerPool) {
    precondition(x.n == y.n && x.h == y.h && x.w == y.w && offset >= 0 && offset + x.c <= y.c,
                 "concatChannelsForward: \(x.shape) at channel \(offset) does not fit in \(y.shape)")
    let plane = y.shape.plane
    pool.parallelFor(x.n * x.c) { planes, _ in
        for q in planes {
            let n = q / x.c, c = q % x.c
            (y.data + (n * y.c + offset + c) * plane).update(from: x.data + q * plane, count: plane)
        }
    }
}

/// dx += dy[:, offset ..< offset + dx.c].   dy: (N, C, H, W), dx: (N, Cx, H, W), offset + Cx <= C
public func concatChannelsBackward(dx: Tensor, dy: Tensor, at offset: Int, pool: WorkerPool) {
    precondition(dx.n == dy.n && dx.h == dy.h && dx.w == dy.w && offset >= 0 && offset + dx.c <= dy.c,
                 "concatChannelsBackward: \(dx.shape) at channel \(offset) does not fit in \(dy.shape)")
    let plane = dy.shape.plane
    pool.parallelFor(dx.n * dx.c) { planes, _ in
        for q in planes {
            let n = q / dx.c, c = q % dx.c
            let grad = dx.data + q * plane, src = dy.data + (n * dy.c + offset + c) * plane
            for i in 0..<plane { grad[i] += src[i] }
        }
    }
}
