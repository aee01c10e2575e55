// Tests of the general strided / padded / dilated convolution (StridedConv.swift, issue #16): output
// sizes as PyTorch, a hand-computed case that pins cross-correlation, the work plan's coverage, the
// fast kernel and the naive twin both within the float32 rounding bound of the exact float64 result
// (RoundingModel: gamma(n) times the magnitude of the terms, n from the path each kernel takes),
// finite-difference checks of both, and bitwise equality for 1, 2 and 3 threads.

import XCTest
@testable import SegEngine
import SegEngineTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Exact (float64) strided convolution passes and the magnitudes their rounding scales with.
enum StridedConvReference {
    /// Calls body(n, co, oi, oj, ci, a, b, i, j) for every tap that lands inside x.
    static func forEachTap(_ x: Shape, _ cout: Int, _ g: ConvGeometry,
                           _ body: (Int, Int, Int, Int, Int, Int, Int, Int, Int) -> Void) {
        let (outH, outW) = (g.output(x.h), g.output(x.w))
        for n in 0..<x.n { for co in 0..<cout { for oi in 0..<outH { for oj in 0..<outW {
            for ci in 0..<x.c { for a in 0..<g.kernel { for b in 0..<g.kernel {
                let i = oi * g.stride - g.padding + a * g.dilation, j = oj * g.stride - g.padding + b * g.dilation
                guard i >= 0, i < x.h, j >= 0, j < x.w else { continue }
                body(n, co, oi, oj, ci, a, b, i, j)
            } } }
        } } } }
    }

    /// y = conv(x, weight) + bias; `roundings` is the chain length of the kernel being checked.
    static func forward(x: Tensor, weight: Tensor, bias: Tensor?, geometry g: ConvGeometry, roundings: Int)
        -> RoundingReference {
        let cout = weight.n, (outH, outW) = (g.output(x.h), g.output(x.w))
        var exact = [Double](repeating: 0, count: x.n * cout * outH * outW), magnitude = exact
        if let bias {
            for idx in 0..<exact.count {
                let co = (idx / (outH * outW)) % cout
                exact[idx] = Double(bias[co]); magnitude[idx] = abs(Double(bias[co]))
            }
        }
        forEachTap(x.shape, cout, g) { n, co, oi, oj, ci, a, b, i, j in
            let term = Double(weight[co, ci, a, b]) * Double(x[n, ci, i, j])
            let idx = ((n * cout + co) * outH + oi) * outW + oj
            exact[idx] += term; magnitude[idx] += abs(term)
        }
        return RoundingReference(exact: exact, magnitude: magnitude, roundings: roundings)
    }

    /// initial + dL/dx for dy.
    static func inputGradient(dy: Tensor, x: Tensor, weight: Tensor, geometry g: ConvGeometry, initial: Tensor,
                              roundings: Int) -> RoundingReference {
        var exact = initial.toArray().map(Double.init), magnitude = exact.map(abs)
        forEachTap(x.shape, weight.n, g) { n, co, oi, oj, ci, a, b, i, j in
            let term = Double(dy[n, co, oi, oj]) * Double(weight[co, ci, a, b])
            let idx = ((n * x.c + ci) * x.h + i) * x.w + j
            exact[idx] += term; magnitude[idx] += abs(term)
        }
        return RoundingReference(exact: exact, magnitude: magnitude, roundings: roundings)
    }

    /// initial + dL/dweight for dy.
    static func weightGradient(dy: Tensor, x: Tensor, weight: Tensor, geometry g: ConvGeometry, initial: Tensor,
                               roundings: Int) -> RoundingReference {
        var exact = initial.toArray().map(Double.init), magnitude = exact.map(abs)
        let k = g.kernel
        forEachTap(x.shape, weight.n, g) { n, co, oi, oj, ci, a, b, i, j in
            let term = Double(dy[n, co, oi, oj]) * Double(x[n, ci, i, j])
            let idx = ((co * x.c + ci) * k + a) * k + b
            exact[idx] += term; magnitude[idx] += abs(term)
        }
        return RoundingReference(exact: exact, magnitude: magnitude, roundings: roundings)
    }
}

final class StridedConvTests: XCTestCase {
    private typealias S = OpsTestSupport
    private typealias R = StridedConvReference

