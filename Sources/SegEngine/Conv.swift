// Convolutions: conv2d (k = 1 or 3, stride 1, "same" padding, dilation), a bias op, and the
// UNet up-convolution convTranspose2x2 (kernel 2, stride 2). Each fast kernel keeps a plain naive
// kernel beside it; tests compare them on odd shapes.
//
// Fast conv2d is im2col + sgemm on bands of output rows, so the column buffer stays small
// (about `bandTargetFloats`). A work item is one (image, band); items are split statically over
// the pool's threads. The three GEMMs:
//   forward      Y[:, band]  = W (Cout x Cin*k*k) * col(x) (Cin*k*k x P)
//   weight grad  dW         += dY[:, band] (Cout x P) * col(x)^T, per-thread partials summed in
//                              thread order (bitwise reproducible for a given thread count)
//   input grad   dX[:, band] += W' (Cin x Cout*k*k) * col(dY): for stride 1 and symmetric padding
//                              the input gradient is a same-padded convolution of dY with the kernel
//                              flipped and in/out swapped, W'[ci][co][a][b] = W[co][ci][k-1-a][k-1-b],
//                              so it is a gather like the forward pass (no col2im scatter).
// For k = 1 no columns are needed: the GEMMs read x and dY in place.

import CBLAS

// MARK: - Shared helpers

/// Column-buffer size (floats) a band aims for: small enough to stay in cache next to sgemm's
/// packed panels.
private let bandTargetFloats = 1 << 18

/// Row-major sgemm with Int sizes: C (m x n) = alpha * op(A) * op(B) + beta * C.
@inline(__always)
private func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                  a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                  beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb),
                beta, c, blasint(ldc))
}

/// How a batch of `height`-row images is cut into bands of rows, the unit of parallel work.
private struct Bands {
    let batch: Int, height: Int, rows: Int, count: Int

    /// - Parameter rowFloats: column-buffer floats one image row of a band needs.
    init(batch: Int, height: Int, rowFloats: Int, threads: Int) {
        self.batch = batch
        self.height = height
        guard height > 0 else { rows = 1; count = 0; return }
        let images = max(1, batch)
        let byCache = max(1, min(height, bandTargetFloats / max(1, rowFloats)))
        var bands = (height + byCache - 1) / byCache
        // Enough items to keep every thread busy on small batches, and a multiple of the thread
        // count when the items are few (an uneven split then costs a lot).
        bands = max(bands, min(height, (threads + images - 1) / images))
        while (images * bands) % threads != 0 && bands < height && images * bands < 4 * threads {
            bands += 1
        }
        rows = (height + bands - 1) / bands
        count = (height + rows - 1) / rows
    }

    var items: Int { batch * count }

    /// Image and row range [start, end) of work item `item`.
    @inline(__always) func item(_ item: Int) -> (n: Int, start: Int, end: Int) {
        let n = item / count, band = item % count
        let start = band * rows
        return (n, start, min(height, start + rows))
    }
}

/// Fills `col` ((channels*k*k) x P, P = (rowEnd - rowStart) * width) with the patches of the
/// same-padded convolution for output rows [rowStart, rowEnd):
/// col[(c*k + a)*k + b][(i - rowStart)*width + j] = src[c, i + a*dilation - pad, j + b*dilation - pad], 0 outside.
private func im2colBand(_ col: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>,
                        channels: Int, height: Int, width: Int, kernel: Int, dilation: Int, pad: Int,
                        rowStart: Int, rowEnd: Int) {
    let pixels = (rowEnd - rowStart) * width
    var dst = col
    for c in 0..<channels {
        let plane = src + c * height * width
        for a in 0..<kernel {
            let di = a * dilation - pad
            for b in 0..<kernel {
                let dj = b * dilation - pad
                // Output columns whose source column j + dj lies inside the image.
                let j0 = max(0, -dj), j1 = min(width, width - dj)
                for i in rowStart..<rowEnd {
                    let row = dst + (i - rowStart) * width
                    let si = i + di
                    if si < 0 || si >= height || j0 >= j1 {
                        row.update(repeating: 0, count: width)
                        continue
                    }
                    if j0 > 0 { row.update(repeating: 0, count: j0) }
                    (row + j0).update(from: plane + si * width + j0 + dj, count: j1 - j0)
                    if j1 < width { (row + j1).update(repeating: 0, count: width - j1) }
                }
                dst += pixels
            }
        }
    }
}

