// The AVX-512 loops of Sources/CPlaneKernels against the Swift loops they replace where the CPU has
// AVX-512, for widths around the 16- and 32-column vectors and several heights:
// - depthwise 3x3: the same bits for forward, input gradient (added into a dx that already holds
//   values) and weight gradient (added into a dweight that holds values), strides 1 and 2, paddings
//   0-2 and dilations 1-3, two images (the weight gradient's sums run across them);
// - max pooling 3x3 stride 2, paddings 0 and 1: the same values and the same winners (so the same
//   dx), on data full of ties, -infinity windows and NaNs.
// Without AVX-512 there is nothing to compare, and the tests say so by skipping.

import XCTest
@testable import SegEngine
import SegEngineTestSupport

final class PlaneKernelsAVX512Tests: XCTestCase {
    private typealias S = OpsTestSupport

    /// Calls body(x shape, stride, padding, dilation) for every case with a non-empty output.
    private func forEachCase(_ body: (Shape, Int, Int, Int) -> Void) {
        for width in Array(1...19) + [31, 32, 33, 47, 64, 65, 130] {
            for height in [1, 2, 5, 9] {
                for (s, p, d) in [(1, 1, 1), (2, 1, 1), (1, 0, 1), (2, 0, 1), (1, 2, 2), (2, 2, 2), (1, 2, 1),
                                  (2, 1, 3), (1, 3, 3)] {
                    let g = ConvGeometry(kernel: 3, stride: s, padding: p, dilation: d)
                    guard g.output(width) > 0, g.output(height) > 0 else { continue }
                    body(Shape(2, (width + height) % 3 + 1, height, width), s, p, d)
                }
            }
        }
    }

    func testForwardGivesTheSwiftBits() throws {
        try XCTSkipUnless(avx512Kernels, "this CPU has no AVX-512: only the Swift loops run")
        let pool = WorkerPool(threads: 2)
        var compared = 0
        forEachCase { shape, s, p, d in
            let g = ConvGeometry(kernel: 3, stride: s, padding: p, dilation: d)
            let x = S.random(shape, seed: UInt64(shape.w * 100 + shape.h))
            let weight = S.random(Shape(shape.c, 1, 3, 3), seed: 3)
            let out = Shape(shape.n, shape.c, g.output(shape.h), g.output(shape.w))
            let swift = S.random(out, seed: 5), fast = S.random(out, seed: 6)  // garbage: must be overwritten
            depthwise3x3Forward(swift.tensor, x.tensor, weight: weight.tensor, stride: s, padding: p, dilation: d,
                                pool: pool, avx512: false)
            depthwise3x3Forward(fast.tensor, x.tensor, weight: weight.tensor, stride: s, padding: p, dilation: d,
                                pool: pool, avx512: true)
            S.assertBitwiseEqual(fast.tensor, swift.tensor, "forward x \(shape) s \(s) p \(p) d \(d)")
            compared += 1
        }
        XCTAssertGreaterThan(compared, 250)
    }

    func testBackwardGivesTheSwiftBits() throws {
        try XCTSkipUnless(avx512Kernels, "this CPU has no AVX-512: only the Swift loops run")
        let pool = WorkerPool(threads: 2)
        var compared = 0
        forEachCase { shape, s, p, d in
            let g = ConvGeometry(kernel: 3, stride: s, padding: p, dilation: d)
            let x = S.random(shape, seed: UInt64(shape.w * 31 + shape.h))
            let weight = S.random(Shape(shape.c, 1, 3, 3), seed: 3)
            let dy = S.random(Shape(shape.n, shape.c, g.output(shape.h), g.output(shape.w)), seed: 4)
            // Both gradients start from the same values: the loops add into them.
            let dxStart = S.random(shape, seed: 8), dwStart = S.random(weight.shape, seed: 9)
            let scratch = Scratch(threads: 2)
            scratch.reserve(floatsPerThread: depthwise3x3ScratchFloats(width: shape.w, stride: s, padding: p, dilation: d))
            var results: [(OwnedTensor, OwnedTensor)] = []
            for avx512 in [false, true] {
                let dx = OwnedTensor(shape), dw = OwnedTensor(weight.shape)
                dx.tensor.copy(from: dxStart.tensor); dw.tensor.copy(from: dwStart.tensor)
                depthwise3x3Backward(dx: dx.tensor, dweight: dw.tensor, dy: dy.tensor, x: x.tensor, weight: weight.tensor,
                                     stride: s, padding: p, dilation: d, pool: pool, scratch: scratch, avx512: avx512)
                results.append((dx, dw))
            }
            let what = "x \(shape) s \(s) p \(p) d \(d)"
            S.assertBitwiseEqual(results[1].0.tensor, results[0].0.tensor, "dx, " + what)
            S.assertBitwiseEqual(results[1].1.tensor, results[0].1.tensor, "dweight, " + what)
            compared += 1
        }
        XCTAssertGreaterThan(compared, 250)
    }

    func testMaxPoolGivesTheSwiftValuesAndWinners() throws {
        try XCTSkipUnless(avx512Kernels, "this CPU has no AVX-512: only the Swift loops run")
        let pool = WorkerPool(threads: 2)
        var compared = 0
        for width in Array(1...37) + [64, 65, 130] {
            for height in [1, 2, 3, 4, 7] {
                for padding in [0, 1] {
                    let g = ConvGeometry(kernel: 3, stride: 2, padding: padding)
                    guard g.output(width) > 0, g.output(height) > 0 else { continue }
                    let shape = Shape(2, 2, height, width)
                    // Five levels, so most windows hold ties; some -infinity runs and NaNs; the last
                    // plane all -infinity, so every window's gradient goes to its first position.
                    let x = S.random(shape, seed: UInt64(width * 10 + height))
                    for k in 0..<x.tensor.count {
                        let v = x.tensor.data[k]
                        x.tensor.data[k] = k % 23 == 0 ? .nan : (k % 7 < 3 ? -.infinity : (v * 2).rounded())
                    }
                    x.tensor.plane(1, 1).update(repeating: -.infinity, count: shape.plane)
                    let out = Shape(2, 2, g.output(height), g.output(width))
                    let dy = S.random(out, seed: 3), dxStart = S.random(shape, seed: 4)
                    var results: [(OwnedTensor, OwnedTensor)] = []
                    for avx512 in [false, true] {
                        let y = S.random(out, seed: 5), dx = OwnedTensor(shape)
                        dx.tensor.copy(from: dxStart.tensor)
                        maxPoolForward(y.tensor, x.tensor, kernel: 3, stride: 2, padding: padding, pool: pool,
                                       avx512: avx512)
                        maxPoolBackward(dx: dx.tensor, dy: dy.tensor, x: x.tensor, kernel: 3, stride: 2,
                                        padding: padding, pool: pool, avx512: avx512)
                        results.append((y, dx))
                    }
                    let what = "x \(shape) padding \(padding)"
                    S.assertBitwiseEqual(results[1].0.tensor, results[0].0.tensor, "y, " + what)
                    S.assertBitwiseEqual(results[1].1.tensor, results[0].1.tensor, "dx, " + what)
                    compared += 1
                }
            }
        }
        XCTAssertGreaterThan(compared, 300)
    }
}
