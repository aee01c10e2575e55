// x2 upsampling: bilinear with half-pixel centres (PyTorch interpolate(scale_factor=2,
// mode='bilinear', align_corners=False)) and nearest. Work is split over the N*C planes.
//
// For x2 with half-pixel centres, src = (dst + 0.5) / 2 - 0.5 gives fixed weights: output 2k reads
// inputs k-1 and k with 0.25 / 0.75, output 2k+1 reads k and k+1 with 0.75 / 0.25, and the
// neighbour index is clamped to the edge (output 0 and output 2H-1 copy the edge input). The fast
// kernels use that pattern separably (a vertical mix carried along the row in registers); the
// naive kernels use the general formula per output pixel.

@inline(__always) private func checkUpsampleShapes(_ big: Tensor, _ small: Tensor, _ who: StaticString) {
    precondition(big.n == small.n && big.c == small.c && big.h == 2 * small.h && big.w == 2 * small.w,
                 "\(who): upsampled \(big.shape) must be (N, C, 2H, 2W) of \(small.shape)")
}

/// As checkUpsampleShapes, for the upsampled planes at channels offset ..< offset + C of `big`.
@inline(__always) private func checkUpsampleShapes(_ big: Tensor, _ small: Tensor, at offset: Int, _ who: StaticString) {
    precondition(big.n == small.n && offset >= 0 && offset + small.c <= big.c && big.h == 2 * small.h
                 && big.w == 2 * small.w,
                 "\(who): upsampled \(big.shape) must be (N, >= \(offset) + C, 2H, 2W) of \(small.shape)")
}

// MARK: - Bilinear, fast

/// Bilinear x2 with half-pixel centres, PyTorch interpolate(scale_factor=2, mode='bilinear',
/// align_corners=False): src = (dst + 0.5) / 2 - 0.5, negative src clamped to 0, index clamped at
/// the last row/col.  x: (N, C, H, W)  y: (N, C, 2H, 2W)
public func upsampleBilinear2xForward(_ y: Tensor, _ x: Tensor, pool: WorkerPool) {
    checkUpsampleShapes(y, x, "upsampleBilinear2xForward")
    upsampleBilinear2xForward(y, x, at: 0, pool: pool)
}

/// upsampleBilinear2xForward into channels offset ..< offset + C of y, the others untouched: a
/// UNet decoder's concatenation [skip, upsampled] filled with no upsampled tensor of its own.
/// x: (N, C, H, W)  y: (N, Cy, 2H, 2W), offset + C <= Cy
public func upsampleBilinear2xForward(_ y: Tensor, _ x: Tensor, at offset: Int, pool: WorkerPool) {
    checkUpsampleShapes(y, x, at: offset, "upsampleBilinear2xForward")
    let inH = x.h, inW = x.w, outW = y.w
    guard inH > 0 && inW > 0 else { return }
    pool.parallelFor(x.n * x.c) { planes, _ in
        for q in planes {
            let n = q / x.c, c = q % x.c
            let src = x.data + q * x.shape.plane, dst = y.plane(n, offset + c)
            for r in 0..<(2 * inH) {
                let k = r >> 1
                // Output row r mixes input row k (0.75) with its neighbour above (even r) or
                // below (odd r), clamped at the edge (0.25).
                let farRow = (r & 1) == 0 ? max(k - 1, 0) : min(k + 1, inH - 1)
                let near = src + k * inW, far = src + farRow * inW
                let out = dst + r * outW
                var previous = 0.75 * near[0] + 0.25 * far[0]
                var current = previous
                for j in 0..<(inW - 1) {
                    let next = 0.75 * near[j + 1] + 0.25 * far[j + 1]
                    out[2 * j] = 0.75 * current + 0.25 * previous
                    out[2 * j + 1] = 0.75 * current + 0.25 * next
                    previous = current
                    current = next
                }
                out[2 * inW - 2] = 0.75 * current + 0.25 * previous
                out[2 * inW - 1] = current  // clamped: 0.75 * current + 0.25 * current
            }
        }
    }
}

/// Adds the gradient of upsampleBilinear2xForward into dx (the transpose of the same fixed
/// weights).  dx: (N, C, H, W)  dy: (N, C, 2H, 2W)
public func upsampleBilinear2xBackward(dx: Tensor, dy: Tensor, pool: WorkerPool) {
    checkUpsampleShapes(dy, dx, "upsampleBilinear2xBackward")
    upsampleBilinear2xBackward(dx: dx, dy: dy, at: 0, pool: pool)
}

