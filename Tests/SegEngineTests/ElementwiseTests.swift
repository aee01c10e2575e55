import XCTest
@testable import SegEngine

final class ElementwiseTests: XCTestCase {
    private typealias S = OpsTestSupport
    private let shape = Shape(2, 3, 5, 7)

    // MARK: ReLU

    func testReluForwardValuesAndInPlace() {
        let pool = WorkerPool(threads: 2)
        let values: [Float] = [-2, -0.5, 0, 0.25, 3, -1e-30]
        let x = OwnedTensor(Shape(1, 1, 2, 3), values), y = OwnedTensor(x.shape)
        y.tensor.fill(42)
        reluForward(y.tensor, x.tensor, pool: pool)
        S.assertClose(y.tensor, [0, 0, 0, 0.25, 3, 0], tolerance: 0, "out of place")
        reluForward(x.tensor, x.tensor, pool: pool)
        S.assertClose(x.tensor, [0, 0, 0, 0.25, 3, 0], tolerance: 0, "in place")
    }

    func testReluBackwardMasksByOutput() {
        let pool = WorkerPool(threads: 2)
        let y = OwnedTensor(Shape(1, 1, 1, 4), [0, 2, 0, 0.5])
        let dy = OwnedTensor(y.shape, [10, 20, 30, 40])
        let dx = OwnedTensor(y.shape, [1, 1, 1, 1])
        reluBackward(dx: dx.tensor, dy: dy.tensor, y: y.tensor, pool: pool)
        S.assertClose(dx.tensor, [1, 21, 1, 41], tolerance: 0)
    }

