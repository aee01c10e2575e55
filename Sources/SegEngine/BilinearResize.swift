// Bilinear resize to any output size: PyTorch F.interpolate(x, size=(H, W), mode='bilinear',
// align_corners=...) with its CPU semantics when the output size (not a scale factor) is given.
// DeepLabV3+ uses it with align_corners=True (smp's decoder and head upsample x4) and to broadcast
// the ASPP pooling branch's 1x1 map back to the feature size. Work is split over the N*C planes.
//
// Source coordinate per axis, in Float as PyTorch computes it (area_pixel_compute_source_index):
//   align_corners=True:  src = dst * scale, scale = (in - 1) / (out - 1)  (0 when out == 1)
//   align_corners=False: src = (dst + 0.5) * scale - 0.5, scale = in / out, clamped below at 0
// then i0 = floor(src) (clamped to in - 1), i1 = min(i0 + 1, in - 1), lambda = src - i0. Rows and
// columns are separable: y = (1 - ly) * ((1 - lx) x[i0][j0] + lx x[i0][j1])
//                             + ly * ((1 - lx) x[i1][j0] + lx x[i1][j1]).
// The fast forward blends each pair of input rows horizontally once (in blocks of 64 columns) for
// all the output rows that read that pair, then blends vertically; the fast backward computes each
// output row's row pair and weight once and walks the row; the naive kernels evaluate the formula
// per output pixel. All of them use the same operations in the same order, so their results are
// bitwise equal.

@inline(__always) private func checkResizeShapes(_ out: Tensor, _ input: Tensor, _ who: StaticString) {
    precondition(out.n == input.n && out.c == input.c && input.h >= 1 && input.w >= 1 && out.h >= 1 && out.w >= 1,
                 "\(who): resized \(out.shape) must be (N, C, H >= 1, W >= 1) of \(input.shape) with h, w >= 1")
}

/// One axis of the resize: input size, output size and PyTorch's Float scale for the convention.
private struct ResizeAxis {
    let size: Int
    let scale: Float
    let alignCorners: Bool

    @inline(__always) init(input: Int, output: Int, alignCorners: Bool) {
        size = input
        self.alignCorners = alignCorners
        if alignCorners {
            scale = output > 1 ? Float(input - 1) / Float(output - 1) : 0
        } else {
            scale = Float(input) / Float(output)
        }
    }

    /// The two input indices read by output index `dst` and the weight of the second.
    @inline(__always) func source(_ dst: Int) -> (i0: Int, i1: Int, lambda: Float) {
        let src = alignCorners ? scale * Float(dst) : max(scale * (Float(dst) + 0.5) - 0.5, 0)
        let i0 = min(Int(src), size - 1)
        let i1 = min(i0 + 1, size - 1)
        return (i0, i1, min(src - Float(i0), 1))
    }
}

// MARK: - Fast

/// Bilinear resize, PyTorch interpolate(size=(H, W), mode='bilinear', align_corners=alignCorners).
/// Overwrites y.  x: (N, C, h, w)  y: (N, C, H, W), any h, w, H, W >= 1 (a 1x1 x broadcasts).
public func resizeBilinearForward(_ y: Tensor, _ x: Tensor, alignCorners: Bool, pool: WorkerPool) {
    checkResizeShapes(y, x, "resizeBilinearForward")
    let inW = x.w, outH = y.h, outW = y.w
    let rows = ResizeAxis(input: x.h, output: outH, alignCorners: alignCorners)
    let cols = ResizeAxis(input: inW, output: outW, alignCorners: alignCorners)
    pool.parallelFor(x.n * x.c) { planes, _ in
        // 2 x 64 floats on the stack: a block of the two input rows' horizontal blends.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * resizeBlock) { blend in
            let upper = blend.baseAddress!, lower = upper + resizeBlock
            for q in planes {
                let src = x.data + q * x.shape.plane, dst = y.data + q * y.shape.plane
                var oy = 0
                while oy < outH {
                    // Output rows [oy, end) read the same two input rows.
                    let (r0, r1, _) = rows.source(oy)
                    var end = oy + 1
                    while end < outH, case let (a, b, _) = rows.source(end), a == r0 && b == r1 { end += 1 }
                    let top = src + r0 * inW, bottom = src + r1 * inW
                    for bx in stride(from: 0, to: outW, by: resizeBlock) {
                        let count = min(resizeBlock, outW - bx)
                        for j in 0..<count {
                            let (c0, c1, lx) = cols.source(bx + j)
                            let wx = 1 - lx
                            upper[j] = wx * top[c0] + lx * top[c1]
                            lower[j] = wx * bottom[c0] + lx * bottom[c1]
                        }
                        for r in oy..<end {
                            let ly = rows.source(r).lambda, wy = 1 - ly
                            let out = dst + r * outW + bx
                            for j in 0..<count { out[j] = wy * upper[j] + ly * lower[j] }
                        }
                    }
                    oy = end
                }
            }
        }
    }
}