/// dweight[i] += sum over threads t (in order) of partial_t[i], partial_t = scratch.buffer(t) + offset.
private func addPartials(into dweight: Tensor, scratch: Scratch, offset: Int, pool: WorkerPool) {
    let threads = pool.threadCount
    pool.parallelFor(dweight.count) { range, _ in
        for i in range {
            var sum: Float = 0
            for t in 0..<threads { sum += scratch.buffer(t)[offset + i] }
            dweight.data[i] += sum
        }
    }
}

/// Sum of `count` floats in double precision (four accumulators).
@inline(__always)
private func sumDouble(_ p: UnsafePointer<Float>, _ count: Int) -> Double {
    var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    var i = 0
    while i + 4 <= count {
        s0 += Double(p[i]); s1 += Double(p[i + 1]); s2 += Double(p[i + 2]); s3 += Double(p[i + 3])
        i += 4
    }
    while i < count { s0 += Double(p[i]); i += 1 }
    return (s0 + s1) + (s2 + s3)
}

private func checkBias(_ bias: Tensor?, _ channels: Int, _ who: StaticString) {
    if let bias { precondition(bias.count == channels, "\(who): bias has \(bias.count) values for \(channels) channels") }
}

// MARK: - Bias

/// Adds a per-channel bias in place: y[n, c, :, :] += bias[c].
/// y: (N, C, H, W)  bias: (C, 1, 1, 1)
public func biasForward(_ y: Tensor, bias: Tensor, pool: WorkerPool) {
    checkBias(bias, y.c, "biasForward")
    let channels = y.c, plane = y.shape.plane
    pool.parallelFor(y.n * channels) { range, _ in
        for item in range {
            let p = y.data + item * plane, b = bias.data[item % channels]
            for i in 0..<plane { p[i] += b }
        }
    }
}

/// Adds the bias gradient: dbias[c] += sum of dy[:, c, :, :] (accumulated in double).
/// dbias: (C, 1, 1, 1)  dy: (N, C, H, W)
public func biasBackward(dbias: Tensor, dy: Tensor, pool: WorkerPool) {
    checkBias(dbias, dy.c, "biasBackward")
    pool.parallelFor(dy.c) { range, _ in
        for c in range {
            var sum = 0.0
            for n in 0..<dy.n { sum += sumDouble(dy.plane(n, c), dy.shape.plane) }
            dbias.data[c] += Float(sum)
        }
    }
}

// MARK: - conv2d

private func checkConv2d(_ y: Tensor, _ x: Tensor, _ weight: Tensor, _ dilation: Int, _ who: StaticString) -> Int {
    let k = weight.h
    precondition(k == weight.w && (k == 1 || k == 3), "\(who): kernel must be 1x1 or 3x3, weight is \(weight.shape)")
    precondition(dilation >= 1, "\(who): dilation \(dilation)")
    precondition(weight.n == y.c && weight.c == x.c, "\(who): weight \(weight.shape) for x \(x.shape), y \(y.shape)")
    precondition(y.n == x.n && y.h == x.h && y.w == x.w, "\(who): y \(y.shape) for x \(x.shape)")
    return k
}

private func conv2dBands(batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int,
                         kernel: Int, threads: Int) -> Bands {
    Bands(batch: batch, height: height,
          rowFloats: max(inChannels, outChannels) * kernel * kernel * width, threads: threads)
}

/// Floats of scratch per thread that conv2dForward/Backward need for these sizes (max of both):
/// a column buffer (k = 3 only) plus one weight-sized block (weight-gradient partial, flipped kernel).
public func conv2dScratchFloats(batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int,
                                kernel: Int, threads: Int) -> Int {
    let kk = kernel * kernel
    let bands = conv2dBands(batch: batch, inChannels: inChannels, outChannels: outChannels,
                            height: height, width: width, kernel: kernel, threads: threads)
    let columns = kernel == 1 ? 0 : max(inChannels, outChannels) * kk * bands.rows * width
    return columns + inChannels * outChannels * kk
}

