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

/// Tiles and chunking of one Winograd convolution.
public struct WinogradPlan {
    public let inChannels: Int, outChannels: Int, height: Int, width: Int
    public let tilesHigh: Int, tilesWide: Int
    /// Tile rows per chunk; a chunk is the unit of work of one thread.
    public let tileRowsPerChunk: Int
    public let chunksPerImage: Int

    public init(inChannels: Int, outChannels: Int, height: Int, width: Int) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.height = height
        self.width = width
        tilesHigh = (height + 1) / 2
        tilesWide = (width + 1) / 2
        // About 1 MiB of transformed tiles per chunk, at least one tile row.
        let floatsPerTile = 16 * (inChannels + outChannels)
        let targetTiles = max(1, (1 << 18) / floatsPerTile)
        tileRowsPerChunk = max(1, min(tilesHigh, targetTiles / max(tilesWide, 1)))
        chunksPerImage = (tilesHigh + tileRowsPerChunk - 1) / tileRowsPerChunk
    }

    var maxTilesPerChunk: Int { tileRowsPerChunk * tilesWide }

    /// Per-thread scratch: V and M for one chunk, plus a dU partial for the weight gradient.
    public var scratchFloatsPerThread: Int {
        16 * (inChannels + outChannels) * maxTilesPerChunk + 16 * inChannels * outChannels
    }

    /// Shared scratch: the transformed weights.
    public var sharedFloats: Int { 16 * inChannels * outChannels }
}

/// y (N, Cout, H, W) = conv3x3(x) + bias, or y += conv3x3(x) when `accumulate`.
/// x: (N, Cin, H, W)  weight: (Cout, Cin, 3, 3)  bias: (Cout,1,1,1) or nil
public func winogradConv3x3Forward(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?,
                                   accumulate: Bool = false, pool: WorkerPool, scratch: Scratch) {
    let cin = x.c, cout = y.c
    precondition(weight.shape == Shape(cout, cin, 3, 3), "winograd: weight \(weight.shape) for \(cin) -> \(cout)")
    precondition(y.n == x.n && y.h == x.h && y.w == x.w, "winograd: y \(y.shape) vs x \(x.shape)")
    let plan = WinogradPlan(inChannels: cin, outChannels: cout, height: x.h, width: x.w)
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
    winogradTiles(y, x, transformedWeight: u, bias: bias, accumulate: accumulate, plan: plan, pool: pool, scratch: scratch)
}

/// dx (N, Cin, H, W) += the input gradient of a 3x3 same convolution for dy (N, Cout, H, W).
public func winogradConv3x3InputGradient(dx: Tensor, dy: Tensor, weight: Tensor, pool: WorkerPool, scratch: Scratch) {
    let cin = dx.c, cout = dy.c
    precondition(weight.shape == Shape(cout, cin, 3, 3), "winograd: weight \(weight.shape) for \(cin) -> \(cout)")
    // A forward convolution from Cout to Cin channels with the flipped, transposed kernel.
    let plan = WinogradPlan(inChannels: cout, outChannels: cin, height: dy.h, width: dy.w)
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
    winogradTiles(dx, dy, transformedWeight: u, bias: nil, accumulate: true, plan: plan, pool: pool, scratch: scratch)
}

