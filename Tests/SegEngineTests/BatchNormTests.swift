import XCTest
@testable import SegEngine

final class BatchNormTests: XCTestCase {
    private typealias S = OpsTestSupport

    /// Everything one BatchNorm call touches, for C channels.
    private final class Fixture {
        let x: OwnedTensor, y: OwnedTensor, dx: OwnedTensor
        let gamma: OwnedTensor, beta: OwnedTensor, dgamma: OwnedTensor, dbeta: OwnedTensor
        let runningMean: OwnedTensor, runningVar: OwnedTensor, saveMean: OwnedTensor, saveInvStd: OwnedTensor

        init(_ shape: Shape, seed: UInt64) {
            let vector = Shape(shape.c, 1, 1, 1)
            x = S.random(shape, seed: seed, in: -2...2)
            // Different offsets per channel, so a mean that mixes channels is caught.
            for n in 0..<shape.n {
                for c in 0..<shape.c {
                    let p = x.tensor.plane(n, c)
                    for i in 0..<shape.plane { p[i] += Float(c) - 1 }
                }
            }
            y = OwnedTensor(shape); dx = OwnedTensor(shape)
            gamma = S.random(vector, seed: seed + 1, in: 0.5...1.5)
            beta = S.random(vector, seed: seed + 2)
            dgamma = OwnedTensor(vector); dbeta = OwnedTensor(vector)
            runningMean = S.random(vector, seed: seed + 3)
            runningVar = S.random(vector, seed: seed + 4, in: 0.5...2)
            saveMean = OwnedTensor(vector); saveInvStd = OwnedTensor(vector)
        }

        func forward(training: Bool, pool: WorkerPool) {
            batchNormForward(y.tensor, x.tensor, gamma: gamma.tensor, beta: beta.tensor,
                             runningMean: runningMean.tensor, runningVar: runningVar.tensor,
                             saveMean: saveMean.tensor, saveInvStd: saveInvStd.tensor, training: training, pool: pool)
        }

        func backward(dy: Tensor, withInputGradient: Bool = true, pool: WorkerPool) {
            batchNormBackward(dx: withInputGradient ? dx.tensor : nil, dgamma: dgamma.tensor, dbeta: dbeta.tensor,
                              dy: dy, x: x.tensor, gamma: gamma.tensor, saveMean: saveMean.tensor,
                              saveInvStd: saveInvStd.tensor, pool: pool)
        }
    }

    func testTrainingForwardHandValues() {
        let pool = WorkerPool(threads: 2)
        let f = Fixture(Shape(1, 1, 2, 2), seed: 1)
        for (i, v) in [Float(1), 2, 3, 4].enumerated() { f.x.tensor[i] = v }
        f.gamma.tensor[0] = 2; f.beta.tensor[0] = 0.5
        f.runningMean.tensor[0] = 0; f.runningVar.tensor[0] = 1
        f.forward(training: true, pool: pool)
        // mean 2.5, biased var 1.25 (normalising), unbiased var 5/3 (running).
        let invStd = 1 / (1.25 + 1e-5).squareRoot()
        S.assertClose(f.y.tensor, [-1.5, -0.5, 0.5, 1.5].map { Float(2 * $0 * invStd + 0.5) }, tolerance: 1e-5)
        XCTAssertEqual(f.saveMean.tensor[0], 2.5)
        XCTAssertEqual(Double(f.saveInvStd.tensor[0]), invStd, accuracy: 1e-6)
        XCTAssertEqual(f.runningMean.tensor[0], 0.25, accuracy: 1e-7)
        XCTAssertEqual(f.runningVar.tensor[0], 0.9 + 0.1 * 5 / 3, accuracy: 1e-6)
    }