    /// The geometries the encoders use: ResNet's 7x7/s2 stem, 3x3 s1 and s2, the 1x1 shortcut (s1
    /// and s2), DeepLabV3+'s dilated 3x3 (d 2, 4), and a dilated stride-2 and an unpadded case.
    private let geometries = [
        ConvGeometry(kernel: 1), ConvGeometry(kernel: 1, stride: 2),
        ConvGeometry(kernel: 3, stride: 1, padding: 1), ConvGeometry(kernel: 3, stride: 2, padding: 1),
        ConvGeometry(kernel: 7, stride: 2, padding: 3),
        ConvGeometry(kernel: 3, stride: 1, padding: 2, dilation: 2), ConvGeometry(kernel: 3, stride: 1, padding: 4, dilation: 4),
        ConvGeometry(kernel: 3, stride: 2, padding: 2, dilation: 2), ConvGeometry(kernel: 3, stride: 1, padding: 0),
    ]

    private func scratch(threads: Int, batch: Int, cin: Int, cout: Int, h: Int, w: Int, _ g: ConvGeometry) -> Scratch {
        let scratch = Scratch(threads: threads)
        scratch.reserve(floatsPerThread: stridedConvScratchFloats(batch: batch, inChannels: cin, outChannels: cout,
                                                                  height: h, width: w, geometry: g))
        scratch.reserve(sharedFloats: stridedConvSharedScratchFloats(batch: batch, inChannels: cin, outChannels: cout,
                                                                     height: h, width: w, geometry: g))
        return scratch
    }

    // MARK: Shapes

    func testOutputSizesFollowPyTorch() {
        // floor((H + 2p - d(k-1) - 1)/s) + 1, values as torch.nn.Conv2d gives them.
        XCTAssertEqual(ConvGeometry(kernel: 7, stride: 2, padding: 3).output(32), 16)   // ResNet stem
        XCTAssertEqual(ConvGeometry(kernel: 7, stride: 2, padding: 3).output(15), 8)
        XCTAssertEqual(ConvGeometry(kernel: 7, stride: 2, padding: 3).output(224), 112)
        XCTAssertEqual(ConvGeometry(kernel: 3, stride: 2, padding: 1).output(15), 8)
        XCTAssertEqual(ConvGeometry(kernel: 3, stride: 2, padding: 1).output(16), 8)
        XCTAssertEqual(ConvGeometry(kernel: 1, stride: 2).output(15), 8)
        XCTAssertEqual(ConvGeometry(kernel: 1, stride: 2).output(16), 8)
        XCTAssertEqual(ConvGeometry(kernel: 3, stride: 1, padding: 2, dilation: 2).output(15), 15)
        XCTAssertEqual(ConvGeometry(kernel: 3, stride: 1, padding: 4, dilation: 4).output(15), 15)
        XCTAssertEqual(ConvGeometry(kernel: 3, stride: 2, padding: 2, dilation: 2).output(15), 8)
        XCTAssertEqual(ConvGeometry(kernel: 3, stride: 1, padding: 0).output(5), 3)
        XCTAssertEqual(ConvGeometry(kernel: 7, stride: 1, padding: 0).output(5), 0)      // kernel larger than input
        XCTAssertEqual(convOutputSize(1, kernel: 3, stride: 2, padding: 1), 1)

        // A real call: 3x32x32 through the 7x7/s2/p3 stem is 16x16 (and 3x15x15 is 8x8).
        let pool = WorkerPool(threads: 2)
        for (side, out) in [(32, 16), (15, 8)] {
            let g = ConvGeometry(kernel: 7, stride: 2, padding: 3)
            let s = scratch(threads: 2, batch: 1, cin: 3, cout: 4, h: side, w: side, g)
            let x = S.random(Shape(1, 3, side, side), seed: 1), weight = S.random(Shape(4, 3, 7, 7), seed: 2)
            let y = OwnedTensor(Shape(1, 4, out, out))
            stridedConvForward(y.tensor, x.tensor, weight: weight.tensor, bias: nil, geometry: g, pool: pool, scratch: s)
            XCTAssertTrue(y.tensor.toArray().contains { $0 != 0 })
        }
    }

