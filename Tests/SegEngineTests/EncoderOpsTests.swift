// Tests of the encoders' smaller ops (issue #16): max-pool 3x3 stride 2 padding 1 (MaxPool3x3.swift),
// the residual add with and without the fused ReLU and ReLU6 (Residual.swift), and BatchNorm in
// evaluation and frozen mode (BatchNorm.swift's batchNormEvalBackward). Each: PyTorch's shapes and
// conventions on hand values, fast against the naive twin, finite differences on both, and bitwise
// equality for 1, 2 and 3 threads.

import XCTest
@testable import SegEngine
import SegEngineTestSupport

final class EncoderOpsTests: XCTestCase {
    private typealias S = OpsTestSupport

    // MARK: - Max-pool 3x3, stride 2, padding 1

    private func pooledShape(_ x: Shape) -> Shape {
        let g = ConvGeometry(kernel: 3, stride: 2, padding: 1)
        return Shape(x.n, x.c, g.output(x.h), g.output(x.w))
    }

    func testMaxPoolShapesAsPyTorch() {
        // MaxPool2d(3, 2, 1): 112 -> 56 (ResNet), 16 -> 8, 15 -> 8, 1 -> 1, 2 -> 1.
        for (side, out) in [(112, 56), (16, 8), (15, 8), (1, 1), (2, 1), (3, 2)] {
            XCTAssertEqual(pooledShape(Shape(1, 1, side, side)), Shape(1, 1, out, out), "side \(side)")
        }
    }

    func testMaxPoolHandValuesTiesNaNAndInfinity() {
        let pool = WorkerPool(threads: 2)
        // 4x4 -> 2x2. Window (0, 0) covers rows/cols 0...1: all 5s (a tie: the first, (0, 0), wins).
        // Window (0, 1) covers rows 0...1, cols 1...3: 7 at (0, 3) and (1, 2): the first in row-major
        // order, (0, 3), wins. Window (1, 0): rows 1...3, cols 0...1: a tie of 5s at (1, 0) and (1, 1),
        // (1, 0) wins. Window (1, 1): rows 1...3, cols 1...3: 9 at (3, 3).
        let x = OwnedTensor(Shape(1, 1, 4, 4), [5, 5, 1, 7,
                                                5, 5, 7, 2,
                                                -3, -3, 0, 0,
                                                -3, -3, 0, 9])
        let y = OwnedTensor(Shape(1, 1, 2, 2)), dy = OwnedTensor(y.shape, [1, 2, 3, 4]), dx = OwnedTensor(x.shape)
        maxPoolForward(y.tensor, x.tensor, pool: pool)
        maxPoolBackward(dx: dx.tensor, dy: dy.tensor, x: x.tensor, pool: pool)
        S.assertClose(y.tensor, [5, 7, 5, 9], tolerance: 0)
        S.assertClose(dx.tensor, [1, 0, 0, 2,
                                  3, 0, 0, 0,
                                  0, 0, 0, 0,
                                  0, 0, 0, 4], tolerance: 0)
        // A window of -infinity gives -infinity and routes its gradient to its first in-image value
        // (padding never wins); a NaN wins its window and propagates.
        let special = OwnedTensor(Shape(1, 1, 2, 3), [-.infinity, -.infinity, 1, -.infinity, -.infinity, .nan])
        let ys = OwnedTensor(Shape(1, 1, 1, 2)), dxs = OwnedTensor(special.shape)
        maxPoolForward(ys.tensor, special.tensor, pool: pool)
        XCTAssertEqual(ys.tensor[0], -.infinity)
        XCTAssertTrue(ys.tensor[1].isNaN)
        let dys = OwnedTensor(ys.shape, [10, 20])
        maxPoolBackward(dx: dxs.tensor, dy: dys.tensor, x: special.tensor, pool: pool)
        S.assertClose(dxs.tensor, [10, 0, 0, 0, 0, 20], tolerance: 0)
        let ysNaive = OwnedTensor(ys.shape), dxsNaive = OwnedTensor(special.shape)
        maxPoolNaive(y: ysNaive.tensor, dx: dxsNaive.tensor, dy: dys.tensor, x: special.tensor)
        XCTAssertEqual(ysNaive.tensor[0], -.infinity)
        XCTAssertTrue(ysNaive.tensor[1].isNaN)
        S.assertClose(dxsNaive.tensor, [10, 0, 0, 0, 0, 20], tolerance: 0)
    }