/// dweight (Cout, Cin, 3, 3) += dL/dweight and dbias += sum of dy, for y = conv3x3(x).
/// Each thread sums its chunks into a private dU; the partials are added in thread order.
public func winogradConv3x3WeightGradient(dweight: Tensor, dbias: Tensor?, dy: Tensor, x: Tensor,
                                          pool: WorkerPool, scratch: Scratch) {
    let cin = x.c, cout = dy.c
    precondition(dweight.shape == Shape(cout, cin, 3, 3), "winograd: dweight \(dweight.shape) for \(cin) -> \(cout)")
    let plan = WinogradPlan(inChannels: cin, outChannels: cout, height: x.h, width: x.w)
    scratch.require(plan.scratchFloatsPerThread, "winograd weight gradient")
    let tilesPerChunk = plan.maxTilesPerChunk
    let partialOffset = 16 * (cin + cout) * tilesPerChunk
    let work = x.n * plan.chunksPerImage
    let parts = min(pool.threadCount, work)
    pool.run { thread in
        guard thread < parts else { return }
        let base = scratch.buffer(thread)
        let v = base, dm = base + 16 * cin * tilesPerChunk, du = base + partialOffset
        du.update(repeating: 0, count: 16 * cin * cout)
        for item in WorkerPool.split(work, parts: parts, index: thread) {
            let n = item / plan.chunksPerImage, chunk = item % plan.chunksPerImage
            let rowStart = chunk * plan.tileRowsPerChunk
            let rows = min(plan.tileRowsPerChunk, plan.tilesHigh - rowStart)
            let tiles = rows * plan.tilesWide
            transformInput(x.sample(n), channels: cin, plan: plan, rowStart: rowStart, rows: rows, into: v, tiles: tiles)
            transformOutputGradient(dy.sample(n), channels: cout, plan: plan, rowStart: rowStart, rows: rows, into: dm, tiles: tiles)
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
                           bias: Tensor?, accumulate: Bool, plan: WinogradPlan, pool: WorkerPool, scratch: Scratch) {
    let cin = plan.inChannels, cout = plan.outChannels
    scratch.require(plan.scratchFloatsPerThread, "winograd tiles")
    let tilesPerChunk = plan.maxTilesPerChunk
    let work = x.n * plan.chunksPerImage
    pool.parallelFor(work) { range, thread in
        let v = scratch.buffer(thread), m = v + 16 * cin * tilesPerChunk
        for item in range {
            let n = item / plan.chunksPerImage, chunk = item % plan.chunksPerImage
            let rowStart = chunk * plan.tileRowsPerChunk
            let rows = min(plan.tileRowsPerChunk, plan.tilesHigh - rowStart)
            let tiles = rows * plan.tilesWide
            transformInput(x.sample(n), channels: cin, plan: plan, rowStart: rowStart, rows: rows, into: v, tiles: tiles)
            for xi in 0..<16 {
                // M[xi] (Cout x T) = U[xi] (Cout x Cin) * V[xi] (Cin x T)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(cout), Int32(tiles), Int32(cin), 1,
                            u + xi * cout * cin, Int32(cin), v + xi * cin * tiles, Int32(tiles),
                            0, m + xi * cout * tiles, Int32(tiles))
            }
            transformOutput(m, tiles: tiles, into: y.sample(n), channels: cout, plan: plan, rowStart: rowStart,
                            rows: rows, bias: bias, accumulate: accumulate)
        }
    }
}

/// V[xi][c][t] = (B^T d B)[xi] for the 4x4 input patch of each tile, zero outside the image.
@inline(__always)
private func transformInput(_ x: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                            rowStart: Int, rows: Int, into v: UnsafeMutablePointer<Float>, tiles: Int) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide
    let stride = channels * tiles
    for c in 0..<channels {
        let src = x + c * h * w
        var t = 0
        for ty in rowStart..<(rowStart + rows) {
            let y0 = 2 * ty - 1
            for tx in 0..<tw {
                let x0 = 2 * tx - 1
                var d = (Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0),
                         Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0))
                withUnsafeMutableBytes(of: &d) { raw in
                    let p = raw.baseAddress!.assumingMemoryBound(to: Float.self)
                    if y0 >= 0 && x0 >= 0 && y0 + 4 <= h && x0 + 4 <= w {
                        for i in 0..<4 {
                            let row = src + (y0 + i) * w + x0
                            p[4 * i] = row[0]; p[4 * i + 1] = row[1]; p[4 * i + 2] = row[2]; p[4 * i + 3] = row[3]
                        }
                    } else {
                        for i in 0..<4 where y0 + i >= 0 && y0 + i < h {
                            let row = src + (y0 + i) * w
                            for j in 0..<4 where x0 + j >= 0 && x0 + j < w { p[4 * i + j] = row[x0 + j] }
                        }
                    }
                    // B^T d: rows
                    var r = (Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0),
                             Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0))
                    withUnsafeMutableBytes(of: &r) { rraw in
                        let q = rraw.baseAddress!.assumingMemoryBound(to: Float.self)
                        for j in 0..<4 {
                            let d0 = p[j], d1 = p[4 + j], d2 = p[8 + j], d3 = p[12 + j]
                            q[j] = d0 - d2
                            q[4 + j] = d1 + d2
                            q[8 + j] = d2 - d1
                            q[12 + j] = d1 - d3
                        }
                        // (B^T d) B: columns
                        let out = v + c * tiles + t
                        for i in 0..<4 {
                            let a0 = q[4 * i], a1 = q[4 * i + 1], a2 = q[4 * i + 2], a3 = q[4 * i + 3]
                            out[(4 * i) * stride] = a0 - a2
                            out[(4 * i + 1) * stride] = a1 + a2
                            out[(4 * i + 2) * stride] = a2 - a1
                            out[(4 * i + 3) * stride] = a1 - a3
                        }
                    }
                }
                t += 1
            }
        }
    }
}

