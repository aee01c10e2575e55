// Convolutions: conv2d (k = 1 or 3, stride 1, "same" padding, dilation), a bias op, and the
// UNet up-convolution convTranspose2x2 (kernel 2, stride 2). Each fast kernel keeps a plain naive
// kernel beside it; tests compare them on odd shapes.
//
// Fast conv2d is im2col + sgemm. A work item is either a band of output rows of one image (large
// images: the column buffer stays near `columnTargetFloats`) or a group of whole images (small
// images: one wide GEMM instead of several narrow ones that each repack the weight). Items are
// split statically over the pool's threads. The three GEMMs, P = pixels of the item:
//   forward      Y[:, item]  = W (Cout x Cin*k*k) * col(x) (Cin*k*k x P)
//   weight grad  dW         += dY[:, item] (Cout x P) * col(x)^T, per-thread partials summed in
//                              thread order (bitwise reproducible for a given thread count)
//   input grad   dX[:, item] += W' (Cin x Cout*k*k) * col(dY): for stride 1 and symmetric padding
//                              the input gradient is a same-padded convolution of dY with the kernel
//                              flipped and in/out swapped, W'[ci][co][a][b] = W[co][ci][k-1-a][k-1-b],
//                              so it is a gather like the forward pass (no col2im scatter).
// For k = 1 and single-image items no columns are needed: the GEMMs read x and dY in place.
// A group item's GEMM writes a (channels x P) temporary that is then copied (or added) into the
// images' planes.


// MARK: - Shared helpers

/// Column-buffer size (floats) an item aims for: small enough to stay in cache next to sgemm's
/// packed panels...
private let columnTargetFloats = 1 << 18
/// ...but never fewer pixels than this per item (deep layers with many channels), so that the
/// GEMMs stay wide enough to amortise packing the weight.
private let minimumItemPixels = 256

/// How a batch is cut into work items: a group of `group` whole images (then `bands` == 1), or
/// one band of `rows` rows of one image. Internal so tests can check the coverage.
struct ConvWorkPlan {
    let batch: Int, height: Int, width: Int
    /// Images per item; > 1 only when bands == 1.
    let group: Int
    /// Rows per band, bands per image.
    let rows: Int, bands: Int

    /// - Parameter columnRows: rows of the column buffer (floats per pixel of an item).
    init(batch: Int, height: Int, width: Int, columnRows: Int, threads: Int) {
        self.batch = batch
        self.height = height
        self.width = width
        let plane = height * width
        guard batch > 0 && plane > 0 else { group = 1; rows = 1; bands = 0; return }
        let pixelBudget = max(columnTargetFloats / max(1, columnRows), minimumItemPixels)
        var group = 1, bands: Int
        if plane <= pixelBudget {
            // Whole images; group them, but keep at least one item per thread and spread the
            // images evenly over the items.
            group = min(pixelBudget / plane, (batch + threads - 1) / threads)
            if group > 1 {
                let itemsPerThread = (batch + threads * group - 1) / (threads * group)
                group = (batch + threads * itemsPerThread - 1) / (threads * itemsPerThread)
                if (batch + group - 1) / group < threads { group = 1 }
            }
            group = max(1, group)
            bands = 1
        } else {
            let byBudget = max(1, pixelBudget / width)
            bands = (height + byBudget - 1) / byBudget
        }
        if group == 1 {
            // Enough items to keep every thread busy on small batches, and a multiple of the
            // thread count when the items are few (an uneven split then costs a lot).
            bands = max(bands, min(height, (threads + batch - 1) / batch))
            while (batch * bands) % threads != 0 && bands < height && batch * bands < 4 * threads {
                bands += 1
            }
        }
        let rows = (height + bands - 1) / bands
        self.group = group
        self.rows = rows
        self.bands = (height + rows - 1) / rows
    }

    var items: Int { (batch + group - 1) / group * bands }
    /// The most pixels (GEMM columns) one item has.
    var maxPixels: Int { group * rows * width }

    /// Images [n0, n1) and rows [r0, r1) of work item `item`.
    @inline(__always) func item(_ item: Int) -> (n0: Int, n1: Int, r0: Int, r1: Int) {
        let g = item / bands, band = item % bands
        let n0 = g * group, r0 = band * rows
        return (n0, min(batch, n0 + group), r0, min(height, r0 + rows))
    }
}

