import XCTest
@testable import SegEngine
import SegEngineTestSupport

final class GroupNormTests: XCTestCase {
    private typealias S = OpsTestSupport

    /// Everything one GroupNorm call touches.
    private final class Fixture {
        let groups: Int
        let x: OwnedTensor, y: OwnedTensor, dx: OwnedTensor
        let gamma: OwnedTensor, beta: OwnedTensor, dgamma: OwnedTensor, dbeta: OwnedTensor
        let saveMean: OwnedTensor, saveInvStd: OwnedTensor

        init(_ shape: Shape, groups: Int, seed: UInt64) {
            self.groups = groups
            let vector = Shape(shape.c, 1, 1, 1)
            x = S.random(shape, seed: seed, in: -2...2)
            // Different offsets per channel and sample, so statistics that mix groups or samples are caught.
            for n in 0..<shape.n {
                for c in 0..<shape.c {
                    let p = x.tensor.plane(n, c)
                    for i in 0..<shape.plane { p[i] += Float(c) - 1 + 0.5 * Float(n) }
                }
            }
            y = OwnedTensor(shape); dx = OwnedTensor(shape)
            gamma = S.random(vector, seed: seed + 1, in: 0.5...1.5)
            beta = S.random(vector, seed: seed + 2)
            dgamma = OwnedTensor(vector); dbeta = OwnedTensor(vector)
            saveMean = OwnedTensor(.vector(shape.n * groups)); saveInvStd = OwnedTensor(.vector(shape.n * groups))
        }

        func forward(pool: WorkerPool) {
            groupNormForward(y.tensor, x.tensor, groups: groups, gamma: gamma.tensor, beta: beta.tensor,
                             saveMean: saveMean.tensor, saveInvStd: saveInvStd.tensor, pool: pool)
        }

        func backward(dy: Tensor, withInputGradient: Bool = true, pool: WorkerPool) {
            groupNormBackward(dx: withInputGradient ? dx.tensor : nil, dgamma: dgamma.tensor, dbeta: dbeta.tensor,
                              dy: dy, x: x.tensor, groups: groups, gamma: gamma.tensor, saveMean: saveMean.tensor,
                              saveInvStd: saveInvStd.tensor, pool: pool)
        }
    }

    /// The largest G <= 32 dividing C.
    func testGroupCountRule() {
        let expected = [1: 1, 2: 2, 3: 3, 4: 4, 8: 8, 12: 12, 16: 16, 24: 24, 32: 32, 33: 11, 37: 1, 48: 24,
                        64: 32, 96: 32, 100: 25, 160: 32, 512: 32, 1000: 25]
        for (channels, groups) in expected.sorted(by: { $0.key < $1.key }) {
            XCTAssertEqual(groupNormGroups(channels: channels), groups, "\(channels) channels")
        }
        for channels in 1...300 {
            let g = groupNormGroups(channels: channels)
            XCTAssertTrue(g <= 32 && channels % g == 0, "\(channels) channels: \(g) groups")
            XCTAssertFalse(stride(from: g + 1, through: min(32, channels), by: 1).contains { channels % $0 == 0 }, "\(channels): a larger G divides")
        }
    }

    func testForwardHandValues() {
        let pool = WorkerPool(threads: 2)
        // Two groups of one channel with two pixels each: [1, 3] and [10, 14].
        let f = Fixture(Shape(1, 2, 1, 2), groups: 2, seed: 1)
        for (i, v) in [Float(1), 3, 10, 14].enumerated() { f.x.tensor[i] = v }
        f.gamma.tensor[0] = 2; f.beta.tensor[0] = 0.5; f.gamma.tensor[1] = 1; f.beta.tensor[1] = -1
        f.forward(pool: pool)
        // Means 2 and 12, biased variances 1 and 4.
        let a = 1 / (1 + 1e-5).squareRoot(), b = 1 / (4 + 1e-5).squareRoot()
        S.assertClose(f.y.tensor, [Float(-2 * a + 0.5), Float(2 * a + 0.5), Float(-2 * b - 1), Float(2 * b - 1)],
                      tolerance: 1e-6)
        XCTAssertEqual(f.saveMean.tensor.toArray(), [2, 12])
        XCTAssertEqual(Double(f.saveInvStd.tensor[0]), a, accuracy: 1e-7)
        XCTAssertEqual(Double(f.saveInvStd.tensor[1]), b, accuracy: 1e-7)
        // One group: the two channels share mean 7 and biased variance (36 + 16 + 9 + 49) / 4 = 27.5.
        let one = Fixture(Shape(1, 2, 1, 2), groups: 1, seed: 1)
        for (i, v) in [Float(1), 3, 10, 14].enumerated() { one.x.tensor[i] = v }
        one.gamma.tensor.fill(1); one.beta.tensor.fill(0)
        one.forward(pool: pool)
        let values: [Double] = [1, 3, 10, 14]
        let invStd = 1 / (27.5 + 1e-5).squareRoot()
        XCTAssertEqual(one.saveMean.tensor[0], 7)
        S.assertClose(one.y.tensor, values.map { (v: Double) -> Float in Float((v - 7) * invStd) }, tolerance: 1e-6)
    }

