// Winograd F(2x2, 3x3) and F(4x4, 3x3) for 3x3, stride-1, pad-1 convolutions (Lavin & Gray 2015),
// in all three passes of training. An m x m output tile (m = 2 or 4) is computed from an
// a x a input tile (a = m + 2) with a^2 multiplications per (Cin, Cout) pair instead of 9 m^2:
// 16 instead of 36 for F(2x2), 36 instead of 144 for F(4x4). The multiplications become a^2
// independent GEMMs per chunk of tiles.
//
//   forward         Y = A^T [ U . V ] A,      U = G g G^T (weights),  V = B^T d B (a x a input tiles)
//   input gradient  the same with g flipped spatially and Cin/Cout swapped (stride 1, same padding)
//   weight gradient dU[xi] += dM[xi] V[xi]^T with dM = A dy A^T, then dg += G^T dU G
//
// Layout per chunk of T tiles: V[xi][c][t] (a^2 x Cin x T), M[xi][o][t] (a^2 x Cout x T),
// U^T[xi][c][o] (a^2 x Cin x Cout: U stored transposed, shared by all threads, written once per call).
// F(2x2)'s transforms are below; F(4x4)'s (more arithmetic per value, but 2.25 transformed values
// per pixel instead of 4 and 1.78x fewer GEMM flops) after them.
// The conv2d kernels in Conv.swift stay the reference; tests compare against conv2dForwardNaive.
// Where the CPU has AVX-512, C versions of the hottest transforms (Sources/CWinograd) run instead of
// the Swift ones below, with the same operations in the same order: the same bits.

import CWinograd


/// Tiles and chunking of one Winograd convolution. A chunk (the unit of work of one thread, and
/// the columns of its (m + 2)^2 GEMMs) is either a band of tile rows of one image (large planes) or a
/// group of whole images (small planes), so deep layers still get GEMMs with many columns.
public struct WinogradPlan {
    public let inChannels: Int, outChannels: Int, height: Int, width: Int, batch: Int
    /// Output tile side m (2 or 4); the input tile is m + 2 wide and there are (m + 2)^2 points.
    public let tile: Int
    public let tilesHigh: Int, tilesWide: Int
    /// Tile rows per chunk (all of them when chunks group whole images).
    public let tileRowsPerChunk: Int
    public let chunksPerImage: Int
    /// Whole images per chunk (1 when chunks are bands).
    public let imagesPerChunk: Int
    /// Chunks in the batch.
    public let chunks: Int

    /// Chunk sizes come from `policy` (`winogradTargetChunkFloats` of V + M per chunk, at least
    /// `winogradMinimumTilesPerChunk` tiles); its algorithm is not read (the tile is given).
    public init(inChannels: Int, outChannels: Int, height: Int, width: Int, batch: Int = 1, threads: Int = 1,
                tile: Int = 2, policy: ConvPolicy) {
        precondition(tile == 2 || tile == 4, "winograd: tile \(tile) (2 or 4)")
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.height = height
        self.width = width
        self.batch = batch
        self.tile = tile
        tilesHigh = (height + tile - 1) / tile
        tilesWide = (width + tile - 1) / tile
        let points = (tile + 2) * (tile + 2)
        let floatsPerTile = points * (inChannels + outChannels)
        let targetTiles = max(policy.winogradMinimumTilesPerChunk, policy.winogradTargetChunkFloats / floatsPerTile)
        let tilesPerImage = tilesHigh * tilesWide
        if tilesPerImage >= targetTiles || batch <= 1 || policy.perImageWork {
            tileRowsPerChunk = max(1, min(tilesHigh, targetTiles / max(tilesWide, 1)))
            chunksPerImage = (tilesHigh + tileRowsPerChunk - 1) / tileRowsPerChunk
            imagesPerChunk = 1
            chunks = max(batch, 1) * chunksPerImage
        } else {
            // Group images, but keep at least one chunk per thread.
            let perThread = (batch + max(threads, 1) - 1) / max(threads, 1)
            imagesPerChunk = max(1, min(targetTiles / tilesPerImage, perThread))
            tileRowsPerChunk = tilesHigh
            chunksPerImage = 1
            chunks = (batch + imagesPerChunk - 1) / imagesPerChunk
        }
    }

    /// Chunk i: images n0..<n1, tile rows rowStart..<rowStart + rows of each.
    @inline(__always) func chunk(_ i: Int) -> (n0: Int, n1: Int, rowStart: Int, rows: Int) {
        if imagesPerChunk > 1 {
            let n0 = i * imagesPerChunk
            return (n0, min(batch, n0 + imagesPerChunk), 0, tilesHigh)
        }
        let n = i / chunksPerImage, rowStart = (i % chunksPerImage) * tileRowsPerChunk
        return (n, n + 1, rowStart, min(tileRowsPerChunk, tilesHigh - rowStart))
    }

    var maxTilesPerChunk: Int { imagesPerChunk * tileRowsPerChunk * tilesWide }

    /// Points per tile: (m + 2)^2, the number of GEMMs per chunk.
    public var points: Int { (tile + 2) * (tile + 2) }

    /// Length of one row buffer: the padded input row (columns -1 ... m * tilesWide + 2).
    var rowStride: Int { tile * tilesWide + 4 }

    /// Floats of V (points x Cin x T), M (points x Cout x T), the dU partial and the row buffers.
    var tileFloats: Int { points * (inChannels + outChannels) * maxTilesPerChunk }
    /// Row buffers and a zero row: (m + 2) padded input rows and their column phases (also the
    /// m^2 result streams, an output row and F(4x4)'s 24 column streams, or the output-gradient rows,
    /// their phases and F(4x4)'s 24 column streams).
    var rowFloats: Int { (tile == 4 ? 16 : 8) * rowStride + width + 4 }

    /// Per-thread scratch: V and M for one chunk, a dU partial for the weight gradient, row buffers.
    public var scratchFloatsPerThread: Int { tileFloats + points * inChannels * outChannels + rowFloats }

    /// Shared scratch: the transformed weights.
    public var sharedFloats: Int { points * inChannels * outChannels }
}

/// y (N, Cout, H, W) = conv3x3(x) + bias (max(., 0) with `relu`).
/// x: (N, Cin, H, W)  weight: (Cout, Cin, 3, 3)  bias: (Cout,1,1,1) or nil
/// `tile`: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3).
public func winogradConv3x3Forward(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?,
                                   relu: Bool = false, tile: Int = 2, policy: ConvPolicy = .standard,
                                   pool: WorkerPool, scratch: Scratch) {
    let cin = x.c, cout = y.c
    precondition(weight.shape == Shape(cout, cin, 3, 3), "winograd: weight \(weight.shape) for \(cin) -> \(cout)")
    precondition(y.n == x.n && y.h == x.h && y.w == x.w, "winograd: y \(y.shape) vs x \(x.shape)")
    let plan = WinogradPlan(inChannels: cin, outChannels: cout, height: x.h, width: x.w, batch: x.n,
                            threads: pool.threadCount, tile: tile, policy: policy)
    scratch.requireShared(plan.sharedFloats, "winograd forward")
    let u = scratch.shared
    transformAllWeights(weight, into: u, forInputGradient: false, tile: tile, pool: pool)
    winogradTiles(y, x, transformedWeight: u, bias: bias, accumulate: false, relu: relu, plan: plan,
                  pool: pool, scratch: scratch)
}

