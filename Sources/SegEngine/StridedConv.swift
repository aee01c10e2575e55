// General 2-D convolution for the pretrained encoders (issue #16): kernel k (1, 3, 7, ...), stride s,
// padding p, dilation d, optional bias, PyTorch's Conv2d semantics (cross-correlation, zero padding,
// weight OIHW) and output size floor((H + 2p - d(k-1) - 1) / s) + 1. A fast kernel (im2col + sgemm;
// for 1x1, stride 1, padding 0 the GEMMs read x and dy in place, no copy) and a naive twin in plain
// loops. conv2d in Conv.swift stays the UNet's stride-1 "same" kernel (with Winograd); this file does
// not touch it.
//
// Bitwise the same result for ANY thread count (not only for a given one): the work plan depends on
// the shapes alone, every GEMM call has the same sizes and operands whichever thread runs it, and
// every sum that crosses work items runs in a fixed order:
//   forward      item = (image, band of output rows): Y[:, band] = W (Cout x Cin k k) * col(x) (+ bias).
//   weight grad  small weights: the items are cut into `weightGroups` fixed groups (shape-dependent,
//                <= 4); group g sums its items' dY * col^T into its own partial (shared scratch), and
//                the partials are added into dweight in group order. Weights of at least
//                `stridedTiledWeightFloats` (the deep layers, whose partials would cost tens of MiB):
//                dweight is cut into fixed tiles (output channels x input channels), and each tile
//                adds every item's product into dweight directly, items in order (no partials; the
//                tile's channels are im2col'd by the thread that owns it).
//   input grad   item = (image, band of INPUT rows): dcol = W^T (Cin k k x Cout) * dY over the output
//                rows that reach the band, then col2im adds into the band's rows only, so no two items
//                write the same dx element and each element gets its taps in (ci, a, b) order.
//   bias grad    per channel in Double, images and pixels in order (biasBackward).
// The bands do depend on the batch size: a small batch is spread over more, narrower bands so
// that threads find work. `perImageWork` (ConvPolicy.perImageWork: `train --deterministic` and
// `--conv gemm`) turns that off, and then an image's output and input gradient are also the same
// bits in any batch (a rank's share or the whole).


/// Output side of a convolution or pooling along one axis, as PyTorch: floor((input + 2p - d(k-1) - 1)/s) + 1.
public func convOutputSize(_ input: Int, kernel: Int, stride: Int, padding: Int, dilation: Int = 1) -> Int {
    precondition(kernel >= 1 && stride >= 1 && padding >= 0 && dilation >= 1,
                 "convOutputSize: kernel \(kernel) stride \(stride) padding \(padding) dilation \(dilation)")
    let span = input + 2 * padding - dilation * (kernel - 1) - 1
    return span < 0 ? 0 : span / stride + 1
}

/// Kernel side, stride, padding and dilation of a square convolution.
public struct ConvGeometry: Equatable, Sendable, CustomStringConvertible {
    public var kernel: Int, stride: Int, padding: Int, dilation: Int

    public init(kernel: Int, stride: Int = 1, padding: Int = 0, dilation: Int = 1) {
        precondition(kernel >= 1 && stride >= 1 && padding >= 0 && dilation >= 1,
                     "ConvGeometry: kernel \(kernel) stride \(stride) padding \(padding) dilation \(dilation)")
        self.kernel = kernel; self.stride = stride; self.padding = padding; self.dilation = dilation
    }

    /// Output side for an input side (PyTorch's formula).
    public func output(_ input: Int) -> Int {
        convOutputSize(input, kernel: kernel, stride: stride, padding: padding, dilation: dilation)
    }

    /// 1x1, stride 1, no padding: the convolution is a plain GEMM on the image as it lies in memory.
    public var isPointwise: Bool { kernel == 1 && stride == 1 && padding == 0 }

    /// 3x3, stride 1, padding 1, dilation 1: the "same" convolution conv2dForward/Backward run (with
    /// Winograd where the conv policy picks it).
    public var isSame3x3: Bool { kernel == 3 && stride == 1 && padding == 1 && dilation == 1 }

    public var description: String { "k\(kernel) s\(stride) p\(padding) d\(dilation)" }
}

