import Foundation
import XCTest
@testable import SegEngine
import SegEngineTestSupport
#if canImport(Glibc)
import Glibc
#endif

final class ConvTests: XCTestCase {
    // MARK: Helpers

    private func random(_ shape: Shape, seed: UInt64) -> OwnedTensor {
        let t = OwnedTensor(shape)
        var rng = SplitMix64(seed: seed)
        for i in 0..<shape.count { t.tensor[i] = rng.nextFloat(in: -1...1) }
        return t
    }

    private func copy(_ t: Tensor) -> OwnedTensor {
        let c = OwnedTensor(t.shape)
        c.tensor.copy(from: t)
        return c
    }

    private typealias R = ConvolutionReference

    /// The fast and the naive result both within the rounding bound of the exact float64 result
    /// (SegEngineTestSupport's RoundingModel; the bound of the path each kernel took).
    private func assertBothWithinRounding(fast: Tensor, _ fastReference: RoundingReference, naive: Tensor,
                                          _ naiveReference: RoundingReference, _ what: String,
                                          file: StaticString = #filePath, line: UInt = #line) {
        OpsTestSupport.assertWithinRounding(fast, fastReference, what, file: file, line: line)
        OpsTestSupport.assertWithinRounding(naive, naiveReference, "naive " + what, file: file, line: line)
    }

    /// The Winograd tile conv2d's dispatcher picks for these sizes (0: im2col + GEMM).
    private func dispatchedTile(_ x: Tensor, _ weight: Tensor, dilation: Int) -> Int {
        ConvPolicy.standard.winogradTile(kernel: weight.h, dilation: dilation, inChannels: x.c, outChannels: weight.n,
                                         height: x.h, width: x.w)
    }

    /// References for conv2dForward / conv2dBackward as dispatched: (forward, dx, dweight).
    private func conv2dReferences(x: Tensor, weight: Tensor, bias: Tensor?, dy: Tensor, dilation: Int,
                                  initialDx: Tensor?, initialDw: Tensor?)
        -> (y: RoundingReference, dx: RoundingReference, dw: RoundingReference) {
        let tile = dispatchedTile(x, weight, dilation: dilation)
        if tile > 0 {
            return (R.winogradForward(x: x, weight: weight, bias: bias, tile: tile),
                    R.winogradInputGradient(dy: dy, weight: weight, tile: tile, initial: initialDx),
                    R.winogradWeightGradient(dy: dy, x: x, tile: tile, initial: initialDw))
        }
        return (R.forward(x: x, weight: weight, bias: bias, dilation: dilation),
                R.inputGradient(dy: dy, weight: weight, dilation: dilation, initial: initialDx),
                R.weightGradient(dy: dy, x: x, kernel: weight.h, dilation: dilation, initial: initialDw))
    }

    private struct Case { let n, cin, cout, h, w: Int }
    private let oddCases = [
        Case(n: 1, cin: 1, cout: 1, h: 5, w: 7),
        Case(n: 2, cin: 3, cout: 4, h: 5, w: 7),
        Case(n: 3, cin: 5, cout: 2, h: 1, w: 1),
        Case(n: 1, cin: 2, cout: 3, h: 9, w: 4),
        Case(n: 2, cin: 4, cout: 1, h: 2, w: 3),
        Case(n: 3, cin: 1, cout: 4, h: 6, w: 1),
    ]

    // MARK: Work plan