    func testMaxPoolFastEqualsNaiveBitwise() {
        // A maximum is one of the inputs: no rounding, so fast and naive agree bit for bit, ties
        // included (values on a coarse grid make ties common).
        let pool = WorkerPool(threads: 2)
        for shape in [Shape(2, 3, 15, 15), Shape(1, 2, 8, 9), Shape(3, 1, 1, 4), Shape(1, 1, 2, 2)] {
            let x = S.random(shape, seed: 101)
            for i in 0..<x.tensor.count { x.tensor[i] = (x.tensor[i] * 3).rounded() }
            assertMaxPoolMatchesNaive(x, seed: 102, pool: pool)
        }
    }

    /// The kernel's forward and backward (into a random dx) against the naive twin, bit for bit.
    private func assertMaxPoolMatchesNaive(_ x: OwnedTensor, seed: UInt64, pool: WorkerPool,
                                           file: StaticString = #filePath, line: UInt = #line) {
        let shape = x.tensor.shape, out = pooledShape(shape), dy = S.random(out, seed: seed)
        let yF = OwnedTensor(out), yN = OwnedTensor(out)
        let dxF = S.random(shape, seed: seed + 1), dxN = OwnedTensor(shape)
        dxN.tensor.copy(from: dxF.tensor)
        maxPoolForward(yF.tensor, x.tensor, pool: pool)
        maxPoolBackward(dx: dxF.tensor, dy: dy.tensor, x: x.tensor, pool: pool)
        maxPoolNaive(y: yN.tensor, dx: dxN.tensor, dy: dy.tensor, x: x.tensor)
        S.assertBitwiseEqual(yF.tensor, yN.tensor, "forward \(shape)", file: file, line: line)
        S.assertBitwiseEqual(dxF.tensor, dxN.tensor, "dx \(shape)", file: file, line: line)
    }

    func testMaxPoolFastEqualsNaiveWithNaNAndInfinities() {
        // NaNs (the last in row-major order wins), -infinity windows (the first in-image
        // position) and +infinity, with ties, at odd and even sides: the naive twin's winner.
        let pool = WorkerPool(threads: 2)
        for shape in [Shape(2, 3, 15, 15), Shape(1, 2, 8, 9), Shape(2, 2, 9, 8), Shape(1, 1, 1, 5), Shape(1, 1, 4, 1)] {
            let x = S.random(shape, seed: 131)
            for i in 0..<x.tensor.count {
                let u = x.tensor[i]
                x.tensor[i] = u > 0.8 ? .nan : u > 0.6 ? -.infinity : u < -0.9 ? .infinity : (u * 2).rounded()
            }
            assertMaxPoolMatchesNaive(x, seed: 132, pool: pool)
        }
    }

