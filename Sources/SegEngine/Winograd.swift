// Winograd F(2x2, 3x3) for 3x3, stride-1, pad-1 convolutions (Lavin & Gray 2015), in all three
// passes of training. Each 2x2 output tile costs 16 multiplications per (Cin, Cout) pair instead
// of 36; the multiplications become 16 independent GEMMs per chunk of tiles.
//
//   forward         Y = A^T [ U . V ] A,      U = G g G^T (weights),  V = B^T d B (4x4 input tiles)
//   input gradient  the same with g flipped spatially and Cin/Cout swapped (stride 1, same padding)
//   weight gradient dU[xi] += dM[xi] V[xi]^T with dM = A dy A^T, then dg += G^T dU G
//
// Layout per chunk of T tiles: V[xi][c][t] (16 x Cin x T), M[xi][o][t] (16 x Cout x T),
// U[xi][o][c] (16 x Cout x Cin, shared by all threads, written once per call).
// The conv2d kernels in Conv.swift stay the reference; tests compare against conv2dForwardNaive.

import CBLAS

/// Tiles and chunking of one Winograd convolution. A chunk (the unit of work of one thread, and
/// the columns of its 16 GEMMs) is either a band of tile rows of one image (large planes) or a
/// group of whole images (small planes), so deep layers still get GEMMs with many columns.
public struct WinogradPlan {
    public let inChannels: Int, outChannels: Int, height: Int, width: Int, batch: Int
    public let tilesHigh: Int, tilesWide: Int
    /// Tile rows per chunk (all of them when chunks group whole images).
    public let tileRowsPerChunk: Int
    public let chunksPerImage: Int
    /// Whole images per chunk (1 when chunks are bands).
    public let imagesPerChunk: Int
    /// Chunks in the batch.
    public let chunks: Int

    /// Floats of transformed tiles (V + M) one chunk aims at; tuned with `segtrain bench`.
    nonisolated(unsafe) public static var targetChunkFloats = 1 << 20