    func testWorkPlanCoversEveryImageRowOnce() {
        var grouped = 0, banded = 0
        for batch in [1, 2, 3, 4, 5, 8] {
            for (h, w) in [(1, 1), (5, 7), (9, 4), (16, 16), (64, 64), (300, 3)] {
                for columnRows in [1, 9, 36, 4608] {
                    for threads in 1...3 {
                        let plan = ConvWorkPlan(batch: batch, height: h, width: w, columnRows: columnRows, threads: threads)
                        let what = "batch \(batch) \(h)x\(w) rows \(columnRows) threads \(threads)"
                        var seen = [Int](repeating: 0, count: batch * h)
                        for item in 0..<plan.items {
                            let (n0, n1, r0, r1) = plan.item(item)
                            XCTAssertTrue(n1 > n0 && r1 > r0, what)
                            XCTAssertLessThanOrEqual((n1 - n0) * (r1 - r0) * w, plan.maxPixels, what)
                            if n1 - n0 > 1 { XCTAssertEqual(plan.bands, 1, what) }
                            for n in n0..<n1 { for r in r0..<r1 { seen[n * h + r] += 1 } }
                        }
                        XCTAssertEqual(seen, [Int](repeating: 1, count: batch * h), what)
                        if plan.group > 1 { grouped += 1 }
                        if plan.bands > 1 { banded += 1 }
                    }
                }
            }
        }
        XCTAssertGreaterThan(grouped, 0)
        XCTAssertGreaterThan(banded, 0)
        // Scratch planned for a batch covers every smaller batch.
        for threads in 1...3 {
            for batch in 1...9 {
                XCTAssertLessThanOrEqual(
                    conv2dScratchFloats(batch: batch, inChannels: 7, outChannels: 5, height: 6, width: 5, kernel: 3, threads: threads),
                    conv2dScratchFloats(batch: 9, inChannels: 7, outChannels: 5, height: 6, width: 5, kernel: 3, threads: threads))
            }
        }
    }

    // MARK: conv2d: fast vs naive

    func testConv2dFastMatchesNaiveOnOddShapes() {
        var compared = 0, grouped = 0, banded = 0
        for threads in 1...3 {
            let pool = WorkerPool(threads: threads)
            let scratch = Scratch(threads: threads)
            for (ci, c) in oddCases.enumerated() {
                for k in [1, 3] {
                    for dilation in [1, 2] {  // k = 1 ignores dilation
                        let what = "threads \(threads) case \(ci) k \(k) dilation \(dilation)"
                        let plan = ConvWorkPlan(batch: c.n, height: c.h, width: c.w,
                                                columnRows: max(c.cin, c.cout) * k * k, threads: threads)
                        if plan.group > 1 { grouped += 1 }
                        if plan.bands > 1 { banded += 1 }
                        scratch.reserve(floatsPerThread: conv2dScratchFloats(
                            batch: c.n, inChannels: c.cin, outChannels: c.cout, height: c.h, width: c.w,
                            kernel: k, threads: threads))
                        let seed = UInt64(ci * 100 + k * 10 + dilation)
                        let x = random(Shape(c.n, c.cin, c.h, c.w), seed: seed)
                        let weight = random(Shape(c.cout, c.cin, k, k), seed: seed + 1)
                        let bias = random(.vector(c.cout), seed: seed + 2)
                        let dy = random(Shape(c.n, c.cout, c.h, c.w), seed: seed + 3)

                        // Forward overwrites: start the fast output from garbage.
                        let yFast = random(dy.shape, seed: seed + 4), yNaive = OwnedTensor(dy.shape)
                        conv2dForward(yFast.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor,
                                      dilation: dilation, pool: pool, scratch: scratch)
                        conv2dForwardNaive(yNaive.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor,
                                           dilation: dilation)
                        let tile = dispatchedTile(x.tensor, weight.tensor, dilation: dilation)
                        let direct = R.forward(x: x.tensor, weight: weight.tensor, bias: bias.tensor, dilation: dilation)
                        let fastY = tile > 0 ? R.winogradForward(x: x.tensor, weight: weight.tensor, bias: bias.tensor, tile: tile) : direct
                        assertBothWithinRounding(fast: yFast.tensor, fastY, naive: yNaive.tensor, direct, "forward \(what)")
                        conv2dForward(yFast.tensor, x.tensor, weight: weight.tensor, bias: nil,
                                      dilation: dilation, pool: pool, scratch: scratch)
                        conv2dForwardNaive(yNaive.tensor, x.tensor, weight: weight.tensor, bias: nil, dilation: dilation)
                        let directNoBias = R.forward(x: x.tensor, weight: weight.tensor, bias: nil, dilation: dilation)
                        assertBothWithinRounding(
                            fast: yFast.tensor,
                            tile > 0 ? R.winogradForward(x: x.tensor, weight: weight.tensor, bias: nil, tile: tile) : directNoBias,
                            naive: yNaive.tensor, directNoBias, "forward no bias \(what)")

                        // Backward adds: start both from the same nonzero gradients.
                        let dxFast = random(x.shape, seed: seed + 5), dxNaive = copy(dxFast.tensor)
                        let dwFast = random(weight.shape, seed: seed + 6), dwNaive = copy(dwFast.tensor)
                        let dbFast = random(bias.shape, seed: seed + 7), dbNaive = copy(dbFast.tensor)
                        let fastRef = conv2dReferences(x: x.tensor, weight: weight.tensor, bias: bias.tensor, dy: dy.tensor,
                                                       dilation: dilation, initialDx: dxFast.tensor, initialDw: dwFast.tensor)
                        let naiveDx = R.inputGradient(dy: dy.tensor, weight: weight.tensor, dilation: dilation,
                                                      initial: dxFast.tensor)
                        let naiveDw = R.weightGradient(dy: dy.tensor, x: x.tensor, kernel: k, dilation: dilation,
                                                       initial: dwFast.tensor)
                        let exactDb = R.biasGradient(dy: dy.tensor, initial: dbFast.tensor)
                        conv2dBackward(dx: dxFast.tensor, dweight: dwFast.tensor, dbias: dbFast.tensor, dy: dy.tensor,
                                       x: x.tensor, weight: weight.tensor, dilation: dilation, pool: pool, scratch: scratch)
                        conv2dBackwardNaive(dx: dxNaive.tensor, dweight: dwNaive.tensor, dbias: dbNaive.tensor,
                                            dy: dy.tensor, x: x.tensor, weight: weight.tensor, dilation: dilation)
                        assertBothWithinRounding(fast: dxFast.tensor, fastRef.dx, naive: dxNaive.tensor, naiveDx, "dx \(what)")
                        assertBothWithinRounding(fast: dwFast.tensor, fastRef.dw, naive: dwNaive.tensor, naiveDw,
                                                 "dweight \(what)")
                        assertBothWithinRounding(fast: dbFast.tensor, exactDb, naive: dbNaive.tensor, exactDb, "dbias \(what)")
                        compared += 1
                    }
                }
            }
        }
        XCTAssertEqual(compared, 3 * oddCases.count * 4)
        // Both kinds of work item were exercised: groups of whole images and bands of rows.
        XCTAssertGreaterThan(grouped, 0)
        XCTAssertGreaterThan(banded, 0)
    }