    func testMaxPoolOtherWindowsFastEqualsNaive() {
        // Windows other than the stem's take the generic scan.
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 2, 9, 10)
        let x = S.random(shape, seed: 141)
        for i in 0..<x.tensor.count { x.tensor[i] = (x.tensor[i] * 3).rounded() }
        for (k, s, p) in [(2, 2, 0), (3, 1, 1), (5, 2, 2)] {
            let g = ConvGeometry(kernel: k, stride: s, padding: p)
            let out = Shape(2, 2, g.output(9), g.output(10)), dy = S.random(out, seed: 142)
            let yF = OwnedTensor(out), yN = OwnedTensor(out), dxF = OwnedTensor(shape), dxN = OwnedTensor(shape)
            maxPoolForward(yF.tensor, x.tensor, kernel: k, stride: s, padding: p, pool: pool)
            maxPoolBackward(dx: dxF.tensor, dy: dy.tensor, x: x.tensor, kernel: k, stride: s, padding: p, pool: pool)
            maxPoolNaive(y: yN.tensor, dx: dxN.tensor, dy: dy.tensor, x: x.tensor, kernel: k, stride: s, padding: p)
            S.assertBitwiseEqual(yF.tensor, yN.tensor, "forward \(k) \(s) \(p)")
            S.assertBitwiseEqual(dxF.tensor, dxN.tensor, "dx \(k) \(s) \(p)")
        }
    }

    func testMaxPoolGradientCheckFastAndNaive() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 2, 7, 6)
        let x = S.random(shape, seed: 111), dx = OwnedTensor(shape), y = OwnedTensor(pooledShape(shape))
        S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { maxPoolForward(y.tensor, x.tensor, pool: pool) },
                         backward: { dy in maxPoolBackward(dx: dx.tensor, dy: dy, x: x.tensor, pool: pool) }, "maxPool 3x3")
        S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { maxPoolNaive(y: y.tensor, dx: nil, dy: nil, x: x.tensor) },
                         backward: { dy in maxPoolNaive(y: y.tensor, dx: dx.tensor, dy: dy, x: x.tensor) }, "naive maxPool 3x3")
    }

    func testMaxPoolThreadCountsBitwiseEqual() {
        let shape = Shape(3, 5, 13, 11)
        let x = S.random(shape, seed: 121), dy = S.random(pooledShape(shape), seed: 122)
        func run(_ threads: Int) -> [OwnedTensor] {
            let pool = WorkerPool(threads: threads)
            let y = OwnedTensor(dy.shape), dx = S.random(shape, seed: 123)
            maxPoolForward(y.tensor, x.tensor, pool: pool)
            maxPoolBackward(dx: dx.tensor, dy: dy.tensor, x: x.tensor, pool: pool)
            return [y, dx]
        }
        let one = run(1)
        for threads in [2, 3] { for (a, b) in zip(one, run(threads)) { S.assertBitwiseEqual(a.tensor, b.tensor, "threads \(threads)") } }
    }

    // MARK: - Residual add (+ ReLU)

    func testResidualAddHandValuesAndGradientRouting() {
        let pool = WorkerPool(threads: 2)
        let a = OwnedTensor(Shape(1, 1, 1, 4), [1, -2, 3, -1]), b = OwnedTensor(a.shape, [0.5, 1, -3, -1])
        let y = OwnedTensor(a.shape)
        residualAddForward(y.tensor, a.tensor, b.tensor, relu: false, pool: pool)
        S.assertClose(y.tensor, [1.5, -1, 0, -2], tolerance: 0)
        let dy = OwnedTensor(a.shape, [1, 2, 3, 4])
        let da = OwnedTensor(a.shape, [10, 10, 10, 10]), db = OwnedTensor(a.shape)
        residualAddBackward(da: da.tensor, db: db.tensor, dy: dy.tensor, y: y.tensor, relu: false, pool: pool)
        S.assertClose(da.tensor, [11, 12, 13, 14], tolerance: 0)
        S.assertClose(db.tensor, [1, 2, 3, 4], tolerance: 0)
        // Fused ReLU: y = max(a + b, 0); the gradient passes where y > 0 only (0 at y = 0, as PyTorch).
        residualAddForward(y.tensor, a.tensor, b.tensor, relu: true, pool: pool)
        S.assertClose(y.tensor, [1.5, 0, 0, 0], tolerance: 0)
        da.tensor.zero(); db.tensor.zero()
        residualAddBackward(da: da.tensor, db: db.tensor, dy: dy.tensor, y: y.tensor, relu: true, pool: pool)
        S.assertClose(da.tensor, [1, 0, 0, 0], tolerance: 0)
        S.assertClose(db.tensor, [1, 0, 0, 0], tolerance: 0)
        // In place: y may be a's memory.
        residualAddForward(a.tensor, a.tensor, b.tensor, relu: false, pool: pool)
        S.assertClose(a.tensor, [1.5, -1, 0, -2], tolerance: 0)
    }

    func testResidualAddFastEqualsNaiveAndGradients() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 3, 5, 7)
        for relu in [false, true] {
            let a = S.random(shape, seed: 131), b = S.random(shape, seed: 132), dy = S.random(shape, seed: 133)
            let yF = OwnedTensor(shape), yN = OwnedTensor(shape)
            residualAddForward(yF.tensor, a.tensor, b.tensor, relu: relu, pool: pool)
            residualAddForwardNaive(yN.tensor, a.tensor, b.tensor, relu: relu)
            // One rounding per element, the same one in both: bitwise equal.
            S.assertBitwiseEqual(yF.tensor, yN.tensor, "forward relu \(relu)")
            let daF = S.random(shape, seed: 134), dbF = S.random(shape, seed: 135)
            let daN = OwnedTensor(shape), dbN = OwnedTensor(shape)
            daN.tensor.copy(from: daF.tensor); dbN.tensor.copy(from: dbF.tensor)
            residualAddBackward(da: daF.tensor, db: dbF.tensor, dy: dy.tensor, y: yF.tensor, relu: relu, pool: pool)
            residualAddBackwardNaive(da: daN.tensor, db: dbN.tensor, dy: dy.tensor, y: yN.tensor, relu: relu)
            S.assertBitwiseEqual(daF.tensor, daN.tensor, "da relu \(relu)")
            S.assertBitwiseEqual(dbF.tensor, dbN.tensor, "db relu \(relu)")

            // Written over (a graph's first write; NaN before), alone or with the other added into:
            // the same bits as added into zeros.
            for (overA, overB) in [(true, true), (true, false), (false, true)] {
                let wa = OwnedTensor(shape), wb = OwnedTensor(shape), za = OwnedTensor(shape), zb = OwnedTensor(shape)
                if overA { wa.tensor.fill(.nan) }
                if overB { wb.tensor.fill(.nan) }
                residualAddBackward(da: wa.tensor, db: wb.tensor, dy: dy.tensor, y: yF.tensor, relu: relu,
                                    overwriteA: overA, overwriteB: overB, pool: pool)
                residualAddBackwardNaive(da: za.tensor, db: zb.tensor, dy: dy.tensor, y: yN.tensor, relu: relu)
                S.assertBitwiseEqual(wa.tensor, za.tensor, "da written \(overA) \(overB) relu \(relu)")
                S.assertBitwiseEqual(wb.tensor, zb.tensor, "db written \(overA) \(overB) relu \(relu)")
            }

            let da = OwnedTensor(shape), db = OwnedTensor(shape), y = OwnedTensor(shape)
            S.checkGradients(inputs: [a.tensor, b.tensor], gradients: [da.tensor, db.tensor], output: y.tensor,
                             forward: { residualAddForward(y.tensor, a.tensor, b.tensor, relu: relu, pool: pool) },
                             backward: { dy in residualAddBackward(da: da.tensor, db: db.tensor, dy: dy, y: y.tensor,
                                                                   relu: relu, pool: pool) }, "residual relu \(relu)")
            S.checkGradients(inputs: [a.tensor, b.tensor], gradients: [da.tensor, db.tensor], output: y.tensor,
                             forward: { residualAddForwardNaive(y.tensor, a.tensor, b.tensor, relu: relu) },
                             backward: { dy in residualAddBackwardNaive(da: da.tensor, db: db.tensor, dy: dy, y: y.tensor,
                                                                        relu: relu) }, "naive residual relu \(relu)")
        }
    }

    // MARK: - ReLU6

    func testReLU6ClampsAndHasZeroGradientAtBothBoundaries() {
        let pool = WorkerPool(threads: 2)
        // Convention (PyTorch's hardtanh_backward): dx = dy for 0 < x < 6, and 0 at x = 0 and x = 6.
        let x = OwnedTensor(Shape(1, 1, 1, 7), [-1, 0, 0.5, 3, 6, 7, 5.999])
        let y = OwnedTensor(x.shape)
        relu6Forward(y.tensor, x.tensor, pool: pool)
        S.assertClose(y.tensor, [0, 0, 0.5, 3, 6, 6, 5.999], tolerance: 0)
        let dy = OwnedTensor(x.shape, [1, 2, 3, 4, 5, 6, 7])
        let dx = OwnedTensor(x.shape), dxNaive = OwnedTensor(x.shape)
        relu6Backward(dx: dx.tensor, dy: dy.tensor, y: y.tensor, pool: pool)
        relu6BackwardNaive(dx: dxNaive.tensor, dy: dy.tensor, x: x.tensor)
        S.assertClose(dx.tensor, [0, 0, 3, 4, 0, 0, 7], tolerance: 0)
        S.assertClose(dxNaive.tensor, [0, 0, 3, 4, 0, 0, 7], tolerance: 0)
        // In place (y is x's memory), as torchvision's ReLU6(inplace=True); the backward from y agrees.
        relu6Forward(x.tensor, x.tensor, pool: pool)
        S.assertClose(x.tensor, [0, 0, 0.5, 3, 6, 6, 5.999], tolerance: 0)
        let nan = OwnedTensor(.vector(1), [.nan]), nanOut = OwnedTensor(.vector(1))
        relu6Forward(nanOut.tensor, nan.tensor, pool: pool)
        XCTAssertTrue(nanOut.tensor[0].isNaN, "NaN propagates as in PyTorch")
    }

    func testReLU6FastEqualsNaiveAndGradients() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 3, 5, 7)
        // Values in [-2, 8] so both clamps are exercised; a few exactly on the boundaries.
        let x = S.random(shape, seed: 141, in: -2...8)
        x.tensor[0] = 0; x.tensor[1] = 6
        let yF = OwnedTensor(shape), yN = OwnedTensor(shape), dy = S.random(shape, seed: 142)
        relu6Forward(yF.tensor, x.tensor, pool: pool)
        relu6ForwardNaive(yN.tensor, x.tensor)
        S.assertBitwiseEqual(yF.tensor, yN.tensor, "relu6 forward")
        let dxF = S.random(shape, seed: 143), dxN = OwnedTensor(shape)
        dxN.tensor.copy(from: dxF.tensor)
        relu6Backward(dx: dxF.tensor, dy: dy.tensor, y: yF.tensor, pool: pool)
        relu6BackwardNaive(dx: dxN.tensor, dy: dy.tensor, x: x.tensor)
        S.assertBitwiseEqual(dxF.tensor, dxN.tensor, "relu6 backward from y equals hardtanh_backward from x")

        // Finite differences away from the boundaries (a point within the step of 0 or 6 is a kink the
        // checker skips; keep the inputs off them so at least 90% are checked).
        let xs = S.random(shape, seed: 144, in: -2...8)
        for i in 0..<xs.tensor.count where abs(xs.tensor[i]) < 0.05 || abs(xs.tensor[i] - 6) < 0.05 { xs.tensor[i] += 0.1 }
        let dx = OwnedTensor(shape), y = OwnedTensor(shape)
        S.checkGradients(inputs: [xs.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { relu6Forward(y.tensor, xs.tensor, pool: pool) },
                         backward: { dy in relu6Backward(dx: dx.tensor, dy: dy, y: y.tensor, pool: pool) }, "relu6")
        S.checkGradients(inputs: [xs.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { relu6ForwardNaive(y.tensor, xs.tensor) },
                         backward: { dy in relu6BackwardNaive(dx: dx.tensor, dy: dy, x: xs.tensor) }, "naive relu6")
    }

    func testPointwiseOpsThreadCountsBitwiseEqual() {
        let shape = Shape(3, 5, 13, 11)
        let a = S.random(shape, seed: 151, in: -2...8), b = S.random(shape, seed: 152), dy = S.random(shape, seed: 153)
        func run(_ threads: Int) -> [OwnedTensor] {
            let pool = WorkerPool(threads: threads)
            let y = OwnedTensor(shape), y6 = OwnedTensor(shape)
            let da = OwnedTensor(shape), db = OwnedTensor(shape), dx6 = OwnedTensor(shape)
            residualAddForward(y.tensor, a.tensor, b.tensor, relu: true, pool: pool)
            residualAddBackward(da: da.tensor, db: db.tensor, dy: dy.tensor, y: y.tensor, relu: true, pool: pool)
            relu6Forward(y6.tensor, a.tensor, pool: pool)
            relu6Backward(dx: dx6.tensor, dy: dy.tensor, y: y6.tensor, pool: pool)
            return [y, da, db, y6, dx6]
        }
        let one = run(1)
        for threads in [2, 3] { for (p, q) in zip(one, run(threads)) { S.assertBitwiseEqual(p.tensor, q.tensor, "threads \(threads)") } }
    }

    // MARK: - BatchNorm, evaluation and frozen mode

    private final class EvalFixture {
        let x: OwnedTensor, y: OwnedTensor, gamma: OwnedTensor, beta: OwnedTensor
        let runningMean: OwnedTensor, runningVar: OwnedTensor, saveMean: OwnedTensor, saveInvStd: OwnedTensor
        let dx: OwnedTensor, dgamma: OwnedTensor, dbeta: OwnedTensor

        init(_ shape: Shape, seed: UInt64) {
            let vector = Shape(shape.c, 1, 1, 1)
            x = S.random(shape, seed: seed, in: -2...2)
            y = OwnedTensor(shape); dx = OwnedTensor(shape)
            gamma = S.random(vector, seed: seed + 1, in: -1.5...1.5)
            beta = S.random(vector, seed: seed + 2)
            runningMean = S.random(vector, seed: seed + 3)
            runningVar = S.random(vector, seed: seed + 4, in: 0.2...3)
            saveMean = OwnedTensor(vector); saveInvStd = OwnedTensor(vector)
            dgamma = OwnedTensor(vector); dbeta = OwnedTensor(vector)
        }

        func forward(pool: WorkerPool) {
            batchNormForward(y.tensor, x.tensor, gamma: gamma.tensor, beta: beta.tensor, runningMean: runningMean.tensor,
                             runningVar: runningVar.tensor, saveMean: saveMean.tensor, saveInvStd: saveInvStd.tensor,
                             training: false, pool: pool)
        }

        func backward(dy: Tensor, frozen: Bool = false, pool: WorkerPool) {
            batchNormEvalBackward(dx: dx.tensor, dgamma: frozen ? nil : dgamma.tensor, dbeta: frozen ? nil : dbeta.tensor,
                                  dy: dy, x: x.tensor, gamma: gamma.tensor, runningMean: runningMean.tensor,
                                  runningVar: runningVar.tensor, pool: pool)
        }
    }

    func testBatchNormEvalFastAndNaiveWithinRoundingBound() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(3, 4, 5, 7)
        let f = EvalFixture(shape, seed: 160)
        let dy = S.random(shape, seed: 165)
        let dx0 = S.random(shape, seed: 166), dg0 = S.random(f.gamma.shape, seed: 167), db0 = S.random(f.beta.shape, seed: 168)
        f.dx.tensor.copy(from: dx0.tensor); f.dgamma.tensor.copy(from: dg0.tensor); f.dbeta.tensor.copy(from: db0.tensor)
        f.forward(pool: pool)
        f.backward(dy: dy.tensor, pool: pool)
        let yN = OwnedTensor(shape), dxN = OwnedTensor(shape), dgN = OwnedTensor(f.gamma.shape), dbN = OwnedTensor(f.beta.shape)
        dxN.tensor.copy(from: dx0.tensor); dgN.tensor.copy(from: dg0.tensor); dbN.tensor.copy(from: db0.tensor)
        batchNormEvalNaive(y: yN.tensor, dx: dxN.tensor, dgamma: dgN.tensor, dbeta: dbN.tensor, dy: dy.tensor, x: f.x.tensor,
                           gamma: f.gamma.tensor, beta: f.beta.tensor, runningMean: f.runningMean.tensor,
                           runningVar: f.runningVar.tensor)
        // Exact values; magnitudes are the terms' absolute values. The float path has a handful of
        // roundings per element (scale = gamma / sqrt(var + eps): 3; subtract, multiply, add: 3;
        // the gradient's float xhat: 3, then sums in double and one conversion), so n = 8.
        let plane = shape.plane
        var y = [Double](), yMag = [Double](), dx = [Double](), dxMag = [Double]()
        var dg = dg0.tensor.toArray().map(Double.init), dgMag = dg.map(abs)
        var db = db0.tensor.toArray().map(Double.init), dbMag = db.map(abs)
        for n in 0..<shape.n {
            for c in 0..<shape.c {
                let invStd = 1 / (Double(f.runningVar.tensor[c]) + 1e-5).squareRoot()
                let gamma = Double(f.gamma.tensor[c]), beta = Double(f.beta.tensor[c]), mean = Double(f.runningMean.tensor[c])
                for i in 0..<plane {
                    let index = (n * shape.c + c) * plane + i
                    let xv = Double(f.x.tensor[index]), g = Double(dy.tensor[index])
                    y.append(gamma * (xv - mean) * invStd + beta)
                    yMag.append(abs(gamma) * (abs(xv) + abs(mean)) * invStd + abs(beta))
                    dx.append(Double(dx0.tensor[index]) + g * gamma * invStd)
                    dxMag.append(abs(Double(dx0.tensor[index])) + abs(g * gamma * invStd))
                    dg[c] += g * (xv - mean) * invStd; dgMag[c] += abs(g) * (abs(xv) + abs(mean)) * invStd
                    db[c] += g; dbMag[c] += abs(g)
                }
            }
        }
        let refs: [(String, Tensor, Tensor, RoundingReference)] = [
            ("y", f.y.tensor, yN.tensor, RoundingReference(exact: y, magnitude: yMag, roundings: 8)),
            ("dx", f.dx.tensor, dxN.tensor, RoundingReference(exact: dx, magnitude: dxMag, roundings: 8)),
            ("dgamma", f.dgamma.tensor, dgN.tensor, RoundingReference(exact: dg, magnitude: dgMag, roundings: 8)),
            ("dbeta", f.dbeta.tensor, dbN.tensor, RoundingReference(exact: db, magnitude: dbMag, roundings: 8)),
        ]
        for (name, fast, naive, reference) in refs {
            S.assertWithinRounding(fast, reference, "batchNorm eval \(name)")
            S.assertWithinRounding(naive, reference, "naive batchNorm eval \(name)")
        }
    }

    func testBatchNormEvalGradientCheckFastAndNaive() {
        let pool = WorkerPool(threads: 2)
        let f = EvalFixture(Shape(2, 3, 3, 4), seed: 170)
        let statistics = (f.runningMean.tensor.toArray(), f.runningVar.tensor.toArray())
        S.checkGradients(inputs: [f.x.tensor, f.gamma.tensor, f.beta.tensor],
                         gradients: [f.dx.tensor, f.dgamma.tensor, f.dbeta.tensor], output: f.y.tensor,
                         forward: { f.forward(pool: pool) }, backward: { dy in f.backward(dy: dy, pool: pool) },
                         "batchNorm eval")
        S.checkGradients(inputs: [f.x.tensor, f.gamma.tensor, f.beta.tensor],
                         gradients: [f.dx.tensor, f.dgamma.tensor, f.dbeta.tensor], output: f.y.tensor,
                         forward: {
                             batchNormEvalNaive(y: f.y.tensor, dx: nil, dgamma: nil, dbeta: nil, dy: nil, x: f.x.tensor,
                                                gamma: f.gamma.tensor, beta: f.beta.tensor, runningMean: f.runningMean.tensor,
                                                runningVar: f.runningVar.tensor)
                         },
                         backward: { dy in
                             batchNormEvalNaive(y: f.y.tensor, dx: f.dx.tensor, dgamma: f.dgamma.tensor, dbeta: f.dbeta.tensor,
                                                dy: dy, x: f.x.tensor, gamma: f.gamma.tensor, beta: f.beta.tensor,
                                                runningMean: f.runningMean.tensor, runningVar: f.runningVar.tensor)
                         }, "naive batchNorm eval")
        // Evaluation mode never touches the running statistics.
        XCTAssertEqual(f.runningMean.tensor.toArray(), statistics.0)
        XCTAssertEqual(f.runningVar.tensor.toArray(), statistics.1)
    }

    func testBatchNormFrozenGivesOnlyInputGradient() {
        let pool = WorkerPool(threads: 2)
        let f = EvalFixture(Shape(2, 3, 4, 5), seed: 180)
        let dy = S.random(f.x.shape, seed: 181)
        f.forward(pool: pool)
        f.backward(dy: dy.tensor, pool: pool)
        let dxFull = f.dx.tensor.toArray()
        f.dx.tensor.zero(); f.dgamma.tensor.fill(7); f.dbeta.tensor.fill(7)
        f.backward(dy: dy.tensor, frozen: true, pool: pool)
        XCTAssertEqual(f.dx.tensor.toArray(), dxFull, "frozen: the same input gradient")
        XCTAssertTrue(f.dgamma.tensor.toArray().allSatisfy { $0 == 7 } && f.dbeta.tensor.toArray().allSatisfy { $0 == 7 },
                      "frozen: gamma and beta get no gradient")
        S.assertAccumulates([f.dx.tensor, f.dgamma.tensor, f.dbeta.tensor], "batchNorm eval") {
            f.backward(dy: dy.tensor, pool: pool)
        }
    }

    func testBatchNormEvalThreadCountsBitwiseEqual() {
        let shape = Shape(3, 5, 7, 9)
        let dy = S.random(shape, seed: 191)
        func run(_ threads: Int) -> EvalFixture {
            let pool = WorkerPool(threads: threads)
            let f = EvalFixture(shape, seed: 190)
            f.forward(pool: pool)
            f.backward(dy: dy.tensor, pool: pool)
            return f
        }
        let one = run(1)
        for threads in [2, 3] {
            let f = run(threads)
            for (a, b) in [(one.y, f.y), (one.dx, f.dx), (one.dgamma, f.dgamma), (one.dbeta, f.dbeta)] {
                S.assertBitwiseEqual(a.tensor, b.tensor, "threads \(threads)")
            }
        }
    }
}