/// Fills `col` ((channels*k*k) rows, row stride `ld`) with the patches of the same-padded
/// convolution for output rows [rowStart, rowEnd) of one image:
/// col[(c*k + a)*k + b][(i - rowStart)*width + j] = src[c, i + a*dilation - pad, j + b*dilation - pad], 0 outside.
/// With k = 1 it copies the band.
private func im2colBand(_ col: UnsafeMutablePointer<Float>, ld: Int, _ src: UnsafePointer<Float>,
                        channels: Int, height: Int, width: Int, kernel: Int, dilation: Int, pad: Int,
                        rowStart: Int, rowEnd: Int) {
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
                dst += ld
            }
        }
    }
}

/// The GEMM operand for work item (n0..<n1, r0..<r1) of `src`: the tensor itself when the item is
/// one image and no patches are needed (k = 1), else the item's columns gathered into `col`
/// (one image after another, row stride = pixels of the item). Returns the pointer and its row stride.
@inline(__always)
private func columns(_ src: Tensor, into col: UnsafeMutablePointer<Float>, kernel: Int, dilation: Int, pad: Int,
                     _ n0: Int, _ n1: Int, _ r0: Int, _ r1: Int) -> (UnsafePointer<Float>, Int) {
    let bandPixels = (r1 - r0) * src.w
    if kernel == 1 && n1 - n0 == 1 { return (UnsafePointer(src.sample(n0) + r0 * src.w), src.shape.plane) }
    let ld = (n1 - n0) * bandPixels
    for n in n0..<n1 {
        im2colBand(col + (n - n0) * bandPixels, ld: ld, src.sample(n), channels: src.c, height: src.h,
                   width: src.w, kernel: kernel, dilation: dilation, pad: pad, rowStart: r0, rowEnd: r1)
    }
    return (UnsafePointer(col), ld)
}