    /// A case large enough that bands are cut by the cache budget, not only by the thread count.
    func testConv2dFastMatchesNaiveWithManyBands() {
        let (n, cin, cout, h, w) = (2, 40, 24, 40, 37)  // k = 3: 19-row bands by the cache budget
        for k in [1, 3] {
            let threads = 2
            let pool = WorkerPool(threads: threads)
            let scratch = Scratch(threads: threads)
            scratch.reserve(floatsPerThread: conv2dScratchFloats(batch: n, inChannels: cin, outChannels: cout,
                                                                 height: h, width: w, kernel: k, threads: threads))
            let x = random(Shape(n, cin, h, w), seed: 11), weight = random(Shape(cout, cin, k, k), seed: 12)
            let bias = random(.vector(cout), seed: 13), dy = random(Shape(n, cout, h, w), seed: 14)
            let yFast = OwnedTensor(dy.shape), yNaive = OwnedTensor(dy.shape)
            conv2dForward(yFast.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, dilation: 2,
                          pool: pool, scratch: scratch)
            conv2dForwardNaive(yNaive.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, dilation: 2)
            let y = R.forward(x: x.tensor, weight: weight.tensor, bias: bias.tensor, dilation: 2)
            assertBothWithinRounding(fast: yFast.tensor, y, naive: yNaive.tensor, y, "forward k \(k)")
            let dxF = OwnedTensor(x.shape), dxN = OwnedTensor(x.shape)
            let dwF = OwnedTensor(weight.shape), dwN = OwnedTensor(weight.shape)
            let dbF = OwnedTensor(bias.shape), dbN = OwnedTensor(bias.shape)
            conv2dBackward(dx: dxF.tensor, dweight: dwF.tensor, dbias: dbF.tensor, dy: dy.tensor, x: x.tensor,
                           weight: weight.tensor, dilation: 2, pool: pool, scratch: scratch)
            conv2dBackwardNaive(dx: dxN.tensor, dweight: dwN.tensor, dbias: dbN.tensor, dy: dy.tensor, x: x.tensor,
                                weight: weight.tensor, dilation: 2)
            let rdx = R.inputGradient(dy: dy.tensor, weight: weight.tensor, dilation: 2)
            let rdw = R.weightGradient(dy: dy.tensor, x: x.tensor, kernel: k, dilation: 2)
            let rdb = R.biasGradient(dy: dy.tensor)
            assertBothWithinRounding(fast: dxF.tensor, rdx, naive: dxN.tensor, rdx, "dx k \(k)")
            assertBothWithinRounding(fast: dwF.tensor, rdw, naive: dwN.tensor, rdw, "dweight k \(k)")
            assertBothWithinRounding(fast: dbF.tensor, rdb, naive: dbN.tensor, rdb, "dbias k \(k)")
        }
    }