    /// The fast op and the naive twin against the exact result (float64 on the same inputs), within
    /// the rounding model's bound, for several group sizes (G = 1: LayerNorm-like, G = C: InstanceNorm-like).
    ///
    /// Error model. The statistics are summed in Double over the reduction length m = C/G * H * W
    /// (m * 2^-53 relative, below one float rounding for m < 2^29) and stored as float (1 rounding
    /// each). y: scale = gamma * invStd, x - mean, times scale, plus beta: with the stored statistics
    /// n = 6 roundings of the terms gamma (|x| + |mean|) invStd + |beta|. The gradients' sums run in
    /// Double over m (dx) or N * H * W (dgamma, dbeta) terms each carrying the float xhat (3
    /// roundings); the means are stored as float (1), then dx's update has 5 float operations and the
    /// addition into the old value: n = 12 for all, with magnitudes built from the absolute values of
    /// every term (so the reduction length enters through them).
    func testFastAndNaiveWithinRoundingBound() {
        let pool = WorkerPool(threads: 3)
        for (shape, groups) in [(Shape(3, 8, 5, 7), 4), (Shape(2, 6, 4, 3), 1), (Shape(2, 5, 3, 3), 5), (Shape(1, 64, 4, 4), 32)] {
            let f = Fixture(shape, groups: groups, seed: 160 + UInt64(groups))
            let dy = S.random(shape, seed: 165)
            let dx0 = S.random(shape, seed: 166), dg0 = S.random(f.gamma.shape, seed: 167), db0 = S.random(f.beta.shape, seed: 168)
            f.dx.tensor.copy(from: dx0.tensor); f.dgamma.tensor.copy(from: dg0.tensor); f.dbeta.tensor.copy(from: db0.tensor)
            f.forward(pool: pool)
            f.backward(dy: dy.tensor, pool: pool)
            let yN = OwnedTensor(shape), dxN = OwnedTensor(shape), dgN = OwnedTensor(f.gamma.shape), dbN = OwnedTensor(f.beta.shape)
            dxN.tensor.copy(from: dx0.tensor); dgN.tensor.copy(from: dg0.tensor); dbN.tensor.copy(from: db0.tensor)
            let meanN = OwnedTensor(f.saveMean.shape), invStdN = OwnedTensor(f.saveInvStd.shape)
            groupNormNaive(y: yN.tensor, saveMean: meanN.tensor, saveInvStd: invStdN.tensor, dx: dxN.tensor,
                           dgamma: dgN.tensor, dbeta: dbN.tensor, dy: dy.tensor, x: f.x.tensor,
                           groups: groups, gamma: f.gamma.tensor, beta: f.beta.tensor)
            // Both sum the group's values in Double in the same (c, h, w) order: the same statistics.
            S.assertBitwiseEqual(f.saveMean.tensor, meanN.tensor, "saveMean \(shape) G \(groups)")
            S.assertBitwiseEqual(f.saveInvStd.tensor, invStdN.tensor, "saveInvStd \(shape) G \(groups)")

            let perGroup = shape.c / groups, plane = shape.plane, m = Double(perGroup * plane)
            var y = [Double](repeating: 0, count: shape.count), yMag = y
            var dx = dx0.tensor.toArray().map(Double.init), dxMag = dx.map(abs)
            var dg = dg0.tensor.toArray().map(Double.init), dgMag = dg.map(abs)
            var db = db0.tensor.toArray().map(Double.init), dbMag = db.map(abs)
            for n in 0..<shape.n {
                for g in 0..<groups {
                    let indices = (0..<(perGroup * plane)).map { (n * shape.c + g * perGroup) * plane + $0 }
                    let channel = { (index: Int) in (index / plane) % shape.c }
                    let mean = indices.map { Double(f.x.tensor[$0]) }.reduce(0, +) / m
                    let variance = indices.map { (Double(f.x.tensor[$0]) - mean) * (Double(f.x.tensor[$0]) - mean) }.reduce(0, +) / m
                    let invStd = 1 / (variance + 1e-5).squareRoot()
                    var sumA = 0.0, sumAXhat = 0.0, magA = 0.0, magAXhat = 0.0
                    for i in indices {
                        let c = channel(i), xv = Double(f.x.tensor[i]), d = Double(dy.tensor[i])
                        let gamma = Double(f.gamma.tensor[c]), xhat = (xv - mean) * invStd
                        let xhatMag = (abs(xv) + abs(mean)) * invStd
                        y[i] = gamma * xhat + Double(f.beta.tensor[c])
                        yMag[i] = abs(gamma) * xhatMag + abs(Double(f.beta.tensor[c]))
                        dg[c] += d * xhat; dgMag[c] += abs(d) * xhatMag
                        db[c] += d; dbMag[c] += abs(d)
                        sumA += gamma * d; magA += abs(gamma * d)
                        sumAXhat += gamma * d * xhat; magAXhat += abs(gamma * d) * xhatMag
                    }
                    for i in indices {
                        let c = channel(i), xv = Double(f.x.tensor[i]), d = Double(dy.tensor[i])
                        let gamma = Double(f.gamma.tensor[c]), xhat = (xv - mean) * invStd
                        let xhatMag = (abs(xv) + abs(mean)) * invStd
                        dx[i] += invStd * (gamma * d - sumA / m - xhat * sumAXhat / m)
                        dxMag[i] += invStd * (abs(gamma * d) + magA / m + xhatMag * magAXhat / m)
                    }
                }
            }
            let refs: [(String, Tensor, Tensor, RoundingReference)] = [
                ("y", f.y.tensor, yN.tensor, RoundingReference(exact: y, magnitude: yMag, roundings: 6)),
                ("dx", f.dx.tensor, dxN.tensor, RoundingReference(exact: dx, magnitude: dxMag, roundings: 12)),
                ("dgamma", f.dgamma.tensor, dgN.tensor, RoundingReference(exact: dg, magnitude: dgMag, roundings: 12)),
                ("dbeta", f.dbeta.tensor, dbN.tensor, RoundingReference(exact: db, magnitude: dbMag, roundings: 12)),
            ]
            for (name, fast, naive, reference) in refs {
                S.assertWithinRounding(fast, reference, "groupNorm \(name) \(shape) G \(groups)")
                S.assertWithinRounding(naive, reference, "naive groupNorm \(name) \(shape) G \(groups)")
            }
        }
    }

