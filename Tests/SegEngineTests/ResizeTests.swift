import XCTest
@testable import SegEngine
import SegEngineTestSupport

final class ResizeTests: XCTestCase {
    private typealias S = OpsTestSupport
    /// Odd and degenerate shapes (including 1-pixel rows and columns, where all clamping happens).
    private let shapes = [Shape(2, 3, 3, 5), Shape(1, 2, 1, 1), Shape(1, 1, 1, 4), Shape(1, 2, 4, 1),
                          Shape(2, 1, 6, 3), Shape(1, 5, 2, 2)]

    private func doubled(_ s: Shape) -> Shape { Shape(s.n, s.c, 2 * s.h, 2 * s.w) }

    // MARK: Bilinear

    func testBilinearMatchesPyTorchOnKnownInputs() {
        let pool = WorkerPool(threads: 2)
        // torch.nn.functional.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)
        let x = OwnedTensor(Shape(1, 1, 2, 2), [1, 2, 3, 4])
        let expected: [Float] = [1, 1.25, 1.75, 2,
                                 1.5, 1.75, 2.25, 2.5,
                                 2.5, 2.75, 3.25, 3.5,
                                 3, 3.25, 3.75, 4]
        let fast = OwnedTensor(Shape(1, 1, 4, 4)), naive = OwnedTensor(Shape(1, 1, 4, 4))
        upsampleBilinear2xForward(fast.tensor, x.tensor, pool: pool)
        upsampleBilinear2xForwardNaive(naive.tensor, x.tensor)
        S.assertClose(fast.tensor, expected, tolerance: 1e-6, "fast")
        S.assertClose(naive.tensor, expected, tolerance: 1e-6, "naive")

        let row = OwnedTensor(Shape(1, 1, 1, 3), [1, 2, 3])
        let rowOut = OwnedTensor(Shape(1, 1, 2, 6))
        upsampleBilinear2xForward(rowOut.tensor, row.tensor, pool: pool)
        let line: [Float] = [1, 1.25, 1.75, 2.25, 2.75, 3]
        S.assertClose(rowOut.tensor, line + line, tolerance: 1e-6, "1x3")
    }

    func testBilinearFastMatchesNaiveOnOddShapesAndThreadCounts() {
        for shape in shapes {
            let x = S.random(shape, seed: 21), dy = S.random(doubled(shape), seed: 22)
            let naiveY = OwnedTensor(doubled(shape)), naiveDx = S.random(shape, seed: 23)
            upsampleBilinear2xForwardNaive(naiveY.tensor, x.tensor)
            let start = naiveDx.tensor.toArray()
            upsampleBilinear2xBackwardNaive(dx: naiveDx.tensor, dy: dy.tensor)
            var firstY: [Float]? = nil, firstDx: [Float]? = nil
            for threads in 1...3 {
                let pool = WorkerPool(threads: threads)
                let y = OwnedTensor(doubled(shape)), dx = OwnedTensor(shape, start)
                y.tensor.fill(.nan)
                upsampleBilinear2xForward(y.tensor, x.tensor, pool: pool)
                upsampleBilinear2xBackward(dx: dx.tensor, dy: dy.tensor, pool: pool)
                let label = "\(shape) threads \(threads)"
                // Rounding model (RoundingModel.swift): each kernel is within gamma(n) x magnitude of the
                // exact value, so the two differ by at most twice that. y: 4 inputs (|x| <= 1) with
                // weights summing to 1 through two lerps (n = 6, magnitude 1). dx: the start value
                // (|.| <= 1) plus at most 16 contributions of |dy| <= 1 whose weights sum to 4 (n = 20,
                // magnitude 5).
                XCTAssertLessThanOrEqual(Double(S.maxAbsDifference(y.tensor, naiveY.tensor)),
                                         2 * RoundingModel.gamma(6) * 1, label)
                XCTAssertLessThanOrEqual(Double(S.maxAbsDifference(dx.tensor, naiveDx.tensor)),
                                         2 * RoundingModel.gamma(20) * 5, label)
                // Planes are split statically: every thread count gives the same bits.
                if let firstY, let firstDx {
                    XCTAssertEqual(y.tensor.toArray().map(\.bitPattern), firstY.map(\.bitPattern), "\(shape)")
                    XCTAssertEqual(dx.tensor.toArray().map(\.bitPattern), firstDx.map(\.bitPattern), "\(shape)")
                } else {
                    firstY = y.tensor.toArray()
                    firstDx = dx.tensor.toArray()
                }
            }
        }
    }