/// Floats an im2col buffer of one work item aims for (as conv2d: stays in cache beside sgemm's panels)...
private let stridedColumnTargetFloats = 1 << 18
/// ...but never fewer pixels than this per item, so the GEMMs stay wide.
private let stridedMinimumItemPixels = 256
/// Items per batch the plan aims for when the images are small, so up to this many threads find work.
/// A constant, not the thread count: the plan must not depend on the pool.
private let stridedSpreadItems = 8
/// Most weight-gradient partials (each weight-sized, in shared scratch).
private let stridedMaximumWeightGroups = 4
/// Weights of at least this many floats (1 MiB) get their gradient by tiles of dweight instead of
/// partials (four partials of the 3x3 512 -> 512 weight of a ResNet's last stage are 36 MiB).
let stridedTiledWeightFloats = 1 << 18
/// Most output channels and GEMM columns (input channels x taps) of one weight-gradient tile. Every
/// item's dY rows are packed once per channel tile and its columns once per row tile, so the packing
/// per product falls as 1 / rows + 1 / columns: 512 x 512 (a 1x1) or 512 x 576 (64 channels of a 3x3)
/// pack about half as much as 256 x 256 did (docs/PERFORMANCE.md). The input channels of a tile are a
/// multiple of 16 where they can be, so a 3x3's columns (144 per 16 channels) fill the GEMM's 48-wide
/// panels.
private let stridedTileRows = 512
private let stridedTileColumns = 576
/// ...but at least this many tiles, halving the longer side until there are, so that threads find
/// work. A constant, not the thread count: the plan must not depend on the pool (on segtrain's GEMM
/// the tile shape does not change a bit of the result either: each element's sum runs over the items
/// in order, in the same blocks of k).
private let stridedMinimumTiles = 4


/// The work plan of the strided convolution. It depends on the shapes only (never on the thread
/// count), which is what makes the results thread-count independent. Internal so tests can check coverage.
/// With `perImageWork` the bands depend on one image's shape alone (small batches are not spread over
/// more bands), so an image's output and input gradient are the same bits in any batch: a rank's share
/// computes what the single process computes for those images (ConvPolicy.perImageWork).
struct StridedConvPlan {
    let batch: Int, inChannels: Int, outChannels: Int
    let height: Int, width: Int, outHeight: Int, outWidth: Int
    let geometry: ConvGeometry
    /// Output rows per forward / weight-gradient band and bands per image.
    let outRows: Int, outBands: Int
    /// Input rows per input-gradient band and bands per image.
    let inRows: Int, inBands: Int
    /// Groups of forward items whose weight-gradient partials are summed separately (0 when tiled).
    let weightGroups: Int
    /// The weight gradient by tiles of dweight (tileRows output x tileChannels input channels).
    let tiledWeightGradient: Bool
    let tileRows: Int, tileChannels: Int

    init(batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int, geometry g: ConvGeometry,
         perImageWork: Bool = false) {
        self.batch = batch; self.inChannels = inChannels; self.outChannels = outChannels
        self.height = height; self.width = width; geometry = g
        outHeight = g.output(height); outWidth = g.output(width)
        let depth = inChannels * g.kernel * g.kernel
        let budgetPixels = max(stridedColumnTargetFloats / max(1, depth), stridedMinimumItemPixels)
        let spreadBands = perImageWork ? 1 : max(1, (stridedSpreadItems + max(batch, 1) - 1) / max(batch, 1))
        if outHeight > 0 && outWidth > 0 {
            var rows = max(1, budgetPixels / outWidth)
            rows = min(rows, max(1, (outHeight + spreadBands - 1) / spreadBands))
            rows = min(rows, outHeight)
            outRows = rows
            outBands = (outHeight + rows - 1) / rows
            // Input bands: about outRows * stride input rows each (their dcol then has about outRows rows).
            var input = max(1, rows * g.stride)
            input = min(input, height)
            inRows = input
            inBands = (height + input - 1) / input
        } else {
            outRows = 1; outBands = 0; inRows = max(1, height); inBands = 0
        }
        let taps = g.kernel * g.kernel
        tiledWeightGradient = outChannels * depth >= stridedTiledWeightFloats
        var rows = min(max(1, outChannels), stridedTileRows)
        let fit = stridedTileColumns / taps
        var channels = min(max(1, inChannels), max(1, fit >= 16 ? fit / 16 * 16 : fit))
        func tiles(_ r: Int, _ c: Int) -> Int { ((outChannels + r - 1) / r) * ((inChannels + c - 1) / c) }
        while tiles(rows, channels) < stridedMinimumTiles && max(rows, channels) > 1 {
            if rows >= channels * taps && rows > 1 || channels == 1 { rows = (rows + 1) / 2 } else { channels = (channels + 1) / 2 }
        }
        tileRows = StridedConvPlan.evenTile(outChannels, most: rows, granule: 8)
        tileChannels = StridedConvPlan.evenTile(inChannels, most: channels, granule: fit >= 16 ? 16 : 1)
        weightGroups = tiledWeightGradient ? 0 : max(1, min(batch * outBands, stridedMaximumWeightGroups))
    }