/// 2-D convolution (cross-correlation, like PyTorch), stride 1, "same" padding = dilation*(k-1)/2, k = 1 or 3.
/// Overwrites y.
/// y: (N, Cout, H, W)  x: (N, Cin, H, W)  weight: (Cout, Cin, k, k) (OIHW)  bias: (Cout, 1, 1, 1) or nil
public func conv2dForward(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?, dilation: Int = 1,
                          pool: WorkerPool, scratch: Scratch) {
    let k = checkConv2d(y, x, weight, dilation, "conv2dForward")
    checkBias(bias, y.c, "conv2dForward")
    let (cin, cout, height, width) = (x.c, y.c, x.h, x.w)
    let plane = height * width, kk = k * k, pad = dilation * (k - 1) / 2
    precondition(scratch.threadCount >= pool.threadCount, "conv2dForward: scratch has fewer threads than the pool")
    scratch.require(conv2dScratchFloats(batch: x.n, inChannels: cin, outChannels: cout, height: height,
                                        width: width, kernel: k, threads: pool.threadCount), "conv2d")
    let bands = conv2dBands(batch: x.n, inChannels: cin, outChannels: cout, height: height, width: width,
                            kernel: k, threads: pool.threadCount)
    pool.parallelFor(bands.items) { range, t in
        let col = scratch.buffer(t)
        for item in range {
            let (n, r0, r1) = bands.item(item)
            let pixels = (r1 - r0) * width
            let yBand = y.sample(n) + r0 * width
            var beta: Float = 0
            if let bias {
                for co in 0..<cout { (yBand + co * plane).update(repeating: bias.data[co], count: pixels) }
                beta = 1
            }
            if k == 1 {
                gemm(transA: false, transB: false, m: cout, n: pixels, k: cin, a: weight.data, lda: cin,
                     b: x.sample(n) + r0 * width, ldb: plane, beta: beta, c: yBand, ldc: plane)
            } else {
                im2colBand(col, x.sample(n), channels: cin, height: height, width: width, kernel: k,
                           dilation: dilation, pad: pad, rowStart: r0, rowEnd: r1)
                gemm(transA: false, transB: false, m: cout, n: pixels, k: cin * kk, a: weight.data, lda: cin * kk,
                     b: col, ldb: pixels, beta: beta, c: yBand, ldc: plane)
            }
        }
    }
}

