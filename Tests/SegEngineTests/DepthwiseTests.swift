// Tests of the depthwise 3x3 convolution (Depthwise.swift, issue #16): output sizes as PyTorch, a
// hand-computed case, the fast kernel and the naive twin within the float32 rounding bound of the
// exact float64 result (RoundingModel), finite-difference checks of both, and bitwise equality for
// 1, 2 and 3 threads.

import XCTest
@testable import SegEngine
import SegEngineTestSupport
#if canImport(Glibc)
import Glibc
#endif

final class DepthwiseTests: XCTestCase {
    private typealias S = OpsTestSupport

    /// (stride, padding, dilation): MobileNetV2's s1 and s2 with padding 1, and dilated variants.
    private let settings = [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 2, 2), (1, 4, 4), (1, 0, 1)]

    /// Calls body(n, c, oi, oj, a, b, i, j) for every tap inside x.
    private func forEachTap(_ x: Shape, _ s: Int, _ p: Int, _ d: Int,
                            _ body: (Int, Int, Int, Int, Int, Int, Int, Int) -> Void) {
        let g = ConvGeometry(kernel: 3, stride: s, padding: p, dilation: d)
        for n in 0..<x.n { for c in 0..<x.c { for oi in 0..<g.output(x.h) { for oj in 0..<g.output(x.w) {
            for a in 0..<3 { for b in 0..<3 {
                let i = oi * s - p + a * d, j = oj * s - p + b * d
                guard i >= 0, i < x.h, j >= 0, j < x.w else { continue }
                body(n, c, oi, oj, a, b, i, j)
            } }
        } } } }
    }

    private func outShape(_ x: Shape, _ s: Int, _ p: Int, _ d: Int) -> Shape {
        let g = ConvGeometry(kernel: 3, stride: s, padding: p, dilation: d)
        return Shape(x.n, x.c, g.output(x.h), g.output(x.w))
    }

    private func scratch(threads: Int, width: Int, _ s: Int, _ p: Int, _ d: Int) -> Scratch {
        let scratch = Scratch(threads: threads)
        scratch.reserve(floatsPerThread: depthwise3x3ScratchFloats(width: width, stride: s, padding: p, dilation: d))
        return scratch
    }

    func testOutputSizesAndHandValues() {
        XCTAssertEqual(outShape(Shape(1, 4, 15, 15), 2, 1, 1), Shape(1, 4, 8, 8))
        XCTAssertEqual(outShape(Shape(1, 4, 16, 16), 2, 1, 1), Shape(1, 4, 8, 8))
        XCTAssertEqual(outShape(Shape(1, 4, 15, 15), 1, 1, 1), Shape(1, 4, 15, 15))
        XCTAssertEqual(outShape(Shape(1, 4, 15, 15), 1, 2, 2), Shape(1, 4, 15, 15))
        // Two channels, each with its own kernel: channel 0 picks the right neighbour (tap (1, 2)),
        // channel 1 sums its 3x3 neighbourhood; stride 2, padding 1 on 3x4.
        let pool = WorkerPool(threads: 2)
        let x = OwnedTensor(Shape(1, 2, 3, 4), (0..<24).map(Float.init))
        var kernels = [Float](repeating: 0, count: 18)
        kernels[5] = 1
        for t in 9..<18 { kernels[t] = 1 }
        let weight = OwnedTensor(Shape(2, 1, 3, 3), kernels)
        let y = OwnedTensor(Shape(1, 2, 2, 2)), yNaive = OwnedTensor(y.shape)
        depthwise3x3Forward(y.tensor, x.tensor, weight: weight.tensor, stride: 2, pool: pool)
        depthwise3x3ForwardNaive(yNaive.tensor, x.tensor, weight: weight.tensor, stride: 2)
        // Channel 0: y[oi, oj] = x[2 oi, 2 oj + 1] -> 1, 3, 9, 11.
        // Channel 1 (x = 12...23): windows rows {-1,0,1} / {1,2,3}, columns {-1,0,1} / {1,2,3}.
        let ch1: [Float] = [12 + 13 + 16 + 17, 13 + 14 + 15 + 17 + 18 + 19,
                            16 + 17 + 20 + 21, 17 + 18 + 19 + 21 + 22 + 23]
        S.assertClose(y.tensor, [1, 3, 9, 11] + ch1, tolerance: 0)
        S.assertClose(yNaive.tensor, [1, 3, 9, 11] + ch1, tolerance: 0)
    }

    func testFastAndNaiveWithinRoundingBound() {
        let pool = WorkerPool(threads: 2)
        for (si, (s, p, d)) in settings.enumerated() {
            for (ci, shape) in [Shape(2, 3, 15, 15), Shape(1, 5, 9, 7), Shape(3, 2, 4, 1), Shape(1, 1, 2, 2)].enumerated() {
                let out = outShape(shape, s, p, d)
                if out.count == 0 { continue }
                let what = "s\(s) p\(p) d\(d) \(shape)"
                let seed = UInt64(si * 100 + ci * 10)
                let sc = scratch(threads: 2, width: shape.w, s, p, d)
                let x = S.random(shape, seed: seed), weight = S.random(Shape(shape.c, 1, 3, 3), seed: seed + 1)
                let dy = S.random(out, seed: seed + 2)
                let yF = S.random(out, seed: seed + 3), yN = S.random(out, seed: seed + 4)
                depthwise3x3Forward(yF.tensor, x.tensor, weight: weight.tensor, stride: s, padding: p, dilation: d, pool: pool)
                depthwise3x3ForwardNaive(yN.tensor, x.tensor, weight: weight.tensor, stride: s, padding: p, dilation: d)
                let dx0 = S.random(shape, seed: seed + 5), dw0 = S.random(weight.shape, seed: seed + 6)
                let dxF = OwnedTensor(shape), dxN = OwnedTensor(shape), dwF = OwnedTensor(weight.shape), dwN = OwnedTensor(weight.shape)
                for t in [dxF, dxN] { t.tensor.copy(from: dx0.tensor) }
                for t in [dwF, dwN] { t.tensor.copy(from: dw0.tensor) }
                depthwise3x3Backward(dx: dxF.tensor, dweight: dwF.tensor, dy: dy.tensor, x: x.tensor, weight: weight.tensor,
                                     stride: s, padding: p, dilation: d, pool: pool, scratch: sc)
                depthwise3x3BackwardNaive(dx: dxN.tensor, dweight: dwN.tensor, dy: dy.tensor, x: x.tensor,
                                          weight: weight.tensor, stride: s, padding: p, dilation: d)

                var y = [Double](repeating: 0, count: out.count), yMag = y
                var dx = dx0.tensor.toArray().map(Double.init), dxMag = dx.map(abs)
                var dw = dw0.tensor.toArray().map(Double.init), dwMag = dw.map(abs)
                forEachTap(shape, s, p, d) { n, c, oi, oj, a, b, i, j in
                    let o = ((n * out.c + c) * out.h + oi) * out.w + oj, xi = ((n * shape.c + c) * shape.h + i) * shape.w + j
                    let t = c * 9 + a * 3 + b
                    let yTerm = Double(weight.tensor[t]) * Double(x.tensor[xi])
                    y[o] += yTerm; yMag[o] += abs(yTerm)
                    let dxTerm = Double(dy.tensor[o]) * Double(weight.tensor[t])
                    dx[xi] += dxTerm; dxMag[xi] += abs(dxTerm)
                    let dwTerm = Double(dy.tensor[o]) * Double(x.tensor[xi])
                    dw[t] += dwTerm; dwMag[t] += abs(dwTerm)
                }
                // Forward: 9 products added in float. dx: at most 9 taps added into the initial value.
                // dweight, fast: N Ho additions per column accumulator, then Wo accumulators summed
                // (in double), then the initial value; naive: N Ho Wo additions into the initial value.
                let yRef = RoundingReference(exact: y, magnitude: yMag, roundings: 9 + 2)
                let dxRef = RoundingReference(exact: dx, magnitude: dxMag, roundings: 9 + 2)
                let dwFast = RoundingReference(exact: dw, magnitude: dwMag, roundings: out.n * out.h + out.w + 3)
                let dwNaive = RoundingReference(exact: dw, magnitude: dwMag, roundings: out.n * out.h * out.w + 2)
                S.assertWithinRounding(yF.tensor, yRef, "forward \(what)")
                S.assertWithinRounding(yN.tensor, yRef, "naive forward \(what)")
                S.assertWithinRounding(dxF.tensor, dxRef, "dx \(what)")
                S.assertWithinRounding(dxN.tensor, dxRef, "naive dx \(what)")
                S.assertWithinRounding(dwF.tensor, dwFast, "dweight \(what)")
                S.assertWithinRounding(dwN.tensor, dwNaive, "naive dweight \(what)")
            }
        }
    }

    func testGradientCheckFastAndNaive() {
        let pool = WorkerPool(threads: 2)
        for (s, p, d) in settings {
            let shape = Shape(2, 3, 7, 6)
            let sc = scratch(threads: 2, width: shape.w, s, p, d)
            let x = S.random(shape, seed: 71), weight = S.random(Shape(3, 1, 3, 3), seed: 72)
            let dx = OwnedTensor(shape), dw = OwnedTensor(weight.shape)
            let y = OwnedTensor(outShape(shape, s, p, d))
            S.checkGradients(inputs: [x.tensor, weight.tensor], gradients: [dx.tensor, dw.tensor], output: y.tensor,
                             forward: { depthwise3x3Forward(y.tensor, x.tensor, weight: weight.tensor, stride: s, padding: p,
                                                            dilation: d, pool: pool) },
                             backward: { dy in depthwise3x3Backward(dx: dx.tensor, dweight: dw.tensor, dy: dy, x: x.tensor,
                                                                    weight: weight.tensor, stride: s, padding: p, dilation: d,
                                                                    pool: pool, scratch: sc) },
                             "fast s\(s) p\(p) d\(d)")
            S.checkGradients(inputs: [x.tensor, weight.tensor], gradients: [dx.tensor, dw.tensor], output: y.tensor,
                             forward: { depthwise3x3ForwardNaive(y.tensor, x.tensor, weight: weight.tensor, stride: s,
                                                                 padding: p, dilation: d) },
                             backward: { dy in depthwise3x3BackwardNaive(dx: dx.tensor, dweight: dw.tensor, dy: dy, x: x.tensor,
                                                                         weight: weight.tensor, stride: s, padding: p,
                                                                         dilation: d) },
                             "naive s\(s) p\(p) d\(d)")
        }
    }

    func testOneTwoAndThreeThreadsAreBitwiseEqual() {
        for (s, p, d) in settings {
            let shape = Shape(3, 7, 13, 11)
            let out = outShape(shape, s, p, d)
            let x = S.random(shape, seed: 81), weight = S.random(Shape(7, 1, 3, 3), seed: 82), dy = S.random(out, seed: 83)
            func run(_ threads: Int) -> [OwnedTensor] {
                let pool = WorkerPool(threads: threads), sc = scratch(threads: threads, width: shape.w, s, p, d)
                let y = OwnedTensor(out), dx = S.random(shape, seed: 84), dw = S.random(weight.shape, seed: 85)
                depthwise3x3Forward(y.tensor, x.tensor, weight: weight.tensor, stride: s, padding: p, dilation: d, pool: pool)
                depthwise3x3Backward(dx: dx.tensor, dweight: dw.tensor, dy: dy.tensor, x: x.tensor, weight: weight.tensor,
                                     stride: s, padding: p, dilation: d, pool: pool, scratch: sc)
                return [y, dx, dw]
            }
            let one = run(1)
            for threads in [2, 3] {
                for (a, b) in zip(one, run(threads)) { S.assertBitwiseEqual(a.tensor, b.tensor, "s\(s) p\(p) d\(d) threads \(threads)") }
            }
        }
    }

    func testNilOutputsAreSkippedAndBackwardAccumulates() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 3, 8, 9)
        let sc = scratch(threads: 2, width: shape.w, 2, 1, 1)
        let x = S.random(shape, seed: 91), weight = S.random(Shape(3, 1, 3, 3), seed: 92)
        let dy = S.random(outShape(shape, 2, 1, 1), seed: 93)
        let dx = OwnedTensor(shape), dw = OwnedTensor(weight.shape)
        S.assertAccumulates([dx.tensor, dw.tensor], tolerance: 1e-5, "depthwise") {
            depthwise3x3Backward(dx: dx.tensor, dweight: dw.tensor, dy: dy.tensor, x: x.tensor, weight: weight.tensor,
                                 stride: 2, pool: pool, scratch: sc)
        }
        dx.tensor.fill(3)
        depthwise3x3Backward(dx: nil, dweight: dw.tensor, dy: dy.tensor, x: x.tensor, weight: weight.tensor, stride: 2,
                             pool: pool, scratch: sc)
        XCTAssertTrue(dx.tensor.toArray().allSatisfy { $0 == 3 })
        // dweight nil needs no scratch at all.
        depthwise3x3Backward(dx: dx.tensor, dweight: nil, dy: dy.tensor, x: x.tensor, weight: weight.tensor, stride: 2,
                             pool: pool, scratch: Scratch(threads: 2))
    }
}
