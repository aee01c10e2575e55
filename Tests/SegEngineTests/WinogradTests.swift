import XCTest
@testable import SegEngine
import SegEngineTestSupport

/// Winograd F(2x2, 3x3) and F(4x4, 3x3) against the naive convolution, in all three passes, on odd shapes.
final class WinogradTests: XCTestCase {
    private func random(_ shape: Shape, _ seed: UInt64) -> OwnedTensor {
        let t = OwnedTensor(shape)
        var rng = SplitMix64(seed: seed)
        for i in 0..<t.tensor.count { t.tensor[i] = rng.nextFloat(in: -1...1) }
        return t
    }

    private typealias S = OpsTestSupport
    private typealias R = ConvolutionReference

    private let shapes: [(n: Int, cin: Int, cout: Int, h: Int, w: Int)] = [
        (1, 1, 1, 1, 1), (2, 3, 4, 5, 7), (1, 5, 2, 4, 4), (3, 2, 3, 9, 4), (2, 7, 5, 6, 11), (1, 16, 8, 13, 10),
        (2, 4, 3, 8, 8), (1, 3, 5, 3, 2), (2, 6, 4, 17, 15),
    ]

    // Tolerances: every result is compared with the exact float64 convolution, element by element,
    // within SegEngineTestSupport's rounding bound gamma(n) x the magnitude of Winograd's own path
    // (|A^T| (|G||g||G^T| . |B^T||d||B|) |A| summed over channels), so F(4x4)'s larger transform
    // entries (up to 8 and 1/24) raise its bound by what they raise its rounding. docs/ENGINE.md lists
    // the bounds of these shapes and the worst error measured under each OpenBLAS core type.

    func testForwardMatchesNaive() {
        for tile in [2, 4] {
        for threads in [1, 2, 3] {
            let pool = WorkerPool(threads: threads)
            for (k, s) in shapes.enumerated() {
                let x = random(Shape(s.n, s.cin, s.h, s.w), UInt64(k))
                let w = random(Shape(s.cout, s.cin, 3, 3), UInt64(100 + k))
                let b = random(.vector(s.cout), UInt64(200 + k))
                let plan = WinogradPlan(inChannels: s.cin, outChannels: s.cout, height: s.h, width: s.w,
                                        batch: s.n, threads: threads, tile: tile, policy: .standard)
                let scratch = Scratch(threads: threads)
                scratch.reserve(floatsPerThread: plan.scratchFloatsPerThread)
                scratch.reserve(sharedFloats: plan.sharedFloats)
                let fast = OwnedTensor(Shape(s.n, s.cout, s.h, s.w)), slow = OwnedTensor(fast.shape)
                fast.tensor.fill(.nan)  // forward must overwrite
                winogradConv3x3Forward(fast.tensor, x.tensor, weight: w.tensor, bias: b.tensor, tile: tile,
                                       pool: pool, scratch: scratch)
                conv2dForwardNaive(slow.tensor, x.tensor, weight: w.tensor, bias: b.tensor)
                let what = "F(\(tile)) forward \(s) threads \(threads)"
                S.assertWithinRounding(fast.tensor, R.winogradForward(x: x.tensor, weight: w.tensor, bias: b.tensor,
                                                                      tile: tile), what)
                S.assertWithinRounding(slow.tensor, R.forward(x: x.tensor, weight: w.tensor, bias: b.tensor),
                                       "naive " + what)
            }
        }
        }
    }