/// Backward of conv2dForward. Adds dL/dx into dx, dL/dweight into dweight, dL/dbias into dbias;
/// a nil output is not computed.
/// dx, x: (N, Cin, H, W)  dy: (N, Cout, H, W)  dweight, weight: (Cout, Cin, k, k)  dbias: (Cout, 1, 1, 1)
public func conv2dBackward(dx: Tensor?, dweight: Tensor, dbias: Tensor?, dy: Tensor, x: Tensor, weight: Tensor,
                           dilation: Int = 1, pool: WorkerPool, scratch: Scratch) {
    let k = checkConv2d(dy, x, weight, dilation, "conv2dBackward")
    precondition(dweight.shape == weight.shape, "conv2dBackward: dweight \(dweight.shape) for weight \(weight.shape)")
    if let dx { precondition(dx.shape == x.shape, "conv2dBackward: dx \(dx.shape) for x \(x.shape)") }
    checkBias(dbias, dy.c, "conv2dBackward")
    let (cin, cout, height, width) = (x.c, dy.c, x.h, x.w)
    let plane = height * width, kk = k * k, pad = dilation * (k - 1) / 2
    let threads = pool.threadCount
    precondition(scratch.threadCount >= threads, "conv2dBackward: scratch has fewer threads than the pool")
    let total = conv2dScratchFloats(batch: x.n, inChannels: cin, outChannels: cout, height: height,
                                    width: width, kernel: k, threads: threads)
    scratch.require(total, "conv2d")
    let bands = conv2dBands(batch: x.n, inChannels: cin, outChannels: cout, height: height, width: width,
                            kernel: k, threads: threads)
    let weightFloats = cout * cin * kk
    let blockOffset = total - weightFloats  // the weight-sized block follows the column buffer

    // Weight gradient: each thread sums its items into a private partial, then the partials are
    // added into dweight in thread order.
    pool.run { t in
        let col = scratch.buffer(t)
        let partial = col + blockOffset
        partial.update(repeating: 0, count: weightFloats)
        for item in WorkerPool.split(bands.items, parts: threads, index: t) {
            let (n, r0, r1) = bands.item(item)
            let pixels = (r1 - r0) * width
            let dyBand = dy.sample(n) + r0 * width
            if k == 1 {
                gemm(transA: false, transB: true, m: cout, n: cin, k: pixels, a: dyBand, lda: plane,
                     b: x.sample(n) + r0 * width, ldb: plane, beta: 1, c: partial, ldc: cin)
            } else {
                im2colBand(col, x.sample(n), channels: cin, height: height, width: width, kernel: k,
                           dilation: dilation, pad: pad, rowStart: r0, rowEnd: r1)
                gemm(transA: false, transB: true, m: cout, n: cin * kk, k: pixels, a: dyBand, lda: plane,
                     b: col, ldb: pixels, beta: 1, c: partial, ldc: cin * kk)
            }
        }
    }
    addPartials(into: dweight, scratch: scratch, offset: blockOffset, pool: pool)

    if let dbias { biasBackward(dbias: dbias, dy: dy, pool: pool) }

    guard let dx else { return }
    if k == 1 {
        // dX[:, band] += W^T (Cin x Cout) * dY[:, band]
        pool.parallelFor(bands.items) { range, _ in
            for item in range {
                let (n, r0, r1) = bands.item(item)
                gemm(transA: true, transB: false, m: cin, n: (r1 - r0) * width, k: cout, a: weight.data, lda: cin,
                     b: dy.sample(n) + r0 * width, ldb: plane, beta: 1, c: dx.sample(n) + r0 * width, ldc: plane)
            }
        }
        return
    }
    // The flipped, transposed kernel W'[ci][co][a][b] = W[co][ci][k-1-a][k-1-b], written once into
    // thread 0's weight-sized block (its partial is no longer needed) and read by every thread.
    let flipped = scratch.buffer(0) + blockOffset
    pool.parallelFor(cin) { range, _ in
        for ci in range {
            for co in 0..<cout {
                let src = weight.data + (co * cin + ci) * kk, dst = flipped + (ci * cout + co) * kk
                for i in 0..<kk { dst[i] = src[kk - 1 - i] }
            }
        }
    }
    pool.parallelFor(bands.items) { range, t in
        let col = scratch.buffer(t)
        for item in range {
            let (n, r0, r1) = bands.item(item)
            let pixels = (r1 - r0) * width
            im2colBand(col, dy.sample(n), channels: cout, height: height, width: width, kernel: k,
                       dilation: dilation, pad: pad, rowStart: r0, rowEnd: r1)
            gemm(transA: false, transB: false, m: cin, n: pixels, k: cout * kk, a: flipped, lda: cout * kk,
                 b: col, ldb: pixels, beta: 1, c: dx.sample(n) + r0 * width, ldc: plane)
        }
    }
}

/// Reference conv2d forward: direct loops, double accumulation. Same contract as conv2dForward.
/// y: (N, Cout, H, W)  x: (N, Cin, H, W)  weight: (Cout, Cin, k, k)  bias: (Cout, 1, 1, 1) or nil
public func conv2dForwardNaive(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?, dilation: Int = 1) {
    let k = checkConv2d(y, x, weight, dilation, "conv2dForwardNaive")
    checkBias(bias, y.c, "conv2dForwardNaive")
    let pad = dilation * (k - 1) / 2
    for n in 0..<y.n {
        for co in 0..<y.c {
            for i in 0..<y.h {
                for j in 0..<y.w {
                    var sum = Double(bias?[co] ?? 0)
                    for ci in 0..<x.c {
                        for a in 0..<k {
                            let si = i + a * dilation - pad
                            if si < 0 || si >= x.h { continue }
                            for b in 0..<k {
                                let sj = j + b * dilation - pad
                                if sj < 0 || sj >= x.w { continue }
                                sum += Double(weight[co, ci, a, b]) * Double(x[n, ci, si, sj])
                            }
                        }
                    }
                    y[n, co, i, j] = Float(sum)
                }
            }
        }
    }
}

