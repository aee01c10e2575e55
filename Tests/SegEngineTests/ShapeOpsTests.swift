import XCTest
@testable import SegEngine

final class ShapeOpsTests: XCTestCase {
    private typealias S = OpsTestSupport

    // MARK: Concatenation

    func testConcatValues() {
        let pool = WorkerPool(threads: 3)
        let a = OwnedTensor(Shape(2, 1, 1, 2), [1, 2, 3, 4])
        let b = OwnedTensor(Shape(2, 2, 1, 2), [10, 11, 12, 13, 20, 21, 22, 23])
        let y = OwnedTensor(Shape(2, 3, 1, 2))
        y.tensor.fill(.nan)
        concatChannelsForward(y.tensor, a.tensor, b.tensor, pool: pool)
        S.assertClose(y.tensor, [1, 2, 10, 11, 12, 13,
                                 3, 4, 20, 21, 22, 23], tolerance: 0)

        let dy = OwnedTensor(y.shape, (0..<12).map(Float.init))
        let da = OwnedTensor(a.shape), db = OwnedTensor(b.shape)
        concatChannelsBackward(da: da.tensor, db: db.tensor, dy: dy.tensor, pool: pool)
        S.assertClose(da.tensor, [0, 1, 6, 7], tolerance: 0, "da")
        S.assertClose(db.tensor, [2, 3, 4, 5, 8, 9, 10, 11], tolerance: 0, "db")

        // A nil gradient is skipped; the other one alone still finds its channels.
        let onlyA = OwnedTensor(a.shape), onlyB = OwnedTensor(b.shape)
        concatChannelsBackward(da: onlyA.tensor, db: nil, dy: dy.tensor, pool: pool)
        concatChannelsBackward(da: nil, db: onlyB.tensor, dy: dy.tensor, pool: pool)
        S.assertClose(onlyA.tensor, da.tensor.toArray(), tolerance: 0, "da alone")
        S.assertClose(onlyB.tensor, db.tensor.toArray(), tolerance: 0, "db alone")
    }

    func testConcatGradient() {
        let pool = WorkerPool(threads: 2)
        let a = S.random(Shape(2, 2, 3, 5), seed: 31), b = S.random(Shape(2, 3, 3, 5), seed: 32)
        let da = OwnedTensor(a.shape), db = OwnedTensor(b.shape), y = OwnedTensor(Shape(2, 5, 3, 5))
        S.checkGradients(inputs: [a.tensor, b.tensor], gradients: [da.tensor, db.tensor], output: y.tensor,
                         forward: { concatChannelsForward(y.tensor, a.tensor, b.tensor, pool: pool) },
                         backward: { dy in concatChannelsBackward(da: da.tensor, db: db.tensor, dy: dy, pool: pool) },
                         "concat")
    }

    // MARK: Padding

    func testPadValuesFollowPyTorchSplit() {
        let pool = WorkerPool(threads: 2)
        // diff 1 rows -> 0 above, 1 below; diff 3 columns -> 1 left, 2 right.
        let x = OwnedTensor(Shape(1, 1, 2, 2), [1, 2, 3, 4])
        let y = OwnedTensor(Shape(1, 1, 3, 5))
        y.tensor.fill(.nan)
        padToForward(y.tensor, x.tensor, pool: pool)
        S.assertClose(y.tensor, [0, 1, 2, 0, 0,
                                 0, 3, 4, 0, 0,
                                 0, 0, 0, 0, 0], tolerance: 0)

        let dy = OwnedTensor(y.shape, (0..<15).map(Float.init))
        let dx = OwnedTensor(x.shape)
        padToBackward(dx: dx.tensor, dy: dy.tensor, pool: pool)
        S.assertClose(dx.tensor, [1, 2, 6, 7], tolerance: 0)

        // Equal sizes: a copy.
        let same = OwnedTensor(x.shape)
        same.tensor.fill(.nan)
        padToForward(same.tensor, x.tensor, pool: pool)
        S.assertClose(same.tensor, [1, 2, 3, 4], tolerance: 0)
    }

    func testPadGradient() {
        let pool = WorkerPool(threads: 2)
        let x = S.random(Shape(2, 3, 3, 4), seed: 33), dx = OwnedTensor(x.shape)
        let y = OwnedTensor(Shape(2, 3, 6, 7))
        S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { padToForward(y.tensor, x.tensor, pool: pool) },
                         backward: { dy in padToBackward(dx: dx.tensor, dy: dy, pool: pool) },
                         "pad 3x4 -> 6x7")
    }

    // MARK: All

    func testBackwardAccumulates() {
        let pool = WorkerPool(threads: 2)
        let dy = S.random(Shape(2, 5, 3, 5), seed: 34)
        let da = OwnedTensor(Shape(2, 2, 3, 5)), db = OwnedTensor(Shape(2, 3, 3, 5))
        S.assertAccumulates([da.tensor, db.tensor], "concat") {
            concatChannelsBackward(da: da.tensor, db: db.tensor, dy: dy.tensor, pool: pool)
        }
        let dx = OwnedTensor(Shape(2, 5, 2, 2))
        S.assertAccumulates([dx.tensor], "pad") { padToBackward(dx: dx.tensor, dy: dy.tensor, pool: pool) }
    }
}