    func testGradientsMatchNaiveAndAccumulate() {
        for tile in [2, 4] {
        for threads in [1, 2, 3] {
            let pool = WorkerPool(threads: threads)
            for (k, s) in shapes.enumerated() {
                let x = random(Shape(s.n, s.cin, s.h, s.w), UInt64(k))
                let w = random(Shape(s.cout, s.cin, 3, 3), UInt64(100 + k))
                let dy = random(Shape(s.n, s.cout, s.h, s.w), UInt64(300 + k))
                let scratch = Scratch(threads: threads)
                for plan in [WinogradPlan(inChannels: s.cin, outChannels: s.cout, height: s.h, width: s.w,
                                          batch: s.n, threads: threads, tile: tile, policy: .standard),
                             WinogradPlan(inChannels: s.cout, outChannels: s.cin, height: s.h, width: s.w,
                                          batch: s.n, threads: threads, tile: tile, policy: .standard)] {
                    scratch.reserve(floatsPerThread: plan.scratchFloatsPerThread)
                    scratch.reserve(sharedFloats: plan.sharedFloats)
                }
                // Start from non-zero gradients: backward adds.
                let dx = random(x.shape, 7), dw = random(w.shape, 8), db = random(.vector(s.cout), 9)
                let rdx = OwnedTensor(x.shape), rdw = OwnedTensor(w.shape), rdb = OwnedTensor(db.shape)
                rdx.tensor.copy(from: dx.tensor); rdw.tensor.copy(from: dw.tensor); rdb.tensor.copy(from: db.tensor)
                let exactDx = R.winogradInputGradient(dy: dy.tensor, weight: w.tensor, tile: tile, initial: dx.tensor)
                let exactDw = R.winogradWeightGradient(dy: dy.tensor, x: x.tensor, tile: tile, initial: dw.tensor)
                let exactDb = R.biasGradient(dy: dy.tensor, initial: db.tensor)
                let naiveDx = R.inputGradient(dy: dy.tensor, weight: w.tensor, initial: dx.tensor)
                let naiveDw = R.weightGradient(dy: dy.tensor, x: x.tensor, kernel: 3, initial: dw.tensor)
                winogradConv3x3InputGradient(dx: dx.tensor, dy: dy.tensor, weight: w.tensor, tile: tile,
                                             pool: pool, scratch: scratch)
                winogradConv3x3WeightGradient(dweight: dw.tensor, dbias: db.tensor, dy: dy.tensor, x: x.tensor,
                                              tile: tile, pool: pool, scratch: scratch)
                conv2dBackwardNaive(dx: rdx.tensor, dweight: rdw.tensor, dbias: rdb.tensor, dy: dy.tensor,
                                    x: x.tensor, weight: w.tensor)
                let what = "F(\(tile)) \(s) threads \(threads)"
                S.assertWithinRounding(dx.tensor, exactDx, "dx " + what)
                S.assertWithinRounding(dw.tensor, exactDw, "dw " + what)
                S.assertWithinRounding(db.tensor, exactDb, "db " + what)
                S.assertWithinRounding(rdx.tensor, naiveDx, "naive dx " + what)
                S.assertWithinRounding(rdw.tensor, naiveDw, "naive dw " + what)
                S.assertWithinRounding(rdb.tensor, exactDb, "naive db " + what)
            }
        }
        }
    }