    func testGradientCheckFastAndNaive() {
        let pool = WorkerPool(threads: 2)
        for groups in [1, 3, 6] {
            let f = Fixture(Shape(2, 6, 3, 4), groups: groups, seed: 30 + UInt64(groups))
            S.checkGradients(inputs: [f.x.tensor, f.gamma.tensor, f.beta.tensor],
                             gradients: [f.dx.tensor, f.dgamma.tensor, f.dbeta.tensor], output: f.y.tensor,
                             forward: { f.forward(pool: pool) },
                             backward: { dy in f.backward(dy: dy, pool: pool) }, "groupNorm G \(groups)")
            S.checkGradients(inputs: [f.x.tensor, f.gamma.tensor, f.beta.tensor],
                             gradients: [f.dx.tensor, f.dgamma.tensor, f.dbeta.tensor], output: f.y.tensor,
                             forward: {
                                 groupNormNaive(y: f.y.tensor, dx: nil, dgamma: nil, dbeta: nil, dy: nil, x: f.x.tensor,
                                                groups: groups, gamma: f.gamma.tensor, beta: f.beta.tensor)
                             },
                             backward: { dy in
                                 groupNormNaive(y: f.y.tensor, dx: f.dx.tensor, dgamma: f.dgamma.tensor, dbeta: f.dbeta.tensor,
                                                dy: dy, x: f.x.tensor, groups: groups, gamma: f.gamma.tensor, beta: f.beta.tensor)
                             }, "naive groupNorm G \(groups)")
        }
    }