    /// The side of equal tiles covering `total` in a power-of-two count of tiles, at most `most` long:
    /// the threads then get equal shares of them (with 2048 channels in tiles of at most 576, four of
    /// 512 instead of 576, 576, 576 and 320, which left one of two threads idle for a fifth of the
    /// time; 1280 in at most 288: eight of 160, not five). Rounded up to a multiple of `granule`
    /// (whole GEMM panels) where that keeps the count and the last tile at least half as long.
    static func evenTile(_ total: Int, most: Int, granule: Int) -> Int {
        guard total > most else { return max(1, total) }
        var count = 1
        while count * most < total { count *= 2 }
        let side = (total + count - 1) / count
        let rounded = (side + granule - 1) / granule * granule
        if rounded <= most && (total + rounded - 1) / rounded == count && total - rounded * (count - 1) >= rounded / 2 {
            return rounded
        }
        return side
    }

    /// Weight-gradient tiles along output channels and along input channels (tiled plans).
    var rowTiles: Int { (outChannels + tileRows - 1) / tileRows }
    var channelTiles: Int { (inChannels + tileChannels - 1) / tileChannels }

    var forwardItems: Int { batch * outBands }
    var inputItems: Int { batch * inBands }

    /// Image and output rows [r0, r1) of forward item `item`.
    @inline(__always) func forwardItem(_ item: Int) -> (n: Int, r0: Int, r1: Int) {
        let n = item / outBands, band = item % outBands
        return (n, band * outRows, min(outHeight, (band + 1) * outRows))
    }

    /// Image, input rows [r0, r1) of input-gradient item `item`, and the output rows [o0, o1) whose
    /// taps reach them (o1 <= o0 when none do, e.g. odd rows of a 1x1 stride-2 convolution).
    @inline(__always) func inputItem(_ item: Int) -> (n: Int, r0: Int, r1: Int, o0: Int, o1: Int) {
        let n = item / inBands, band = item % inBands
        let r0 = band * inRows, r1 = min(height, (band + 1) * inRows)
        let (o0, o1) = outputRows(reaching: r0, r1)
        return (n, r0, r1, o0, o1)
    }

    /// Output rows oi with some tap oi*s - p + a*d (0 <= a < k) in [r0, r1).
    func outputRows(reaching r0: Int, _ r1: Int) -> (Int, Int) {
        let s = geometry.stride, p = geometry.padding, reach = geometry.dilation * (geometry.kernel - 1)
        // Smallest oi with oi*s - p + reach >= r0; largest with oi*s - p <= r1 - 1.
        let low = r0 + p - reach
        let o0 = low <= 0 ? 0 : (low + s - 1) / s
        let o1 = min(outHeight, (r1 - 1 + p) / s + 1)
        return (o0, o1)
    }

    /// The most pixels (GEMM columns) of a forward item and of an input-gradient item's dcol.
    var maxForwardPixels: Int { outRows * outWidth }
    var maxInputPixels: Int {
        var most = 0
        for band in 0..<inBands {
            let (o0, o1) = outputRows(reaching: band * inRows, min(height, (band + 1) * inRows))
            most = max(most, max(0, o1 - o0) * outWidth)
        }
        return most
    }

    /// Floats of per-thread scratch: the column buffer (forward, weight gradient) or dcol (input gradient).
    var scratchFloats: Int {
        if geometry.isPointwise { return 0 }
        let depth = inChannels * geometry.kernel * geometry.kernel
        return depth * max(maxForwardPixels, maxInputPixels)
    }

    var sharedFloats: Int { weightGroups * outChannels * inChannels * geometry.kernel * geometry.kernel }
}