/// dx (N, Cin, H, W) += the input gradient of a 3x3 same convolution for dy (N, Cout, H, W)
/// (dx = it, when not `accumulate`).
public func winogradConv3x3InputGradient(dx: Tensor, dy: Tensor, weight: Tensor, accumulate: Bool = true, tile: Int = 2,
                                         policy: ConvPolicy = .standard, pool: WorkerPool, scratch: Scratch) {
    let cin = dx.c, cout = dy.c
    precondition(weight.shape == Shape(cout, cin, 3, 3), "winograd: weight \(weight.shape) for \(cin) -> \(cout)")
    // A forward convolution from Cout to Cin channels with the flipped, transposed kernel.
    let plan = WinogradPlan(inChannels: cout, outChannels: cin, height: dy.h, width: dy.w, batch: dy.n,
                            threads: pool.threadCount, tile: tile, policy: policy)
    scratch.requireShared(plan.sharedFloats, "winograd input gradient")
    let u = scratch.shared
    transformAllWeights(weight, into: u, forInputGradient: true, tile: tile, pool: pool)
    winogradTiles(dx, dy, transformedWeight: u, bias: nil, accumulate: accumulate, relu: false, plan: plan,
                  pool: pool, scratch: scratch)
}

/// dweight (Cout, Cin, 3, 3) += dL/dweight and dbias += sum of dy, for y = conv3x3(x).
/// Each thread sums its chunks into a private dU; the partials are added in thread order.
public func winogradConv3x3WeightGradient(dweight: Tensor, dbias: Tensor?, dy: Tensor, x: Tensor, tile: Int = 2,
                                          policy: ConvPolicy = .standard, pool: WorkerPool, scratch: Scratch) {
    let cin = x.c, cout = dy.c
    precondition(dweight.shape == Shape(cout, cin, 3, 3), "winograd: dweight \(dweight.shape) for \(cin) -> \(cout)")
    let plan = WinogradPlan(inChannels: cin, outChannels: cout, height: x.h, width: x.w, batch: x.n,
                            threads: pool.threadCount, tile: tile, policy: policy)
    scratch.require(plan.scratchFloatsPerThread, "winograd weight gradient")
    let points = plan.points
    let tilesPerChunk = plan.maxTilesPerChunk
    let partialOffset = plan.tileFloats
    let work = plan.chunks
    let parts = min(pool.threadCount, work)
    pool.run { thread in
        guard thread < parts else { return }
        let base = scratch.buffer(thread)
        let v = base, dm = base + points * cin * tilesPerChunk, du = base + partialOffset
        let rowBuffer = du + points * cin * cout
        du.update(repeating: 0, count: points * cin * cout)
        for item in WorkerPool.split(work, parts: parts, index: thread) {
            let (n0, n1, rowStart, rows) = plan.chunk(item)
            let tiles = (n1 - n0) * rows * plan.tilesWide
            for n in n0..<n1 {
                let offset = (n - n0) * rows * plan.tilesWide
                transformInput(x.sample(n), channels: cin, plan: plan, rowStart: rowStart, rows: rows,
                               into: v + offset, tiles: tiles, rowBuffer: rowBuffer)
                transformOutputGradient(dy.sample(n), channels: cout, plan: plan, rowStart: rowStart, rows: rows,
                                        into: dm + offset, tiles: tiles, rowBuffer: rowBuffer)
            }
            for xi in 0..<points {
                // dU[xi] (Cout x Cin) += dM[xi] (Cout x T) * V[xi]^T (T x Cin)
                Gemm.sgemm(transA: false, transB: true, m: cout, n: cin, k: tiles, a: dm + xi * cout * tiles, lda: tiles,
                           b: v + xi * cin * tiles, ldb: tiles, beta: 1, c: du + xi * cout * cin, ldc: cin)
            }
        }
    }
    // dg += G^T dU G, partials in thread order; parallel over output channels, eight values of c at a time.
    pool.parallelFor(cout) { range, _ in
        for o in range {
            forEachLanes(cin) { c, n in
                for t in 0..<parts {
                    inverseTransformWeightGradients(scratch.buffer(t) + (partialOffset + o * cin + c), stride: cout * cin,
                                                    count: n, tile: tile) { dweight.data + (o * cin + c + $0) * 9 }
                }
            }
        }
    }
    if let dbias { biasBackward(dbias: dbias, dy: dy, pool: pool) }
}

// MARK: - Tiles

/// y (+)= A^T [U . V] A (+ bias) over every tile of every image.
private func winogradTiles(_ y: Tensor, _ x: Tensor, transformedWeight u: UnsafeMutablePointer<Float>,
                           bias: Tensor?, accumulate: Bool, relu: Bool, plan: WinogradPlan, pool: WorkerPool,
                           scratch: Scratch) {
    let cin = plan.inChannels, cout = plan.outChannels
    scratch.require(plan.scratchFloatsPerThread, "winograd tiles")
    let tilesPerChunk = plan.maxTilesPerChunk, points = plan.points
    pool.parallelForEachItem(plan.chunks) { item, thread in
        let v = scratch.buffer(thread), m = v + points * cin * tilesPerChunk
        let rowBuffer = v + plan.tileFloats + points * cin * cout
        let (n0, n1, rowStart, rows) = plan.chunk(item)
        let tiles = (n1 - n0) * rows * plan.tilesWide
        for n in n0..<n1 {
            transformInput(x.sample(n), channels: cin, plan: plan, rowStart: rowStart, rows: rows,
                           into: v + (n - n0) * rows * plan.tilesWide, tiles: tiles, rowBuffer: rowBuffer)
        }
        for xi in 0..<points {
            // M[xi] (Cout x T) = U[xi] (Cout x Cin) * V[xi] (Cin x T), U[xi] stored transposed
            Gemm.sgemm(transA: true, transB: false, m: cout, n: tiles, k: cin, a: u + xi * cout * cin, lda: cout,
                       b: v + xi * cin * tiles, ldb: tiles, beta: 0, c: m + xi * cout * tiles, ldc: tiles)
        }
        for n in n0..<n1 {
            transformOutput(m + (n - n0) * rows * plan.tilesWide, tiles: tiles, into: y.sample(n), channels: cout,
                            plan: plan, rowStart: rowStart, rows: rows, bias: bias, accumulate: accumulate,
                            relu: relu, rowBuffer: rowBuffer)
        }
    }
}

/// The transforms of the plan's tile (F(2x2) or F(4x4)); arguments as for the F2/F4 versions below.
@inline(__always)
func transformInput(_ x: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan, rowStart: Int, rows: Int,
                    into v: UnsafeMutablePointer<Float>, tiles: Int, rowBuffer: UnsafeMutablePointer<Float>) {
    if plan.tile == 4 {
        transformInputF4(x, channels: channels, plan: plan, rowStart: rowStart, rows: rows, into: v, tiles: tiles,
                         rowBuffer: rowBuffer)
    } else {
        transformInputF2(x, channels: channels, plan: plan, rowStart: rowStart, rows: rows, into: v, tiles: tiles,
                         rowBuffer: rowBuffer)
    }
}