    /// conv2dForward / conv2dBackward in every mode, including auto's choices (GEMM for 3 input
    /// channels, F(2x2) on planes under 24 x 24, F(4x4) from 24 x 24, thin layers too), equal the
    /// naive kernels; bias added once.
    func testDispatchInEveryModeMatchesNaive() {
        let pool = WorkerPool(threads: 2)
        func chosenTile(_ policy: ConvPolicy, _ cin: Int, _ cout: Int, _ h: Int, _ w: Int) -> Int {
            policy.winogradTile(kernel: 3, dilation: 1, inChannels: cin, outChannels: cout, height: h, width: w)
        }
        func autoTile(_ cin: Int, _ cout: Int, _ h: Int, _ w: Int) -> Int { chosenTile(.standard, cin, cout, h, w) }
        XCTAssertEqual(autoTile(16, 16, 9, 7), 2)
        XCTAssertEqual(autoTile(160, 144, 9, 7), 2)
        XCTAssertEqual(autoTile(3, 16, 9, 7), 0)
        XCTAssertEqual(autoTile(48, 56, 33, 35), 4)
        XCTAssertEqual(autoTile(48, 56, 23, 64), 2, "a side under 24")
        XCTAssertEqual(autoTile(40, 40, 24, 24), 4, "thin layers too, from 24 x 24")
        XCTAssertEqual(autoTile(8, 8, 64, 64), 4, "the thinnest Winograd layer")
        XCTAssertEqual(ConvPolicy.standard.winogradTile(kernel: 3, dilation: 2, inChannels: 16, outChannels: 16,
                                                        height: 64, width: 64), 0, "dilated: GEMM")
        for (cin, cout, h, width) in [(16, 16, 9, 7), (3, 16, 9, 7), (160, 144, 9, 7), (48, 56, 33, 35)] {
            let shape = Shape(2, cin, h, width)
            let x = random(shape, 1), w = random(Shape(cout, cin, 3, 3), 2), b = random(.vector(cout), 3)
            let dy = random(Shape(2, cout, h, width), 4)
            for mode in ConvAlgorithm.allCases {
                let policy = ConvPolicy(algorithm: mode)
                // The bound of the path the dispatcher takes (the exact values are the same for all).
                let tile = chosenTile(policy, cin, cout, h, width)
                let ry = tile > 0 ? R.winogradForward(x: x.tensor, weight: w.tensor, bias: b.tensor, tile: tile)
                    : R.forward(x: x.tensor, weight: w.tensor, bias: b.tensor)
                let rdx = tile > 0 ? R.winogradInputGradient(dy: dy.tensor, weight: w.tensor, tile: tile)
                    : R.inputGradient(dy: dy.tensor, weight: w.tensor)
                let rdw = tile > 0 ? R.winogradWeightGradient(dy: dy.tensor, x: x.tensor, tile: tile)
                    : R.weightGradient(dy: dy.tensor, x: x.tensor, kernel: 3)
                let rdb = R.biasGradient(dy: dy.tensor)
                let scratch = Scratch(threads: 2)
                scratch.reserve(floatsPerThread: conv2dScratchFloats(batch: 2, inChannels: cin, outChannels: cout,
                                                                     height: h, width: width, kernel: 3, policy: policy,
                                                                     threads: 2))
                scratch.reserve(sharedFloats: conv2dSharedScratchFloats(inChannels: cin, outChannels: cout, kernel: 3))
                let y = OwnedTensor(dy.shape), dx = OwnedTensor(shape), dw = OwnedTensor(w.shape), db = OwnedTensor(b.shape)
                conv2dForward(y.tensor, x.tensor, weight: w.tensor, bias: b.tensor, policy: policy, pool: pool, scratch: scratch)
                conv2dBackward(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor, dy: dy.tensor, x: x.tensor,
                               weight: w.tensor, policy: policy, pool: pool, scratch: scratch)
                let what = "\(mode) (tile \(tile)) \(cin)->\(cout)"
                S.assertWithinRounding(y.tensor, ry, "y " + what)
                S.assertWithinRounding(dx.tensor, rdx, "dx " + what)
                S.assertWithinRounding(dw.tensor, rdw, "dw " + what)
                S.assertWithinRounding(db.tensor, rdb, "db " + what)
                // overwriteInputGradient: dx is written, whatever it held (NaN here).
                let fresh = OwnedTensor(shape)
                fresh.tensor.fill(.nan)
                conv2dBackward(dx: fresh.tensor, dweight: nil, dbias: nil, dy: dy.tensor, x: x.tensor, weight: w.tensor,
                               overwriteInputGradient: true, policy: policy, pool: pool, scratch: scratch)
                S.assertWithinRounding(fresh.tensor, rdx, "overwritten dx " + what)
            }
        }
    }