/// Reference conv2d backward: direct loops. Adds into dx (if given), dweight, dbias (if given).
/// dx, x: (N, Cin, H, W)  dy: (N, Cout, H, W)  dweight, weight: (Cout, Cin, k, k)  dbias: (Cout, 1, 1, 1)
public func conv2dBackwardNaive(dx: Tensor?, dweight: Tensor, dbias: Tensor?, dy: Tensor, x: Tensor, weight: Tensor,
                                dilation: Int = 1) {
    let k = checkConv2d(dy, x, weight, dilation, "conv2dBackwardNaive")
    precondition(dweight.shape == weight.shape, "conv2dBackwardNaive: dweight \(dweight.shape) for weight \(weight.shape)")
    if let dx { precondition(dx.shape == x.shape, "conv2dBackwardNaive: dx \(dx.shape) for x \(x.shape)") }
    checkBias(dbias, dy.c, "conv2dBackwardNaive")
    let pad = dilation * (k - 1) / 2
    for n in 0..<dy.n {
        for co in 0..<dy.c {
            for i in 0..<dy.h {
                for j in 0..<dy.w {
                    let g = dy[n, co, i, j]
                    if let dbias { dbias[co] += g }
                    for ci in 0..<x.c {
                        for a in 0..<k {
                            let si = i + a * dilation - pad
                            if si < 0 || si >= x.h { continue }
                            for b in 0..<k {
                                let sj = j + b * dilation - pad
                                if sj < 0 || sj >= x.w { continue }
                                dweight[co, ci, a, b] += g * x[n, ci, si, sj]
                                if let dx { dx[n, ci, si, sj] += g * weight[co, ci, a, b] }
                            }
                        }
                    }
                }
            }
        }
    }
}

// MARK: - convTranspose2x2

// Per image, the transposed convolution with kernel = stride = 2 is one GEMM and a scatter with no
// overlap: col (Cout*4 x HW) = W^T (Cout*4 x Cin) * x (Cin x HW), y[co, 2i+a, 2j+b] = col[co*4 + a*2 + b, i*W + j].
// Backward gathers dy into the same layout G: dx += W (Cin x Cout*4) * G, dW += x * G^T.

private func checkConvTranspose(_ y: Tensor, _ x: Tensor, _ weight: Tensor, _ who: StaticString) {
    precondition(weight.h == 2 && weight.w == 2 && weight.n == x.c && weight.c == y.c,
                 "\(who): weight \(weight.shape) for x \(x.shape), y \(y.shape) (want (Cin, Cout, 2, 2))")
    precondition(y.n == x.n && y.h == 2 * x.h && y.w == 2 * x.w, "\(who): y \(y.shape) for x \(x.shape)")
}

private func convTransposeBands(batch: Int, outChannels: Int, height: Int, width: Int, threads: Int) -> Bands {
    Bands(batch: batch, height: height, rowFloats: outChannels * 4 * width, threads: threads)
}

/// Floats of scratch per thread that convTranspose2x2Forward/Backward need for these sizes:
/// a (Cout*4 x band pixels) column buffer plus a weight-gradient partial.
/// Height and width are the input's (the output is twice as large).
public func convTranspose2x2ScratchFloats(batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int,
                                         threads: Int) -> Int {
    let bands = convTransposeBands(batch: batch, outChannels: outChannels, height: height, width: width, threads: threads)
    return outChannels * 4 * bands.rows * width + inChannels * outChannels * 4
}