    public init(inChannels: Int, outChannels: Int, height: Int, width: Int, batch: Int = 1, threads: Int = 1) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.height = height
        self.width = width
        self.batch = batch
        tilesHigh = (height + 1) / 2
        tilesWide = (width + 1) / 2
        let floatsPerTile = 16 * (inChannels + outChannels)
        let targetTiles = max(1, WinogradPlan.targetChunkFloats / floatsPerTile)
        let tilesPerImage = tilesHigh * tilesWide
        if tilesPerImage >= targetTiles || batch <= 1 {
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

    /// Length of one row buffer: the padded input row (columns -1 ... 2 * tilesWide).
    var rowStride: Int { 2 * tilesWide + 4 }

    /// Floats of V (16 x Cin x T), M (16 x Cout x T), the dU partial and the row buffers.
    var tileFloats: Int { 16 * (inChannels + outChannels) * maxTilesPerChunk }
    var rowFloats: Int { 4 * rowStride + width + 4 }

    /// Per-thread scratch: V and M for one chunk, a dU partial for the weight gradient, row buffers.
    public var scratchFloatsPerThread: Int { tileFloats + 16 * inChannels * outChannels + rowFloats }

    /// Shared scratch: the transformed weights.
    public var sharedFloats: Int { 16 * inChannels * outChannels }
}

/// y (N, Cout, H, W) = conv3x3(x) + bias (max(., 0) with `relu`), or y += conv3x3(x) when `accumulate`.
/// x: (N, Cin, H, W)  weight: (Cout, Cin, 3, 3)  bias: (Cout,1,1,1) or nil
public func winogradConv3x3Forward(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?,
                                   accumulate: Bool = false, relu: Bool = false, pool: WorkerPool, scratch: Scratch) {
    precondition(!(accumulate && relu), "winograd: relu applies to an overwritten output only")
    let cin = x.c, cout = y.c
    precondition(weight.shape == Shape(cout, cin, 3, 3), "winograd: weight \(weight.shape) for \(cin) -> \(cout)")
    precondition(y.n == x.n && y.h == x.h && y.w == x.w, "winograd: y \(y.shape) vs x \(x.shape)")
    let plan = WinogradPlan(inChannels: cin, outChannels: cout, height: x.h, width: x.w, batch: x.n,
                            threads: pool.threadCount)
    scratch.requireShared(plan.sharedFloats, "winograd forward")
    let u = scratch.shared
    // U[xi][o][c] = G g[o][c] G^T
    pool.parallelFor(cout) { range, _ in
        for o in range {
            for c in 0..<cin {
                transformWeight(weight.data + (o * cin + c) * 9, into: u + o * cin + c, stride: cout * cin, flip: false)
            }
        }
    }
    winogradTiles(y, x, transformedWeight: u, bias: bias, accumulate: accumulate, relu: relu, plan: plan,
                  pool: pool, scratch: scratch)
}

/// dx (N, Cin, H, W) += the input gradient of a 3x3 same convolution for dy (N, Cout, H, W).
public func winogradConv3x3InputGradient(dx: Tensor, dy: Tensor, weight: Tensor, pool: WorkerPool, scratch: Scratch) {
    let cin = dx.c, cout = dy.c
    precondition(weight.shape == Shape(cout, cin, 3, 3), "winograd: weight \(weight.shape) for \(cin) -> \(cout)")
    // A forward convolution from Cout to Cin channels with the flipped, transposed kernel.
    let plan = WinogradPlan(inChannels: cout, outChannels: cin, height: dy.h, width: dy.w, batch: dy.n,
                            threads: pool.threadCount)
    scratch.requireShared(plan.sharedFloats, "winograd input gradient")
    let u = scratch.shared
    // U'[xi][c][o] = G flip(g[o][c]) G^T
    pool.parallelFor(cin) { range, _ in
        for c in range {
            for o in 0..<cout {
                transformWeight(weight.data + (o * cin + c) * 9, into: u + c * cout + o, stride: cin * cout, flip: true)
            }
        }
    }
    winogradTiles(dx, dy, transformedWeight: u, bias: nil, accumulate: true, relu: false, plan: plan,
                  pool: pool, scratch: scratch)
}

/// dweight (Cout, Cin, 3, 3) += dL/dweight and dbias += sum of dy, for y = conv3x3(x).
/// Each thread sums its chunks into a private dU; the partials are added in thread order.
public func winogradConv3x3WeightGradient(dweight: Tensor, dbias: Tensor?, dy: Tensor, x: Tensor,
                                          pool: WorkerPool, scratch: Scratch) {
    let cin = x.c, cout = dy.c
    precondition(dweight.shape == Shape(cout, cin, 3, 3), "winograd: dweight \(dweight.shape) for \(cin) -> \(cout)")
    let plan = WinogradPlan(inChannels: cin, outChannels: cout, height: x.h, width: x.w, batch: x.n,
                            threads: pool.threadCount)
    scratch.require(plan.scratchFloatsPerThread, "winograd weight gradient")
    let tilesPerChunk = plan.maxTilesPerChunk
    let partialOffset = plan.tileFloats
    let work = plan.chunks
    let parts = min(pool.threadCount, work)
    pool.run { thread in
        guard thread < parts else { return }
        let base = scratch.buffer(thread)
        let v = base, dm = base + 16 * cin * tilesPerChunk, du = base + partialOffset
        let rowBuffer = du + 16 * cin * cout
        du.update(repeating: 0, count: 16 * cin * cout)
        for item in WorkerPool.split(work, parts: parts, index: thread) {
            let (n0, n1, rowStart, rows) = plan.chunk(item)
            let tiles = (n1 - n0) * rows * plan.tilesWide
            for n in n0..<n1 {
                let offset = (n - n0) * rows * plan.tilesWide
                transformInput(x.sample(n), channels: cin, plan: plan, rowStart: rowStart, rows: rows, into: v + offset,
                               tiles: tiles, rowBuffer: rowBuffer)
                transformOutputGradient(dy.sample(n), channels: cout, plan: plan, rowStart: rowStart, rows: rows,
                                        into: dm + offset, tiles: tiles, rowBuffer: rowBuffer)
            }
            for xi in 0..<16 {
                // dU[xi] (Cout x Cin) += dM[xi] (Cout x T) * V[xi]^T (T x Cin)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(cout), Int32(cin), Int32(tiles), 1,
                            dm + xi * cout * tiles, Int32(tiles), v + xi * cin * tiles, Int32(tiles),
                            1, du + xi * cout * cin, Int32(cin))
            }
        }
    }
    // dg += G^T dU G, partials in thread order; parallel over output channels.
    pool.parallelFor(cout) { range, _ in
        for o in range {
            for c in 0..<cin {
                let dst = dweight.data + (o * cin + c) * 9
                for t in 0..<parts {
                    let du = scratch.buffer(t) + partialOffset + o * cin + c
                    inverseTransformWeightGradient(du, stride: cout * cin, addInto: dst)
                }
            }
        }
    }
    if let dbias = dbias {
        precondition(dbias.count == cout)
        let plane = dy.h * dy.w
        pool.parallelFor(cout) { range, _ in
            for o in range {
                var s: Float = 0
                for n in 0..<dy.n {
                    let p = dy.plane(n, o)
                    for i in 0..<plane { s += p[i] }
                }
                dbias[o] += s
            }
        }
    }
}