    /// Cross-correlation with PyTorch's indexing: a kernel whose only 1 is at (2, 2) with stride 2 and
    /// padding 1 picks x[2 oi + 1, 2 oj + 1] (a flipped kernel would pick x[2 oi - 1, 2 oj - 1]).
    func testHandComputedStrideTwo() {
        let pool = WorkerPool(threads: 2)
        let g = ConvGeometry(kernel: 3, stride: 2, padding: 1)
        let s = scratch(threads: 2, batch: 1, cin: 1, cout: 1, h: 4, w: 4, g)
        let x = OwnedTensor(Shape(1, 1, 4, 4), (0..<16).map(Float.init))
        let weight = OwnedTensor(Shape(1, 1, 3, 3), [0, 0, 0, 0, 0, 0, 0, 0, 1])
        let bias = OwnedTensor(.vector(1), [0.5])
        let y = OwnedTensor(Shape(1, 1, 2, 2)), yNaive = OwnedTensor(y.shape)
        stridedConvForward(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, geometry: g, pool: pool, scratch: s)
        stridedConvForwardNaive(yNaive.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, geometry: g)
        S.assertClose(y.tensor, [5.5, 7.5, 13.5, 15.5], tolerance: 0)
        S.assertClose(yNaive.tensor, [5.5, 7.5, 13.5, 15.5], tolerance: 0)
        // Backward of that: dy lands on the same four pixels; dweight[2, 2] = sum of those pixels.
        let dy = OwnedTensor(y.shape, [1, 2, 3, 4])
        let dx = OwnedTensor(x.shape), dw = OwnedTensor(weight.shape), db = OwnedTensor(bias.shape)
        stridedConvBackward(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor, dy: dy.tensor, x: x.tensor,
                            weight: weight.tensor, geometry: g, pool: pool, scratch: s)
        S.assertClose(dx.tensor, [0, 0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0, 0, 3, 0, 4], tolerance: 0)
        XCTAssertEqual(dw.tensor[8], 118)  // 5 * 1 + 7 * 2 + 13 * 3 + 15 * 4
        XCTAssertEqual(dw.tensor[0], 20)  // x[1, 1] * dy[1, 1]; the other taps (0, 0) fall on padding
        XCTAssertEqual(db.tensor[0], 10)
    }

    // MARK: Work plan

    func testPlanCoversEveryRowOnceAndNeedsNoThreadCount() {
        for g in geometries {
            for batch in [1, 2, 3, 9] {
                for (h, w) in [(1, 1), (15, 15), (9, 4), (40, 37)] {
                    for cin in [1, 3, 64] {
                        let plan = StridedConvPlan(batch: batch, inChannels: cin, outChannels: 5, height: h, width: w,
                                                   geometry: g)
                        let what = "\(g) batch \(batch) \(h)x\(w) cin \(cin)"
                        var outputs = [Int](repeating: 0, count: batch * plan.outHeight)
                        for item in 0..<plan.forwardItems {
                            let (n, r0, r1) = plan.forwardItem(item)
                            XCTAssertTrue(r1 > r0 && (r1 - r0) * plan.outWidth <= plan.maxForwardPixels, what)
                            for r in r0..<r1 { outputs[n * plan.outHeight + r] += 1 }
                        }
                        XCTAssertEqual(outputs, [Int](repeating: 1, count: outputs.count), what)
                        var inputs = [Int](repeating: 0, count: batch * h)
                        for item in 0..<plan.inputItems {
                            let (n, r0, r1, o0, o1) = plan.inputItem(item)
                            for r in r0..<r1 { inputs[n * h + r] += 1 }
                            // Every output row with a tap in [r0, r1) lies in [o0, o1).
                            for oi in 0..<plan.outHeight {
                                let hits = (0..<g.kernel).contains { a in
                                    let i = oi * g.stride - g.padding + a * g.dilation
                                    return i >= r0 && i < r1
                                }
                                if hits { XCTAssertTrue(oi >= o0 && oi < o1, "\(what): row \(oi) for band \(r0)..<\(r1)") }
                            }
                            XCTAssertLessThanOrEqual(max(0, o1 - o0) * plan.outWidth, plan.maxInputPixels, what)
                        }
                        if plan.outHeight > 0 {
                            XCTAssertEqual(inputs, [Int](repeating: 1, count: inputs.count), what)
                        }
                        XCTAssertTrue(plan.tiledWeightGradient || (1...4).contains(plan.weightGroups), what)
                    }
                }
            }
        }
        // The 1x1, stride-1, unpadded convolution reads x and dy in place: no scratch.
        XCTAssertEqual(stridedConvScratchFloats(batch: 4, inChannels: 64, outChannels: 256, height: 16, width: 16,
                                                geometry: ConvGeometry(kernel: 1)), 0)
        // Scratch planned for a batch covers every smaller one.
        let g = ConvGeometry(kernel: 3, stride: 2, padding: 1)
        for batch in 1...9 {
            XCTAssertLessThanOrEqual(
                stridedConvScratchFloats(batch: batch, inChannels: 7, outChannels: 5, height: 13, width: 11, geometry: g),
                stridedConvScratchFloats(batch: 9, inChannels: 7, outChannels: 5, height: 13, width: 11, geometry: g))
            XCTAssertLessThanOrEqual(
                stridedConvSharedScratchFloats(batch: batch, inChannels: 7, outChannels: 5, height: 13, width: 11, geometry: g),
                stridedConvSharedScratchFloats(batch: 9, inChannels: 7, outChannels: 5, height: 13, width: 11, geometry: g))
        }
    }

    // MARK: Fast vs naive, within the rounding bound