/// Transposed convolution, kernel 2, stride 2 (PyTorch ConvTranspose2d(k=2, s=2)). Overwrites y:
/// y[n, co, 2i+a, 2j+b] = sum_ci x[n, ci, i, j] * weight[ci, co, a, b] + bias[co].
/// y: (N, Cout, 2H, 2W)  x: (N, Cin, H, W)  weight: (Cin, Cout, 2, 2) (IOHW, PyTorch's layout)  bias: (Cout, 1, 1, 1) or nil
public func convTranspose2x2Forward(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?,
                                    pool: WorkerPool, scratch: Scratch) {
    checkConvTranspose(y, x, weight, "convTranspose2x2Forward")
    checkBias(bias, y.c, "convTranspose2x2Forward")
    let (cin, cout, height, width) = (x.c, y.c, x.h, x.w)
    let plane = height * width, outWidth = 2 * width, outPlane = 4 * plane
    precondition(scratch.threadCount >= pool.threadCount, "convTranspose2x2Forward: scratch has fewer threads than the pool")
    scratch.require(convTranspose2x2ScratchFloats(batch: x.n, inChannels: cin, outChannels: cout, height: height,
                                                  width: width, threads: pool.threadCount), "conv2d")
    let bands = convTransposeBands(batch: x.n, outChannels: cout, height: height, width: width, threads: pool.threadCount)
    pool.parallelFor(bands.items) { range, t in
        let col = scratch.buffer(t)
        for item in range {
            let (n, r0, r1) = bands.item(item)
            let pixels = (r1 - r0) * width
            gemm(transA: true, transB: false, m: cout * 4, n: pixels, k: cin, a: weight.data, lda: cout * 4,
                 b: x.sample(n) + r0 * width, ldb: plane, beta: 0, c: col, ldc: pixels)
            for co in 0..<cout {
                let b: Float = bias?.data[co] ?? 0
                let c00 = col + (co * 4) * pixels, c01 = c00 + pixels, c10 = c01 + pixels, c11 = c10 + pixels
                let out = y.sample(n) + co * outPlane
                for i in r0..<r1 {
                    let src = (i - r0) * width
                    let top = out + 2 * i * outWidth, bottom = top + outWidth
                    for j in 0..<width {
                        top[2 * j] = c00[src + j] + b
                        top[2 * j + 1] = c01[src + j] + b
                        bottom[2 * j] = c10[src + j] + b
                        bottom[2 * j + 1] = c11[src + j] + b
                    }
                }
            }
        }
    }
}

/// Backward of convTranspose2x2Forward. Adds into dx (if given), dweight, dbias (if given).
/// dx, x: (N, Cin, H, W)  dy: (N, Cout, 2H, 2W)  dweight, weight: (Cin, Cout, 2, 2)  dbias: (Cout, 1, 1, 1)
public func convTranspose2x2Backward(dx: Tensor?, dweight: Tensor, dbias: Tensor?, dy: Tensor, x: Tensor, weight: Tensor,
                                     pool: WorkerPool, scratch: Scratch) {
    checkConvTranspose(dy, x, weight, "convTranspose2x2Backward")
    precondition(dweight.shape == weight.shape, "convTranspose2x2Backward: dweight \(dweight.shape) for weight \(weight.shape)")
    if let dx { precondition(dx.shape == x.shape, "convTranspose2x2Backward: dx \(dx.shape) for x \(x.shape)") }
    checkBias(dbias, dy.c, "convTranspose2x2Backward")
    let (cin, cout, height, width) = (x.c, dy.c, x.h, x.w)
    let plane = height * width, outWidth = 2 * width, outPlane = 4 * plane
    let threads = pool.threadCount
    precondition(scratch.threadCount >= threads, "convTranspose2x2Backward: scratch has fewer threads than the pool")
    let total = convTranspose2x2ScratchFloats(batch: x.n, inChannels: cin, outChannels: cout, height: height,
                                              width: width, threads: threads)
    scratch.require(total, "conv2d")
    let bands = convTransposeBands(batch: x.n, outChannels: cout, height: height, width: width, threads: threads)
    let weightFloats = cin * cout * 4
    let partialOffset = total - weightFloats

    pool.run { t in
        let gathered = scratch.buffer(t)
        let partial = gathered + partialOffset
        partial.update(repeating: 0, count: weightFloats)
        for item in WorkerPool.split(bands.items, parts: threads, index: t) {
            let (n, r0, r1) = bands.item(item)
            let pixels = (r1 - r0) * width
            // G[co*4 + a*2 + b][(i - r0)*W + j] = dy[n, co, 2i+a, 2j+b]
            for co in 0..<cout {
                let g00 = gathered + (co * 4) * pixels, g01 = g00 + pixels, g10 = g01 + pixels, g11 = g10 + pixels
                let grad = dy.sample(n) + co * outPlane
                for i in r0..<r1 {
                    let dst = (i - r0) * width
                    let top = grad + 2 * i * outWidth, bottom = top + outWidth
                    for j in 0..<width {
                        g00[dst + j] = top[2 * j]
                        g01[dst + j] = top[2 * j + 1]
                        g10[dst + j] = bottom[2 * j]
                        g11[dst + j] = bottom[2 * j + 1]
                    }
                }
            }
            let xBand = x.sample(n) + r0 * width
            if let dx {
                gemm(transA: false, transB: false, m: cin, n: pixels, k: cout * 4, a: weight.data, lda: cout * 4,
                     b: gathered, ldb: pixels, beta: 1, c: dx.sample(n) + r0 * width, ldc: plane)
            }
            gemm(transA: false, transB: true, m: cin, n: cout * 4, k: pixels, a: xBand, lda: plane,
                 b: gathered, ldb: pixels, beta: 1, c: partial, ldc: cout * 4)
        }
    }
    addPartials(into: dweight, scratch: scratch, offset: partialOffset, pool: pool)
    if let dbias { biasBackward(dbias: dbias, dy: dy, pool: pool) }
}