@inline(__always)
func transformOutput(_ m: UnsafeMutablePointer<Float>, tiles: Int, into y: UnsafeMutablePointer<Float>, channels: Int,
                     plan: WinogradPlan, rowStart: Int, rows: Int, bias: Tensor?, accumulate: Bool, relu: Bool,
                     rowBuffer: UnsafeMutablePointer<Float>) {
    if plan.tile == 4 {
        transformOutputF4(m, tiles: tiles, into: y, channels: channels, plan: plan, rowStart: rowStart, rows: rows,
                          bias: bias, accumulate: accumulate, relu: relu, rowBuffer: rowBuffer)
    } else {
        transformOutputF2(m, tiles: tiles, into: y, channels: channels, plan: plan, rowStart: rowStart, rows: rows,
                          bias: bias, accumulate: accumulate, relu: relu, rowBuffer: rowBuffer)
    }
}

@inline(__always)
func transformOutputGradient(_ dy: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan, rowStart: Int,
                             rows: Int, into dm: UnsafeMutablePointer<Float>, tiles: Int,
                             rowBuffer: UnsafeMutablePointer<Float>) {
    if plan.tile == 4 {
        transformOutputGradientF4(dy, channels: channels, plan: plan, rowStart: rowStart, rows: rows, into: dm,
                                  tiles: tiles, rowBuffer: rowBuffer)
    } else {
        transformOutputGradientF2(dy, channels: channels, plan: plan, rowStart: rowStart, rows: rows, into: dm,
                                  tiles: tiles, rowBuffer: rowBuffer)
    }
}

// MARK: - Vectors

/// Eight consecutive values (tiles, or columns) at a time, AVX2's width; `count` < 8 at the end of
/// a row. The transforms are written on these so that they vectorize whatever LLVM can prove about
/// aliasing between their many streams.
typealias Lanes = SIMD8<Float>

@inline(__always)
func loadLanes(_ p: UnsafePointer<Float>, _ count: Int) -> Lanes {
    if count == 8 { return UnsafeRawPointer(p).loadUnaligned(as: Lanes.self) }
    var v = Lanes()
    for l in 0..<count { v[l] = p[l] }
    return v
}

@inline(__always)
func storeLanes(_ v: Lanes, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
    if count == 8 { UnsafeMutableRawPointer(p).storeBytes(of: v, as: Lanes.self); return }
    for l in 0..<count { p[l] = v[l] }
}

/// Calls body(start, count) for consecutive runs of at most 8 of 0..<n.
@inline(__always)
func forEachLanes(_ n: Int, _ body: (Int, Int) -> Void) {
    var start = 0
    while start < n {
        body(start, min(8, n - start))
        start += 8
    }
}

/// phases[r * length + s] = row[factor * s + r] for s in 0..<length, r in 0..<factor (2 or 4):
/// the column phases of a row, so that a tile's values sit at one index of `factor` streams.
/// Eight values of s at a time, by lane shuffles.
@inline(__always)
func splitPhases(_ row: UnsafePointer<Float>, factor: Int, length: Int, into phases: UnsafeMutablePointer<Float>) {
    var s = 0
    if factor == 2 {
        let p0 = phases, p1 = p0 + length
        while s + 8 <= length {
            let x = loadLanes(row + 2 * s, 8), y = loadLanes(row + (2 * s + 8), 8)
            storeLanes(Lanes(x[0], x[2], x[4], x[6], y[0], y[2], y[4], y[6]), p0 + s, 8)
            storeLanes(Lanes(x[1], x[3], x[5], x[7], y[1], y[3], y[5], y[7]), p1 + s, 8)
            s += 8
        }
        while s < length { p0[s] = row[2 * s]; p1[s] = row[2 * s + 1]; s += 1 }
    } else {
        let p0 = phases, p1 = p0 + length, p2 = p1 + length, p3 = p2 + length
        while s + 8 <= length {
            let a = row + 4 * s
            let x0 = loadLanes(a, 8), x1 = loadLanes(a + 8, 8), x2 = loadLanes(a + 16, 8), x3 = loadLanes(a + 24, 8)
            storeLanes(Lanes(x0[0], x0[4], x1[0], x1[4], x2[0], x2[4], x3[0], x3[4]), p0 + s, 8)
            storeLanes(Lanes(x0[1], x0[5], x1[1], x1[5], x2[1], x2[5], x3[1], x3[5]), p1 + s, 8)
            storeLanes(Lanes(x0[2], x0[6], x1[2], x1[6], x2[2], x2[6], x3[2], x3[6]), p2 + s, 8)
            storeLanes(Lanes(x0[3], x0[7], x1[3], x1[7], x2[3], x2[7], x3[3], x3[7]), p3 + s, 8)
            s += 8
        }
        while s < length {
            let a = row + 4 * s
            p0[s] = a[0]; p1[s] = a[1]; p2[s] = a[2]; p3[s] = a[3]
            s += 1
        }
    }
}

/// row[factor * s + r] = phases[r * length + s]: the inverse of splitPhases.
@inline(__always)
func joinPhases(_ phases: UnsafePointer<Float>, factor: Int, length: Int, into row: UnsafeMutablePointer<Float>) {
    var s = 0
    if factor == 2 {
        let p0 = phases, p1 = p0 + length
        while s + 8 <= length {
            let a = loadLanes(p0 + s, 8), b = loadLanes(p1 + s, 8)
            storeLanes(Lanes(a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3]), row + 2 * s, 8)
            storeLanes(Lanes(a[4], b[4], a[5], b[5], a[6], b[6], a[7], b[7]), row + (2 * s + 8), 8)
            s += 8
        }
        while s < length { row[2 * s] = p0[s]; row[2 * s + 1] = p1[s]; s += 1 }
    } else {
        let p0 = phases, p1 = p0 + length, p2 = p1 + length, p3 = p2 + length
        while s + 8 <= length {
            let a = loadLanes(p0 + s, 8), b = loadLanes(p1 + s, 8), c = loadLanes(p2 + s, 8), d = loadLanes(p3 + s, 8)
            let out = row + 4 * s
            storeLanes(Lanes(a[0], b[0], c[0], d[0], a[1], b[1], c[1], d[1]), out, 8)
            storeLanes(Lanes(a[2], b[2], c[2], d[2], a[3], b[3], c[3], d[3]), out + 8, 8)
            storeLanes(Lanes(a[4], b[4], c[4], d[4], a[5], b[5], c[5], d[5]), out + 16, 8)
            storeLanes(Lanes(a[6], b[6], c[6], d[6], a[7], b[7], c[7], d[7]), out + 24, 8)
            s += 8
        }
        while s < length {
            let out = row + 4 * s
            out[0] = p0[s]; out[1] = p1[s]; out[2] = p2[s]; out[3] = p3[s]
            s += 1
        }
    }
}

/// The output rows of tile row `tileRow` of one plane (W wide, H high; the last tile row may be
/// cut): results[(m r + q) * tilesWide + t] (row r, column q of tile t) is interleaved into `line`
/// (m * tilesWide floats), which is written to the plane's row (+= with `accumulate`;
/// max(., 0) with `relu`).
@inline(__always)
func writeTileRow(_ results: UnsafePointer<Float>, tile m: Int, tilesWide tw: Int, tileRow: Int,
                  into plane: UnsafeMutablePointer<Float>, height h: Int, width w: Int,
                  line: UnsafeMutablePointer<Float>, accumulate: Bool, relu: Bool) {
    let oy = m * tileRow
    for r in 0..<min(m, h - oy) {
        joinPhases(results + m * r * tw, factor: m, length: tw, into: line)
        let out = plane + (oy + r) * w
        if accumulate {
            for j in 0..<w { out[j] += line[j] }
        } else if relu {
            for j in 0..<w { out[j] = max(line[j], 0) }
        } else {
            out.update(from: line, count: w)
        }
    }
}