/// Floats of per-thread scratch stridedConvForward/Backward need for these sizes or any smaller batch
/// (the plan does not depend on the thread count, so neither does this).
/// Height and width are the input's.
public func stridedConvScratchFloats(batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int,
                                     geometry: ConvGeometry, perImageWork: Bool = false) -> Int {
    var most = 0
    for images in 1...max(1, batch) {
        most = max(most, StridedConvPlan(batch: images, inChannels: inChannels, outChannels: outChannels,
                                         height: height, width: width, geometry: geometry,
                                         perImageWork: perImageWork).scratchFloats)
    }
    return most
}

/// Floats of shared scratch stridedConvBackward needs (weight-gradient partials, at most four
/// weight-sized blocks) for these sizes or any smaller batch.
public func stridedConvSharedScratchFloats(batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int,
                                           geometry: ConvGeometry, perImageWork: Bool = false) -> Int {
    var most = 0
    for images in 1...max(1, batch) {
        most = max(most, StridedConvPlan(batch: images, inChannels: inChannels, outChannels: outChannels,
                                         height: height, width: width, geometry: geometry,
                                         perImageWork: perImageWork).sharedFloats)
    }
    return most
}

private func checkStridedConv(_ y: Tensor, _ x: Tensor, _ weight: Tensor, _ bias: Tensor?, _ g: ConvGeometry,
                              _ who: StaticString) {
    precondition(weight.h == g.kernel && weight.w == g.kernel,
                 "\(who): weight \(weight.shape) for a \(g.kernel)x\(g.kernel) kernel")
    precondition(weight.n == y.c && weight.c == x.c, "\(who): weight \(weight.shape) for x \(x.shape), y \(y.shape)")
    precondition(y.n == x.n && y.h == g.output(x.h) && y.w == g.output(x.w),
                 "\(who): y \(y.shape) for x \(x.shape) and \(g) (want \(g.output(x.h))x\(g.output(x.w)))")
    if let bias { precondition(bias.count == y.c, "\(who): bias has \(bias.count) values for \(y.c) channels") }
}

/// Valid output columns [lo, hi) for tap offset `offset` (= b*d - p): those with 0 <= oj*s + offset < width.
@inline(__always)
private func validColumns(offset: Int, stride s: Int, width: Int, outWidth: Int) -> (Int, Int) {
    let lo = offset >= 0 ? 0 : (-offset + s - 1) / s
    let last = width - 1 - offset  // oj*s <= last
    let hi = last < 0 ? 0 : min(outWidth, last / s + 1)
    return (lo, max(lo, hi))
}

/// col[(c*k + a)*k + b][(oi - r0)*outW + oj] = x[c, oi*s - p + a*d, oj*s - p + b*d] (0 outside),
/// for output rows [r0, r1) of one image `src` (C, H, W).
private func stridedIm2col(_ col: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, channels: Int,
                           plan: StridedConvPlan, r0: Int, r1: Int) {
    let g = plan.geometry, (s, p, d, k) = (g.stride, g.padding, g.dilation, g.kernel)
    let (h, w, outW) = (plan.height, plan.width, plan.outWidth)
    let pixels = (r1 - r0) * outW
    var dst = col
    for c in 0..<channels {
        let plane = src + c * h * w
        for a in 0..<k {
            for b in 0..<k {
                let offset = b * d - p
                let (lo, hi) = validColumns(offset: offset, stride: s, width: w, outWidth: outW)
                for oi in r0..<r1 {
                    let row = dst + (oi - r0) * outW
                    let i = oi * s - p + a * d
                    if i < 0 || i >= h || lo >= hi { row.update(repeating: 0, count: outW); continue }
                    if lo > 0 { row.update(repeating: 0, count: lo) }
                    let source = plane + i * w + offset
                    if s == 1 {
                        (row + lo).update(from: source + lo, count: hi - lo)
                    } else {
                        for oj in lo..<hi { row[oj] = source[oj * s] }
                    }
                    if hi < outW { (row + hi).update(repeating: 0, count: outW - hi) }
                }
                dst += pixels
            }
        }
    }
}