/// upsampleBilinear2xBackward from channels offset ..< offset + C of dy (the gradient of a
/// concatenation that upsampleBilinear2xForward(_:_:at:pool:) filled).
/// dx: (N, C, H, W)  dy: (N, Cy, 2H, 2W), offset + C <= Cy
public func upsampleBilinear2xBackward(dx: Tensor, dy: Tensor, at offset: Int, pool: WorkerPool) {
    checkUpsampleShapes(dy, dx, at: offset, "upsampleBilinear2xBackward")
    let inH = dx.h, inW = dx.w, outH = dy.h, outW = dy.w
    guard inH > 0 && inW > 0 else { return }
    pool.parallelFor(dx.n * dx.c) { planes, _ in
        for q in planes {
            let n = q / dx.c, c = q % dx.c
            let grad = dx.data + q * dx.shape.plane, up = UnsafePointer(dy.plane(n, offset + c))
            for k in 0..<inH {
                // Input row k receives 0.75 from output rows 2k, 2k+1 and 0.25 from 2k-1, 2k+2
                // (clamped: at the edges the neighbour's share falls back on row k itself).
                let near0 = up + 2 * k * outW, near1 = near0 + outW
                let farTop = up + max(2 * k - 1, 0) * outW
                let farBottom = up + min(2 * k + 2, outH - 1) * outW
                @inline(__always) func column(_ j: Int) -> Float {
                    0.75 * (near0[j] + near1[j]) + 0.25 * (farTop[j] + farBottom[j])
                }
                let row = grad + k * inW
                var previousOdd = column(0)  // clamped left neighbour of column 0
                var even = previousOdd
                for j in 0..<inW {
                    let odd = column(2 * j + 1)
                    let nextEven = j + 1 < inW ? column(2 * j + 2) : odd
                    row[j] += 0.75 * (even + odd) + 0.25 * (previousOdd + nextEven)
                    previousOdd = odd
                    even = nextEven
                }
            }
        }
    }
}

// MARK: - Bilinear, naive

/// Source index and weight of the second neighbour along one axis of size `size`, for output
/// index `dst` (PyTorch's area_pixel_compute_source_index with align_corners=False, scale 1/2).
@inline(__always) private func bilinearSource(_ dst: Int, size: Int) -> (i0: Int, i1: Int, lambda: Float) {
    let src = max((Float(dst) + 0.5) / 2 - 0.5, 0)
    let i0 = Int(src.rounded(.down))
    let i1 = i0 < size - 1 ? i0 + 1 : i0
    return (i0, i1, src - Float(i0))
}

/// Reference for upsampleBilinear2xForward: the general formula per output pixel.
/// x: (N, C, H, W)  y: (N, C, 2H, 2W)
public func upsampleBilinear2xForwardNaive(_ y: Tensor, _ x: Tensor) {
    checkUpsampleShapes(y, x, "upsampleBilinear2xForwardNaive")
    for n in 0..<y.n {
        for c in 0..<y.c {
            for oy in 0..<y.h {
                let (y0, y1, ly) = bilinearSource(oy, size: x.h)
                for ox in 0..<y.w {
                    let (x0, x1, lx) = bilinearSource(ox, size: x.w)
                    let top = (1 - lx) * x[n, c, y0, x0] + lx * x[n, c, y0, x1]
                    let bottom = (1 - lx) * x[n, c, y1, x0] + lx * x[n, c, y1, x1]
                    y[n, c, oy, ox] = (1 - ly) * top + ly * bottom
                }
            }
        }
    }
}

/// Reference for upsampleBilinear2xBackward: scatters each output's gradient to its four inputs.
/// dx: (N, C, H, W)  dy: (N, C, 2H, 2W)
public func upsampleBilinear2xBackwardNaive(dx: Tensor, dy: Tensor) {
    checkUpsampleShapes(dy, dx, "upsampleBilinear2xBackwardNaive")
    for n in 0..<dy.n {
        for c in 0..<dy.c {
            for oy in 0..<dy.h {
                let (y0, y1, ly) = bilinearSource(oy, size: dx.h)
                for ox in 0..<dy.w {
                    let (x0, x1, lx) = bilinearSource(ox, size: dx.w)
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

// MARK: - Nearest

/// Nearest x2: y[2i + a, 2j + b] = x[i, j] for a, b in {0, 1}.  x: (N, C, H, W)  y: (N, C, 2H, 2W)
public func upsampleNearest2xForward(_ y: Tensor, _ x: Tensor, pool: WorkerPool) {
    checkUpsampleShapes(y, x, "upsampleNearest2xForward")
    let inH = x.h, inW = x.w, outW = y.w
    pool.parallelFor(x.n * x.c) { planes, _ in
        for q in planes {
            let src = x.data + q * x.shape.plane, dst = y.data + q * y.shape.plane
            for i in 0..<inH {
                let row = src + i * inW, out0 = dst + 2 * i * outW, out1 = out0 + outW
                for j in 0..<inW {
                    let v = row[j]
                    out0[2 * j] = v; out0[2 * j + 1] = v
                    out1[2 * j] = v; out1[2 * j + 1] = v
                }
            }
        }
    }
}

/// dx[i, j] += sum of dy over the 2x2 block it was copied to.  dx: (N, C, H, W)  dy: (N, C, 2H, 2W)
public func upsampleNearest2xBackward(dx: Tensor, dy: Tensor, pool: WorkerPool) {
    checkUpsampleShapes(dy, dx, "upsampleNearest2xBackward")
    let inH = dx.h, inW = dx.w, outW = dy.w
    pool.parallelFor(dx.n * dx.c) { planes, _ in
        for q in planes {
            let grad = dx.data + q * dx.shape.plane, up = dy.data + q * dy.shape.plane
            for i in 0..<inH {
                let row = grad + i * inW, up0 = up + 2 * i * outW, up1 = up0 + outW
                for j in 0..<inW {
                    row[j] += (up0[2 * j] + up0[2 * j + 1]) + (up1[2 * j] + up1[2 * j + 1])
                }
            }
        }
    }
}