    func testTrainingForwardMatchesFormulaPerChannel() {
        let pool = WorkerPool(threads: 3)
        let shape = Shape(2, 3, 3, 5)
        let f = Fixture(shape, seed: 10)
        let oldMean = f.runningMean.tensor.toArray(), oldVar = f.runningVar.tensor.toArray()
        f.forward(training: true, pool: pool)
        let m = Double(shape.n * shape.plane)
        for c in 0..<shape.c {
            var values: [Double] = []
            for n in 0..<shape.n { for i in 0..<shape.plane { values.append(Double(f.x.tensor.plane(n, c)[i])) } }
            let mean = values.reduce(0, +) / m
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / m
            let invStd = 1 / (variance + 1e-5).squareRoot()
            XCTAssertEqual(Double(f.saveMean.tensor[c]), mean, accuracy: 1e-6, "channel \(c)")
            XCTAssertEqual(Double(f.saveInvStd.tensor[c]), invStd, accuracy: 1e-6 * invStd, "channel \(c)")
            XCTAssertEqual(Double(f.runningMean.tensor[c]), 0.9 * Double(oldMean[c]) + 0.1 * mean, accuracy: 1e-6)
            XCTAssertEqual(Double(f.runningVar.tensor[c]), 0.9 * Double(oldVar[c]) + 0.1 * variance * m / (m - 1),
                           accuracy: 1e-6, "running var uses the unbiased variance")
            for n in 0..<shape.n {
                for i in 0..<shape.plane {
                    let x = Double(f.x.tensor.plane(n, c)[i])
                    let expected = Double(f.gamma.tensor[c]) * (x - mean) * invStd + Double(f.beta.tensor[c])
                    XCTAssertEqual(Double(f.y.tensor.plane(n, c)[i]), expected, accuracy: 1e-5, "(\(n), \(c), \(i))")
                }
            }
        }
    }

    /// The output recomputed from the saved statistics (what a plan for training does in backward)
    /// has the training forward's bits, with and without the ReLU that follows it.
    func testRecomputeFromSavedStatisticsGivesTheForwardsBits() {
        let pool = WorkerPool(threads: 2)
        for shape in [Shape(2, 3, 4, 5), Shape(3, 2, 1, 1), Shape(1, 4, 7, 3)] {
            let f = Fixture(shape, seed: 41)
            f.forward(training: true, pool: pool)
            let relu = OwnedTensor(shape)
            reluForward(relu.tensor, f.y.tensor, pool: pool)
            for (withReLU, expected) in [(false, f.y), (true, relu)] {
                let again = S.random(shape, seed: 42)
                batchNormRecompute(again.tensor, f.x.tensor, gamma: f.gamma.tensor, beta: f.beta.tensor,
                                   saveMean: f.saveMean.tensor, saveInvStd: f.saveInvStd.tensor, relu: withReLU, pool: pool)
                XCTAssertEqual(again.tensor.toArray().map(\.bitPattern), expected.tensor.toArray().map(\.bitPattern),
                               "\(shape) relu \(withReLU)")
            }
        }
    }