    // MARK: convTranspose2x2: fast vs naive

    func testConvTransposeFastMatchesNaiveOnOddShapes() {
        var compared = 0, grouped = 0, banded = 0
        for threads in 1...3 {
            let pool = WorkerPool(threads: threads)
            let scratch = Scratch(threads: threads)
            for (ci, c) in oddCases.enumerated() {
                let what = "threads \(threads) case \(ci)"
                let plan = ConvWorkPlan(batch: c.n, height: c.h, width: c.w, columnRows: c.cout * 4, threads: threads)
                if plan.group > 1 { grouped += 1 }
                if plan.bands > 1 { banded += 1 }
                scratch.reserve(floatsPerThread: convTranspose2x2ScratchFloats(
                    batch: c.n, inChannels: c.cin, outChannels: c.cout, height: c.h, width: c.w, threads: threads))
                let seed = UInt64(1000 + ci * 10)
                let x = random(Shape(c.n, c.cin, c.h, c.w), seed: seed)
                let weight = random(Shape(c.cin, c.cout, 2, 2), seed: seed + 1)
                let bias = random(.vector(c.cout), seed: seed + 2)
                let dy = random(Shape(c.n, c.cout, 2 * c.h, 2 * c.w), seed: seed + 3)

                let yFast = random(dy.shape, seed: seed + 4), yNaive = OwnedTensor(dy.shape)
                convTranspose2x2Forward(yFast.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor,
                                        pool: pool, scratch: scratch)
                convTranspose2x2ForwardNaive(yNaive.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor)
                let ry = R.transposeForward(x: x.tensor, weight: weight.tensor, bias: bias.tensor)
                assertBothWithinRounding(fast: yFast.tensor, ry, naive: yNaive.tensor, ry, "forward \(what)")
                convTranspose2x2Forward(yFast.tensor, x.tensor, weight: weight.tensor, bias: nil, pool: pool, scratch: scratch)
                convTranspose2x2ForwardNaive(yNaive.tensor, x.tensor, weight: weight.tensor, bias: nil)
                let ryNoBias = R.transposeForward(x: x.tensor, weight: weight.tensor, bias: nil)
                assertBothWithinRounding(fast: yFast.tensor, ryNoBias, naive: yNaive.tensor, ryNoBias, "forward no bias \(what)")

                let dxFast = random(x.shape, seed: seed + 5), dxNaive = copy(dxFast.tensor)
                let dwFast = random(weight.shape, seed: seed + 6), dwNaive = copy(dwFast.tensor)
                let dbFast = random(bias.shape, seed: seed + 7), dbNaive = copy(dbFast.tensor)
                let rdx = R.transposeInputGradient(dy: dy.tensor, weight: weight.tensor, initial: dxFast.tensor)
                let rdw = R.transposeWeightGradient(dy: dy.tensor, x: x.tensor, initial: dwFast.tensor)
                let rdb = R.biasGradient(dy: dy.tensor, initial: dbFast.tensor)
                convTranspose2x2Backward(dx: dxFast.tensor, dweight: dwFast.tensor, dbias: dbFast.tensor, dy: dy.tensor,
                                         x: x.tensor, weight: weight.tensor, pool: pool, scratch: scratch)
                convTranspose2x2BackwardNaive(dx: dxNaive.tensor, dweight: dwNaive.tensor, dbias: dbNaive.tensor,
                                              dy: dy.tensor, x: x.tensor, weight: weight.tensor)
                assertBothWithinRounding(fast: dxFast.tensor, rdx, naive: dxNaive.tensor, rdx, "dx \(what)")
                assertBothWithinRounding(fast: dwFast.tensor, rdw, naive: dwNaive.tensor, rdw, "dweight \(what)")
                assertBothWithinRounding(fast: dbFast.tensor, rdb, naive: dbNaive.tensor, rdb, "dbias \(what)")
                compared += 1
            }
        }
        XCTAssertEqual(compared, 3 * oddCases.count)
        XCTAssertGreaterThan(grouped, 0)
        XCTAssertGreaterThan(banded, 0)
    }