// MARK: - Tiles

/// y (+)= A^T [U . V] A (+ bias) over every tile of every image.
private func winogradTiles(_ y: Tensor, _ x: Tensor, transformedWeight u: UnsafeMutablePointer<Float>,
                           bias: Tensor?, accumulate: Bool, relu: Bool, plan: WinogradPlan, pool: WorkerPool,
                           scratch: Scratch) {
    let cin = plan.inChannels, cout = plan.outChannels
    scratch.require(plan.scratchFloatsPerThread, "winograd tiles")
    let tilesPerChunk = plan.maxTilesPerChunk
    pool.parallelFor(plan.chunks) { range, thread in
        let v = scratch.buffer(thread), m = v + 16 * cin * tilesPerChunk
        let rowBuffer = v + plan.tileFloats + 16 * cin * cout
        for item in range {
            let (n0, n1, rowStart, rows) = plan.chunk(item)
            let tiles = (n1 - n0) * rows * plan.tilesWide
            for n in n0..<n1 {
                transformInput(x.sample(n), channels: cin, plan: plan, rowStart: rowStart, rows: rows,
                               into: v + (n - n0) * rows * plan.tilesWide, tiles: tiles, rowBuffer: rowBuffer)
            }
            for xi in 0..<16 {
                // M[xi] (Cout x T) = U[xi] (Cout x Cin) * V[xi] (Cin x T)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(cout), Int32(tiles), Int32(cin), 1,
                            u + xi * cout * cin, Int32(cin), v + xi * cin * tiles, Int32(tiles),
                            0, m + xi * cout * tiles, Int32(tiles))
            }
            for n in n0..<n1 {
                transformOutput(m + (n - n0) * rows * plan.tilesWide, tiles: tiles, into: y.sample(n), channels: cout,
                                plan: plan, rowStart: rowStart, rows: rows, bias: bias, accumulate: accumulate,
                                relu: relu, rowBuffer: rowBuffer)
            }
        }
    }
}

/// V[xi][c][t] = (B^T d B)[xi] for the 4x4 input patch of each tile, zero outside the image.
/// Works a tile row at a time: B^T down the four input rows (contiguous), then B along the row
/// for every tile of it, so every store is contiguous over tiles.
@inline(__always)
private func transformInput(_ x: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                            rowStart: Int, rows: Int, into v: UnsafeMutablePointer<Float>, tiles: Int,
                            rowBuffer: UnsafeMutablePointer<Float>) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide, rs = plan.rowStride
    let stride = channels * tiles
    let t0 = rowBuffer, t1 = t0 + rs, t2 = t1 + rs, t3 = t2 + rs
    let zeroRow = t3 + rs
    zeroRow.update(repeating: 0, count: w)
    // Column -1 and columns >= W of the padded rows stay zero.
    for r in 0..<4 {
        let t = rowBuffer + r * rs
        t[0] = 0
        (t + w + 1).update(repeating: 0, count: rs - w - 1)
    }
    for c in 0..<channels {
        let src = x + c * h * w
        for ty in rowStart..<(rowStart + rows) {
            let y0 = 2 * ty - 1
            @inline(__always) func row(_ i: Int) -> UnsafeMutablePointer<Float> {
                y0 + i >= 0 && y0 + i < h ? src + (y0 + i) * w : zeroRow
            }
            let d0 = row(0), d1 = row(1), d2 = row(2), d3 = row(3)
            // B^T d over rows, into padded buffers (index p = column + 1).
            for j in 0..<w {
                t0[j + 1] = d0[j] - d2[j]
                t1[j + 1] = d1[j] + d2[j]
                t2[j + 1] = d2[j] - d1[j]
                t3[j + 1] = d1[j] - d3[j]
            }
            // (B^T d) B along the row, for each tile.
            let out = v + c * tiles + (ty - rowStart) * tw
            for i in 0..<4 {
                let t = rowBuffer + i * rs
                let o0 = out + (4 * i) * stride, o1 = o0 + stride, o2 = o1 + stride, o3 = o2 + stride
                for tx in 0..<tw {
                    let a0 = t[2 * tx], a1 = t[2 * tx + 1], a2 = t[2 * tx + 2], a3 = t[2 * tx + 3]
                    o0[tx] = a0 - a2
                    o1[tx] = a1 + a2
                    o2[tx] = a2 - a1
                    o3[tx] = a1 - a3
                }
            }
        }
    }
}