    func testNilInputGradientStillGivesParameterGradients() {
        let pool = WorkerPool(threads: 2)
        let f = Fixture(Shape(2, 6, 3, 4), groups: 3, seed: 40)
        let dy = S.random(f.x.shape, seed: 41)
        f.forward(pool: pool)
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
        let f = Fixture(Shape(2, 6, 3, 4), groups: 2, seed: 50)
        let dy = S.random(f.x.shape, seed: 51)
        f.forward(pool: pool)
        S.assertAccumulates([f.dx.tensor, f.dgamma.tensor, f.dbeta.tensor], "groupNorm") {
            f.backward(dy: dy.tensor, pool: pool)
        }
    }

    func testStatisticsAndGradientsDoNotDependOnThreadCount() {
        let shape = Shape(3, 12, 7, 9)
        let dy = S.random(shape, seed: 61)
        func run(threads: Int) -> Fixture {
            let pool = WorkerPool(threads: threads)
            let f = Fixture(shape, groups: 4, seed: 60)
            f.forward(pool: pool)
            f.backward(dy: dy.tensor, pool: pool)
            return f
        }
        let reference = run(threads: 1)
        for threads in [2, 3, 5] {
            let f = run(threads: threads)
            let pairs = [(reference.saveMean, f.saveMean), (reference.saveInvStd, f.saveInvStd), (reference.y, f.y),
                         (reference.dx, f.dx), (reference.dgamma, f.dgamma), (reference.dbeta, f.dbeta)]
            for (k, (a, b)) in pairs.enumerated() {
                S.assertBitwiseEqual(a.tensor, b.tensor, "tensor \(k), threads \(threads)")
            }
        }
    }

    /// What makes GroupNorm rank-count independent: a sample's output and input gradient are bitwise
    /// those of a forward and backward on that sample alone, and the parameter gradients of the batch
    /// are the sum of the per-sample ones (within float rounding of adding N values: they are summed
    /// in another order).
    func testEachSampleIsNormalisedOnItsOwn() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(3, 8, 4, 5)
        let f = Fixture(shape, groups: 4, seed: 70)
        let dy = S.random(shape, seed: 71)
        f.forward(pool: pool)
        f.backward(dy: dy.tensor, pool: pool)
        var dgammaSum = [Double](repeating: 0, count: shape.c), dbetaSum = dgammaSum
        let single = Shape(1, shape.c, shape.h, shape.w)
        for n in 0..<shape.n {
            let one = Fixture(single, groups: 4, seed: 70)
            one.x.tensor.copy(from: f.x.tensor.batchSlice(n, 1))
            one.gamma.tensor.copy(from: f.gamma.tensor); one.beta.tensor.copy(from: f.beta.tensor)
            one.forward(pool: pool)
            one.backward(dy: dy.tensor.batchSlice(n, 1), pool: pool)
            S.assertBitwiseEqual(one.y.tensor, f.y.tensor.batchSlice(n, 1), "y of sample \(n)")
            S.assertBitwiseEqual(one.dx.tensor, f.dx.tensor.batchSlice(n, 1), "dx of sample \(n)")
            for c in 0..<shape.c {
                dgammaSum[c] += Double(one.dgamma.tensor[c]); dbetaSum[c] += Double(one.dbeta.tensor[c])
            }
        }
        // Each per-sample sum is rounded to float once and the N of them are added in Double here,
        // the batch's sum once at the end: N + 1 roundings of terms whose absolute values add up to
        // sum |dy| |xhat| (dgamma) and sum |dy| (dbeta) over the batch.
        for c in 0..<shape.c {
            var dgammaMagnitude = 0.0, dbetaMagnitude = 0.0
            for n in 0..<shape.n {
                let q = n * 4 + c / (shape.c / 4)
                let mean = Double(f.saveMean.tensor[q]), invStd = Double(f.saveInvStd.tensor[q])
                for i in 0..<shape.plane {
                    let d = abs(Double(dy.tensor.plane(n, c)[i]))
                    dgammaMagnitude += d * abs(Double(f.x.tensor.plane(n, c)[i]) - mean) * invStd
                    dbetaMagnitude += d
                }
            }
            let gamma = RoundingModel.gamma(shape.n + 1)
            XCTAssertEqual(Double(f.dgamma.tensor[c]), dgammaSum[c], accuracy: gamma * dgammaMagnitude, "dgamma[\(c)]")
            XCTAssertEqual(Double(f.dbeta.tensor[c]), dbetaSum[c], accuracy: gamma * dbetaMagnitude, "dbeta[\(c)]")
        }
    }
}
