import XCTest
@testable import SegEngine

final class PoolingTests: XCTestCase {
    private typealias S = OpsTestSupport

    func testForwardHandValuesOnOddSizeFloors() {
        let pool = WorkerPool(threads: 2)
        // 3x5: one 1x2 output; the last row (100s) and last column (99s) lie outside every window.
        let x = OwnedTensor(Shape(1, 1, 3, 5), [1, 2, 8, -1, 99,
                                                4, 3, 0, -2, 99,
                                                100, 100, 100, 100, 100])
        let y = OwnedTensor(Shape(1, 1, 1, 2))
        maxPool2x2Forward(y.tensor, x.tensor, pool: pool)
        S.assertClose(y.tensor, [4, 8], tolerance: 0)
    }

    func testForwardMatchesWindowMaximumOnSeveralPlanes() {
        let pool = WorkerPool(threads: 3)
        let x = S.random(Shape(2, 3, 5, 7), seed: 11)
        let y = OwnedTensor(Shape(2, 3, 2, 3))
        y.tensor.fill(.nan)
        maxPool2x2Forward(y.tensor, x.tensor, pool: pool)
        for n in 0..<2 {
            for c in 0..<3 {
                for i in 0..<2 {
                    for j in 0..<3 {
                        let window = [x.tensor[n, c, 2 * i, 2 * j], x.tensor[n, c, 2 * i, 2 * j + 1],
                                      x.tensor[n, c, 2 * i + 1, 2 * j], x.tensor[n, c, 2 * i + 1, 2 * j + 1]]
                        XCTAssertEqual(y.tensor[n, c, i, j], window.max()!, "(\(n), \(c), \(i), \(j))")
                    }
                }
            }
        }
    }

    func testBackwardRoutesToFirstMaximumOnTiesAndSkipsOddEdge() {
        let pool = WorkerPool(threads: 2)
        // Three windows in a 3x7 input: all equal -> top-left; tie top-right / bottom-left ->
        // top-right; tie on the bottom row -> bottom-left. Last row and column get nothing.
        let x = OwnedTensor(Shape(1, 1, 3, 7), [3, 3, 1, 5, 0, 0, 9,
                                                3, 3, 5, 2, 7, 7, 9,
                                                9, 9, 9, 9, 9, 9, 9])
        let dy = OwnedTensor(Shape(1, 1, 1, 3), [10, 20, 30])
        let dx = OwnedTensor(x.shape)
        maxPool2x2Backward(dx: dx.tensor, dy: dy.tensor, x: x.tensor, pool: pool)
        S.assertClose(dx.tensor, [10, 0, 0, 20, 0, 0, 0,
                                  0, 0, 0, 0, 30, 0, 0,
                                  0, 0, 0, 0, 0, 0, 0], tolerance: 0)
    }

    func testGradientOnOddSize() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 3, 5, 7)
        let x = S.random(shape, seed: 12), dx = OwnedTensor(shape)
        let y = OwnedTensor(Shape(2, 3, 2, 3))
        S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { maxPool2x2Forward(y.tensor, x.tensor, pool: pool) },
                         backward: { dy in maxPool2x2Backward(dx: dx.tensor, dy: dy, x: x.tensor, pool: pool) },
                         "maxPool 5x7")
    }

    func testBackwardAccumulates() {
        let pool = WorkerPool(threads: 2)
        let x = S.random(Shape(2, 2, 6, 5), seed: 13), dx = OwnedTensor(x.shape)
        let dy = S.random(Shape(2, 2, 3, 2), seed: 14)
        S.assertAccumulates([dx.tensor], "maxPool") {
            maxPool2x2Backward(dx: dx.tensor, dy: dy.tensor, x: x.tensor, pool: pool)
        }
    }
}