/// y tile (2x2) (+)= A^T m A (+ bias), a tile row at a time, clipped at the image's edge.
@inline(__always)
private func transformOutput(_ m: UnsafeMutablePointer<Float>, tiles: Int, into y: UnsafeMutablePointer<Float>,
                             channels: Int, plan: WinogradPlan, rowStart: Int, rows: Int,
                             bias: Tensor?, accumulate: Bool, relu: Bool, rowBuffer: UnsafeMutablePointer<Float>) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide
    let stride = channels * tiles
    let out0 = rowBuffer, out1 = rowBuffer + 2 * tw
    for o in 0..<channels {
        let dst = y + o * h * w
        let b: Float = bias.map { $0[o] } ?? 0
        for ty in rowStart..<(rowStart + rows) {
            let src = m + o * tiles + (ty - rowStart) * tw
            let m0 = src, m1 = m0 + stride, m2 = m1 + stride, m3 = m2 + stride
            let m4 = m3 + stride, m5 = m4 + stride, m6 = m5 + stride, m7 = m6 + stride
            let m8 = m7 + stride, m9 = m8 + stride, m10 = m9 + stride, m11 = m10 + stride
            let m12 = m11 + stride, m13 = m12 + stride, m14 = m13 + stride, m15 = m14 + stride
            for tx in 0..<tw {
                // A^T m: s0 = rows 0 + 1 + 2, s1 = rows 1 - 2 - 3 (4 columns each)
                let s00 = m0[tx] + m4[tx] + m8[tx], s01 = m1[tx] + m5[tx] + m9[tx]
                let s02 = m2[tx] + m6[tx] + m10[tx], s03 = m3[tx] + m7[tx] + m11[tx]
                let s10 = m4[tx] - m8[tx] - m12[tx], s11 = m5[tx] - m9[tx] - m13[tx]
                let s12 = m6[tx] - m10[tx] - m14[tx], s13 = m7[tx] - m11[tx] - m15[tx]
                out0[2 * tx] = s00 + s01 + s02 + b
                out0[2 * tx + 1] = s01 - s02 - s03 + b
                out1[2 * tx] = s10 + s11 + s12 + b
                out1[2 * tx + 1] = s11 - s12 - s13 + b
            }
            let oy = 2 * ty
            let rowsHere = oy + 1 < h ? 2 : 1
            for r in 0..<rowsHere {
                let line = dst + (oy + r) * w, from = r == 0 ? out0 : out1
                if accumulate {
                    for j in 0..<w { line[j] += from[j] }
                } else if relu {
                    for j in 0..<w { line[j] = max(from[j], 0) }
                } else {
                    line.update(from: from, count: w)
                }
            }
        }
    }
}