    /// The standard policy picks, for each 3x3 layer of the default UNet at 128 x 128, the algorithm
    /// docs/PERFORMANCE.md's per-layer table ("The F(4x4) rule") marks in bold as what `auto` runs
    /// (GEMM under 8 channels, F(4x4) on planes from 24 x 24, F(2x2) on smaller ones).
    func testStandardPolicyPicksWhatThePerformanceTableShows() {
        let table: [(cin: Int, cout: Int, side: Int, tile: Int)] = [
            (3, 32, 128, 0), (32, 32, 128, 4), (32, 64, 64, 4), (64, 64, 64, 4), (64, 128, 32, 4), (128, 128, 32, 4),
            (128, 256, 16, 2), (256, 256, 16, 2), (512, 256, 16, 2), (384, 128, 32, 4), (192, 64, 64, 4), (96, 32, 128, 4),
        ]
        for row in table {
            XCTAssertEqual(ConvPolicy.standard.winogradTile(kernel: 3, dilation: 1, inChannels: row.cin, outChannels: row.cout,
                                                            height: row.side, width: row.side),
                           row.tile, "\(row.cin) -> \(row.cout) @\(row.side)")
        }
        XCTAssertEqual(ConvPolicy.standard, ConvPolicy(), "the standard policy is auto with the default thresholds")
        XCTAssertEqual(ConvPolicy.standard.algorithm, .auto)
        XCTAssertEqual(ConvPolicy.standard.winogradTargetChunkFloats, 1 << 18)
        XCTAssertEqual(ConvPolicy.standard.winogradMinimumTilesPerChunk, 64)
    }

    /// relu: true gives max(conv + bias, 0) on every path: GEMM bands, GEMM groups of small images,
    /// Winograd.
    func testFusedReLUMatchesNaiveOnEveryPath() {
        let pool = WorkerPool(threads: 2)
        for (n, cin, cout, h, w) in [(2, 16, 12, 37, 30), (6, 16, 12, 4, 5), (3, 9, 8, 7, 9)] {
            let x = random(Shape(n, cin, h, w), 1), wt = random(Shape(cout, cin, 3, 3), 2), b = random(.vector(cout), 3)
            // |max(a, 0) - max(b, 0)| <= |a - b|: the convolution's bound holds after the ReLU.
            func clipped(_ r: RoundingReference) -> RoundingReference {
                var r = r
                r.exact = r.exact.map { max($0, 0) }
                return r
            }
            let direct = clipped(R.forward(x: x.tensor, weight: wt.tensor, bias: b.tensor))
            XCTAssertTrue(direct.exact.contains(0) && direct.exact.contains { $0 > 0 })
            for (mode, tile) in [(ConvAlgorithm.gemm, 0), (.winograd, 2), (.winograd4, 4)] {
                let policy = ConvPolicy(algorithm: mode)
                let reference = tile == 0 ? direct
                    : clipped(R.winogradForward(x: x.tensor, weight: wt.tensor, bias: b.tensor, tile: tile))
                let scratch = Scratch(threads: 2)
                scratch.reserve(floatsPerThread: conv2dScratchFloats(batch: n, inChannels: cin, outChannels: cout,
                                                                     height: h, width: w, kernel: 3, threads: 2))
                scratch.reserve(sharedFloats: conv2dSharedScratchFloats(inChannels: cin, outChannels: cout, kernel: 3))
                let y = OwnedTensor(Shape(n, cout, h, w))
                y.tensor.fill(.nan)
                conv2dForward(y.tensor, x.tensor, weight: wt.tensor, bias: b.tensor, relu: true, policy: policy,
                              pool: pool, scratch: scratch)
                S.assertWithinRounding(y.tensor, reference, "relu \(mode) \(n)x\(cin)x\(h)x\(w)")
            }
        }
    }

    func testChunkingCoversEveryTileOnceInBothModes() {
        for (batch, h, w, threads) in [(8, 16, 16, 2), (8, 128, 128, 2), (3, 9, 4, 2), (5, 7, 7, 3), (1, 40, 41, 1)] {
            let plan = WinogradPlan(inChannels: 32, outChannels: 32, height: h, width: w, batch: batch, threads: threads,
                                    policy: .standard)
            var seen = [Int](repeating: 0, count: batch * plan.tilesHigh)
            for i in 0..<plan.chunks {
                let (n0, n1, rowStart, rows) = plan.chunk(i)
                XCTAssertLessThanOrEqual((n1 - n0) * rows * plan.tilesWide, plan.maxTilesPerChunk)
                for n in n0..<n1 { for r in rowStart..<(rowStart + rows) { seen[n * plan.tilesHigh + r] += 1 } }
            }
            XCTAssertEqual(seen, [Int](repeating: 1, count: seen.count), "\(batch)x\(h)x\(w)")
            XCTAssertGreaterThanOrEqual(plan.chunks, min(threads, batch), "every thread gets work")
        }
        XCTAssertGreaterThan(WinogradPlan(inChannels: 32, outChannels: 32, height: 16, width: 16, batch: 8, threads: 2,
                                          policy: .standard).imagesPerChunk, 1, "small planes group whole images")
        XCTAssertGreaterThan(WinogradPlan(inChannels: 32, outChannels: 32, height: 128, width: 128, batch: 8, threads: 2,
                                          policy: .standard).chunksPerImage, 1, "large planes are cut into bands")
    }