    // MARK: Backward adds; nil outputs are skipped

    func testBackwardAccumulatesAndSkipsNilOutputs() {
        let pool = WorkerPool(threads: 2), scratch = Scratch(threads: 2)
        let (n, cin, cout, h, w) = (2, 3, 4, 6, 5)
        scratch.reserve(floatsPerThread: max(
            conv2dScratchFloats(batch: n, inChannels: cin, outChannels: cout, height: h, width: w, kernel: 3, threads: 2),
            convTranspose2x2ScratchFloats(batch: n, inChannels: cin, outChannels: cout, height: h, width: w, threads: 2)))
        let x = random(Shape(n, cin, h, w), seed: 21)
        let convWeight = random(Shape(cout, cin, 3, 3), seed: 22)
        let upWeight = random(Shape(cin, cout, 2, 2), seed: 23)
        let convDy = random(Shape(n, cout, h, w), seed: 24)
        let upDy = random(Shape(n, cout, 2 * h, 2 * w), seed: 25)

        typealias Backward = (_ dx: Tensor?, _ dw: Tensor, _ db: Tensor?) -> Void
        // The exact gradients of one call: (dx, dweight, dbias).
        let conv = (R.inputGradient(dy: convDy.tensor, weight: convWeight.tensor, dilation: 2),
                    R.weightGradient(dy: convDy.tensor, x: x.tensor, kernel: 3, dilation: 2),
                    R.biasGradient(dy: convDy.tensor))
        let up = (R.transposeInputGradient(dy: upDy.tensor, weight: upWeight.tensor),
                  R.transposeWeightGradient(dy: upDy.tensor, x: x.tensor), R.biasGradient(dy: upDy.tensor))
        let ops: [(String, Shape, Backward, (RoundingReference, RoundingReference, RoundingReference))] = [
            ("conv2d", convWeight.shape, { dx, dw, db in
                conv2dBackward(dx: dx, dweight: dw, dbias: db, dy: convDy.tensor, x: x.tensor,
                               weight: convWeight.tensor, dilation: 2, pool: pool, scratch: scratch)
            }, conv),
            ("convTranspose2x2", upWeight.shape, { dx, dw, db in
                convTranspose2x2Backward(dx: dx, dweight: dw, dbias: db, dy: upDy.tensor, x: x.tensor,
                                         weight: upWeight.tensor, pool: pool, scratch: scratch)
            }, up),
        ]
        for (name, weightShape, backward, exact) in ops {
            let dx = OwnedTensor(x.shape), dw = OwnedTensor(weightShape), db = OwnedTensor(.vector(cout))
            backward(dx.tensor, dw.tensor, db.tensor)
            let once = (copy(dx.tensor), copy(dw.tensor), copy(db.tensor))
            XCTAssertGreaterThan(once.0.tensor.toArray().map(abs).max()!, 0, name)
            XCTAssertGreaterThan(once.1.tensor.toArray().map(abs).max()!, 0, name)
            backward(dx.tensor, dw.tensor, db.tensor)
            // Two calls: twice the exact gradient, with one more rounding (the second call's addition).
            for (twice, reference, label) in [(dx, exact.0, "dx"), (dw, exact.1, "dweight"), (db, exact.2, "dbias")] {
                OpsTestSupport.assertWithinRounding(twice.tensor, reference.scaled(by: 2, extraRoundings: 1),
                                                    "\(name) \(label) after two calls")
            }
            // dx and dbias nil: dweight alone is still right.
            let dwOnly = OwnedTensor(weightShape)
            backward(nil, dwOnly.tensor, nil)
            OpsTestSupport.assertWithinRounding(dwOnly.tensor, exact.1, "\(name) dweight with nil dx, dbias")
        }
    }