/// dM[xi][o][t] = (A dy A^T)[xi] for the 2x2 output-gradient tile (zero outside the image),
/// a tile row at a time.
@inline(__always)
private func transformOutputGradient(_ dy: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                                     rowStart: Int, rows: Int, into dm: UnsafeMutablePointer<Float>, tiles: Int,
                                     rowBuffer: UnsafeMutablePointer<Float>) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide
    let stride = channels * tiles
    // Two output-gradient rows padded to 2 * tilesWide columns (a zero last column when W is odd).
    let g0 = rowBuffer, g1 = rowBuffer + 2 * tw
    g0[2 * tw - 1] = 0
    g1[2 * tw - 1] = 0
    for o in 0..<channels {
        let src = dy + o * h * w
        for ty in rowStart..<(rowStart + rows) {
            let oy = 2 * ty
            g0.update(from: src + oy * w, count: w)
            if oy + 1 < h { g1.update(from: src + (oy + 1) * w, count: w) } else { g1.update(repeating: 0, count: w) }
            let out = dm + o * tiles + (ty - rowStart) * tw
            let d0 = out, d1 = d0 + stride, d2 = d1 + stride, d3 = d2 + stride
            let d4 = d3 + stride, d5 = d4 + stride, d6 = d5 + stride, d7 = d6 + stride
            let d8 = d7 + stride, d9 = d8 + stride, d10 = d9 + stride, d11 = d10 + stride
            let d12 = d11 + stride, d13 = d12 + stride, d14 = d13 + stride, d15 = d14 + stride
            for tx in 0..<tw {
                let a00 = g0[2 * tx], a01 = g0[2 * tx + 1], a10 = g1[2 * tx], a11 = g1[2 * tx + 1]
                // A g (rows): (a0, a1) = (g0), (g0 + g1), (g0 - g1), (-g1); each row (a, b) -> (a, a+b, a-b, -b)
                let r1a = a00 + a10, r1b = a01 + a11, r2a = a00 - a10, r2b = a01 - a11
                d0[tx] = a00; d1[tx] = a00 + a01; d2[tx] = a00 - a01; d3[tx] = -a01
                d4[tx] = r1a; d5[tx] = r1a + r1b; d6[tx] = r1a - r1b; d7[tx] = -r1b
                d8[tx] = r2a; d9[tx] = r2a + r2b; d10[tx] = r2a - r2b; d11[tx] = -r2b
                d12[tx] = -a10; d13[tx] = -a10 - a11; d14[tx] = -a10 + a11; d15[tx] = a11
            }
        }
    }
}

/// out[xi * stride] = (G g G^T)[xi] for a 3x3 kernel g (flipped 180 degrees when `flip`).
@inline(__always)
private func transformWeight(_ g: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>,
                             stride: Int, flip: Bool) {
    @inline(__always) func k(_ i: Int, _ j: Int) -> Float { flip ? g[(2 - i) * 3 + (2 - j)] : g[i * 3 + j] }
    // G g (4x3): per column j, (g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2).
    @inline(__always) func gColumn(_ j: Int) -> (Float, Float, Float, Float) {
        let g0 = k(0, j), g1 = k(1, j), g2 = k(2, j)
        return (g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2)
    }
    let c0 = gColumn(0), c1 = gColumn(1), c2 = gColumn(2)
    // (G g) G^T: each row (a, b, c) -> (a, (a+b+c)/2, (a-b+c)/2, c).
    @inline(__always) func put(_ i: Int, _ a: Float, _ b: Float, _ c: Float) {
        out[(4 * i) * stride] = a
        out[(4 * i + 1) * stride] = 0.5 * (a + b + c)
        out[(4 * i + 2) * stride] = 0.5 * (a - b + c)
        out[(4 * i + 3) * stride] = c
    }
    put(0, c0.0, c1.0, c2.0)
    put(1, c0.1, c1.1, c2.1)
    put(2, c0.2, c1.2, c2.2)
    put(3, c0.3, c1.3, c2.3)
}

/// dst (3x3) += G^T dU G for the 4x4 dU stored at du[xi * stride].
@inline(__always)
private func inverseTransformWeightGradient(_ du: UnsafeMutablePointer<Float>, stride: Int,
                                            addInto dst: UnsafeMutablePointer<Float>) {
    // G^T (3x4) = [[1, .5, .5, 0], [0, .5, -.5, 0], [0, .5, .5, 1]]; applied to rows, then columns.
    @inline(__always) func u(_ i: Int, _ j: Int) -> Float { du[(4 * i + j) * stride] }
    @inline(__always) func q(_ r: Int, _ j: Int) -> Float {
        switch r {
        case 0: return u(0, j) + 0.5 * (u(1, j) + u(2, j))
        case 1: return 0.5 * (u(1, j) - u(2, j))
        default: return 0.5 * (u(1, j) + u(2, j)) + u(3, j)
        }
    }
    for r in 0..<3 {
        let a0 = q(r, 0), a1 = q(r, 1), a2 = q(r, 2), a3 = q(r, 3)
        dst[r * 3] += a0 + 0.5 * (a1 + a2)
        dst[r * 3 + 1] += 0.5 * (a1 - a2)
        dst[r * 3 + 2] += 0.5 * (a1 + a2) + a3
    }
}