    func testReluGradient() {
        let pool = WorkerPool(threads: 2)
        let x = S.random(shape, seed: 1), y = OwnedTensor(shape), dx = OwnedTensor(shape)
        S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { reluForward(y.tensor, x.tensor, pool: pool) },
                         backward: { dy in reluBackward(dx: dx.tensor, dy: dy, y: y.tensor, pool: pool) }, "relu")
    }

    // MARK: Sigmoid

    func testSigmoidExtremesAndValues() {
        let pool = WorkerPool(threads: 2)
        let values: [Float] = [-1000, -100, -20, -1, 0, 1, 20, 100, 1000, -Float.greatestFiniteMagnitude]
        let x = OwnedTensor(Shape(1, 1, 1, values.count), values), y = OwnedTensor(x.shape)
        sigmoidForward(y.tensor, x.tensor, pool: pool)
        XCTAssertFalse(y.tensor.toArray().contains { $0.isNaN }, "\(y.tensor.toArray())")
        XCTAssertEqual(y.tensor[0], 0)
        XCTAssertEqual(y.tensor[8], 1)
        XCTAssertEqual(y.tensor[9], 0)
        XCTAssertEqual(y.tensor[4], 0.5)
        XCTAssertTrue(y.tensor[1] >= 0 && y.tensor[1] < 1e-30, "sigmoid(-100) = \(y.tensor[1])")
        XCTAssertEqual(y.tensor[7], 1)
        for (i, v) in values.enumerated() where abs(v) <= 20 {
            let expected = 1 / (1 + exp(-Double(v)))
            XCTAssertEqual(Double(y.tensor[i]), expected, accuracy: 1e-6 * expected, "x = \(v)")
        }
    }

    func testSigmoidGradient() {
        let pool = WorkerPool(threads: 2)
        let x = S.random(shape, seed: 2, in: -4...4), y = OwnedTensor(shape), dx = OwnedTensor(shape)
        S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { sigmoidForward(y.tensor, x.tensor, pool: pool) },
                         backward: { dy in sigmoidBackward(dx: dx.tensor, dy: dy, y: y.tensor, pool: pool) },
                         "sigmoid")
    }

    // MARK: Softmax

    func testSoftmaxSumsToOneAndIsStableForLargeLogits() {
        let pool = WorkerPool(threads: 2)
        // 3 channels, 2x2 pixels: pixel 0 has logits (1000, 1001, 999), the others moderate ones.
        let x = OwnedTensor(Shape(1, 3, 2, 2), [1000, 0, -5, 88,
                                                1001, 1, -5, 89,
                                                999, 2, -1000, 90])
        let y = OwnedTensor(x.shape)
        softmaxForward(y.tensor, x.tensor, pool: pool)
        XCTAssertFalse(y.tensor.toArray().contains { !$0.isFinite }, "\(y.tensor.toArray())")
        for p in 0..<4 {
            let sum = (0..<3).reduce(Float(0)) { $0 + y.tensor[0, $1, 0, p] }
            XCTAssertEqual(sum, 1, accuracy: 1e-6, "pixel \(p)")
        }
        // softmax(1000, 1001, 999) = softmax(1, 2, 0); pixel 1 has the same logits.
        let e: [Double] = [exp(1), exp(2), exp(0)]
        let total = e.reduce(0, +)
        for c in 0..<3 {
            XCTAssertEqual(Double(y.tensor[0, c, 0, 0]), e[c] / total, accuracy: 1e-6)
            XCTAssertEqual(Double(y.tensor[0, c, 0, 1]), [exp(0), exp(1), exp(2)][c] / total, accuracy: 1e-6)
        }
        XCTAssertEqual(y.tensor[0, 0, 1, 0], 0.5, accuracy: 1e-6)
        XCTAssertEqual(y.tensor[0, 2, 1, 0], 0)
    }

    func testSoftmaxInPlaceMatchesOutOfPlace() {
        let pool = WorkerPool(threads: 3)
        let x = S.random(shape, seed: 3, in: -5...5), y = OwnedTensor(shape)
        softmaxForward(y.tensor, x.tensor, pool: pool)
        softmaxForward(x.tensor, x.tensor, pool: pool)
        S.assertBitwiseEqual(x.tensor, y.tensor)
    }

    func testSoftmaxGradient() {
        let pool = WorkerPool(threads: 2)
        let x = S.random(shape, seed: 4, in: -2...2), y = OwnedTensor(shape), dx = OwnedTensor(shape)
        S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { softmaxForward(y.tensor, x.tensor, pool: pool) },
                         backward: { dy in softmaxBackward(dx: dx.tensor, dy: dy, y: y.tensor, pool: pool) },
                         "softmax")
    }

    // MARK: All

    func testBackwardAccumulates() {
        let pool = WorkerPool(threads: 2)
        let x = S.random(shape, seed: 5), dy = S.random(shape, seed: 6)
        let y = OwnedTensor(shape), dx = OwnedTensor(shape)
        reluForward(y.tensor, x.tensor, pool: pool)
        S.assertAccumulates([dx.tensor], "relu") { reluBackward(dx: dx.tensor, dy: dy.tensor, y: y.tensor, pool: pool) }
        sigmoidForward(y.tensor, x.tensor, pool: pool)
        S.assertAccumulates([dx.tensor], "sigmoid") {
            sigmoidBackward(dx: dx.tensor, dy: dy.tensor, y: y.tensor, pool: pool)
        }
        softmaxForward(y.tensor, x.tensor, pool: pool)
        S.assertAccumulates([dx.tensor], "softmax") {
            softmaxBackward(dx: dx.tensor, dy: dy.tensor, y: y.tensor, pool: pool)
        }
    }

    func testResultsDoNotDependOnThreadCount() {
        let x = S.random(shape, seed: 7, in: -3...3), dy = S.random(shape, seed: 8)
        func run(_ threads: Int) -> [OwnedTensor] {
            let pool = WorkerPool(threads: threads)
            let y = OwnedTensor(shape), dx = OwnedTensor(shape)
            softmaxForward(y.tensor, x.tensor, pool: pool)
            softmaxBackward(dx: dx.tensor, dy: dy.tensor, y: y.tensor, pool: pool)
            let s = OwnedTensor(shape), ds = OwnedTensor(shape)
            sigmoidForward(s.tensor, x.tensor, pool: pool)
            sigmoidBackward(dx: ds.tensor, dy: dy.tensor, y: s.tensor, pool: pool)
            return [y, dx, s, ds]
        }
        let reference = run(1)
        for threads in [2, 3] {
            for (a, b) in zip(reference, run(threads)) {
                S.assertBitwiseEqual(a.tensor, b.tensor, "threads \(threads)")
            }
        }
    }

    func testReluBackwardInPlaceMatchesAddingBackward() {
        let shape = Shape(2, 3, 5, 7)
        let y = OwnedTensor(shape), dy = OwnedTensor(shape)
        var rng = SplitMix64(seed: 12)
        for i in 0..<shape.count {
            y.tensor[i] = max(0, rng.nextFloat(in: -1...1))  // a ReLU output: zeros and positives
            dy.tensor[i] = rng.nextFloat(in: -1...1)
        }
        let reference = OwnedTensor(shape)
        reluBackward(dx: reference.tensor, dy: dy.tensor, y: y.tensor, pool: WorkerPool(threads: 1))
        reluBackwardInPlace(dy.tensor, y: y.tensor, pool: WorkerPool(threads: 3))
        XCTAssertEqual(dy.tensor.toArray(), reference.tensor.toArray())
        XCTAssertTrue((0..<shape.count).contains { y.tensor[$0] == 0 } && (0..<shape.count).contains { y.tensor[$0] > 0 })
    }
}