    /// Into and from a channel slice (a UNet decoder's concatenation [skip, upsampled]): the same
    /// bits as the whole-tensor kernels, the other channels untouched (forward) or unread (backward).
    func testBilinearAtChannelOffsetIsTheWholeTensorKernelOnASlice() {
        let pool = WorkerPool(threads: 2)
        for (shape, skipChannels, extra) in [(Shape(2, 3, 3, 5), 2, 0), (Shape(1, 2, 1, 1), 0, 1), (Shape(3, 1, 4, 2), 3, 2)] {
            let big = Shape(shape.n, skipChannels + shape.c + extra, 2 * shape.h, 2 * shape.w)
            let x = S.random(shape, seed: 31), y = S.random(big, seed: 32)
            let before = y.tensor.toArray()
            upsampleBilinear2xForward(y.tensor, x.tensor, at: skipChannels, pool: pool)
            let alone = OwnedTensor(doubled(shape))
            upsampleBilinear2xForward(alone.tensor, x.tensor, pool: pool)
            let plane = big.plane
            for n in 0..<big.n {
                for c in 0..<big.c {
                    let got = Array(UnsafeBufferPointer(start: y.tensor.plane(n, c), count: plane)).map(\.bitPattern)
                    let inSlice = c >= skipChannels && c < skipChannels + shape.c
                    let expected = inSlice ? Array(UnsafeBufferPointer(start: alone.tensor.plane(n, c - skipChannels), count: plane))
                        : Array(before[(n * big.c + c) * plane ..< (n * big.c + c + 1) * plane])
                    XCTAssertEqual(got, expected.map(\.bitPattern), "\(shape) at \(skipChannels) plane (\(n), \(c))")
                }
            }
            // Backward: the slice of dy, copied out, through the whole-tensor kernel.
            let dy = S.random(big, seed: 33), dxStart = S.random(shape, seed: 34)
            let dx = OwnedTensor(shape, dxStart.tensor.toArray()), dxAlone = OwnedTensor(shape, dxStart.tensor.toArray())
            upsampleBilinear2xBackward(dx: dx.tensor, dy: dy.tensor, at: skipChannels, pool: pool)
            let slice = OwnedTensor(doubled(shape))
            for n in 0..<shape.n {
                for c in 0..<shape.c { slice.tensor.plane(n, c).update(from: dy.tensor.plane(n, skipChannels + c), count: plane) }
            }
            upsampleBilinear2xBackward(dx: dxAlone.tensor, dy: slice.tensor, pool: pool)
            XCTAssertEqual(dx.tensor.toArray().map(\.bitPattern), dxAlone.tensor.toArray().map(\.bitPattern), "\(shape) backward")
        }
    }

    func testBilinearGradientFastAndNaive() {
        let pool = WorkerPool(threads: 2)
        for shape in [Shape(2, 2, 3, 5), Shape(1, 1, 1, 2)] {
            let x = S.random(shape, seed: 24), dx = OwnedTensor(shape), y = OwnedTensor(doubled(shape))
            S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                             forward: { upsampleBilinear2xForward(y.tensor, x.tensor, pool: pool) },
                             backward: { dy in upsampleBilinear2xBackward(dx: dx.tensor, dy: dy, pool: pool) },
                             "bilinear fast \(shape)")
            S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                             forward: { upsampleBilinear2xForwardNaive(y.tensor, x.tensor) },
                             backward: { dy in upsampleBilinear2xBackwardNaive(dx: dx.tensor, dy: dy) },
                             "bilinear naive \(shape)")
        }
    }

    // MARK: Nearest

    func testNearestValues() {
        let pool = WorkerPool(threads: 2)
        let x = OwnedTensor(Shape(1, 1, 2, 3), [1, 2, 3, 4, 5, 6])
        let y = OwnedTensor(Shape(1, 1, 4, 6))
        upsampleNearest2xForward(y.tensor, x.tensor, pool: pool)
        S.assertClose(y.tensor, [1, 1, 2, 2, 3, 3,
                                 1, 1, 2, 2, 3, 3,
                                 4, 4, 5, 5, 6, 6,
                                 4, 4, 5, 5, 6, 6], tolerance: 0)
        let dy = OwnedTensor(y.shape, (0..<24).map(Float.init))
        let dx = OwnedTensor(x.shape)
        upsampleNearest2xBackward(dx: dx.tensor, dy: dy.tensor, pool: pool)
        // Block sums: (0+1+6+7), (2+3+8+9), (4+5+10+11), then + 48 each for the lower row.
        S.assertClose(dx.tensor, [14, 22, 30, 62, 70, 78], tolerance: 0)
    }

    func testNearestGradient() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 3, 3, 5)
        let x = S.random(shape, seed: 25), dx = OwnedTensor(shape), y = OwnedTensor(doubled(shape))
        S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { upsampleNearest2xForward(y.tensor, x.tensor, pool: pool) },
                         backward: { dy in upsampleNearest2xBackward(dx: dx.tensor, dy: dy, pool: pool) },
                         "nearest")
    }

    // MARK: All

    func testBackwardAccumulates() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 3, 3, 5)
        let dx = OwnedTensor(shape), dy = S.random(doubled(shape), seed: 26)
        S.assertAccumulates([dx.tensor], "bilinear") {
            upsampleBilinear2xBackward(dx: dx.tensor, dy: dy.tensor, pool: pool)
        }
        // The naive kernel adds four times per output, so doubling is exact only up to rounding.
        S.assertAccumulates([dx.tensor], tolerance: 1e-6, "bilinear naive") {
            upsampleBilinear2xBackwardNaive(dx: dx.tensor, dy: dy.tensor)
        }
        S.assertAccumulates([dx.tensor], "nearest") {
            upsampleNearest2xBackward(dx: dx.tensor, dy: dy.tensor, pool: pool)
        }
    }
}