/// y tile (2x2) (+)= A^T m A (+ bias), clipped at the image's edge.
@inline(__always)
private func transformOutput(_ m: UnsafeMutablePointer<Float>, tiles: Int, into y: UnsafeMutablePointer<Float>,
                             channels: Int, plan: WinogradPlan, rowStart: Int, rows: Int,
                             bias: Tensor?, accumulate: Bool) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide
    let stride = channels * tiles
    for o in 0..<channels {
        let dst = y + o * h * w
        let b: Float = bias.map { $0[o] } ?? 0
        var t = 0
        for ty in rowStart..<(rowStart + rows) {
            let oy = 2 * ty
            for tx in 0..<tw {
                let ox = 2 * tx
                let src = m + o * tiles + t
                // A^T m: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (rows of 4)
                var s0 = (Float(0), Float(0), Float(0), Float(0))
                var s1 = (Float(0), Float(0), Float(0), Float(0))
                @inline(__always) func col(_ j: Int) -> (Float, Float) {
                    let m0 = src[j * stride], m1 = src[(4 + j) * stride], m2 = src[(8 + j) * stride], m3 = src[(12 + j) * stride]
                    return (m0 + m1 + m2, m1 - m2 - m3)
                }
                (s0.0, s1.0) = col(0); (s0.1, s1.1) = col(1); (s0.2, s1.2) = col(2); (s0.3, s1.3) = col(3)
                let y00 = s0.0 + s0.1 + s0.2 + b, y01 = s0.1 - s0.2 - s0.3 + b
                let y10 = s1.0 + s1.1 + s1.2 + b, y11 = s1.1 - s1.2 - s1.3 + b
                let p = dst + oy * w + ox
                let fullWidth = ox + 1 < w, fullHeight = oy + 1 < h
                if accumulate {
                    p[0] += y00
                    if fullWidth { p[1] += y01 }
                    if fullHeight { p[w] += y10; if fullWidth { p[w + 1] += y11 } }
                } else {
                    p[0] = y00
                    if fullWidth { p[1] = y01 }
                    if fullHeight { p[w] = y10; if fullWidth { p[w + 1] = y11 } }
                }
                t += 1
            }
        }
    }
}

/// dM[xi][o][t] = (A dy A^T)[xi] for the 2x2 output-gradient tile (zero outside the image).
@inline(__always)
private func transformOutputGradient(_ dy: UnsafeMutablePointer<Float>, channels: Int, plan: WinogradPlan,
                                     rowStart: Int, rows: Int, into dm: UnsafeMutablePointer<Float>, tiles: Int) {
    let h = plan.height, w = plan.width, tw = plan.tilesWide
    let stride = channels * tiles
    for o in 0..<channels {
        let src = dy + o * h * w
        var t = 0
        for ty in rowStart..<(rowStart + rows) {
            let oy = 2 * ty
            for tx in 0..<tw {
                let ox = 2 * tx
                let p = src + oy * w + ox
                let fullWidth = ox + 1 < w, fullHeight = oy + 1 < h
                let g00 = p[0], g01: Float = fullWidth ? p[1] : 0
                let g10: Float = fullHeight ? p[w] : 0, g11: Float = fullHeight && fullWidth ? p[w + 1] : 0
                // A g: rows (g0, g0 + g1, g0 - g1, -g1) of 2-vectors; then each row (a, b) -> (a, a+b, a-b, -b)
                let rowsA = ((g00, g01), (g00 + g10, g01 + g11), (g00 - g10, g01 - g11), (-g10, -g11))
                let out = dm + o * tiles + t
                @inline(__always) func put(_ i: Int, _ r: (Float, Float)) {
                    out[(4 * i) * stride] = r.0
                    out[(4 * i + 1) * stride] = r.0 + r.1
                    out[(4 * i + 2) * stride] = r.0 - r.1
                    out[(4 * i + 3) * stride] = -r.1
                }
                put(0, rowsA.0); put(1, rowsA.1); put(2, rowsA.2); put(3, rowsA.3)
                t += 1
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