/// Output columns per block of the forward's horizontal blends (the block lives on the stack).
private let resizeBlock = 64

/// Adds the gradient of resizeBilinearForward into dx: each output's gradient is scattered to its
/// four inputs with the forward's weights.  dx: (N, C, h, w)  dy: (N, C, H, W)
public func resizeBilinearBackward(dx: Tensor, dy: Tensor, alignCorners: Bool, pool: WorkerPool) {
    checkResizeShapes(dy, dx, "resizeBilinearBackward")
    let inW = dx.w, outH = dy.h, outW = dy.w
    let rows = ResizeAxis(input: dx.h, output: outH, alignCorners: alignCorners)
    let cols = ResizeAxis(input: inW, output: outW, alignCorners: alignCorners)
    pool.parallelFor(dx.n * dx.c) { planes, _ in
        for q in planes {
            let grad = dx.data + q * dx.shape.plane, up = dy.data + q * dy.shape.plane
            for oy in 0..<outH {
                let (r0, r1, ly) = rows.source(oy)
                let top = grad + r0 * inW, bottom = grad + r1 * inW, upRow = up + oy * outW
                let wy = 1 - ly
                for ox in 0..<outW {
                    let (c0, c1, lx) = cols.source(ox)
                    let wx = 1 - lx
                    let g = upRow[ox]
                    top[c0] += wy * wx * g
                    top[c1] += wy * lx * g
                    bottom[c0] += ly * wx * g
                    bottom[c1] += ly * lx * g
                }
            }
        }
    }
}

// MARK: - Naive

/// Reference for resizeBilinearForward: the formula per output pixel.
/// x: (N, C, h, w)  y: (N, C, H, W)
public func resizeBilinearForwardNaive(_ y: Tensor, _ x: Tensor, alignCorners: Bool) {
    checkResizeShapes(y, x, "resizeBilinearForwardNaive")
    let rows = ResizeAxis(input: x.h, output: y.h, alignCorners: alignCorners)
    let cols = ResizeAxis(input: x.w, output: y.w, alignCorners: alignCorners)
    for n in 0..<y.n {
        for c in 0..<y.c {
            for oy in 0..<y.h {
                for ox in 0..<y.w {
                    let (y0, y1, ly) = rows.source(oy)
                    let (x0, x1, lx) = cols.source(ox)
                    let top = (1 - lx) * x[n, c, y0, x0] + lx * x[n, c, y0, x1]
                    let bottom = (1 - lx) * x[n, c, y1, x0] + lx * x[n, c, y1, x1]
                    y[n, c, oy, ox] = (1 - ly) * top + ly * bottom
                }
            }
        }
    }
}

/// Reference for resizeBilinearBackward: scatters each output's gradient to its four inputs.
/// dx: (N, C, h, w)  dy: (N, C, H, W)
public func resizeBilinearBackwardNaive(dx: Tensor, dy: Tensor, alignCorners: Bool) {
    checkResizeShapes(dy, dx, "resizeBilinearBackwardNaive")
    let rows = ResizeAxis(input: dx.h, output: dy.h, alignCorners: alignCorners)
    let cols = ResizeAxis(input: dx.w, output: dy.w, alignCorners: alignCorners)
    for n in 0..<dy.n {
        for c in 0..<dy.c {
            for oy in 0..<dy.h {
                for ox in 0..<dy.w {
                    let (y0, y1, ly) = rows.source(oy)
                    let (x0, x1, lx) = cols.source(ox)
                    let g = dy[n, c, oy, ox]
                    dx[n, c, y0, x0] += (1 - ly) * (1 - lx) * g
                    dx[n, c, y0, x1] += (1 - ly) * lx * g
                    dx[n, c, y1, x0] += ly * (1 - lx) * g
                    dx[n, c, y1, x1] += ly * lx * g
                }
            }
        }
    }
}