    /// Large planes split into several chunks per image (a chunk starting mid-plane reads the rows
    /// above it), for both tiles and all three passes.
    func testManyChunksPerImage() {
        let pool = WorkerPool(threads: 2)
        let x = random(Shape(1, 64, 66, 67), 1), w = random(Shape(64, 64, 3, 3), 2), dy = random(Shape(1, 64, 66, 67), 3)
        for tile in [2, 4] {
            let plan = WinogradPlan(inChannels: 64, outChannels: 64, height: 66, width: 67, batch: 1, threads: 2, tile: tile,
                                    policy: .standard)
            XCTAssertGreaterThan(plan.chunksPerImage, 1, "F(\(tile))")
            let scratch = Scratch(threads: 2)
            scratch.reserve(floatsPerThread: plan.scratchFloatsPerThread)
            scratch.reserve(sharedFloats: plan.sharedFloats)
            let fast = OwnedTensor(dy.shape), dx = OwnedTensor(x.shape), dw = OwnedTensor(w.shape)
            winogradConv3x3Forward(fast.tensor, x.tensor, weight: w.tensor, bias: nil, tile: tile, pool: pool, scratch: scratch)
            S.assertWithinRounding(fast.tensor, R.winogradForward(x: x.tensor, weight: w.tensor, bias: nil, tile: tile),
                                   "F(\(tile)) forward, many chunks")
            dx.tensor.fill(.nan)  // written, not added into
            winogradConv3x3InputGradient(dx: dx.tensor, dy: dy.tensor, weight: w.tensor, accumulate: false, tile: tile,
                                         pool: pool, scratch: scratch)
            S.assertWithinRounding(dx.tensor, R.winogradInputGradient(dy: dy.tensor, weight: w.tensor, tile: tile),
                                   "F(\(tile)) dx, many chunks")
            winogradConv3x3WeightGradient(dweight: dw.tensor, dbias: nil, dy: dy.tensor, x: x.tensor, tile: tile,
                                          pool: pool, scratch: scratch)
            // Sums over 66 x 67 pixels: n grows with the tiles, the bound with the sum's magnitude.
            S.assertWithinRounding(dw.tensor, R.winogradWeightGradient(dy: dy.tensor, x: x.tensor, tile: tile),
                                   "F(\(tile)) dw, many chunks")
        }
    }