/// Zeroes the `count` padded input rows (row stride `rowStride`) outside columns 0..<W (index 0 is
/// column -1) and the zero row of W floats that stands for rows outside the image.
@inline(__always)
func preparePaddedRows(_ rowBuffer: UnsafeMutablePointer<Float>, count: Int, rowStride rs: Int, width w: Int,
                       zeroRow: UnsafeMutablePointer<Float>) {
    zeroRow.update(repeating: 0, count: w)
    for r in 0..<count {
        let t = rowBuffer + r * rs
        t[0] = 0
        (t + w + 1).update(repeating: 0, count: rs - w - 1)
    }
}

// MARK: - F(2x2) transforms

// The AVX-512 versions of the transforms (CWinograd) run where `avx512Kernels` (Gemm.swift) says so.
// They give the same bits as the Swift versions below (WinogradAVX512Tests).

/// F(2x2): V[xi][c][t] = (B^T d B)[xi] for the 4x4 input patch of each tile, zero outside the image,
/// by CWinograd's AVX-512 version where it runs, else transformInputF2Portable.
@inline(__always)
func transformInputF2(_ x: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                      rowStart: Int, rows: Int, into v: UnsafeMutablePointer<Float>, tiles: Int,
                      rowBuffer: UnsafeMutablePointer<Float>) {
    if avx512Kernels {
        segtrain_winograd_input_f2_avx512(x, Int32(channels), Int32(plan.height), Int32(plan.width),
                                          Int32(plan.tilesWide), Int32(rowStart), Int32(rows), v, tiles, rowBuffer)
    } else {
        transformInputF2Portable(x, channels: channels, plan: plan, rowStart: rowStart, rows: rows, into: v,
                                 tiles: tiles, rowBuffer: rowBuffer)
    }
}

/// F(2x2)'s input transform in Swift (AVX2 width), the reference of the AVX-512 version.
/// Works a tile row at a time: B^T down the four input rows (contiguous), the results split into
/// their even and odd columns, then B along the row for every tile from those (tile t reads
/// even[t], odd[t], even[t + 1], odd[t + 1]), so every store is contiguous over tiles.
func transformInputF2Portable(_ x: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                              rowStart: Int, rows: Int, into v: UnsafeMutablePointer<Float>, tiles: Int,
                              rowBuffer: UnsafeMutablePointer<Float>) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide, rs = plan.rowStride
    let stride = channels * tiles
    let phaseLength = tw + 1  // 2 * phaseLength <= rs
    let t0 = rowBuffer, t1 = t0 + rs, t2 = t1 + rs, t3 = t2 + rs
    let phases = rowBuffer + 4 * rs
    let zeroRow = rowBuffer + 8 * rs
    preparePaddedRows(rowBuffer, count: 4, rowStride: rs, width: w, zeroRow: zeroRow)
    for c in 0..<channels {
        let src = x + c * h * w
        for ty in rowStart..<(rowStart + rows) {
            let y0 = 2 * ty - 1
            @inline(__always) func row(_ i: Int) -> UnsafeMutablePointer<Float> {
                y0 + i >= 0 && y0 + i < h ? src + (y0 + i) * w : zeroRow
            }
            let d0 = row(0), d1 = row(1), d2 = row(2), d3 = row(3)
            // B^T d over rows, into padded buffers (index p = column + 1).
            forEachLanes(w) { j, n in
                let a0 = loadLanes(d0 + j, n), a1 = loadLanes(d1 + j, n)
                let a2 = loadLanes(d2 + j, n), a3 = loadLanes(d3 + j, n)
                storeLanes(a0 - a2, t0 + (j + 1), n); storeLanes(a1 + a2, t1 + (j + 1), n)
                storeLanes(a2 - a1, t2 + (j + 1), n); storeLanes(a1 - a3, t3 + (j + 1), n)
            }
            // (B^T d) B along the row, for each tile.
            let out = v + c * tiles + (ty - rowStart) * tw
            for i in 0..<4 {
                let even = phases + i * rs, odd = even + phaseLength
                splitPhases(rowBuffer + i * rs, factor: 2, length: phaseLength, into: even)
                let o0 = out + (4 * i) * stride, o1 = o0 + stride, o2 = o1 + stride, o3 = o2 + stride
                forEachLanes(tw) { tx, n in
                    let a0 = loadLanes(even + tx, n), a1 = loadLanes(odd + tx, n)
                    let a2 = loadLanes(even + (tx + 1), n), a3 = loadLanes(odd + (tx + 1), n)
                    storeLanes(a0 - a2, o0 + tx, n); storeLanes(a1 + a2, o1 + tx, n)
                    storeLanes(a2 - a1, o2 + tx, n); storeLanes(a1 - a3, o3 + tx, n)
                }
            }
        }
    }
}

/// F(2x2): y tile (2x2) (+)= A^T m A (+ bias), clipped at the image's edge, by CWinograd's AVX-512
/// version where it runs, else transformOutputF2Portable.
@inline(__always)
func transformOutputF2(_ m: UnsafeMutablePointer<Float>, tiles: Int, into y: UnsafeMutablePointer<Float>,
                       channels: Int, plan: WinogradPlan, rowStart: Int, rows: Int,
                       bias: Tensor?, accumulate: Bool, relu: Bool, rowBuffer: UnsafeMutablePointer<Float>) {
    if avx512Kernels {
        segtrain_winograd_output_f2_avx512(m, tiles, y, Int32(channels), Int32(plan.height), Int32(plan.width),
                                           Int32(plan.tilesWide), Int32(rowStart), Int32(rows), bias?.data,
                                           accumulate ? 1 : 0, relu ? 1 : 0)
    } else {
        transformOutputF2Portable(m, tiles: tiles, into: y, channels: channels, plan: plan, rowStart: rowStart,
                                  rows: rows, bias: bias, accumulate: accumulate, relu: relu, rowBuffer: rowBuffer)
    }
}

/// F(2x2)'s output transform in Swift, the reference of the AVX-512 version: a tile row at a time,
/// the four results of each tile go to four streams over the tiles, then are interleaved into the
/// two output rows.
func transformOutputF2Portable(_ m: UnsafeMutablePointer<Float>, tiles: Int, into y: UnsafeMutablePointer<Float>,
                               channels: Int, plan: WinogradPlan, rowStart: Int, rows: Int,
                               bias: Tensor?, accumulate: Bool, relu: Bool, rowBuffer: UnsafeMutablePointer<Float>) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide
    let stride = channels * tiles
    // results[(2 r + q) * tw + t]: row r, column q of tile t; then the interleaved line.
    let results = rowBuffer, line = rowBuffer + 4 * tw
    for o in 0..<channels {
        let dst = y + o * h * w
        let bias = Lanes(repeating: bias.map { $0[o] } ?? 0)
        for ty in rowStart..<(rowStart + rows) {
            let src = m + o * tiles + (ty - rowStart) * tw
            forEachLanes(tw) { tx, n in
                @inline(__always) func at(_ xi: Int) -> Lanes { loadLanes(src + (xi * stride + tx), n) }
                // A^T m: s0 = rows 0 + 1 + 2, s1 = rows 1 - 2 - 3 (4 columns each)
                let s00 = at(0) + at(4) + at(8), s01 = at(1) + at(5) + at(9)
                let s02 = at(2) + at(6) + at(10), s03 = at(3) + at(7) + at(11)
                let s10 = at(4) - at(8) - at(12), s11 = at(5) - at(9) - at(13)
                let s12 = at(6) - at(10) - at(14), s13 = at(7) - at(11) - at(15)
                let d = results + tx
                storeLanes(s00 + s01 + s02 + bias, d, n)
                storeLanes(s01 - s02 - s03 + bias, d + tw, n)
                storeLanes(s10 + s11 + s12 + bias, d + 2 * tw, n)
                storeLanes(s11 - s12 - s13 + bias, d + 3 * tw, n)
            }
            writeTileRow(results, tile: 2, tilesWide: tw, tileRow: ty, into: dst, height: h, width: w, line: line,
                         accumulate: accumulate, relu: relu)
        }
    }
}