/// dx[c, i, j] += dcol[(c*k + a)*k + b][(oi - o0)*outW + oj] for every tap landing on rows [r0, r1)
/// of one image `dst` (C, H, W); dcol covers output rows [o0, o1). Taps in (a, b) order.
private func stridedCol2imBand(_ dst: UnsafeMutablePointer<Float>, _ dcol: UnsafePointer<Float>, channels: Int,
                               plan: StridedConvPlan, r0: Int, r1: Int, o0: Int, o1: Int) {
    let g = plan.geometry, (s, p, d, k) = (g.stride, g.padding, g.dilation, g.kernel)
    let (h, w, outW) = (plan.height, plan.width, plan.outWidth)
    let pixels = (o1 - o0) * outW
    var src = dcol
    for c in 0..<channels {
        let plane = dst + c * h * w
        for a in 0..<k {
            for b in 0..<k {
                let offset = b * d - p
                let (lo, hi) = validColumns(offset: offset, stride: s, width: w, outWidth: outW)
                if lo < hi {
                    for oi in o0..<o1 {
                        let i = oi * s - p + a * d
                        if i < r0 || i >= r1 { continue }
                        let row = src + (oi - o0) * outW, target = plane + i * w + offset
                        if s == 1 {
                            for oj in lo..<hi { target[oj] += row[oj] }
                        } else {
                            for oj in lo..<hi { target[oj * s] += row[oj] }
                        }
                    }
                }
                src += pixels
            }
        }
    }
}

/// 2-D convolution as PyTorch's Conv2d(Cin, Cout, k, stride, padding, dilation, bias). Overwrites y:
/// y[n, co, oi, oj] = bias[co] + sum_{ci, a, b} weight[co, ci, a, b] * x[n, ci, oi*s - p + a*d, oj*s - p + b*d]
/// (zero outside x). Bitwise the same for any thread count.
/// y: (N, Cout, Ho, Wo), Ho = geometry.output(H)  x: (N, Cin, H, W)  weight: (Cout, Cin, k, k)  bias: (Cout, 1, 1, 1) or nil
/// scratch: stridedConvScratchFloats per thread.
public func stridedConvForward(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?, geometry: ConvGeometry,
                               perImageWork: Bool = false, pool: WorkerPool, scratch: Scratch) {
    checkStridedConv(y, x, weight, bias, geometry, "stridedConvForward")
    precondition(scratch.threadCount >= pool.threadCount, "stridedConvForward: scratch has fewer threads than the pool")
    let plan = StridedConvPlan(batch: x.n, inChannels: x.c, outChannels: y.c, height: x.h, width: x.w, geometry: geometry,
                               perImageWork: perImageWork)
    scratch.require(plan.scratchFloats, "stridedConv")
    let (cin, cout, k) = (x.c, y.c, geometry.kernel)
    let depth = cin * k * k, outPlane = y.shape.plane, outW = plan.outWidth
    pool.parallelForEachItem(plan.forwardItems) { item, t in
        let col = scratch.buffer(t)
        let (n, r0, r1) = plan.forwardItem(item)
        let pixels = (r1 - r0) * outW
        let band = y.sample(n) + r0 * outW
        var b = UnsafePointer(x.sample(n) + r0 * x.w), ldb = x.shape.plane
        if !geometry.isPointwise {
            stridedIm2col(col, x.sample(n), channels: cin, plan: plan, r0: r0, r1: r1)
            b = UnsafePointer(col); ldb = pixels
        }
        var beta: Float = 0
        if let bias {
            for c in 0..<cout { (band + c * outPlane).update(repeating: bias.data[c], count: pixels) }
            beta = 1
        }
        Gemm.sgemm(transA: false, transB: false, m: cout, n: pixels, k: depth, a: weight.data, lda: depth,
                   b: b, ldb: ldb, beta: beta, c: band, ldc: outPlane)
    }
}