/// Adds (or with `overwrite`, copies) a (channels x P) temporary of a group item (whole images
/// n0..<n1, image after image along P) into the images' planes of `dst`; `bias` (optional) is added too.
private func scatterGroup(_ dst: Tensor, from temp: UnsafePointer<Float>, _ n0: Int, _ n1: Int,
                          overwrite: Bool, bias: Tensor?, relu: Bool = false) {
    let plane = dst.shape.plane, ld = (n1 - n0) * plane
    for n in n0..<n1 {
        for c in 0..<dst.c {
            let src = temp + c * ld + (n - n0) * plane, out = dst.plane(n, c)
            let b: Float = bias?.data[c] ?? 0
            if overwrite && relu {
                for i in 0..<plane { out[i] = max(src[i] + b, 0) }
            } else if overwrite {
                for i in 0..<plane { out[i] = src[i] + b }
            } else {
                for i in 0..<plane { out[i] += src[i] }
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


/// Work plan and per-thread scratch layout of conv2d: [columns][group temporary][weight-sized block].
private struct Conv2dLayout {
    let plan: ConvWorkPlan
    /// Offsets (floats) of the (max(Cin, Cout) x P) temporary of group items and of the weight-sized
    /// block (weight-gradient partial; in thread 0 also the flipped kernel), and the total.
    let temp: Int, block: Int, total: Int

    init(batch: Int, inChannels cin: Int, outChannels cout: Int, height: Int, width: Int, kernel: Int, threads: Int) {
        let kk = kernel * kernel
        plan = ConvWorkPlan(batch: batch, height: height, width: width, columnRows: max(cin, cout) * kk,
                            threads: threads)
        let pixels = plan.maxPixels
        let columnRows = kernel == 1 && plan.group == 1 ? 0 : max(cin, cout) * kk
        let tempRows = plan.group > 1 ? max(cin, cout) : 0
        temp = columnRows * pixels
        block = temp + tempRows * pixels
        total = block + cin * cout * kk
    }
}

/// Floats of scratch per thread that conv2dForward/Backward need for these sizes (max of both):
/// a column buffer, a temporary for small images grouped into one GEMM, and one weight-sized block
/// (weight-gradient partial, flipped kernel). Covers any smaller batch too. `policy`: the one the
/// convolutions will run with (its Winograd chunk sizes set the Winograd scratch).
public func conv2dScratchFloats(batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int,
                                kernel: Int, dilation: Int = 1, policy: ConvPolicy = .standard, threads: Int) -> Int {
    // The maximum over every batch up to `batch`, so a smaller last batch always fits, and over
    // every algorithm and tile whatever `policy.algorithm` picks: for benchmarks and tests that run
    // one scratch several ways (a model plans with `conv2dPlannedScratchFloats`).
    var most = 0
    if kernel == 3 && dilation == 1 {
        for (cin, cout) in [(inChannels, outChannels), (outChannels, inChannels)] {
            for tile in [2, 4] {
                most = max(most, WinogradPlan(inChannels: cin, outChannels: cout, height: height, width: width,
                                              batch: batch, threads: threads, tile: tile,
                                              policy: policy).scratchFloatsPerThread)
            }
        }
    }
    for images in 1...max(1, batch) {
        most = max(most, Conv2dLayout(batch: images, inChannels: inChannels, outChannels: outChannels,
                                      height: height, width: width, kernel: kernel, threads: threads).total)
    }
    return most
}

/// Floats of scratch per thread that conv2dForward/Backward need for these sizes when they run with
/// `policy` itself: the Winograd tile it picks for this layer (all three passes take it), or
/// im2col + GEMM. What a model plans with (its policy is fixed when it is built); a kernel asked to
/// run another way with it stops at its `Scratch.require`. Covers any smaller batch too.
public func conv2dPlannedScratchFloats(batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int,
                                       kernel: Int, dilation: Int = 1, policy: ConvPolicy, threads: Int) -> Int {
    let tile = policy.winogradTile(kernel: kernel, dilation: dilation, inChannels: inChannels, outChannels: outChannels,
                                   height: height, width: width)
    guard tile > 0 else {
        return (1...max(1, batch)).map {
            Conv2dLayout(batch: $0, inChannels: inChannels, outChannels: outChannels, height: height, width: width,
                         kernel: kernel, threads: threads).total
        }.max()!
    }
    return [(inChannels, outChannels), (outChannels, inChannels)].map { cin, cout in
        WinogradPlan(inChannels: cin, outChannels: cout, height: height, width: width, batch: batch, threads: threads,
                     tile: tile, policy: policy).scratchFloatsPerThread
    }.max()!
}

/// Shared scratch (transformed weights) for the tile `policy` picks: (tile + 2)^2 points a weight.
public func conv2dPlannedSharedScratchFloats(inChannels: Int, outChannels: Int, height: Int, width: Int, kernel: Int,
                                             dilation: Int = 1, policy: ConvPolicy) -> Int {
    let tile = policy.winogradTile(kernel: kernel, dilation: dilation, inChannels: inChannels, outChannels: outChannels,
                                   height: height, width: width)
    return tile > 0 ? (tile + 2) * (tile + 2) * inChannels * outChannels : 0
}

/// Floats of shared scratch (transformed weights) conv2dForward/Backward need (F(4x4)'s 36 points,
/// so any tile choice fits).
public func conv2dSharedScratchFloats(inChannels: Int, outChannels: Int, kernel: Int, dilation: Int = 1) -> Int {
    kernel == 3 && dilation == 1 ? 36 * inChannels * outChannels : 0
}

/// Which kernel runs a 3x3, dilation-1 convolution: im2col + GEMM, Winograd F(2x2, 3x3)
/// (`winograd`), Winograd F(4x4, 3x3) (`winograd4`), or `auto`, which picks per layer from
/// measurements (docs/PERFORMANCE.md), the same for all three passes.
public enum ConvAlgorithm: String, CaseIterable, Sendable { case auto, gemm, winograd, winograd4 }

/// How 3x3 convolutions are computed: the algorithm (or the rule `auto` picks it by) and the
/// Winograd chunk sizes. A value, chosen when a model is built (`UNet(_:convPolicy:pool:)`, `segtrain
/// bench --conv`) and passed to every conv2d call and scratch-size query, so two models in one process
/// can differ and nothing global changes under a running step. Changing it never changes what a
/// layer computes, only the rounding of the result (each path is checked against the exact result).
public struct ConvPolicy: Sendable, Equatable {
    public var algorithm: ConvAlgorithm
    /// `auto`: a layer with fewer input or output channels than this takes im2col + GEMM (the first
    /// layer with 3 input channels, the head).
    public var winogradMinimumChannels: Int
    /// `auto`: planes at least this high and wide take F(4x4), smaller ones F(2x2). F(4x4) writes
    /// 2.25 transformed values per input value instead of 4 and needs 1.78x fewer GEMM flops; on
    /// small planes its few tiles make short GEMMs, and its transformed weights and weight-gradient
    /// partials (36 values per 3x3 kernel, F(2x2): 16) outweigh them (docs/PERFORMANCE.md, "The F(4x4) rule").
    public var winogradLargeTileMinimumSide: Int
    /// Floats of transformed tiles (V + M) one Winograd chunk aims at: about a core's L2 (1 MiB here),
    /// so the transforms and GEMMs of a chunk stay in cache; tuned with `segtrain bench` (docs/PERFORMANCE.md).
    public var winogradTargetChunkFloats: Int
    /// ...but at least this many tiles (GEMM columns) per chunk, so deep layers keep wide GEMMs.
    public var winogradMinimumTilesPerChunk: Int
    /// Whether work items are cut by one image's shape alone, never by the batch size or the thread
    /// count: Winograd chunks hold one image (or a band of one), and the strided kernel does not
    /// spread a small batch over more bands. Then an encoder model computes an image's forward and
    /// input gradient with the same bits in any batch, so N ranks (`--sync-bn` included) run each
    /// image as the single process does and differ from it only by how the gradient sums over the
    /// ranks and threads are grouped (`train --deterministic`). Default: on for `gemm` (which also
    /// makes the weight gradients thread-count independent), off otherwise: grouping a batch's
    /// small images into one Winograd chunk keeps the deep layers' GEMMs wide.
    public var perImageWork: Bool

    public init(algorithm: ConvAlgorithm = .auto, perImageWork: Bool? = nil, winogradMinimumChannels: Int = 8,
                winogradLargeTileMinimumSide: Int = 24,
                winogradTargetChunkFloats: Int = 1 << 18, winogradMinimumTilesPerChunk: Int = 64) {
        precondition(winogradTargetChunkFloats >= 1 && winogradMinimumTilesPerChunk >= 1,
                     "ConvPolicy: Winograd chunk sizes must be positive")
        self.algorithm = algorithm
        self.perImageWork = perImageWork ?? (algorithm == .gemm)
        self.winogradMinimumChannels = winogradMinimumChannels
        self.winogradLargeTileMinimumSide = winogradLargeTileMinimumSide
        self.winogradTargetChunkFloats = winogradTargetChunkFloats
        self.winogradMinimumTilesPerChunk = winogradMinimumTilesPerChunk
    }

    /// `auto` with the measured thresholds and chunk sizes: what every model uses unless told otherwise.
    public static let standard = ConvPolicy()

    /// The Winograd output tile (2 or 4) for this layer's three passes, or 0 for im2col + GEMM.
    public func winogradTile(kernel: Int, dilation: Int, inChannels: Int, outChannels: Int,
                             height: Int, width: Int) -> Int {
        guard kernel == 3 && dilation == 1 else { return 0 }
        switch algorithm {
        case .gemm: return 0
        case .winograd: return 2
        case .winograd4: return 4
        case .auto:
            // From `segtrain bench --conv-layers` (docs/PERFORMANCE.md): the first layer (3 input
            // channels) and the head take GEMM.
            guard min(inChannels, outChannels) >= winogradMinimumChannels else { return 0 }
            return min(height, width) >= winogradLargeTileMinimumSide ? 4 : 2
        }
    }
}

/// 2-D convolution (cross-correlation, like PyTorch), stride 1, "same" padding = dilation*(k-1)/2, k = 1 or 3.
/// Overwrites y; with `relu`, y = max(conv + bias, 0) (fused: no second pass over y).
/// y: (N, Cout, H, W)  x: (N, Cin, H, W)  weight: (Cout, Cin, k, k) (OIHW)  bias: (Cout, 1, 1, 1) or nil
public func conv2dForward(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?, dilation: Int = 1,
                          relu: Bool = false, policy: ConvPolicy = .standard, pool: WorkerPool, scratch: Scratch) {
    let k = checkConv2d(y, x, weight, dilation, "conv2dForward")
    checkBias(bias, y.c, "conv2dForward")
    let tile = policy.winogradTile(kernel: k, dilation: dilation, inChannels: x.c, outChannels: y.c,
                                   height: x.h, width: x.w)
    if tile > 0 {
        winogradConv3x3Forward(y, x, weight: weight, bias: bias, relu: relu, tile: tile, policy: policy,
                               pool: pool, scratch: scratch)
        return
    }
    let cin = x.c, kk = k * k
    precondition(scratch.threadCount >= pool.threadCount, "conv2dForward: scratch has fewer threads than the pool")
    let layout = Conv2dLayout(batch: x.n, inChannels: cin, outChannels: y.c, height: x.h, width: x.w,
                              kernel: k, threads: pool.threadCount)
    scratch.require(layout.total, "conv2d")
    gemmConvolution(y, x, weights: weight.data, transposed: false, lda: cin * kk, depth: cin * kk, kernel: k,
                    dilation: dilation, accumulate: false, bias: bias, relu: relu, layout: layout,
                    pool: pool, scratch: scratch)
}

/// out (N, M, H, W) (+)= the convolution of `input` by the weight matrix `weights` (M x depth, or
/// depth x M when `transposed`), through im2col columns per work item (a band of rows of one image
/// or a group of small images): the forward pass, and — with the flipped, transposed kernel — the
/// input gradient. Overwriting adds the bias and applies the ReLU while the band is in cache.
private func gemmConvolution(_ out: Tensor, _ input: Tensor, weights: UnsafePointer<Float>, transposed: Bool,
                             lda: Int, depth: Int, kernel k: Int, dilation: Int, accumulate: Bool, bias: Tensor?,
                             relu: Bool, layout: Conv2dLayout, pool: WorkerPool, scratch: Scratch) {
    precondition(!(accumulate && (bias != nil || relu)), "gemmConvolution: bias and relu apply when overwriting")
    let m = out.c, width = input.w, plane = input.shape.plane, pad = dilation * (k - 1) / 2
    let plan = layout.plan
    pool.parallelFor(plan.items) { range, t in
        let base = scratch.buffer(t)
        for item in range {
            let (n0, n1, r0, r1) = plan.item(item)
            let pixels = (n1 - n0) * (r1 - r0) * width
            let (b, ldb) = columns(input, into: base, kernel: k, dilation: dilation, pad: pad, n0, n1, r0, r1)
            if n1 - n0 == 1 {
                let band = out.sample(n0) + r0 * width
                var beta: Float = accumulate ? 1 : 0
                if let bias {
                    for c in 0..<m { (band + c * plane).update(repeating: bias.data[c], count: pixels) }
                    beta = 1
                }
                Gemm.sgemm(transA: transposed, transB: false, m: m, n: pixels, k: depth, a: weights, lda: lda,
                          b: b, ldb: ldb, beta: beta, c: band, ldc: plane)
                if relu {
                    for c in 0..<m {
                        let row = band + c * plane
                        for i in 0..<pixels { row[i] = max(row[i], 0) }
                    }
                }
            } else {
                let temp = base + layout.temp
                Gemm.sgemm(transA: transposed, transB: false, m: m, n: pixels, k: depth, a: weights, lda: lda,
                          b: b, ldb: ldb, beta: 0, c: temp, ldc: pixels)
                scatterGroup(out, from: temp, n0, n1, overwrite: !accumulate, bias: bias, relu: relu)
            }
        }
    }
}

/// Backward of conv2dForward. Adds dL/dx into dx, dL/dweight into dweight, dL/dbias into dbias;
/// a nil output is not computed. With `overwriteInputGradient`, dx = dL/dx instead (for a dx that
/// nothing has written yet: saves zeroing it and reading it back).
/// dx, x: (N, Cin, H, W)  dy: (N, Cout, H, W)  dweight, weight: (Cout, Cin, k, k)  dbias: (Cout, 1, 1, 1)
public func conv2dBackward(dx: Tensor?, dweight: Tensor?, dbias: Tensor?, dy: Tensor, x: Tensor, weight: Tensor,
                           dilation: Int = 1, overwriteInputGradient: Bool = false, policy: ConvPolicy = .standard,
                           pool: WorkerPool, scratch: Scratch) {
    let k = checkConv2d(dy, x, weight, dilation, "conv2dBackward")
    if let dweight {
        precondition(dweight.shape == weight.shape, "conv2dBackward: dweight \(dweight.shape) for weight \(weight.shape)")
    }
    if let dx { precondition(dx.shape == x.shape, "conv2dBackward: dx \(dx.shape) for x \(x.shape)") }
    checkBias(dbias, dy.c, "conv2dBackward")
    let tile = policy.winogradTile(kernel: k, dilation: dilation, inChannels: x.c, outChannels: dy.c,
                                   height: x.h, width: x.w)
    let winogradInput = tile > 0
    // Winograd takes the weight gradient (with the bias gradient) and/or the input gradient;
    // im2col + GEMM below does whatever it left.
    let weightsByWinograd = tile > 0 && dweight != nil
    if weightsByWinograd, let dweight {
        winogradConv3x3WeightGradient(dweight: dweight, dbias: dbias, dy: dy, x: x, tile: tile, policy: policy,
                                      pool: pool, scratch: scratch)
    }
    if winogradInput, let dx {
        winogradConv3x3InputGradient(dx: dx, dy: dy, weight: weight, accumulate: !overwriteInputGradient, tile: tile,
                                     policy: policy, pool: pool, scratch: scratch)
    }
    let gemmWeight = weightsByWinograd ? nil : dweight
    let gemmBias = weightsByWinograd ? nil : dbias
    let gemmInput = winogradInput ? nil : dx
    if gemmWeight == nil && gemmBias == nil && gemmInput == nil { return }
    conv2dBackwardGEMM(dx: gemmInput, dweight: gemmWeight, dbias: gemmBias, dy: dy, x: x, weight: weight,
                       k: k, dilation: dilation, overwriteInputGradient: overwriteInputGradient, pool: pool, scratch: scratch)
}

/// The im2col + GEMM backward (weight gradient by per-thread partials, input gradient as a
/// convolution with the flipped kernel).
private func conv2dBackwardGEMM(dx: Tensor?, dweight: Tensor?, dbias: Tensor?, dy: Tensor, x: Tensor, weight: Tensor,
                                k: Int, dilation: Int, overwriteInputGradient: Bool, pool: WorkerPool, scratch: Scratch) {
    let (cin, cout, width) = (x.c, dy.c, x.w)
    let plane = x.shape.plane, kk = k * k, pad = dilation * (k - 1) / 2
    let threads = pool.threadCount
    precondition(scratch.threadCount >= threads, "conv2dBackward: scratch has fewer threads than the pool")
    let layout = Conv2dLayout(batch: x.n, inChannels: cin, outChannels: cout, height: x.h, width: width,
                              kernel: k, threads: threads)
    scratch.require(layout.total, "conv2d")
    let plan = layout.plan
    let weightFloats = cout * cin * kk

    // Weight gradient: each thread sums its items into a private partial, then the partials are
    // added into dweight in thread order.
    if let dweight {
    pool.run { t in
        let base = scratch.buffer(t)
        let partial = base + layout.block
        partial.update(repeating: 0, count: weightFloats)
        for item in WorkerPool.split(plan.items, parts: threads, index: t) {
            let (n0, n1, r0, r1) = plan.item(item)
            let pixels = (n1 - n0) * (r1 - r0) * width
            let (b, ldb) = columns(x, into: base, kernel: k, dilation: dilation, pad: pad, n0, n1, r0, r1)
            var a = UnsafePointer(dy.sample(n0) + r0 * width), lda = plane
            if n1 - n0 > 1 {
                // dY of the group, image after image: (Cout x P).
                let temp = base + layout.temp
                for n in n0..<n1 {
                    for co in 0..<cout { (temp + co * pixels + (n - n0) * plane).update(from: dy.plane(n, co), count: plane) }
                }
                a = UnsafePointer(temp)
                lda = pixels
            }
            Gemm.sgemm(transA: false, transB: true, m: cout, n: cin * kk, k: pixels, a: a, lda: lda,
                      b: b, ldb: ldb, beta: 1, c: partial, ldc: cin * kk)
        }
    }
    addPartials(into: dweight, scratch: scratch, offset: layout.block, pool: pool)
    }

    if let dbias { biasBackward(dbias: dbias, dy: dy, pool: pool) }

    guard let dx else { return }
    // k = 1: dX += W^T (Cin x Cout) * dY. k = 3: dX += W' (Cin x Cout*9) * col(dY) with the flipped,
    // transposed kernel W'[ci][co][a][b] = W[co][ci][k-1-a][k-1-b], written once into thread 0's
    // weight-sized block (its partial is no longer needed) and read by every thread.
    let flipped = scratch.buffer(0) + layout.block
    if k > 1 {
        pool.parallelFor(cin) { range, _ in
            for ci in range {
                for co in 0..<cout {
                    let src = weight.data + (co * cin + ci) * kk, dst = flipped + (ci * cout + co) * kk
                    for i in 0..<kk { dst[i] = src[kk - 1 - i] }
                }
            }
        }
    }
    gemmConvolution(dx, dy, weights: k == 1 ? UnsafePointer(weight.data) : UnsafePointer(flipped), transposed: k == 1,
                    lda: k == 1 ? cin : cout * kk, depth: cout * kk, kernel: k, dilation: dilation, accumulate: !overwriteInputGradient,
                    bias: nil, relu: false, layout: layout, pool: pool, scratch: scratch)
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

// The transposed convolution with kernel = stride = 2 is one GEMM per item and a scatter with no
// overlap: col (Cout*4 x P) = W^T (Cout*4 x Cin) * x (Cin x P), y[co, 2i+a, 2j+b] = col[co*4 + a*2 + b, (i, j)].
// Backward gathers dy into the same layout G: dx += W (Cin x Cout*4) * G, dW += x * G^T.

private func checkConvTranspose(_ y: Tensor, _ x: Tensor, _ weight: Tensor, _ who: StaticString) {
    precondition(weight.h == 2 && weight.w == 2 && weight.n == x.c && weight.c == y.c,
                 "\(who): weight \(weight.shape) for x \(x.shape), y \(y.shape) (want (Cin, Cout, 2, 2))")
    precondition(y.n == x.n && y.h == 2 * x.h && y.w == 2 * x.w, "\(who): y \(y.shape) for x \(x.shape)")
}


/// Work plan and per-thread scratch layout of convTranspose2x2:
/// [columns (Cout*4 x P)][input-sized temporary (Cin x P), group items only][weight-gradient partial].
private struct ConvTransposeLayout {
    let plan: ConvWorkPlan
    let input: Int, block: Int, total: Int

    init(batch: Int, inChannels cin: Int, outChannels cout: Int, height: Int, width: Int, threads: Int) {
        plan = ConvWorkPlan(batch: batch, height: height, width: width, columnRows: cout * 4, threads: threads)
        let pixels = plan.maxPixels
        input = cout * 4 * pixels
        block = input + (plan.group > 1 ? cin * pixels : 0)
        total = block + cin * cout * 4
    }
}

/// Floats of scratch per thread that convTranspose2x2Forward/Backward need for these sizes (or any
/// smaller batch).
/// Height and width are the input's (the output is twice as large).
public func convTranspose2x2ScratchFloats(batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int,
                                         threads: Int) -> Int {
    var most = 0
    for images in 1...max(1, batch) {
        most = max(most, ConvTransposeLayout(batch: images, inChannels: inChannels, outChannels: outChannels,
                                             height: height, width: width, threads: threads).total)
    }
    return most
}

/// Transposed convolution, kernel 2, stride 2 (PyTorch ConvTranspose2d(k=2, s=2)). Overwrites y:
/// y[n, co, 2i+a, 2j+b] = sum_ci x[n, ci, i, j] * weight[ci, co, a, b] + bias[co].
/// y: (N, Cout, 2H, 2W)  x: (N, Cin, H, W)  weight: (Cin, Cout, 2, 2) (IOHW, PyTorch's layout)  bias: (Cout, 1, 1, 1) or nil
public func convTranspose2x2Forward(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?,
                                    pool: WorkerPool, scratch: Scratch) {
    checkConvTranspose(y, x, weight, "convTranspose2x2Forward")
    checkBias(bias, y.c, "convTranspose2x2Forward")
    let (cin, cout, width) = (x.c, y.c, x.w)
    let outWidth = 2 * width, outPlane = y.shape.plane
    precondition(scratch.threadCount >= pool.threadCount, "convTranspose2x2Forward: scratch has fewer threads than the pool")
    let layout = ConvTransposeLayout(batch: x.n, inChannels: cin, outChannels: cout, height: x.h, width: width,
                                     threads: pool.threadCount)
    scratch.require(layout.total, "conv2d")
    let plan = layout.plan
    pool.parallelFor(plan.items) { range, t in
        let col = scratch.buffer(t)
        for item in range {
            let (n0, n1, r0, r1) = plan.item(item)
            let bandPixels = (r1 - r0) * width, pixels = (n1 - n0) * bandPixels
            let (b, ldb) = columns(x, into: col + layout.input, kernel: 1, dilation: 1, pad: 0, n0, n1, r0, r1)
            Gemm.sgemm(transA: true, transB: false, m: cout * 4, n: pixels, k: cin, a: weight.data, lda: cout * 4,
                      b: b, ldb: ldb, beta: 0, c: col, ldc: pixels)
            for n in n0..<n1 {
                for co in 0..<cout {
                    let bias: Float = bias?.data[co] ?? 0
                    let c00 = col + co * 4 * pixels + (n - n0) * bandPixels
                    let c01 = c00 + pixels, c10 = c01 + pixels, c11 = c10 + pixels
                    let out = y.sample(n) + co * outPlane
                    for i in r0..<r1 {
                        let src = (i - r0) * width
                        let top = out + 2 * i * outWidth, bottom = top + outWidth
                        for j in 0..<width {
                            top[2 * j] = c00[src + j] + bias
                            top[2 * j + 1] = c01[src + j] + bias
                            bottom[2 * j] = c10[src + j] + bias
                            bottom[2 * j + 1] = c11[src + j] + bias
                        }
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
    let (cin, cout, width) = (x.c, dy.c, x.w)
    let plane = x.shape.plane, outWidth = 2 * width, outPlane = dy.shape.plane
    let threads = pool.threadCount
    precondition(scratch.threadCount >= threads, "convTranspose2x2Backward: scratch has fewer threads than the pool")
    let layout = ConvTransposeLayout(batch: x.n, inChannels: cin, outChannels: cout, height: x.h, width: width,
                                     threads: threads)
    scratch.require(layout.total, "conv2d")
    let plan = layout.plan
    let weightFloats = cin * cout * 4

    pool.run { t in
        let gathered = scratch.buffer(t)
        let partial = gathered + layout.block
        partial.update(repeating: 0, count: weightFloats)
        for item in WorkerPool.split(plan.items, parts: threads, index: t) {
            let (n0, n1, r0, r1) = plan.item(item)
            let bandPixels = (r1 - r0) * width, pixels = (n1 - n0) * bandPixels
            // G[co*4 + a*2 + b][(n - n0)*bandPixels + (i - r0)*W + j] = dy[n, co, 2i+a, 2j+b]
            for n in n0..<n1 {
                for co in 0..<cout {
                    let g00 = gathered + co * 4 * pixels + (n - n0) * bandPixels
                    let g01 = g00 + pixels, g10 = g01 + pixels, g11 = g10 + pixels
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
            }
            let temp = gathered + layout.input
            let (xb, ldx) = columns(x, into: temp, kernel: 1, dilation: 1, pad: 0, n0, n1, r0, r1)
            Gemm.sgemm(transA: false, transB: true, m: cin, n: cout * 4, k: pixels, a: xb, lda: ldx,
                      b: gathered, ldb: pixels, beta: 1, c: partial, ldc: cout * 4)
            guard let dx else { continue }
            if n1 - n0 == 1 {
                Gemm.sgemm(transA: false, transB: false, m: cin, n: pixels, k: cout * 4, a: weight.data, lda: cout * 4,
                          b: gathered, ldb: pixels, beta: 1, c: dx.sample(n0) + r0 * width, ldc: plane)
            } else {
                // The copy of x in `temp` is used up: reuse it for the group's dx.
                Gemm.sgemm(transA: false, transB: false, m: cin, n: pixels, k: cout * 4, a: weight.data, lda: cout * 4,
                          b: gathered, ldb: pixels, beta: 0, c: temp, ldc: pixels)
                scatterGroup(dx, from: temp, n0, n1, overwrite: false, bias: nil)
            }
        }
    }
    addPartials(into: dweight, scratch: scratch, offset: layout.block, pool: pool)
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