/// F(2x2): dM[xi][o][t] = (A dy A^T)[xi] for the 2x2 output-gradient tile (zero outside the image),
/// by CWinograd's AVX-512 version where it runs, else transformOutputGradientF2Portable.
@inline(__always)
func transformOutputGradientF2(_ dy: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                               rowStart: Int, rows: Int, into dm: UnsafeMutablePointer<Float>, tiles: Int,
                               rowBuffer: UnsafeMutablePointer<Float>) {
    if avx512Kernels {
        segtrain_winograd_output_gradient_f2_avx512(dy, Int32(channels), Int32(plan.height), Int32(plan.width),
                                                    Int32(plan.tilesWide), Int32(rowStart), Int32(rows), dm, tiles)
    } else {
        transformOutputGradientF2Portable(dy, channels: channels, plan: plan, rowStart: rowStart, rows: rows,
                                          into: dm, tiles: tiles, rowBuffer: rowBuffer)
    }
}

/// F(2x2)'s output-gradient transform in Swift, the reference of the AVX-512 version: a tile row at
/// a time, the two rows split into even and odd columns, then 16 streams over the tiles.
func transformOutputGradientF2Portable(_ dy: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                                       rowStart: Int, rows: Int, into dm: UnsafeMutablePointer<Float>, tiles: Int,
                                       rowBuffer: UnsafeMutablePointer<Float>) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide
    let stride = channels * tiles
    // Two output-gradient rows padded to 2 * tilesWide columns (a zero last column when W is odd),
    // then their phases g[(2 r + q) * tw + t] = row r, column 2 t + q.
    let line = rowBuffer, g = rowBuffer + 2 * tw
    line[2 * tw - 1] = 0
    for o in 0..<channels {
        let src = dy + o * h * w
        for ty in rowStart..<(rowStart + rows) {
            let oy = 2 * ty
            for r in 0..<2 {
                if oy + r < h { line.update(from: src + (oy + r) * w, count: w) } else { line.update(repeating: 0, count: w) }
                splitPhases(line, factor: 2, length: tw, into: g + 2 * r * tw)
            }
            let out = dm + o * tiles + (ty - rowStart) * tw
            forEachLanes(tw) { tx, n in
                let a00 = loadLanes(g + tx, n), a01 = loadLanes(g + (tw + tx), n)
                let a10 = loadLanes(g + (2 * tw + tx), n), a11 = loadLanes(g + (3 * tw + tx), n)
                // A g (rows): (a0, a1) = (g0), (g0 + g1), (g0 - g1), (-g1); each row (a, b) -> (a, a+b, a-b, -b)
                let r1a = a00 + a10, r1b = a01 + a11, r2a = a00 - a10, r2b = a01 - a11
                let d = out + tx
                @inline(__always) func put(_ xi: Int, _ value: Lanes) { storeLanes(value, d + xi * stride, n) }
                put(0, a00); put(1, a00 + a01); put(2, a00 - a01); put(3, -a01)
                put(4, r1a); put(5, r1a + r1b); put(6, r1a - r1b); put(7, -r1b)
                put(8, r2a); put(9, r2a + r2b); put(10, r2a - r2b); put(11, -r2b)
                put(12, -a10); put(13, -a10 - a11); put(14, -a10 + a11); put(15, a11)
            }
        }
    }
}

// MARK: - F(4x4) transforms

// Interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray 2015). Index xi = 6 i + j:
// i comes from the transform down the rows, j from the transform along a row.
//
//   B^T = [ 4  0 -5  0  1  0 ]    G = [  1/4     0     0  ]    A^T = [ 1  1  1  1  1  0 ]
//         [ 0 -4 -4  1  1  0 ]        [ -1/6  -1/6  -1/6  ]          [ 0  1 -1  2 -2  0 ]
//         [ 0  4 -4 -1  1  0 ]        [ -1/6   1/6  -1/6  ]          [ 0  1  1  4  4  0 ]
//         [ 0 -2 -1  2  1  0 ]        [ 1/24  1/12   1/6  ]          [ 0  1 -1  8 -8  1 ]
//         [ 0  2 -1 -2  1  0 ]        [ 1/24 -1/12   1/6  ]
//         [ 0  4  0 -5  0  1 ]        [    0     0     1  ]
//
// Each transform works a tile row at a time (the rows' transform over whole image rows first, then
// along the row for every tile), so loads and stores run contiguously over tiles.

/// B^T applied to six values: the input transform of one column or row.
@inline(__always)
private func inputTransform6(_ a0: Lanes, _ a1: Lanes, _ a2: Lanes, _ a3: Lanes, _ a4: Lanes, _ a5: Lanes)
    -> (Lanes, Lanes, Lanes, Lanes, Lanes, Lanes) {
    let s12 = a1 + a2, d12 = a1 - a2, s34 = a3 + a4, d43 = a4 - a3
    let e = a4 - a2, f = a3 - a1
    return (4 * a0 - 5 * a2 + a4, s34 - 4 * s12, d43 + 4 * d12, e + 2 * f, e - 2 * f, 4 * a1 - 5 * a3 + a5)
}

/// A^T applied to six values: four outputs of the output transform.
@inline(__always)
private func outputTransform6(_ m0: Lanes, _ m1: Lanes, _ m2: Lanes, _ m3: Lanes, _ m4: Lanes, _ m5: Lanes)
    -> (Lanes, Lanes, Lanes, Lanes) {
    let p1 = m1 + m2, q1 = m1 - m2, p2 = m3 + m4, q2 = m3 - m4
    return (m0 + p1 + p2, q1 + 2 * q2, p1 + 4 * p2, q1 + 8 * q2 + m5)
}

/// A applied to four values (the output-gradient transform): six outputs.
@inline(__always)
private func gradientTransform4(_ a0: Lanes, _ a1: Lanes, _ a2: Lanes, _ a3: Lanes)
    -> (Lanes, Lanes, Lanes, Lanes, Lanes, Lanes) {
    let p = a0 + a2, q = a1 + a3, p4 = a0 + 4 * a2, q2 = 2 * a1 + 8 * a3
    return (a0, p + q, p - q, p4 + q2, p4 - q2, a3)
}