/// Backward of stridedConvForward. Adds dL/dx into dx (writes it over dx with
/// `overwriteInputGradient`: a dx nothing wrote yet, which need not be zeroed first), dL/dweight into
/// dweight, dL/dbias into dbias; a nil one is not computed. Bitwise the same for any thread count.
/// dx, x: (N, Cin, H, W)  dy: (N, Cout, Ho, Wo)  dweight, weight: (Cout, Cin, k, k)  dbias: (Cout, 1, 1, 1)
/// scratch: stridedConvScratchFloats per thread and stridedConvSharedScratchFloats shared.
public func stridedConvBackward(dx: Tensor?, dweight: Tensor?, dbias: Tensor?, dy: Tensor, x: Tensor, weight: Tensor,
                                geometry: ConvGeometry, perImageWork: Bool = false, overwriteInputGradient: Bool = false,
                                pool: WorkerPool, scratch: Scratch) {
    let who: StaticString = "stridedConvBackward"
    checkStridedConv(dy, x, weight, dbias, geometry, who)
    if let dweight { precondition(dweight.shape == weight.shape, "\(who): dweight \(dweight.shape) for weight \(weight.shape)") }
    if let dx { precondition(dx.shape == x.shape, "\(who): dx \(dx.shape) for x \(x.shape)") }
    precondition(scratch.threadCount >= pool.threadCount, "\(who): scratch has fewer threads than the pool")
    let plan = StridedConvPlan(batch: x.n, inChannels: x.c, outChannels: dy.c, height: x.h, width: x.w, geometry: geometry,
                               perImageWork: perImageWork)
    scratch.require(plan.scratchFloats, "stridedConv")
    let (cin, cout, k) = (x.c, dy.c, geometry.kernel)
    let depth = cin * k * k, outPlane = dy.shape.plane, outW = plan.outWidth
    let weightFloats = cout * depth

    if let dweight, plan.forwardItems > 0, plan.tiledWeightGradient {
        // Tile (output channels [o0, o1), input channels [c0, c1)) += dY rows * col(channels)^T, every
        // item in order, straight into dweight.
        let taps = k * k, plane = x.shape.plane
        pool.parallelForEachItem(plan.rowTiles * plan.channelTiles) { tile, t in
            let col = scratch.buffer(t)
            let o0 = tile / plan.channelTiles * plan.tileRows, o1 = min(cout, o0 + plan.tileRows)
            let c0 = tile % plan.channelTiles * plan.tileChannels, c1 = min(cin, c0 + plan.tileChannels)
            for item in 0..<plan.forwardItems {
                let (n, r0, r1) = plan.forwardItem(item)
                let pixels = (r1 - r0) * outW
                var b = UnsafePointer(x.sample(n) + c0 * plane + r0 * x.w), ldb = plane
                if !geometry.isPointwise {
                    stridedIm2col(col, x.sample(n) + c0 * plane, channels: c1 - c0, plan: plan, r0: r0, r1: r1)
                    b = UnsafePointer(col); ldb = pixels
                }
                Gemm.sgemm(transA: false, transB: true, m: o1 - o0, n: (c1 - c0) * taps, k: pixels,
                           a: dy.sample(n) + o0 * outPlane + r0 * outW, lda: outPlane, b: b, ldb: ldb,
                           beta: 1, c: dweight.data + o0 * depth + c0 * taps, ldc: depth)
            }
        }
    } else if let dweight, plan.forwardItems > 0 {
        scratch.requireShared(plan.sharedFloats, "stridedConv")
        let groups = plan.weightGroups
        let partials = scratch.shared
        pool.parallelForEachItem(groups) { group, t in
            let col = scratch.buffer(t)
            let partial = partials + group * weightFloats
            var beta: Float = 0
            for item in WorkerPool.split(plan.forwardItems, parts: groups, index: group) {
                let (n, r0, r1) = plan.forwardItem(item)
                let pixels = (r1 - r0) * outW
                var b = UnsafePointer(x.sample(n) + r0 * x.w), ldb = x.shape.plane
                if !geometry.isPointwise {
                    stridedIm2col(col, x.sample(n), channels: cin, plan: plan, r0: r0, r1: r1)
                    b = UnsafePointer(col); ldb = pixels
                }
                // partial (Cout x Cin k k) (+)= dY band (Cout x P) * col^T (P x Cin k k)
                Gemm.sgemm(transA: false, transB: true, m: cout, n: depth, k: pixels,
                           a: dy.sample(n) + r0 * outW, lda: outPlane, b: b, ldb: ldb,
                           beta: beta, c: partial, ldc: depth)
                beta = 1
            }
        }
        pool.parallelFor(weightFloats) { range, _ in
            for i in range {
                var sum = partials[i]
                for group in 1..<max(groups, 1) { sum += partials[group * weightFloats + i] }
                dweight.data[i] += sum
            }
        }
    }

    if let dbias { biasBackward(dbias: dbias, dy: dy, pool: pool) }

    guard let dx else { return }
    if geometry.isPointwise {
        // dX band (Cin x P) += W^T (Cin x Cout) * dY band (Cout x P), in place.
        pool.parallelForEachItem(plan.forwardItems) { item, _ in
            let (n, r0, r1) = plan.forwardItem(item)
            Gemm.sgemm(transA: true, transB: false, m: cin, n: (r1 - r0) * outW, k: cout, a: weight.data, lda: cin,
                       b: dy.sample(n) + r0 * outW, ldb: outPlane, beta: overwriteInputGradient ? 0 : 1,
                       c: dx.sample(n) + r0 * x.w, ldc: x.shape.plane)
        }
        return
    }
    pool.parallelForEachItem(plan.inputItems) { item, t in
        let dcol = scratch.buffer(t)
        let (n, r0, r1, o0, o1) = plan.inputItem(item)
        if overwriteInputGradient {  // the item's rows of dx belong to it alone
            for c in 0..<cin { (dx.sample(n) + c * x.shape.plane + r0 * x.w).update(repeating: 0, count: (r1 - r0) * x.w) }
        }
        if o1 <= o0 { return }
        let pixels = (o1 - o0) * outW
        // dcol (Cin k k x P) = W^T * dY rows [o0, o1)
        Gemm.sgemm(transA: true, transB: false, m: depth, n: pixels, k: cout, a: weight.data, lda: depth,
                   b: dy.sample(n) + o0 * outW, ldb: outPlane, beta: 0, c: dcol, ldc: pixels)
        stridedCol2imBand(dx.sample(n), dcol, channels: cin, plan: plan, r0: r0, r1: r1, o0: o0, o1: o1)
    }
}