/// Reference convTranspose2x2 forward: direct loops, double accumulation.
/// y: (N, Cout, 2H, 2W)  x: (N, Cin, H, W)  weight: (Cin, Cout, 2, 2)  bias: (Cout, 1, 1, 1) or nil
public func convTranspose2x2ForwardNaive(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?) {
    checkConvTranspose(y, x, weight, "convTranspose2x2ForwardNaive")
    checkBias(bias, y.c, "convTranspose2x2ForwardNaive")
    for n in 0..<y.n {
        for co in 0..<y.c {
            for oi in 0..<y.h {
                for oj in 0..<y.w {
                    let (i, a, j, b) = (oi / 2, oi % 2, oj / 2, oj % 2)
                    var sum = Double(bias?[co] ?? 0)
                    for ci in 0..<x.c { sum += Double(x[n, ci, i, j]) * Double(weight[ci, co, a, b]) }
                    y[n, co, oi, oj] = Float(sum)
                }
            }
        }
    }
}

/// Reference convTranspose2x2 backward: direct loops. Adds into dx (if given), dweight, dbias (if given).
/// dx, x: (N, Cin, H, W)  dy: (N, Cout, 2H, 2W)  dweight, weight: (Cin, Cout, 2, 2)  dbias: (Cout, 1, 1, 1)
public func convTranspose2x2BackwardNaive(dx: Tensor?, dweight: Tensor, dbias: Tensor?, dy: Tensor, x: Tensor,
                                          weight: Tensor) {
    checkConvTranspose(dy, x, weight, "convTranspose2x2BackwardNaive")
    precondition(dweight.shape == weight.shape, "convTranspose2x2BackwardNaive: dweight \(dweight.shape) for weight \(weight.shape)")
    if let dx { precondition(dx.shape == x.shape, "convTranspose2x2BackwardNaive: dx \(dx.shape) for x \(x.shape)") }
    checkBias(dbias, dy.c, "convTranspose2x2BackwardNaive")
    for n in 0..<dy.n {
        for co in 0..<dy.c {
            for oi in 0..<dy.h {
                for oj in 0..<dy.w {
                    let (i, a, j, b) = (oi / 2, oi % 2, oj / 2, oj % 2)
                    let g = dy[n, co, oi, oj]
                    if let dbias { dbias[co] += g }
                    for ci in 0..<x.c {
                        dweight[ci, co, a, b] += g * x[n, ci, i, j]
                        if let dx { dx[n, ci, i, j] += g * weight[ci, co, a, b] }
                    }
                }
            }
        }
    }
}