    private struct Case { let n, cin, cout, h, w: Int }
    private let cases = [
        Case(n: 1, cin: 3, cout: 4, h: 15, w: 15),
        Case(n: 2, cin: 2, cout: 3, h: 9, w: 7),
        Case(n: 3, cin: 4, cout: 2, h: 5, w: 6),
        Case(n: 1, cin: 1, cout: 1, h: 1, w: 3),
    ]

    func testFastAndNaiveWithinRoundingBound() {
        let pool = WorkerPool(threads: 2)
        var compared = 0
        for (gi, g) in geometries.enumerated() {
            for (ci, c) in cases.enumerated() where g.output(c.h) > 0 && g.output(c.w) > 0 {
                let what = "\(g) case \(ci)"
                let s = scratch(threads: 2, batch: c.n, cin: c.cin, cout: c.cout, h: c.h, w: c.w, g)
                let seed = UInt64(gi * 100 + ci * 10)
                let kk = g.kernel * g.kernel
                let x = S.random(Shape(c.n, c.cin, c.h, c.w), seed: seed)
                let weight = S.random(Shape(c.cout, c.cin, g.kernel, g.kernel), seed: seed + 1)
                let bias = S.random(.vector(c.cout), seed: seed + 2)
                let outShape = Shape(c.n, c.cout, g.output(c.h), g.output(c.w))
                let dy = S.random(outShape, seed: seed + 3)
                for withBias in [true, false] {
                    let b = withBias ? bias.tensor : nil
                    // Forward overwrites: start from garbage.
                    let yFast = S.random(outShape, seed: seed + 4), yNaive = S.random(outShape, seed: seed + 5)
                    stridedConvForward(yFast.tensor, x.tensor, weight: weight.tensor, bias: b, geometry: g, pool: pool, scratch: s)
                    stridedConvForwardNaive(yNaive.tensor, x.tensor, weight: weight.tensor, bias: b, geometry: g)
                    let y = R.forward(x: x.tensor, weight: weight.tensor, bias: b, geometry: g, roundings: c.cin * kk + 2)
                    S.assertWithinRounding(yFast.tensor, y, "forward \(what) bias \(withBias)")
                    S.assertWithinRounding(yNaive.tensor, y, "naive forward \(what) bias \(withBias)")
                }
                // Backward adds: both start from the same nonzero gradients.
                let dx0 = S.random(x.shape, seed: seed + 6), dw0 = S.random(weight.shape, seed: seed + 7)
                let db0 = S.random(bias.shape, seed: seed + 8)
                let dxF = OwnedTensor(x.shape), dwF = OwnedTensor(weight.shape), dbF = OwnedTensor(bias.shape)
                let dxN = OwnedTensor(x.shape), dwN = OwnedTensor(weight.shape), dbN = OwnedTensor(bias.shape)
                for t in [dxF, dxN] { t.tensor.copy(from: dx0.tensor) }
                for t in [dwF, dwN] { t.tensor.copy(from: dw0.tensor) }
                for t in [dbF, dbN] { t.tensor.copy(from: db0.tensor) }
                stridedConvBackward(dx: dxF.tensor, dweight: dwF.tensor, dbias: dbF.tensor, dy: dy.tensor, x: x.tensor,
                                    weight: weight.tensor, geometry: g, pool: pool, scratch: s)
                stridedConvBackwardNaive(dx: dxN.tensor, dweight: dwN.tensor, dbias: dbN.tensor, dy: dy.tensor,
                                         x: x.tensor, weight: weight.tensor, geometry: g)
                let pixels = outShape.n * outShape.plane
                // Fast dx: a GEMM over Cout, then up to k^2 taps added into the initial value.
                // Naive dx: Cout k^2 products added one by one into the initial value.
                let dx = R.inputGradient(dy: dy.tensor, x: x.tensor, weight: weight.tensor, geometry: g,
                                         initial: dx0.tensor, roundings: c.cout + kk + 2)
                S.assertWithinRounding(dxF.tensor, dx, "dx \(what)")
                S.assertWithinRounding(dxN.tensor, dx.scaled(by: 1, extraRoundings: c.cout * kk), "naive dx \(what)")
                // Weight gradient: a chain over the pixels of a group, <= 4 partials, the initial value.
                let dw = R.weightGradient(dy: dy.tensor, x: x.tensor, weight: weight.tensor, geometry: g,
                                          initial: dw0.tensor, roundings: pixels + 6)
                S.assertWithinRounding(dwF.tensor, dw, "dweight \(what)")
                S.assertWithinRounding(dwN.tensor, dw, "naive dweight \(what)")
                let db = ConvolutionReference.biasGradient(dy: dy.tensor, initial: db0.tensor)
                S.assertWithinRounding(dbF.tensor, db, "dbias \(what)")
                S.assertWithinRounding(dbN.tensor, db, "naive dbias \(what)")
                compared += 1
            }
        }
        XCTAssertGreaterThanOrEqual(compared, geometries.count * 3)
    }