    func testEvalUsesRunningStatistics() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 3, 2, 3)
        let f = Fixture(shape, seed: 20)
        let runningMean = f.runningMean.tensor.toArray(), runningVar = f.runningVar.tensor.toArray()
        f.saveMean.tensor.fill(7); f.saveInvStd.tensor.fill(7)
        f.forward(training: false, pool: pool)
        for n in 0..<shape.n {
            for c in 0..<shape.c {
                for i in 0..<shape.plane {
                    let x = f.x.tensor.plane(n, c)[i]
                    let expected = f.gamma.tensor[c] * (x - runningMean[c]) / (runningVar[c] + 1e-5).squareRoot()
                        + f.beta.tensor[c]
                    XCTAssertEqual(f.y.tensor.plane(n, c)[i], expected, accuracy: 1e-5, "(\(n), \(c), \(i))")
                }
            }
        }
        XCTAssertEqual(f.runningMean.tensor.toArray(), runningMean, "eval must not update running stats")
        XCTAssertEqual(f.runningVar.tensor.toArray(), runningVar, "eval must not update running stats")
        XCTAssertEqual(f.saveMean.tensor.toArray(), [7, 7, 7])
    }

    func testGradientTrainingMode() {
        let pool = WorkerPool(threads: 2)
        let f = Fixture(Shape(2, 3, 3, 4), seed: 30)
        let runningMean = f.runningMean.tensor.toArray(), runningVar = f.runningVar.tensor.toArray()
        // Every objective evaluation runs a training forward; restoring the running statistics keeps
        // the fixture unchanged (they do not affect a training-mode output anyway).
        func forward() {
            f.forward(training: true, pool: pool)
            for c in 0..<runningMean.count {
                f.runningMean.tensor[c] = runningMean[c]
                f.runningVar.tensor[c] = runningVar[c]
            }
        }
        S.checkGradients(inputs: [f.x.tensor, f.gamma.tensor, f.beta.tensor],
                         gradients: [f.dx.tensor, f.dgamma.tensor, f.dbeta.tensor], output: f.y.tensor,
                         forward: forward,
                         backward: { dy in f.backward(dy: dy, pool: pool) }, "batchNorm")
    }

    func testNilInputGradientStillGivesParameterGradients() {
        let pool = WorkerPool(threads: 2)
        let f = Fixture(Shape(2, 3, 3, 4), seed: 40)
        let dy = S.random(f.x.shape, seed: 41)
        f.forward(training: true, pool: pool)
        f.backward(dy: dy.tensor, pool: pool)
        let dgamma = f.dgamma.tensor.toArray(), dbeta = f.dbeta.tensor.toArray()
        f.dgamma.tensor.zero(); f.dbeta.tensor.zero(); f.dx.tensor.fill(5)
        f.backward(dy: dy.tensor, withInputGradient: false, pool: pool)
        XCTAssertEqual(f.dgamma.tensor.toArray(), dgamma)
        XCTAssertEqual(f.dbeta.tensor.toArray(), dbeta)
        XCTAssertTrue(f.dx.tensor.toArray().allSatisfy { $0 == 5 }, "dx nil must leave the input gradient alone")
    }

    func testBackwardAccumulates() {
        let pool = WorkerPool(threads: 2)
        let f = Fixture(Shape(2, 3, 3, 4), seed: 50)
        let dy = S.random(f.x.shape, seed: 51)
        f.forward(training: true, pool: pool)
        S.assertAccumulates([f.dx.tensor, f.dgamma.tensor, f.dbeta.tensor], "batchNorm") {
            f.backward(dy: dy.tensor, pool: pool)
        }
    }

    func testStatisticsAndGradientsDoNotDependOnThreadCount() {
        let shape = Shape(3, 5, 7, 9)
        let dy = S.random(shape, seed: 61)
        func run(threads: Int) -> Fixture {
            let pool = WorkerPool(threads: threads)
            let f = Fixture(shape, seed: 60)
            f.forward(training: true, pool: pool)
            f.backward(dy: dy.tensor, pool: pool)
            return f
        }
        let reference = run(threads: 1)
        for threads in [2, 3] {
            let f = run(threads: threads)
            let pairs = [(reference.saveMean, f.saveMean), (reference.saveInvStd, f.saveInvStd),
                         (reference.runningMean, f.runningMean), (reference.runningVar, f.runningVar),
                         (reference.y, f.y), (reference.dx, f.dx),
                         (reference.dgamma, f.dgamma), (reference.dbeta, f.dbeta)]
            for (k, (a, b)) in pairs.enumerated() {
                S.assertBitwiseEqual(a.tensor, b.tensor, "tensor \(k), threads \(threads)")
            }
        }
    }

    /// `relu: true` writes v > 0 ? v : 0 (reluForward's expression) as it normalises: the bits of the forward followed
    /// by reluForward, in training and evaluation, with pre-activations of exactly 0 (beta 0 and the
    /// mean equal to some x) and a NaN among the inputs; the statistics are the same too.
    func testForwardWithReluGivesTheBitsOfTheSeparatePass() {
        let pool = WorkerPool(threads: 2)
        for training in [true, false] {
            for shape in [Shape(2, 3, 4, 5), Shape(3, 2, 1, 7)] {
                let separate = Fixture(shape, seed: 90), fused = Fixture(shape, seed: 90)
                for f in [separate, fused] {
                    f.beta.tensor[1] = 0
                    f.runningMean.tensor[1] = f.x.tensor.plane(0, 1)[2]
                    f.x.tensor.plane(shape.n - 1, 0)[1] = .nan
                }
                separate.forward(training: training, pool: pool)
                reluForward(separate.y.tensor, separate.y.tensor, pool: pool)
                batchNormForward(fused.y.tensor, fused.x.tensor, gamma: fused.gamma.tensor, beta: fused.beta.tensor,
                                 runningMean: fused.runningMean.tensor, runningVar: fused.runningVar.tensor,
                                 saveMean: fused.saveMean.tensor, saveInvStd: fused.saveInvStd.tensor, training: training,
                                 relu: true, pool: pool)
                let label = "\(shape) training \(training)"
                S.assertBitwiseEqual(fused.y.tensor, separate.y.tensor, label)
                for (a, b) in [(fused.saveMean, separate.saveMean), (fused.saveInvStd, separate.saveInvStd),
                               (fused.runningMean, separate.runningMean), (fused.runningVar, separate.runningVar)] {
                    S.assertBitwiseEqual(a.tensor, b.tensor, label)
                }
                let values = fused.y.tensor.toArray()
                XCTAssertTrue(values.contains(0) && values.contains { $0 > 0 } && !values.contains { $0 < 0 }, label)
            }
        }
    }

    /// batchNormReluBackwardInPlace zeroes the gradient where reluBackwardInPlace does with the
    /// kept output, in both modes: a plan for training masks from the input instead of keeping the
    /// output. Some pre-activations are made exactly zero (x at the mean, beta 0), where a mask
    /// from another expression or the other mode's statistics would differ.
    func testReluMaskFromTheInputIsTheMaskOfTheOutput() {
        let pool = WorkerPool(threads: 2)
        for training in [true, false] {
            for shape in [Shape(2, 3, 4, 5), Shape(1, 4, 7, 3)] {
                let f = Fixture(shape, seed: 70)
                f.forward(training: true, pool: pool)
                // The statistics' mean equal to some x and beta 0: pre-activations of exactly 0.
                f.beta.tensor[1] = 0
                let out = OwnedTensor(shape)
                if training {
                    f.saveMean.tensor[1] = f.x.tensor.plane(0, 1)[2]
                    batchNormRecompute(out.tensor, f.x.tensor, gamma: f.gamma.tensor, beta: f.beta.tensor,
                                       saveMean: f.saveMean.tensor, saveInvStd: f.saveInvStd.tensor, relu: true, pool: pool)
                } else {
                    f.runningMean.tensor[1] = f.x.tensor.plane(0, 1)[2]
                    f.forward(training: false, pool: pool)
                    reluForward(out.tensor, f.y.tensor, pool: pool)
                }
                let kept = S.random(shape, seed: 71), fromInput = S.random(shape, seed: 71)
                reluBackwardInPlace(kept.tensor, y: out.tensor, pool: pool)
                batchNormReluBackwardInPlace(fromInput.tensor, x: f.x.tensor, gamma: f.gamma.tensor, beta: f.beta.tensor,
                                             runningMean: f.runningMean.tensor, runningVar: f.runningVar.tensor,
                                             saveMean: f.saveMean.tensor, saveInvStd: f.saveInvStd.tensor,
                                             training: training, pool: pool)
                S.assertBitwiseEqual(fromInput.tensor, kept.tensor, "\(shape) training \(training)")
                XCTAssertTrue(out.tensor.toArray().contains(0) && out.tensor.toArray().contains { $0 > 0 })
            }
        }
    }

    /// With `overwrite` the input gradient may be the output gradient's own memory and gets the
    /// bits of adding into a zeroed one, in both modes; the parameter gradients are the same too.
    func testOverwritingTheOutputGradientGivesTheBitsOfAddingIntoZero() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 3, 5, 4)
        for training in [true, false] {
            let f = Fixture(shape, seed: 80)
            f.forward(training: training, pool: pool)
            let dy = S.random(shape, seed: 81)
            // Zeros of both signs in dy.
            dy.tensor[0] = 0; dy.tensor[1] = -0.0
            func backward(dx: Tensor, dy: Tensor, overwrite: Bool) {
                if training {
                    batchNormBackward(dx: dx, dgamma: f.dgamma.tensor, dbeta: f.dbeta.tensor, dy: dy, x: f.x.tensor,
                                      gamma: f.gamma.tensor, saveMean: f.saveMean.tensor, saveInvStd: f.saveInvStd.tensor,
                                      overwrite: overwrite, pool: pool)
                } else {
                    batchNormEvalBackward(dx: dx, dgamma: f.dgamma.tensor, dbeta: f.dbeta.tensor, dy: dy, x: f.x.tensor,
                                          gamma: f.gamma.tensor, runningMean: f.runningMean.tensor,
                                          runningVar: f.runningVar.tensor, overwrite: overwrite, pool: pool)
                }
            }
            f.dx.tensor.zero()
            backward(dx: f.dx.tensor, dy: dy.tensor, overwrite: false)
            let dgamma = f.dgamma.tensor.toArray(), dbeta = f.dbeta.tensor.toArray()
            f.dgamma.tensor.zero(); f.dbeta.tensor.zero()
            let shared = OwnedTensor(shape)
            shared.tensor.copy(from: dy.tensor)
            backward(dx: shared.tensor, dy: shared.tensor, overwrite: true)
            S.assertBitwiseEqual(shared.tensor, f.dx.tensor, "dx, training \(training)")
            XCTAssertEqual(f.dgamma.tensor.toArray(), dgamma, "training \(training)")
            XCTAssertEqual(f.dbeta.tensor.toArray(), dbeta, "training \(training)")
        }
    }

    /// The training backward with `reluBeta` gives the bits of masking dy with the kept ReLU
    /// output first (reluBackwardInPlace) and then the plain backward: dx added or overwritten
    /// (into dy's own memory), dgamma and dbeta; and it leaves dy alone when dx is elsewhere.
    func testBackwardWithTheReluMaskedFromTheInput() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 4, 5, 3)
        for overwrite in [false, true] {
            let f = Fixture(shape, seed: 90)
            f.forward(training: true, pool: pool)
            // A saved mean equal to some x and beta 0: pre-activations of exactly 0 there. The
            // output from those statistics with the forward's expression (batchNormRecompute).
            f.beta.tensor[2] = 0
            f.saveMean.tensor[2] = f.x.tensor.plane(1, 2)[4]
            let out = OwnedTensor(shape)
            batchNormRecompute(out.tensor, f.x.tensor, gamma: f.gamma.tensor, beta: f.beta.tensor, saveMean: f.saveMean.tensor,
                               saveInvStd: f.saveInvStd.tensor, relu: true, pool: pool)
            let dy = S.random(shape, seed: 91)
            let masked = OwnedTensor(shape)
            masked.tensor.copy(from: dy.tensor)
            reluBackwardInPlace(masked.tensor, y: out.tensor, pool: pool)
            f.dx.tensor.zero()
            f.backward(dy: masked.tensor, pool: pool)
            let dgamma = f.dgamma.tensor.toArray(), dbeta = f.dbeta.tensor.toArray()
            f.dgamma.tensor.zero(); f.dbeta.tensor.zero()
            let into = OwnedTensor(shape), upstream = OwnedTensor(shape)
            upstream.tensor.copy(from: dy.tensor)
            let dx = overwrite ? upstream.tensor : into.tensor
            batchNormBackward(dx: dx, dgamma: f.dgamma.tensor, dbeta: f.dbeta.tensor, dy: upstream.tensor, x: f.x.tensor,
                              gamma: f.gamma.tensor, saveMean: f.saveMean.tensor, saveInvStd: f.saveInvStd.tensor,
                              overwrite: overwrite, reluBeta: f.beta.tensor, pool: pool)
            S.assertBitwiseEqual(dx, f.dx.tensor, "dx, overwrite \(overwrite)")
            XCTAssertEqual(f.dgamma.tensor.toArray().map(\.bitPattern), dgamma.map(\.bitPattern))
            XCTAssertEqual(f.dbeta.tensor.toArray().map(\.bitPattern), dbeta.map(\.bitPattern))
            if !overwrite { S.assertBitwiseEqual(upstream.tensor, dy.tensor, "dy left alone") }
        }
    }
}