    /// The chunk sizes are the policy's, not fixed: a smaller target cuts each plane into more
    /// chunks with less scratch, and conv2d run with that policy (its scratch asked with it too)
    /// still matches the reference in all three passes.
    func testChunkSizesComeFromThePolicy() {
        var small = ConvPolicy(algorithm: .winograd)
        small.winogradTargetChunkFloats = 1024
        small.winogradMinimumTilesPerChunk = 4
        let (n, c, h, w) = (2, 16, 40, 41)
        let standardPlan = WinogradPlan(inChannels: c, outChannels: c, height: h, width: w, batch: n, threads: 2,
                                        tile: 2, policy: .standard)
        let smallPlan = WinogradPlan(inChannels: c, outChannels: c, height: h, width: w, batch: n, threads: 2,
                                     tile: 2, policy: small)
        XCTAssertEqual(standardPlan.chunks, 2, "one image per chunk under the standard policy")
        XCTAssertEqual(smallPlan.chunks, 2 * smallPlan.tilesHigh, "one tile row per chunk under the small one")
        XCTAssertLessThan(smallPlan.scratchFloatsPerThread, standardPlan.scratchFloatsPerThread)

        let pool = WorkerPool(threads: 2), scratch = Scratch(threads: 2)
        scratch.reserve(floatsPerThread: conv2dScratchFloats(batch: n, inChannels: c, outChannels: c, height: h, width: w,
                                                             kernel: 3, policy: small, threads: 2))
        scratch.reserve(sharedFloats: conv2dSharedScratchFloats(inChannels: c, outChannels: c, kernel: 3))
        let x = random(Shape(n, c, h, w), 1), wt = random(Shape(c, c, 3, 3), 2), b = random(.vector(c), 3)
        let dy = random(Shape(n, c, h, w), 4)
        let y = OwnedTensor(dy.shape), dx = OwnedTensor(x.shape), dw = OwnedTensor(wt.shape), db = OwnedTensor(b.shape)
        conv2dForward(y.tensor, x.tensor, weight: wt.tensor, bias: b.tensor, policy: small, pool: pool, scratch: scratch)
        conv2dBackward(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor, dy: dy.tensor, x: x.tensor, weight: wt.tensor,
                       policy: small, pool: pool, scratch: scratch)
        S.assertWithinRounding(y.tensor, R.winogradForward(x: x.tensor, weight: wt.tensor, bias: b.tensor, tile: 2),
                               "forward, small chunks")
        S.assertWithinRounding(dx.tensor, R.winogradInputGradient(dy: dy.tensor, weight: wt.tensor, tile: 2),
                               "dx, small chunks")
        S.assertWithinRounding(dw.tensor, R.winogradWeightGradient(dy: dy.tensor, x: x.tensor, tile: 2),
                               "dw, small chunks")
    }

    /// `perImageWork` (`train --deterministic`): each image is its own chunk (or bands of one), so an
    /// image's output and input gradient are the same bits in a batch of 1, 3 and 5, for 1 and 2
    /// threads, under both tiles. Without it, 5 small images are grouped into chunks by the batch
    /// size and the thread count (checked: the plans differ), so the GEMMs have other widths.
    func testPerImageWorkGivesAnImageTheSameBitsInAnyBatch() {
        let (cin, cout, h, w) = (24, 16, 10, 12)
        let x = random(Shape(5, cin, h, w), 51), weight = random(Shape(cout, cin, 3, 3), 52), dy = random(Shape(5, cout, h, w), 53)
        for tile in [2, 4] {
            var policy = ConvPolicy(algorithm: tile == 2 ? .winograd : .winograd4, perImageWork: true)
            XCTAssertEqual(WinogradPlan(inChannels: cin, outChannels: cout, height: h, width: w, batch: 5, threads: 2, tile: tile,
                                        policy: policy).imagesPerChunk, 1)
            policy.perImageWork = false
            XCTAssertGreaterThan(WinogradPlan(inChannels: cin, outChannels: cout, height: h, width: w, batch: 5, threads: 1,
                                              tile: tile, policy: policy).imagesPerChunk, 1, "grouped without it")
            policy.perImageWork = true
            OpsTestSupport.assertSameBitsInAnyBatch("F(\(tile)x\(tile))") { images, threads in
                let pool = WorkerPool(threads: threads), scratch = Scratch(threads: threads)
                scratch.reserve(floatsPerThread: conv2dScratchFloats(batch: images, inChannels: cin, outChannels: cout,
                                                                     height: h, width: w, kernel: 3, policy: policy,
                                                                     threads: threads))
                scratch.reserve(sharedFloats: conv2dSharedScratchFloats(inChannels: cin, outChannels: cout, kernel: 3))
                let xs = x.firstImages(images), dys = dy.firstImages(images)
                let y = OwnedTensor(dys.shape), dx = OwnedTensor(xs.shape)
                winogradConv3x3Forward(y.tensor, xs.tensor, weight: weight.tensor, bias: nil, tile: tile, policy: policy,
                                       pool: pool, scratch: scratch)
                winogradConv3x3InputGradient(dx: dx.tensor, dy: dys.tensor, weight: weight.tensor, tile: tile, policy: policy,
                                             pool: pool, scratch: scratch)
                return [("forward", y.tensor.toArray()), ("input gradient", dx.tensor.toArray())]
            }
        }
    }
}