    /// Many channels and a wide image: the im2col budget, not the spread over threads, cuts the bands
    /// (depth 24 x 49 = 1176 -> 256 pixels = 2 rows of 128 per band: 12 bands where the spread asks
    /// for 8); the 1x1 path runs in place on the same image.
    func testFastWithinRoundingBoundWithBudgetBands() {
        let pool = WorkerPool(threads: 2)
        for g in [ConvGeometry(kernel: 7, stride: 2, padding: 3), ConvGeometry(kernel: 1)] {
            let (n, cin, cout, h, w) = (1, 24, 2, 47, 255)
            let plan = StridedConvPlan(batch: n, inChannels: cin, outChannels: cout, height: h, width: w, geometry: g)
            if g.kernel == 7 { XCTAssertEqual(plan.outBands, 12, "\(g)") }
            let s = scratch(threads: 2, batch: n, cin: cin, cout: cout, h: h, w: w, g)
            let x = S.random(Shape(n, cin, h, w), seed: 31), weight = S.random(Shape(cout, cin, g.kernel, g.kernel), seed: 32)
            let outShape = Shape(n, cout, g.output(h), g.output(w))
            let dy = S.random(outShape, seed: 33)
            let y = OwnedTensor(outShape), dx = OwnedTensor(x.shape), dw = OwnedTensor(weight.shape)
            let zeroX = OwnedTensor(x.shape), zeroW = OwnedTensor(weight.shape)
            stridedConvForward(y.tensor, x.tensor, weight: weight.tensor, bias: nil, geometry: g, pool: pool, scratch: s)
            stridedConvBackward(dx: dx.tensor, dweight: dw.tensor, dbias: nil, dy: dy.tensor, x: x.tensor,
                                weight: weight.tensor, geometry: g, pool: pool, scratch: s)
            let kk = g.kernel * g.kernel
            S.assertWithinRounding(y.tensor, R.forward(x: x.tensor, weight: weight.tensor, bias: nil, geometry: g,
                                                       roundings: cin * kk + 2), "forward \(g)")
            S.assertWithinRounding(dx.tensor, R.inputGradient(dy: dy.tensor, x: x.tensor, weight: weight.tensor, geometry: g,
                                                              initial: zeroX.tensor, roundings: cout + kk + 2), "dx \(g)")
            S.assertWithinRounding(dw.tensor, R.weightGradient(dy: dy.tensor, x: x.tensor, weight: weight.tensor, geometry: g,
                                                               initial: zeroW.tensor, roundings: n * outShape.plane + 6),
                                   "dweight \(g)")
        }
    }

    /// The weight-gradient tiles of a layer are equal (to the rounding of whole GEMM panels) and come
    /// in a power-of-two count, so two or four threads get equal shares: DeepLabV3+(resnet50)'s 1x1s
    /// from 2048, 1280 and 1024 channels were cut 576, 576, 576, 320 / 288 x 4 + 128 / 288 x 3 + 160.
    func testWeightGradientTilesAreEqualAndAPowerOfTwo() {
        XCTAssertEqual(StridedConvPlan.evenTile(2048, most: 576, granule: 16), 512)
        XCTAssertEqual(StridedConvPlan.evenTile(1280, most: 288, granule: 16), 160)
        XCTAssertEqual(StridedConvPlan.evenTile(1024, most: 288, granule: 16), 256)
        XCTAssertEqual(StridedConvPlan.evenTile(100, most: 32, granule: 16), 25, "32 would leave a last tile of 4")
        XCTAssertEqual(StridedConvPlan.evenTile(300, most: 512, granule: 8), 300)
        XCTAssertEqual(StridedConvPlan.evenTile(1000, most: 288, granule: 16), 256, "four of 256, 232 last")
        let shapes: [(cin: Int, cout: Int, kernel: Int, side: Int)] = [
            (2048, 512, 1, 16), (1024, 512, 1, 16), (1280, 256, 1, 16), (2048, 256, 1, 16), (1024, 256, 1, 16),
            (1024, 2048, 1, 16), (512, 2048, 1, 16), (512, 512, 3, 16), (256, 256, 3, 32), (100, 300, 3, 5),
        ]
        for s in shapes {
            let plan = StridedConvPlan(batch: 8, inChannels: s.cin, outChannels: s.cout, height: s.side, width: s.side,
                                       geometry: ConvGeometry(kernel: s.kernel, padding: s.kernel / 2))
            let what = "\(s.cin) -> \(s.cout) \(s.kernel)x\(s.kernel)"
            XCTAssertTrue(plan.tiledWeightGradient, what)
            for (total, side, count) in [(s.cout, plan.tileRows, plan.rowTiles), (s.cin, plan.tileChannels, plan.channelTiles)] {
                XCTAssertEqual(count & (count - 1), 0, "\(what): \(count) tiles of \(side) for \(total)")
                XCTAssertGreaterThanOrEqual(2 * (total - side * (count - 1)), side, "\(what): last tile of \(side) for \(total)")
            }
            XCTAssertGreaterThanOrEqual(plan.rowTiles * plan.channelTiles, 4, what)
        }
    }