    // MARK: Finite differences

    private func gradientCheckConv2d(kernel k: Int, dilation: Int, fast: Bool) {
        let (n, cin, cout, h, w) = (2, 2, 3, 4, 5)
        let pool = WorkerPool(threads: 2), scratch = Scratch(threads: 2)
        scratch.reserve(floatsPerThread: conv2dScratchFloats(batch: n, inChannels: cin, outChannels: cout,
                                                             height: h, width: w, kernel: k, threads: 2))
        let x = random(Shape(n, cin, h, w), seed: 31), weight = random(Shape(cout, cin, k, k), seed: 32)
        let bias = random(.vector(cout), seed: 33)
        let y = OwnedTensor(Shape(n, cout, h, w)), dy = OwnedTensor(y.shape)
        let dx = OwnedTensor(x.shape), dw = OwnedTensor(weight.shape), db = OwnedTensor(bias.shape)
        let projection = Projection(shape: y.shape, seed: 34)
        func forward() {
            if fast {
                conv2dForward(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, dilation: dilation,
                              pool: pool, scratch: scratch)
            } else {
                conv2dForwardNaive(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, dilation: dilation)
            }
        }
        let report = GradientChecker().check(
            inputs: [x.tensor, weight.tensor, bias.tensor], gradients: [dx.tensor, dw.tensor, db.tensor],
            objective: { forward(); return projection.value(y.tensor) },
            backward: {
                forward()
                projection.seed(dy.tensor)
                if fast {
                    conv2dBackward(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor, dy: dy.tensor, x: x.tensor,
                                   weight: weight.tensor, dilation: dilation, pool: pool, scratch: scratch)
                } else {
                    conv2dBackwardNaive(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor, dy: dy.tensor,
                                        x: x.tensor, weight: weight.tensor, dilation: dilation)
                }
            })
        let label = "conv2d k \(k) dilation \(dilation) \(fast ? "fast" : "naive")"
        print("gradient check \(label): \(report)")
        XCTAssertTrue(report.passed, "\(label): \(report)")
        XCTAssertEqual(report.checked + report.skippedKinks, x.tensor.count + weight.tensor.count + bias.tensor.count, label)
        XCTAssertGreaterThan(report.checked, 0, label)
    }

    func testConv2dGradientCheck() {
        for fast in [true, false] {
            gradientCheckConv2d(kernel: 1, dilation: 1, fast: fast)
            gradientCheckConv2d(kernel: 3, dilation: 1, fast: fast)
            gradientCheckConv2d(kernel: 3, dilation: 2, fast: fast)
        }
    }

    func testConvTransposeGradientCheck() {
        let (n, cin, cout, h, w) = (2, 3, 2, 3, 2)
        let pool = WorkerPool(threads: 2), scratch = Scratch(threads: 2)
        scratch.reserve(floatsPerThread: convTranspose2x2ScratchFloats(batch: n, inChannels: cin, outChannels: cout,
                                                                      height: h, width: w, threads: 2))
        for fast in [true, false] {
            let x = random(Shape(n, cin, h, w), seed: 41), weight = random(Shape(cin, cout, 2, 2), seed: 42)
            let bias = random(.vector(cout), seed: 43)
            let y = OwnedTensor(Shape(n, cout, 2 * h, 2 * w)), dy = OwnedTensor(y.shape)
            let dx = OwnedTensor(x.shape), dw = OwnedTensor(weight.shape), db = OwnedTensor(bias.shape)
            let projection = Projection(shape: y.shape, seed: 44)
            func forward() {
                if fast {
                    convTranspose2x2Forward(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor,
                                            pool: pool, scratch: scratch)
                } else {
                    convTranspose2x2ForwardNaive(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor)
                }
            }
            let report = GradientChecker().check(
                inputs: [x.tensor, weight.tensor, bias.tensor], gradients: [dx.tensor, dw.tensor, db.tensor],
                objective: { forward(); return projection.value(y.tensor) },
                backward: {
                    forward()
                    projection.seed(dy.tensor)
                    if fast {
                        convTranspose2x2Backward(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor, dy: dy.tensor,
                                                 x: x.tensor, weight: weight.tensor, pool: pool, scratch: scratch)
                    } else {
                        convTranspose2x2BackwardNaive(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor,
                                                      dy: dy.tensor, x: x.tensor, weight: weight.tensor)
                    }
                })
            print("gradient check convTranspose2x2 \(fast ? "fast" : "naive"): \(report)")
            XCTAssertTrue(report.passed, "convTranspose2x2 \(fast ? "fast" : "naive"): \(report)")
            XCTAssertEqual(report.checked + report.skippedKinks, x.tensor.count + weight.tensor.count + bias.tensor.count)
            XCTAssertGreaterThan(report.checked, 0)
        }
    }