/// G applied to three values (the weight transform): six outputs.
@inline(__always)
private func weightTransform3(_ g0: Lanes, _ g1: Lanes, _ g2: Lanes) -> (Lanes, Lanes, Lanes, Lanes, Lanes, Lanes) {
    let s = g0 + g2
    return (0.25 * g0, -(s + g1) / 6, -(s - g1) / 6, g0 / 24 + g1 / 12 + g2 / 6, g0 / 24 - g1 / 12 + g2 / 6, g2)
}

/// G^T applied to six values (the weight-gradient transform): three outputs.
@inline(__always)
private func weightGradientTransform6(_ u0: Lanes, _ u1: Lanes, _ u2: Lanes, _ u3: Lanes, _ u4: Lanes, _ u5: Lanes)
    -> (Lanes, Lanes, Lanes) {
    let s12 = u1 + u2, s34 = u3 + u4
    return (0.25 * u0 - s12 / 6 + s34 / 24, (u2 - u1) / 6 + (u3 - u4) / 12, (s34 - s12) / 6 + u5)
}

/// V[xi][c][t] = (B^T d B)[xi] for the 6x6 input patch of each tile (rows and columns 4t - 1 ... 4t + 4),
/// zero outside the image, by CWinograd's AVX-512 version where it runs, else transformInputF4Portable.
@inline(__always)
func transformInputF4(_ x: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                      rowStart: Int, rows: Int, into v: UnsafeMutablePointer<Float>, tiles: Int,
                      rowBuffer: UnsafeMutablePointer<Float>) {
    if avx512Kernels {
        segtrain_winograd_input_f4_avx512(x, Int32(channels), Int32(plan.height), Int32(plan.width),
                                          Int32(plan.tilesWide), Int32(rowStart), Int32(rows), v, tiles, rowBuffer)
    } else {
        transformInputF4Portable(x, channels: channels, plan: plan, rowStart: rowStart, rows: rows, into: v,
                                 tiles: tiles, rowBuffer: rowBuffer)
    }
}

/// F(4x4)'s input transform in Swift, the reference of the AVX-512 version. Per tile row: B^T down
/// the six input rows (contiguous over the row), the six results split into their four column
/// phases (p_r[s] = t[4s + r]), then B along the row for every tile from the phases (tile t reads
/// p_0..3[t] and p_0,1[t + 1]): every loop runs over consecutive floats, so LLVM vectorizes it.
func transformInputF4Portable(_ x: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                              rowStart: Int, rows: Int, into v: UnsafeMutablePointer<Float>, tiles: Int,
                              rowBuffer: UnsafeMutablePointer<Float>) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide, rs = plan.rowStride
    let stride = channels * tiles
    let phaseLength = tw + 1  // 4 * phaseLength == rs
    let t0 = rowBuffer, t1 = t0 + rs, t2 = t1 + rs, t3 = t2 + rs, t4 = t3 + rs, t5 = t4 + rs
    let phases = rowBuffer + 6 * rs
    let zeroRow = rowBuffer + 12 * rs
    preparePaddedRows(rowBuffer, count: 6, rowStride: rs, width: w, zeroRow: zeroRow)
    for c in 0..<channels {
        let src = x + c * h * w
        for ty in rowStart..<(rowStart + rows) {
            let y0 = 4 * ty - 1
            @inline(__always) func row(_ i: Int) -> UnsafeMutablePointer<Float> {
                y0 + i >= 0 && y0 + i < h ? src + (y0 + i) * w : zeroRow
            }
            let d0 = row(0), d1 = row(1), d2 = row(2), d3 = row(3), d4 = row(4), d5 = row(5)
            // B^T d down the six rows, into padded buffers (index p = column + 1).
            forEachLanes(w) { j, n in
                let r = inputTransform6(loadLanes(d0 + j, n), loadLanes(d1 + j, n), loadLanes(d2 + j, n),
                                        loadLanes(d3 + j, n), loadLanes(d4 + j, n), loadLanes(d5 + j, n))
                storeLanes(r.0, t0 + (j + 1), n); storeLanes(r.1, t1 + (j + 1), n); storeLanes(r.2, t2 + (j + 1), n)
                storeLanes(r.3, t3 + (j + 1), n); storeLanes(r.4, t4 + (j + 1), n); storeLanes(r.5, t5 + (j + 1), n)
            }
            let out = v + c * tiles + (ty - rowStart) * tw
            for i in 0..<6 {
                let p0 = phases + i * rs, p1 = p0 + phaseLength, p2 = p1 + phaseLength, p3 = p2 + phaseLength
                splitPhases(rowBuffer + i * rs, factor: 4, length: phaseLength, into: p0)
                // (B^T d) B along the row, for each tile.
                let o0 = out + (6 * i) * stride, o1 = o0 + stride, o2 = o1 + stride
                let o3 = o2 + stride, o4 = o3 + stride, o5 = o4 + stride
                forEachLanes(tw) { tx, n in
                    let r = inputTransform6(loadLanes(p0 + tx, n), loadLanes(p1 + tx, n), loadLanes(p2 + tx, n),
                                            loadLanes(p3 + tx, n), loadLanes(p0 + (tx + 1), n), loadLanes(p1 + (tx + 1), n))
                    storeLanes(r.0, o0 + tx, n); storeLanes(r.1, o1 + tx, n); storeLanes(r.2, o2 + tx, n)
                    storeLanes(r.3, o3 + tx, n); storeLanes(r.4, o4 + tx, n); storeLanes(r.5, o5 + tx, n)
                }
            }
        }
    }
}

/// y tile (4x4) (+)= A^T m A (+ bias; max(., 0) with `relu`), clipped at the image's edge, by
/// CWinograd's AVX-512 version where it runs, else transformOutputF4Portable.
@inline(__always)
func transformOutputF4(_ m: UnsafeMutablePointer<Float>, tiles: Int, into y: UnsafeMutablePointer<Float>,
                       channels: Int, plan: WinogradPlan, rowStart: Int, rows: Int,
                       bias: Tensor?, accumulate: Bool, relu: Bool, rowBuffer: UnsafeMutablePointer<Float>) {
    if avx512Kernels {
        segtrain_winograd_output_f4_avx512(m, tiles, y, Int32(channels), Int32(plan.height), Int32(plan.width),
                                           Int32(plan.tilesWide), Int32(rowStart), Int32(rows), bias?.data,
                                           accumulate ? 1 : 0, relu ? 1 : 0)
    } else {
        transformOutputF4Portable(m, tiles: tiles, into: y, channels: channels, plan: plan, rowStart: rowStart,
                                  rows: rows, bias: bias, accumulate: accumulate, relu: relu, rowBuffer: rowBuffer)
    }
}