    /// Weights of at least `stridedTiledWeightFloats` (the deep layers of ResNet-50 / DeepLabV3+) get
    /// their gradient by tiles of dweight, every item added in place, no shared partials: within the
    /// rounding bound (initial value + one chain over every pixel), bitwise the same for 1, 2 and 3
    /// threads, and with no shared scratch. 300 x 100 x 3 x 3 (270,000 floats) gives one row tile and
    /// four channel tiles of 25 (64 halved to reach four tiles, then evened out); the 1x1 cases 512 x 512 give
    /// two by two (512 x 512 halved twice).
    func testTiledWeightGradientWithinRoundingBoundAndThreadIndependent() {
        let cases: [(ConvGeometry, Int, Int)] = [
            (ConvGeometry(kernel: 3, stride: 1, padding: 2, dilation: 2), 100, 300),
            (ConvGeometry(kernel: 3, stride: 2, padding: 1), 100, 300),
            (ConvGeometry(kernel: 1), 512, 512), (ConvGeometry(kernel: 1, stride: 2), 512, 512),
        ]
        for (g, cin, cout) in cases {
            let (n, h, w) = (3, 5, 6)
            let plan = StridedConvPlan(batch: n, inChannels: cin, outChannels: cout, height: h, width: w, geometry: g)
            XCTAssertTrue(plan.tiledWeightGradient, "\(g)")
            XCTAssertEqual(plan.sharedFloats, 0, "\(g)")
            XCTAssertEqual(plan.rowTiles * plan.channelTiles, 4, "\(g)")
            XCTAssertEqual(plan.rowTiles, g.kernel == 3 ? 1 : 2, "\(g)")
            XCTAssertGreaterThanOrEqual(plan.forwardItems, 3, "\(g): items cross the tiles")
            let x = S.random(Shape(n, cin, h, w), seed: 71), weight = S.random(Shape(cout, cin, g.kernel, g.kernel), seed: 72)
            let outShape = Shape(n, cout, g.output(h), g.output(w))
            let dy = S.random(outShape, seed: 73), dw0 = S.random(weight.shape, seed: 74)
            func run(_ threads: Int) -> OwnedTensor {
                let pool = WorkerPool(threads: threads)
                let s = scratch(threads: threads, batch: n, cin: cin, cout: cout, h: h, w: w, g)
                XCTAssertEqual(s.sharedFloats, 0)
                let dw = OwnedTensor(weight.shape)
                dw.tensor.copy(from: dw0.tensor)
                stridedConvBackward(dx: nil, dweight: dw.tensor, dbias: nil, dy: dy.tensor, x: x.tensor,
                                    weight: weight.tensor, geometry: g, pool: pool, scratch: s)
                return dw
            }
            let two = run(2)
            S.assertWithinRounding(two.tensor, R.weightGradient(dy: dy.tensor, x: x.tensor, weight: weight.tensor, geometry: g,
                                                                initial: dw0.tensor, roundings: n * outShape.plane + 2),
                                   "dweight \(g)")
            for threads in [1, 3] {
                let other = run(threads)
                withExtendedLifetime(other) { S.assertBitwiseEqual(other.tensor, two.tensor, "\(g) threads \(threads)") }
            }
        }
        // Below the size the partials stay (and cost shared scratch).
        let small = StridedConvPlan(batch: 3, inChannels: 100, outChannels: 291, height: 5, width: 6,
                                    geometry: ConvGeometry(kernel: 3, stride: 1, padding: 1))
        XCTAssertFalse(small.tiledWeightGradient)
        XCTAssertEqual(small.sharedFloats, small.weightGroups * 291 * 900)
    }

    // MARK: Finite differences