/// Reference forward: direct loops, double accumulation. Same contract as stridedConvForward.
public func stridedConvForwardNaive(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?, geometry g: ConvGeometry) {
    checkStridedConv(y, x, weight, bias, g, "stridedConvForwardNaive")
    let (s, p, d, k) = (g.stride, g.padding, g.dilation, g.kernel)
    for n in 0..<y.n {
        for co in 0..<y.c {
            for oi in 0..<y.h {
                for oj in 0..<y.w {
                    var sum = Double(bias?[co] ?? 0)
                    for ci in 0..<x.c {
                        for a in 0..<k {
                            let i = oi * s - p + a * d
                            if i < 0 || i >= x.h { continue }
                            for b in 0..<k {
                                let j = oj * s - p + b * d
                                if j < 0 || j >= x.w { continue }
                                sum += Double(weight[co, ci, a, b]) * Double(x[n, ci, i, j])
                            }
                        }
                    }
                    y[n, co, oi, oj] = Float(sum)
                }
            }
        }
    }
}

/// Reference backward: direct loops in float. Adds into dx, dweight, dbias (each if given).
public func stridedConvBackwardNaive(dx: Tensor?, dweight: Tensor?, dbias: Tensor?, dy: Tensor, x: Tensor,
                                     weight: Tensor, geometry g: ConvGeometry) {
    checkStridedConv(dy, x, weight, dbias, g, "stridedConvBackwardNaive")
    if let dweight { precondition(dweight.shape == weight.shape, "stridedConvBackwardNaive: dweight \(dweight.shape)") }
    if let dx { precondition(dx.shape == x.shape, "stridedConvBackwardNaive: dx \(dx.shape) for x \(x.shape)") }
    let (s, p, d, k) = (g.stride, g.padding, g.dilation, g.kernel)
    for n in 0..<dy.n {
        for co in 0..<dy.c {
            for oi in 0..<dy.h {
                for oj in 0..<dy.w {
                    let grad = dy[n, co, oi, oj]
                    if let dbias { dbias[co] += grad }
                    for ci in 0..<x.c {
                        for a in 0..<k {
                            let i = oi * s - p + a * d
                            if i < 0 || i >= x.h { continue }
                            for b in 0..<k {
                                let j = oj * s - p + b * d
                                if j < 0 || j >= x.w { continue }
                                if let dweight { dweight[co, ci, a, b] += grad * x[n, ci, i, j] }
                                if let dx { dx[n, ci, i, j] += grad * weight[co, ci, a, b] }
                            }
                        }
                    }
                }
            }
        }
    }
}