    // MARK: Hand-computed values

    func testConv2dHandComputed() {
        // x = 1...9, an asymmetric kernel, bias 0.5; PyTorch's cross-correlation with padding = dilation.
        let x = OwnedTensor(Shape(1, 1, 3, 3), (1...9).map(Float.init))
        let weight = OwnedTensor(Shape(1, 1, 3, 3), [2, 0, -1, 1, 3, 0, 0, 5, -2])
        let bias = OwnedTensor(.vector(1), [0.5])
        let expected: [Int: [Float]] = [
            1: [13.5, 20.5, 41.5, 29.5, 40.5, 72.5, 16.5, 33.5, 45.5],
            2: [20.5, 46.5, 55.5, 12.5, 15.5, 22.5, 18.5, 24.5, 36.5],
        ]
        let pool = WorkerPool(threads: 2), scratch = Scratch(threads: 2)
        scratch.reserve(floatsPerThread: conv2dScratchFloats(batch: 1, inChannels: 1, outChannels: 1, height: 3,
                                                             width: 3, kernel: 3, threads: 2))
        for dilation in [1, 2] {
            let y = OwnedTensor(x.shape), yNaive = OwnedTensor(x.shape)
            conv2dForward(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, dilation: dilation,
                          pool: pool, scratch: scratch)
            conv2dForwardNaive(yNaive.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, dilation: dilation)
            XCTAssertEqual(y.tensor.toArray(), expected[dilation]!, "fast, dilation \(dilation)")
            XCTAssertEqual(yNaive.tensor.toArray(), expected[dilation]!, "naive, dilation \(dilation)")
        }
        // 1x1 with two input channels: y = 2*x0 - 3*x1 + 1.
        let x2 = OwnedTensor(Shape(1, 2, 1, 2), [1, 2, 10, 20])
        let w2 = OwnedTensor(Shape(1, 2, 1, 1), [2, -3]), b2 = OwnedTensor(.vector(1), [1])
        let y2 = OwnedTensor(Shape(1, 1, 1, 2))
        conv2dForward(y2.tensor, x2.tensor, weight: w2.tensor, bias: b2.tensor, pool: pool, scratch: scratch)
        XCTAssertEqual(y2.tensor.toArray(), [-27, -55])
    }

    func testConvTransposeHandComputedPyTorchLayout() {
        let pool = WorkerPool(threads: 2), scratch = Scratch(threads: 2)
        scratch.reserve(floatsPerThread: convTranspose2x2ScratchFloats(batch: 1, inChannels: 2, outChannels: 2,
                                                                      height: 1, width: 2, threads: 2))
        // One input channel: each pixel scatters its value times the kernel into its own 2x2 block.
        let x1 = OwnedTensor(Shape(1, 1, 1, 2), [1, 10])
        let w1 = OwnedTensor(Shape(1, 1, 2, 2), [1, 2, 3, 4])  // W[0, 0, a, b]
        let y1 = OwnedTensor(Shape(1, 1, 2, 4))
        convTranspose2x2Forward(y1.tensor, x1.tensor, weight: w1.tensor, bias: nil, pool: pool, scratch: scratch)
        XCTAssertEqual(y1.tensor.toArray(), [1, 2, 10, 20,
                                             3, 4, 30, 40])
        // Two in, two out channels, IOHW weight 1...16, bias; y[co, 2i+a, 2j+b] = sum_ci x[ci,i,j] W[ci,co,a,b] + b[co].
        let x = OwnedTensor(Shape(1, 2, 1, 2), [1, 2, 3, -1])
        let weight = OwnedTensor(Shape(2, 2, 2, 2), (1...16).map(Float.init))
        let bias = OwnedTensor(.vector(2), [0.5, -1])
        let expected: [Float] = [28.5, 32.5, -6.5, -5.5, 36.5, 40.5, -4.5, -3.5,
                                 43, 47, -4, -3, 51, 55, -2, -1]
        let y = OwnedTensor(Shape(1, 2, 2, 4)), yNaive = OwnedTensor(y.shape)
        convTranspose2x2Forward(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, pool: pool, scratch: scratch)
        convTranspose2x2ForwardNaive(yNaive.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor)
        XCTAssertEqual(y.tensor.toArray(), expected)
        XCTAssertEqual(yNaive.tensor.toArray(), expected)
    }