    func testGradientCheckFastAndNaive() {
        let pool = WorkerPool(threads: 2)
        for g in geometries {
            let (n, cin, cout, h, w) = (2, 2, 3, 7, 6)
            let s = scratch(threads: 2, batch: n, cin: cin, cout: cout, h: h, w: w, g)
            let x = S.random(Shape(n, cin, h, w), seed: 41), weight = S.random(Shape(cout, cin, g.kernel, g.kernel), seed: 42)
            let bias = S.random(.vector(cout), seed: 43)
            let dx = OwnedTensor(x.shape), dw = OwnedTensor(weight.shape), db = OwnedTensor(bias.shape)
            let y = OwnedTensor(Shape(n, cout, g.output(h), g.output(w)))
            S.checkGradients(inputs: [x.tensor, weight.tensor, bias.tensor], gradients: [dx.tensor, dw.tensor, db.tensor],
                             output: y.tensor,
                             forward: { stridedConvForward(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor,
                                                           geometry: g, pool: pool, scratch: s) },
                             backward: { dy in stridedConvBackward(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor, dy: dy,
                                                                   x: x.tensor, weight: weight.tensor, geometry: g,
                                                                   pool: pool, scratch: s) },
                             "fast \(g)")
            S.checkGradients(inputs: [x.tensor, weight.tensor, bias.tensor], gradients: [dx.tensor, dw.tensor, db.tensor],
                             output: y.tensor,
                             forward: { stridedConvForwardNaive(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor,
                                                                geometry: g) },
                             backward: { dy in stridedConvBackwardNaive(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor,
                                                                        dy: dy, x: x.tensor, weight: weight.tensor, geometry: g) },
                             "naive \(g)")
        }
    }

    // MARK: Thread counts

    func testOneTwoAndThreeThreadsAreBitwiseEqual() {
        for g in [ConvGeometry(kernel: 7, stride: 2, padding: 3), ConvGeometry(kernel: 3, stride: 2, padding: 1),
                  ConvGeometry(kernel: 3, stride: 1, padding: 2, dilation: 2), ConvGeometry(kernel: 1),
                  ConvGeometry(kernel: 1, stride: 2)] {
            let (n, cin, cout, h, w) = (3, 5, 6, 17, 13)
            let x = S.random(Shape(n, cin, h, w), seed: 51), weight = S.random(Shape(cout, cin, g.kernel, g.kernel), seed: 52)
            let bias = S.random(.vector(cout), seed: 53)
            let outShape = Shape(n, cout, g.output(h), g.output(w))
            let dy = S.random(outShape, seed: 54)
            func run(_ threads: Int) -> [OwnedTensor] {
                let pool = WorkerPool(threads: threads)
                let s = scratch(threads: threads, batch: n, cin: cin, cout: cout, h: h, w: w, g)
                let y = OwnedTensor(outShape), dx = S.random(x.shape, seed: 55), dw = S.random(weight.shape, seed: 56)
                let db = OwnedTensor(bias.shape)
                stridedConvForward(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, geometry: g, pool: pool, scratch: s)
                stridedConvBackward(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor, dy: dy.tensor, x: x.tensor,
                                    weight: weight.tensor, geometry: g, pool: pool, scratch: s)
                return [y, dx, dw, db]
            }
            let one = run(1)
            for threads in [2, 3] {
                for (a, b) in zip(one, run(threads)) { S.assertBitwiseEqual(a.tensor, b.tensor, "\(g) threads \(threads)") }
            }
        }
    }

    func testNilOutputsAreSkippedAndBackwardAccumulates() {
        let pool = WorkerPool(threads: 2)
        let g = ConvGeometry(kernel: 3, stride: 2, padding: 1)
        let (n, cin, cout, h, w) = (2, 3, 4, 9, 8)
        let s = scratch(threads: 2, batch: n, cin: cin, cout: cout, h: h, w: w, g)
        let x = S.random(Shape(n, cin, h, w), seed: 61), weight = S.random(Shape(cout, cin, 3, 3), seed: 62)
        let dy = S.random(Shape(n, cout, g.output(h), g.output(w)), seed: 63)
        let dx = OwnedTensor(x.shape), dw = OwnedTensor(weight.shape), db = OwnedTensor(.vector(cout))
        S.assertAccumulates([dx.tensor, dw.tensor, db.tensor], tolerance: 1e-6, "strided conv") {
            stridedConvBackward(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor, dy: dy.tensor, x: x.tensor,
                                weight: weight.tensor, geometry: g, pool: pool, scratch: s)
        }
        dx.tensor.fill(3); dw.tensor.fill(3)
        stridedConvBackward(dx: nil, dweight: nil, dbias: db.tensor, dy: dy.tensor, x: x.tensor, weight: weight.tensor,
                            geometry: g, pool: pool, scratch: s)
        XCTAssertTrue(dx.tensor.toArray().allSatisfy { $0 == 3 } && dw.tensor.toArray().allSatisfy { $0 == 3 })
    }