/// F(4x4)'s output transform in Swift, the reference of the AVX-512 version: a tile row at a time,
/// the 16 results of each tile go to 16 streams over the tiles (vectorized), then are interleaved
/// into the four output rows.
func transformOutputF4Portable(_ m: UnsafeMutablePointer<Float>, tiles: Int, into y: UnsafeMutablePointer<Float>,
                               channels: Int, plan: WinogradPlan, rowStart: Int, rows: Int,
                               bias: Tensor?, accumulate: Bool, relu: Bool, rowBuffer: UnsafeMutablePointer<Float>) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide
    let stride = channels * tiles
    // results[(4 r + q) * tw + t]: row r, column q of tile t; then the interleaved line; columns[(4 j + r) * tw + t]:
    // (A^T m)[r][j]. Two passes (down the columns, then along the rows), so that few vectors are
    // live at once (AVX2 has 16 registers; one pass over all 36 values spills).
    let results = rowBuffer, line = results + 16 * tw, columns = line + 4 * tw
    for o in 0..<channels {
        let dst = y + o * h * w
        let bias = Lanes(repeating: bias.map { $0[o] } ?? 0)
        for ty in rowStart..<(rowStart + rows) {
            let src = m + o * tiles + (ty - rowStart) * tw
            // A^T m: per column j, four values from the six rows.
            for j in 0..<6 {
                let c = columns + 4 * j * tw
                forEachLanes(tw) { tx, n in
                    @inline(__always) func at(_ i: Int) -> Lanes { loadLanes(src + ((6 * i + j) * stride + tx), n) }
                    let v = outputTransform6(at(0), at(1), at(2), at(3), at(4), at(5))
                    storeLanes(v.0, c + tx, n); storeLanes(v.1, c + (tw + tx), n)
                    storeLanes(v.2, c + (2 * tw + tx), n); storeLanes(v.3, c + (3 * tw + tx), n)
                }
            }
            // (A^T m) A along each of the four rows.
            for r in 0..<4 {
                let d = results + 4 * r * tw
                forEachLanes(tw) { tx, n in
                    @inline(__always) func at(_ j: Int) -> Lanes { loadLanes(columns + ((4 * j + r) * tw + tx), n) }
                    let v = outputTransform6(at(0), at(1), at(2), at(3), at(4), at(5))
                    storeLanes(v.0 + bias, d + tx, n); storeLanes(v.1 + bias, d + (tw + tx), n)
                    storeLanes(v.2 + bias, d + (2 * tw + tx), n); storeLanes(v.3 + bias, d + (3 * tw + tx), n)
                }
            }
            writeTileRow(results, tile: 4, tilesWide: tw, tileRow: ty, into: dst, height: h, width: w, line: line,
                         accumulate: accumulate, relu: relu)
        }
    }
}

/// dM[xi][o][t] = (A dy A^T)[xi] for the 4x4 output-gradient tile (zero outside the image), by
/// CWinograd's AVX-512 version where it runs, else transformOutputGradientF4Portable.
@inline(__always)
func transformOutputGradientF4(_ dy: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                               rowStart: Int, rows: Int, into dm: UnsafeMutablePointer<Float>, tiles: Int,
                               rowBuffer: UnsafeMutablePointer<Float>) {
    if avx512Kernels {
        segtrain_winograd_output_gradient_f4_avx512(dy, Int32(channels), Int32(plan.height), Int32(plan.width),
                                                    Int32(plan.tilesWide), Int32(rowStart), Int32(rows), dm, tiles)
    } else {
        transformOutputGradientF4Portable(dy, channels: channels, plan: plan, rowStart: rowStart, rows: rows,
                                          into: dm, tiles: tiles, rowBuffer: rowBuffer)
    }
}

/// F(4x4)'s output-gradient transform in Swift, the reference of the AVX-512 version: a tile row at
/// a time, the four rows split into their column phases, then 36 streams over the tiles.
func transformOutputGradientF4Portable(_ dy: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                                       rowStart: Int, rows: Int, into dm: UnsafeMutablePointer<Float>, tiles: Int,
                                       rowBuffer: UnsafeMutablePointer<Float>) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide
    let stride = channels * tiles
    // Four output-gradient rows padded with zeros to 4 * tilesWide columns, then their phases
    // g[(4 r + q) * tw + t] = row r, column 4 t + q.
    let lineLength = 4 * tw
    let g = rowBuffer + 4 * lineLength, columns = g + 16 * tw
    for r in 0..<4 { (rowBuffer + r * lineLength + w).update(repeating: 0, count: lineLength - w) }
    for o in 0..<channels {
        let src = dy + o * h * w
        for ty in rowStart..<(rowStart + rows) {
            let oy = 4 * ty
            for r in 0..<4 {
                let line = rowBuffer + r * lineLength
                if oy + r < h { line.update(from: src + (oy + r) * w, count: w) } else { line.update(repeating: 0, count: w) }
                splitPhases(line, factor: 4, length: tw, into: g + 4 * r * tw)
            }
            let out = dm + o * tiles + (ty - rowStart) * tw
            // A g down each of the four columns q: six rows, into columns[(6 q + i) * tw + t].
            for q in 0..<4 {
                let c = columns + 6 * q * tw
                forEachLanes(tw) { tx, n in
                    @inline(__always) func at(_ r: Int) -> Lanes { loadLanes(g + ((4 * r + q) * tw + tx), n) }
                    let v = gradientTransform4(at(0), at(1), at(2), at(3))
                    storeLanes(v.0, c + tx, n); storeLanes(v.1, c + (tw + tx), n); storeLanes(v.2, c + (2 * tw + tx), n)
                    storeLanes(v.3, c + (3 * tw + tx), n); storeLanes(v.4, c + (4 * tw + tx), n)
                    storeLanes(v.5, c + (5 * tw + tx), n)
                }
            }
            // (A g) A^T along each of the six rows i.
            for i in 0..<6 {
                let d = out + 6 * i * stride
                forEachLanes(tw) { tx, n in
                    @inline(__always) func at(_ q: Int) -> Lanes { loadLanes(columns + ((6 * q + i) * tw + tx), n) }
                    let v = gradientTransform4(at(0), at(1), at(2), at(3))
                    storeLanes(v.0, d + tx, n); storeLanes(v.1, d + (stride + tx), n)
                    storeLanes(v.2, d + (2 * stride + tx), n); storeLanes(v.3, d + (3 * stride + tx), n)
                    storeLanes(v.4, d + (4 * stride + tx), n); storeLanes(v.5, d + (5 * stride + tx), n)
                }
            }
        }
    }
}

// MARK: - Weight transforms

/// The transformed weights of a (Cout, Cin, 3, 3) kernel, stored transposed (the GEMMs multiply by
/// U^T's transpose, so segtrain's GEMM reads its rows in place instead of packing U for every chunk),
/// parallel over the rows (sixteen kernels at a time along a row in CWinograd's AVX-512 version where
/// it runs, eight in transformAllWeightsPortable):
/// forward         U^T[xi][c][o] = (G g[o][c] G^T)[xi]
/// input gradient  U'^T[xi][o][c] = (G flip(g[o][c]) G^T)[xi]  (Cin and Cout swapped, kernel rotated)
/// `columns`: only these output channels (forward) or input channels (input gradient), stored as if
/// the weight had no others (PhaseWinograd.swift transforms a block of them at a time).
func transformAllWeights(_ weight: Tensor, into u: UnsafeMutablePointer<Float>, forInputGradient: Bool,
                         tile: Int, columns: Range<Int>? = nil, pool: WorkerPool) {
    let window = columns ?? 0..<(forInputGradient ? weight.c : weight.n)
    guard avx512Kernels else {
        transformAllWeightsPortable(weight, into: u, forInputGradient: forInputGradient, tile: tile, columns: window,
                                    pool: pool)
        return
    }
    let rows = forInputGradient ? weight.n : weight.c
    pool.parallelFor(rows) { range, _ in
        for r in range {
            segtrain_winograd_weights_avx512(weight.data, Int32(weight.n), Int32(weight.c), Int32(r),
                                             forInputGradient ? 1 : 0, Int32(tile), Int32(window.lowerBound),
                                             Int32(window.count), u)
        }
    }
}