    // MARK: Bias op

    func testBiasForwardAndBackward() {
        let pool = WorkerPool(threads: 3)
        let y = random(Shape(2, 5, 3, 4), seed: 51), before = copy(y.tensor)
        let bias = random(.vector(5), seed: 52)
        biasForward(y.tensor, bias: bias.tensor, pool: pool)
        for n in 0..<2 { for c in 0..<5 { for i in 0..<3 { for j in 0..<4 {
            XCTAssertEqual(y.tensor[n, c, i, j], before.tensor[n, c, i, j] + bias.tensor[c])
        } } } }
        let db = OwnedTensor(.vector(5), [1, 2, 3, 4, 5])
        biasBackward(dbias: db.tensor, dy: before.tensor, pool: pool)
        let initial = OwnedTensor(.vector(5), [1, 2, 3, 4, 5])
        OpsTestSupport.assertWithinRounding(db.tensor, R.biasGradient(dy: before.tensor, initial: initial.tensor), "biasBackward")
    }

    // MARK: Determinism

    func testFastKernelsAreBitwiseReproducible() {
        let (n, cin, cout, h, w) = (3, 6, 5, 11, 9)
        for threads in [2, 3] {
            let pool = WorkerPool(threads: threads), scratch = Scratch(threads: threads)
            scratch.reserve(floatsPerThread: max(
                conv2dScratchFloats(batch: n, inChannels: cin, outChannels: cout, height: h, width: w, kernel: 3,
                                    threads: threads),
                convTranspose2x2ScratchFloats(batch: n, inChannels: cin, outChannels: cout, height: h, width: w,
                                              threads: threads)))
            let x = random(Shape(n, cin, h, w), seed: 61)
            let convW = random(Shape(cout, cin, 3, 3), seed: 62), upW = random(Shape(cin, cout, 2, 2), seed: 63)
            let bias = random(.vector(cout), seed: 64)
            let convDy = random(Shape(n, cout, h, w), seed: 65), upDy = random(Shape(n, cout, 2 * h, 2 * w), seed: 66)
            func runAll() -> [[Float]] {
                let y = OwnedTensor(convDy.shape), up = OwnedTensor(upDy.shape)
                let dx = OwnedTensor(x.shape), dw = OwnedTensor(convW.shape), db = OwnedTensor(bias.shape)
                let udx = OwnedTensor(x.shape), udw = OwnedTensor(upW.shape), udb = OwnedTensor(bias.shape)
                conv2dForward(y.tensor, x.tensor, weight: convW.tensor, bias: bias.tensor, pool: pool, scratch: scratch)
                conv2dBackward(dx: dx.tensor, dweight: dw.tensor, dbias: db.tensor, dy: convDy.tensor, x: x.tensor,
                               weight: convW.tensor, pool: pool, scratch: scratch)
                convTranspose2x2Forward(up.tensor, x.tensor, weight: upW.tensor, bias: bias.tensor, pool: pool,
                                        scratch: scratch)
                convTranspose2x2Backward(dx: udx.tensor, dweight: udw.tensor, dbias: udb.tensor, dy: upDy.tensor,
                                         x: x.tensor, weight: upW.tensor, pool: pool, scratch: scratch)
                return [y, dx, dw, db, up, udx, udw, udb].map { $0.tensor.toArray() }
            }
            let first = runAll(), second = runAll()
            for (i, (a, b)) in zip(first, second).enumerated() {
                XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "threads \(threads) output \(i)")
            }
        }
    }
}