    /// `overwriteInputGradient` (a graph's first write of a gradient): dx written over whatever it held
    /// (NaN here) is the same bits as dx added into zeros, for the in-place 1x1 GEMM, strided and
    /// dilated taps, and a 1x1 stride 2 whose odd rows no tap reaches (they must become 0, not stay NaN).
    func testOverwriteInputGradientEqualsAddingIntoZeros() {
        let pool = WorkerPool(threads: 2)
        for g in [ConvGeometry(kernel: 1), ConvGeometry(kernel: 3, stride: 2, padding: 1),
                  ConvGeometry(kernel: 3, padding: 2, dilation: 2), ConvGeometry(kernel: 1, stride: 2)] {
            let (n, cin, cout, h, w) = (3, 5, 4, 9, 8)
            let s = scratch(threads: 2, batch: n, cin: cin, cout: cout, h: h, w: w, g)
            let x = S.random(Shape(n, cin, h, w), seed: 81), weight = S.random(Shape(cout, cin, g.kernel, g.kernel), seed: 82)
            let dy = S.random(Shape(n, cout, g.output(h), g.output(w)), seed: 83)
            let added = OwnedTensor(x.shape), written = OwnedTensor(x.shape)
            written.tensor.fill(.nan)
            stridedConvBackward(dx: added.tensor, dweight: nil, dbias: nil, dy: dy.tensor, x: x.tensor, weight: weight.tensor,
                                geometry: g, pool: pool, scratch: s)
            stridedConvBackward(dx: written.tensor, dweight: nil, dbias: nil, dy: dy.tensor, x: x.tensor, weight: weight.tensor,
                                geometry: g, overwriteInputGradient: true, pool: pool, scratch: s)
            S.assertBitwiseEqual(written.tensor, added.tensor, "overwrite \(g)")
        }
    }

    /// `perImageWork` (`train --deterministic`, implied by `--conv gemm`): an image's output and input gradient
    /// are the same bits alone, in a batch of 3 and in a batch of 5 (a rank's share and the single
    /// process's batch), for 1 and 2 threads. Without it the plan spreads a small batch over more,
    /// narrower bands (8 items: 8, 3 and 2 bands per image for batches 1, 3, 5), so the GEMMs have
    /// other widths and the test checks that the plans really differ there.
    func testPerImageWorkGivesAnImageTheSameBitsInAnyBatch() {
        let (cin, cout, h, w) = (16, 8, 24, 20)
        for g in [ConvGeometry(kernel: 3, stride: 1, padding: 1), ConvGeometry(kernel: 3, stride: 2, padding: 1),
                  ConvGeometry(kernel: 1), ConvGeometry(kernel: 7, stride: 2, padding: 3)] {
            XCTAssertNotEqual(StridedConvPlan(batch: 1, inChannels: cin, outChannels: cout, height: h, width: w, geometry: g).outRows,
                              StridedConvPlan(batch: 5, inChannels: cin, outChannels: cout, height: h, width: w, geometry: g).outRows,
                              "the spread plan cuts other bands for 1 and 5 images: \(g)")
            let x = S.random(Shape(5, cin, h, w), seed: 41), weight = S.random(Shape(cout, cin, g.kernel, g.kernel), seed: 42)
            let outShape = Shape(5, cout, g.output(h), g.output(w))
            let dy = S.random(outShape, seed: 43)
            S.assertSameBitsInAnyBatch("\(g)") { images, threads in
                let pool = WorkerPool(threads: threads), s = Scratch(threads: threads)
                s.reserve(floatsPerThread: stridedConvScratchFloats(batch: images, inChannels: cin, outChannels: cout,
                                                                    height: h, width: w, geometry: g, perImageWork: true))
                s.reserve(sharedFloats: stridedConvSharedScratchFloats(batch: images, inChannels: cin, outChannels: cout,
                                                                       height: h, width: w, geometry: g, perImageWork: true))
                let xs = x.firstImages(images), dys = dy.firstImages(images)
                let y = OwnedTensor(dys.shape), dx = OwnedTensor(xs.shape), dw = OwnedTensor(weight.shape)
                stridedConvForward(y.tensor, xs.tensor, weight: weight.tensor, bias: nil, geometry: g, perImageWork: true,
                                   pool: pool, scratch: s)
                stridedConvBackward(dx: dx.tensor, dweight: dw.tensor, dbias: nil, dy: dys.tensor, x: xs.tensor,
                                    weight: weight.tensor, geometry: g, perImageWork: true, pool: pool, scratch: s)
                return [("forward", y.tensor.toArray()), ("input gradient", dx.tensor.toArray())]
            }
        }
    }
}