/// transformAllWeights in Swift, the reference of the AVX-512 version.
func transformAllWeightsPortable(_ weight: Tensor, into u: UnsafeMutablePointer<Float>, forInputGradient: Bool,
                                 tile: Int, columns window: Range<Int>? = nil, pool: WorkerPool) {
    let cout = weight.n, cin = weight.c
    let window = window ?? 0..<(forInputGradient ? cin : cout)
    // Row r, column k: kernel (o, c) = (first + k, r) forward, (r, first + k) for the input gradient.
    let rows = forInputGradient ? cout : cin, columns = window.count, first = window.lowerBound
    pool.parallelFor(rows) { range, _ in
        for r in range {
            forEachLanes(columns) { k, n in
                transformWeights({ l in
                    let (o, c) = forInputGradient ? (r, first + k + l) : (first + k + l, r)
                    return UnsafePointer(weight.data + (o * cin + c) * 9)
                }, count: n, into: u + (r * columns + k), stride: rows * columns, flip: forInputGradient, tile: tile)
            }
        }
    }
}

/// The weight transform of `count` (<= 8) kernels at once: out[xi * stride + l] = (G g_l G^T)[xi] for
/// the 3x3 kernel g_l = kernel(l) (flipped 180 degrees when `flip`), F(2x2) or F(4x4). The kernels'
/// values are gathered into lanes; the stores are contiguous over l.
@inline(__always)
private func transformWeights(_ kernel: (Int) -> UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<Float>,
                              stride: Int, flip: Bool, tile: Int) {
    @inline(__always) func k(_ i: Int, _ j: Int) -> Lanes {
        let index = flip ? (2 - i) * 3 + (2 - j) : i * 3 + j
        var v = Lanes()
        for l in 0..<count { v[l] = kernel(l)[index] }
        return v
    }
    @inline(__always) func store(_ xi: Int, _ v: Lanes) { storeLanes(v, out + xi * stride, count) }
    if tile == 4 {
        // G g (6x3), a column at a time, then (G g) G^T along each of the six rows.
        let c0 = weightTransform3(k(0, 0), k(1, 0), k(2, 0))
        let c1 = weightTransform3(k(0, 1), k(1, 1), k(2, 1))
        let c2 = weightTransform3(k(0, 2), k(1, 2), k(2, 2))
        @inline(__always) func put(_ i: Int, _ a: Lanes, _ b: Lanes, _ c: Lanes) {
            let r = weightTransform3(a, b, c)
            store(6 * i, r.0); store(6 * i + 1, r.1); store(6 * i + 2, r.2)
            store(6 * i + 3, r.3); store(6 * i + 4, r.4); store(6 * i + 5, r.5)
        }
        put(0, c0.0, c1.0, c2.0)
        put(1, c0.1, c1.1, c2.1)
        put(2, c0.2, c1.2, c2.2)
        put(3, c0.3, c1.3, c2.3)
        put(4, c0.4, c1.4, c2.4)
        put(5, c0.5, c1.5, c2.5)
        return
    }
    // G g (4x3): per column j, (g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2).
    @inline(__always) func gColumn(_ j: Int) -> (Lanes, Lanes, Lanes, Lanes) {
        let g0 = k(0, j), g1 = k(1, j), g2 = k(2, j)
        return (g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2)
    }
    let c0 = gColumn(0), c1 = gColumn(1), c2 = gColumn(2)
    // (G g) G^T: each row (a, b, c) -> (a, (a+b+c)/2, (a-b+c)/2, c).
    @inline(__always) func put(_ i: Int, _ a: Lanes, _ b: Lanes, _ c: Lanes) {
        store(4 * i, a)
        store(4 * i + 1, 0.5 * (a + b + c))
        store(4 * i + 2, 0.5 * (a - b + c))
        store(4 * i + 3, c)
    }
    put(0, c0.0, c1.0, c2.0)
    put(1, c0.1, c1.1, c2.1)
    put(2, c0.2, c1.2, c2.2)
    put(3, c0.3, c1.3, c2.3)
}

/// The inverse weight-gradient transform of `count` (<= 8) kernels at once: dst(l) (3x3) += G^T dU_l G
/// for the dU_l stored at du[xi * stride + l] (4x4 for F(2x2), 6x6 for F(4x4)).
@inline(__always)
private func inverseTransformWeightGradients(_ du: UnsafeMutablePointer<Float>, stride: Int, count: Int, tile: Int,
                                             addInto dst: (Int) -> UnsafeMutablePointer<Float>) {
    @inline(__always) func add(_ k: Int, _ v: Lanes) {
        for l in 0..<count { dst(l)[k] += v[l] }
    }
    if tile == 4 {
        @inline(__always) func u(_ i: Int, _ j: Int) -> Lanes { loadLanes(du + (6 * i + j) * stride, count) }
        // G^T dU (3x6), a column at a time, then (G^T dU) G along each of the three rows.
        let c0 = weightGradientTransform6(u(0, 0), u(1, 0), u(2, 0), u(3, 0), u(4, 0), u(5, 0))
        let c1 = weightGradientTransform6(u(0, 1), u(1, 1), u(2, 1), u(3, 1), u(4, 1), u(5, 1))
        let c2 = weightGradientTransform6(u(0, 2), u(1, 2), u(2, 2), u(3, 2), u(4, 2), u(5, 2))
        let c3 = weightGradientTransform6(u(0, 3), u(1, 3), u(2, 3), u(3, 3), u(4, 3), u(5, 3))
        let c4 = weightGradientTransform6(u(0, 4), u(1, 4), u(2, 4), u(3, 4), u(4, 4), u(5, 4))
        let c5 = weightGradientTransform6(u(0, 5), u(1, 5), u(2, 5), u(3, 5), u(4, 5), u(5, 5))
        let r0 = weightGradientTransform6(c0.0, c1.0, c2.0, c3.0, c4.0, c5.0)
        let r1 = weightGradientTransform6(c0.1, c1.1, c2.1, c3.1, c4.1, c5.1)
        let r2 = weightGradientTransform6(c0.2, c1.2, c2.2, c3.2, c4.2, c5.2)
        add(0, r0.0); add(1, r0.1); add(2, r0.2)
        add(3, r1.0); add(4, r1.1); add(5, r1.2)
        add(6, r2.0); add(7, r2.1); add(8, r2.2)
        return
    }
    // G^T (3x4) = [[1, .5, .5, 0], [0, .5, -.5, 0], [0, .5, .5, 1]]; applied to rows, then columns.
    @inline(__always) func u(_ i: Int, _ j: Int) -> Lanes { loadLanes(du + (4 * i + j) * stride, count) }
    @inline(__always) func q(_ r: Int, _ j: Int) -> Lanes {
        switch r {
        case 0: return u(0, j) + 0.5 * (u(1, j) + u(2, j))
        case 1: return 0.5 * (u(1, j) - u(2, j))
        default: return 0.5 * (u(1, j) + u(2, j)) + u(3, j)
        }
    }
    for row in 0..<3 {
        let a0 = q(row, 0), a1 = q(row, 1), a2 = q(row, 2), a3 = q(row, 3)
        add(row * 3, a0 + 0.5 * (a1 + a2))
        add(row * 3 + 1, 0.5 * (a1 - a2))
        add(row * 3 + 2, 0.5 * (a1 + a2) + a3)
    }
}
