import XCTest
@testable import SegEngine

/// The optimizer formulas written out in Double, one element at a time, straight from PyTorch's
/// documented pseudocode. The engine's float32 updates are compared against it.
private struct ReferenceOptimizer {
    let config: OptimizerConfig
    var step = 0
    var p: [Double]
    var buf: [Double], m: [Double], v: [Double]

    init(_ config: OptimizerConfig, values: [Float]) {
        self.config = config
        p = values.map(Double.init)
        buf = [Double](repeating: 0, count: values.count)
        m = buf
        v = buf
    }

    mutating func update(gradients: [Float], lr: Double) {
        step += 1
        let t = Double(step)
        let wd = Double(config.weightDecay), mu = Double(config.momentum)
        let b1 = Double(config.beta1), b2 = Double(config.beta2), eps = Double(config.epsilon)
        for i in p.indices {
            var g = Double(gradients[i])
            switch config.kind {
            case .sgd:
                g += wd * p[i]
                if mu != 0 {
                    buf[i] = step == 1 ? g : mu * buf[i] + g
                    g = config.nesterov ? g + mu * buf[i] : buf[i]
                }
                p[i] -= lr * g
            case .adam, .adamw, .radam:
                if config.kind == .adamw { p[i] *= 1 - lr * wd } else { g += wd * p[i] }
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                let mHat = m[i] / (1 - pow(b1, t))
                let vHat = v[i] / (1 - pow(b2, t))
                if config.kind != .radam {
                    p[i] -= lr * mHat / (vHat.squareRoot() + eps)
                } else {
                    let rhoInf = 2 / (1 - b2) - 1
                    let rhoT = rhoInf - 2 * t * pow(b2, t) / (1 - pow(b2, t))
                    if rhoT > 5 {
                        let r = ((rhoT - 4) * (rhoT - 2) * rhoInf / ((rhoInf - 4) * (rhoInf - 2) * rhoT)).squareRoot()
                        // PyTorch: l_t = sqrt(1 - b2^t) / (sqrt(v_t) + eps), eps outside the bias correction.
                        let l = (1 - pow(b2, t)).squareRoot() / (v[i].squareRoot() + eps)
                        p[i] -= lr * mHat * r * l
                    } else {
                        p[i] -= lr * mHat
                    }
                }
            }
        }
    }
}

/// max |a - b| / max(1, |b|): relative, with a floor of 1 as in the gradient checker.
private func maxRelativeError(_ a: [Float], _ b: [Double]) -> Double {
    precondition(a.count == b.count)
    var worst = 0.0
    for (x, y) in zip(a, b) { worst = max(worst, abs(Double(x) - y) / max(1, abs(y))) }
    return worst
}

private func randomValues(_ count: Int, seed: UInt64, in range: ClosedRange<Float> = -1...1) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return (0..<count).map { _ in rng.nextFloat(in: range) }
}

private func owned(_ values: [Float]) -> OwnedTensor { OwnedTensor(.vector(values.count), values) }

/// Gradients whose magnitudes span 1e-3...1 and change scale from step to step, some exactly 0.
private func stepGradients(_ count: Int, step: Int) -> [Float] {
    var rng = SplitMix64(seed: 1000 + UInt64(step))
    let scales: [Float] = [1, 0.01, 2, 0.1, 0.5, 0.003, 1.5, 0.05, 1, 0.2, 0.02, 3]
    return (0..<count).map { i in
        if i % 17 == 0 { return 0 }
        let magnitude = Float(pow(10, Double(rng.nextFloat(in: -3...0))))
        return (rng.nextUnitFloat() < 0.5 ? -1 : 1) * magnitude * scales[step % scales.count]
    }
}

final class OptimizerTests: XCTestCase {
    static let pool = WorkerPool(threads: 2)

    /// Every kind, with and without weight decay, for 12 steps (RAdam rectifies from step 6).
    /// eps = 1e-3 so that where eps sits (inside or outside the bias correction) shows.
    func testEveryKindMatchesDoubleReference() {
        let base: [(String, OptimizerConfig)] = [
            ("sgd plain", OptimizerConfig(kind: .sgd, momentum: 0)),
            ("sgd momentum", OptimizerConfig(kind: .sgd, momentum: 0.9)),
            ("sgd nesterov", OptimizerConfig(kind: .sgd, momentum: 0.8, nesterov: true)),
            ("adam", OptimizerConfig(kind: .adam, epsilon: 1e-3)),
            ("adamw", OptimizerConfig(kind: .adamw, beta1: 0.8, beta2: 0.99, epsilon: 1e-3)),
            ("radam", OptimizerConfig(kind: .radam, epsilon: 1e-3)),
        ]
        let count = 257
        for (name, plain) in base {
            for weightDecay: Float in [0, 0.1] {
                var config = plain
                config.weightDecay = weightDecay
                let start = randomValues(count, seed: 7)
                let values = owned(start), gradients = OwnedTensor(.vector(count))
                let optimizer = Optimizer(config, parameterCount: count)
                var reference = ReferenceOptimizer(config, values: start)
                for step in 0..<12 {
                    let g = stepGradients(count, step: step)
                    let lr: Float = step < 6 ? 0.05 : 0.02
                    for i in 0..<count { gradients.tensor[i] = g[i] }
                    optimizer.apply(values: values.tensor, gradients: gradients.tensor, learningRate: lr, pool: Self.pool)
                    reference.update(gradients: g, lr: Double(lr))
                }
                let label = "\(name) wd \(weightDecay)"
                XCTAssertEqual(optimizer.step, 12, label)
                XCTAssertLessThanOrEqual(maxRelativeError(values.tensor.toArray(), reference.p), 1e-5, label)
                // The parameters moved: the comparison is not between two unchanged vectors.
                XCTAssertGreaterThan(maxRelativeError(start, reference.p), 0.05, label)
                for (stateName, buffer) in optimizer.stateBuffers {
                    let expected = stateName == "momentum_buffer" ? reference.buf
                        : stateName == "exp_avg" ? reference.m : reference.v
                    XCTAssertLessThanOrEqual(maxRelativeError(buffer.tensor.toArray(), expected), 1e-5, "\(label) \(stateName)")
                }
            }
        }
    }

    /// Constant gradient g: heavy ball moves 1, 1.9, 2.71 lr*g; Nesterov 1.9, 2.71, 3.439 lr*g.
    func testSGDKnownNumbers() {
        let cases: [(OptimizerConfig, Double)] = [
            (OptimizerConfig(kind: .sgd, momentum: 0), 3),
            (OptimizerConfig(kind: .sgd, momentum: 0.9), 1 + 1.9 + 2.71),
            (OptimizerConfig(kind: .sgd, momentum: 0.9, nesterov: true), 1.9 + 2.71 + 3.439),
        ]
        for (config, factor) in cases {
            let values = owned([1, -2, 0.5]), gradients = owned([0.5, -1, 2])
            let optimizer = Optimizer(config, parameterCount: 3)
            for _ in 0..<3 {
                optimizer.apply(values: values.tensor, gradients: gradients.tensor, learningRate: 0.01, pool: Self.pool)
            }
            let expected = [1 - 0.01 * factor * 0.5, -2 + 0.01 * factor, 0.5 - 0.01 * factor * 2]
            XCTAssertLessThanOrEqual(maxRelativeError(values.tensor.toArray(), expected), 1e-6, "\(config)")
        }
    }

    /// Adam's first step: m_hat = g, v_hat = g^2, so every parameter moves by lr * sign(g).
    /// With a zero gradient nothing moves; with weight decay the L2 gradient wd*p moves it by lr*sign(p).
    func testAdamFirstStepMovesByLearningRateTimesSign() {
        let start: [Float] = [0.3, -0.7, 1.2, -0.1, 0.9]
        let values = owned(start), gradients = owned([1e-3, 2, -5, 0, -0.02])
        let optimizer = Optimizer(OptimizerConfig(kind: .adam), parameterCount: 5)
        optimizer.apply(values: values.tensor, gradients: gradients.tensor, learningRate: 0.01, pool: Self.pool)
        let expected: [Double] = [0.29, -0.71, 1.21, -0.1, 0.91]
        XCTAssertLessThanOrEqual(maxRelativeError(values.tensor.toArray(), expected), 1e-6)

        let decayed = owned(start), zero = OwnedTensor(.vector(5))
        let l2 = Optimizer(OptimizerConfig(kind: .adam, weightDecay: 0.1), parameterCount: 5)
        l2.apply(values: decayed.tensor, gradients: zero.tensor, learningRate: 0.01, pool: Self.pool)
        let expectedL2 = start.map { Double($0) - 0.01 * ($0 > 0 ? 1 : -1) }
        XCTAssertLessThanOrEqual(maxRelativeError(decayed.tensor.toArray(), expectedL2), 1e-6)
    }

    /// AdamW with a zero gradient only decays: p_t = p_0 (1 - lr*wd)^t. Adam's L2 would instead
    /// move every parameter by lr*sign(p), so this separates decoupled from coupled decay.
    func testAdamWDecaysWeightsWithZeroGradient() {
        let start: [Float] = [0.3, -0.7, 1.2, -0.1]
        let values = owned(start), zero = OwnedTensor(.vector(4))
        let optimizer = Optimizer(OptimizerConfig(kind: .adamw, weightDecay: 0.5), parameterCount: 4)
        for _ in 0..<5 {
            optimizer.apply(values: values.tensor, gradients: zero.tensor, learningRate: 0.1, pool: Self.pool)
        }
        let expected = start.map { Double($0) * pow(1 - 0.1 * 0.5, 5) }
        XCTAssertLessThanOrEqual(maxRelativeError(values.tensor.toArray(), expected), 1e-6)
    }

    /// RAdam with a constant gradient: m_hat = g exactly, so steps 1-5 (rho_t <= 5) each move by
    /// lr*g, like SGD. Step 6 is the first with rho_t > 5 (rho_6 = 5.994); v_hat = g^2 there, so it
    /// moves by lr * r_6 * sign(g) with r_6 = sqrt(3.994 * 1.994 * 1999 / (1995 * 1997 * 5.994)).
    func testRAdamFirstStepsAreBiasCorrectedMomentum() {
        let start: [Float] = [0.5, -0.25, 1]
        let g: [Float] = [0.2, -3, 0.01]
        let values = owned(start), gradients = owned(g)
        let optimizer = Optimizer(OptimizerConfig(kind: .radam), parameterCount: 3)
        let lr: Float = 0.01
        for step in 1...5 {
            optimizer.apply(values: values.tensor, gradients: gradients.tensor, learningRate: lr, pool: Self.pool)
            let expected = zip(start, g).map { Double($0) - Double(step) * 0.01 * Double($1) }
            XCTAssertLessThanOrEqual(maxRelativeError(values.tensor.toArray(), expected), 1e-6, "step \(step)")
        }
        let before = values.tensor.toArray()
        optimizer.apply(values: values.tensor, gradients: gradients.tensor, learningRate: lr, pool: Self.pool)
        let rhoInf = 1999.0, rho6 = 5.994163751655833
        let r6 = ((rho6 - 4) * (rho6 - 2) * rhoInf / ((rhoInf - 4) * (rhoInf - 2) * rho6)).squareRoot()
        XCTAssertEqual(r6, 0.02583, accuracy: 1e-4)
        let expected = zip(before, g).map { Double($0) - 0.01 * r6 * ($1 > 0 ? 1 : -1) }
        XCTAssertLessThanOrEqual(maxRelativeError(values.tensor.toArray(), expected), 1e-6)
    }

    func testClippingScalesToClipNormAndReturnsNormBefore() {
        // Norm 10: (6, -8) and zeros. Plain SGD with lr 1 subtracts exactly the clipped gradient.
        var g = [Float](repeating: 0, count: 9)
        g[2] = 6
        g[7] = -8
        let values = OwnedTensor(.vector(9)), gradients = owned(g)
        let optimizer = Optimizer(OptimizerConfig(kind: .sgd, momentum: 0, clipNorm: 1), parameterCount: 9)
        let norm = optimizer.apply(values: values.tensor, gradients: gradients.tensor, learningRate: 1, pool: Self.pool)
        XCTAssertEqual(norm, 10, accuracy: 1e-12)
        XCTAssertEqual(gradients.tensor[2], 0.6, accuracy: 1e-6)
        XCTAssertEqual(gradients.tensor[7], -0.8, accuracy: 1e-6)
        XCTAssertEqual(globalNorm(gradients.tensor, pool: Self.pool), 1, accuracy: 1e-6)
        XCTAssertEqual(values.tensor[2], -0.6, accuracy: 1e-6)
        XCTAssertEqual(values.tensor[7], 0.8, accuracy: 1e-6)

        // Norm 10 and clip 8: scale 0.8, close to 1 but still applied.
        let mild = owned(g)
        let clip8 = Optimizer(OptimizerConfig(kind: .adam, clipNorm: 8), parameterCount: 9)
        XCTAssertEqual(clip8.apply(values: values.tensor, gradients: mild.tensor, learningRate: 1, pool: Self.pool), 10, accuracy: 1e-12)
        XCTAssertEqual(mild.tensor[2], 4.8, accuracy: 1e-5)
        XCTAssertEqual(mild.tensor[7], -6.4, accuracy: 1e-5)

        // Norm 0.5 below the clip: gradients untouched, bit for bit.
        let small = owned(g.map { $0 / 20 })
        let before = small.tensor.toArray()
        let norm2 = optimizer.apply(values: values.tensor, gradients: small.tensor, learningRate: 1, pool: Self.pool)
        XCTAssertEqual(norm2, 0.5, accuracy: 1e-7)
        XCTAssertEqual(small.tensor.toArray(), before)

        // Without clipNorm, a large gradient is not touched either.
        let unclipped = Optimizer(OptimizerConfig(kind: .adam), parameterCount: 9)
        let large = owned(g)
        XCTAssertEqual(unclipped.apply(values: values.tensor, gradients: large.tensor, learningRate: 1, pool: Self.pool), 10, accuracy: 1e-12)
        XCTAssertEqual(large.tensor.toArray(), g)
    }

    func testGlobalNormMatchesReferenceAndIsThreadIndependent() {
        let count = 1_000_003  // not a multiple of the chunk size
        XCTAssertNotEqual(count % globalNormChunkSize, 0)
        let x = owned(randomValues(count, seed: 11))
        var reference = 0.0
        for i in 0..<count { reference += Double(x.tensor[i]) * Double(x.tensor[i]) }
        reference = reference.squareRoot()
        var norms: [Double] = []
        for threads in 1...3 {
            norms.append(globalNorm(x.tensor, pool: WorkerPool(threads: threads)))
        }
        XCTAssertEqual(norms[0], reference, accuracy: reference * 1e-12)
        XCTAssertEqual(norms[0].bitPattern, norms[1].bitPattern)
        XCTAssertEqual(norms[0].bitPattern, norms[2].bitPattern)
        // Small and empty inputs.
        let small = owned([3, 4]), empty = OwnedTensor(.vector(0))
        XCTAssertEqual(globalNorm(small.tensor, pool: Self.pool), 5)
        XCTAssertEqual(globalNorm(empty.tensor, pool: Self.pool), 0)
    }

    /// The update is elementwise: 1 and 3 threads give the same bits, clipping included.
    func testApplyIsBitwiseIdenticalForThreadCounts() {
        let count = 100_003
        let pools = [WorkerPool(threads: 1), WorkerPool(threads: 3)]
        for kind in OptimizerKind.allCases {
            let config = OptimizerConfig(kind: kind, weightDecay: 0.01, clipNorm: 50)
            var results: [[Float]] = []
            for pool in pools {
                let values = owned(randomValues(count, seed: 3))
                let gradients = OwnedTensor(.vector(count))
                let optimizer = Optimizer(config, parameterCount: count)
                for step in 0..<7 {
                    let g = stepGradients(count, step: step)
                    for i in 0..<count { gradients.tensor[i] = g[i] }
                    optimizer.apply(values: values.tensor, gradients: gradients.tensor, learningRate: 0.01, pool: pool)
                }
                results.append(values.tensor.toArray() + optimizer.stateBuffers.flatMap { $0.buffer.tensor.toArray() })
            }
            XCTAssertEqual(results[0].map(\.bitPattern), results[1].map(\.bitPattern), "\(kind)")
        }
    }

    /// Adam and AdamW update eight elements at a time: the bits are those of the float expression
    /// applied element by element (the loop as it was before it ran on lanes, written out here), in
    /// the values and both moments, for lengths and thread ranges that end 1-7 elements past a
    /// multiple of 8 and for a shard that starts off one.
    func testAdamLanesGiveTheBitsOfTheElementwiseExpression() {
        for kind in [OptimizerKind.adam, .adamw] {
            for (count, shard) in [(1, nil), (7, nil), (9, nil), (1_003, nil), (1_003, 13..<1_000)] as [(Int, Range<Int>?)] {
                let config = OptimizerConfig(kind: kind, beta1: 0.85, beta2: 0.995, epsilon: 1e-3, weightDecay: 0.05)
                let start = randomValues(count, seed: 21)
                let values = owned(start), gradients = OwnedTensor(.vector(count))
                let optimizer = Optimizer(config, parameterCount: count)
                optimizer.shard = shard
                var p = start, m = [Float](repeating: 0, count: count), v = m
                let (b1, b2, wd) = (decimalValue(config.beta1), decimalValue(config.beta2), decimalValue(config.weightDecay))
                for step in 1...5 {
                    let g = stepGradients(count, step: step)
                    for i in 0..<count { gradients.tensor[i] = g[i] }
                    let lr = 0.01 * Double(Float(step))
                    optimizer.apply(values: values.tensor, gradients: gradients.tensor, learningRate: Float(lr),
                                    pool: WorkerPool(threads: 3))
                    let rate = Double(Float(lr)) * 1
                    let t = Double(step)
                    let decay = kind == .adamw ? Float(1 - rate * wd) : 1, l2 = kind == .adamw ? 0 : Float(wd)
                    let stepSize = Float(rate / (1 - pow(b1, t))), bias2Sqrt = Float((1 - pow(b2, t)).squareRoot())
                    let (beta2, oneMinusB1, oneMinusB2) = (Float(b2), Float(1 - b1), Float(1 - b2))
                    for i in shard ?? 0..<count {
                        let param = p[i] * decay
                        let grad = g[i] + l2 * param
                        let mi = m[i] + oneMinusB1 * (grad - m[i])
                        let vi = v[i] * beta2 + oneMinusB2 * grad * grad
                        m[i] = mi
                        v[i] = vi
                        let denom = vi.squareRoot() / bias2Sqrt + config.epsilon
                        p[i] = param - stepSize * mi / denom
                    }
                }
                let label = "\(kind) count \(count) shard \(String(describing: shard))"
                XCTAssertEqual(values.tensor.toArray().map(\.bitPattern), p.map(\.bitPattern), label)
                let moments = Dictionary(uniqueKeysWithValues: optimizer.stateBuffers.map { ($0.name, $0.buffer.tensor.toArray()) })
                XCTAssertEqual(moments["exp_avg"]?.map(\.bitPattern), m.map(\.bitPattern), label)
                XCTAssertEqual(moments["exp_avg_sq"]?.map(\.bitPattern), v.map(\.bitPattern), label)
                XCTAssertNotEqual(p, start, label)
            }
        }
    }

    /// Sharded updates (data-parallel ranks): optimizers that each update one shard (three uneven
    /// shards, one optimizer per shard, 7 clipped steps) together give bitwise the full update, in
    /// the values and in each shard's state; outside its shard an optimizer changes nothing.
    func testShardsTogetherGiveTheFullUpdateBitwise() {
        let count = 10_007
        let shards = (0..<3).map { WorkerPool.split(count, parts: 3, index: $0) }
        for kind in OptimizerKind.allCases {
            let config = OptimizerConfig(kind: kind, weightDecay: 0.01, clipNorm: 50)
            let start = randomValues(count, seed: 9)
            let full = Optimizer(config, parameterCount: count), fullValues = owned(start)
            let parts = shards.map { shard -> Optimizer in
                let o = Optimizer(config, parameterCount: count)
                o.shard = shard
                return o
            }
            let partValues = shards.map { _ in owned(start) }
            let gradients = OwnedTensor(.vector(count))
            for step in 0..<7 {
                let g = stepGradients(count, step: step)
                for i in 0..<count { gradients.tensor[i] = g[i] }
                let norm = full.gradientNorm(gradients.tensor, pool: Self.pool)
                // Clipping scales the gradient in place: each optimizer gets its own copy.
                for (o, values) in zip(parts, partValues) {
                    let copy = owned(gradients.tensor.toArray())
                    o.apply(values: values.tensor, gradients: copy.tensor, learningRate: 0.01, pool: Self.pool, gradientNorm: norm)
                }
                full.apply(values: fullValues.tensor, gradients: gradients.tensor, learningRate: 0.01, pool: Self.pool, gradientNorm: norm)
            }
            for (r, shard) in shards.enumerated() {
                for i in 0..<count {
                    let expected = shard.contains(i) ? fullValues.tensor[i] : start[i]
                    if partValues[r].tensor[i].bitPattern != expected.bitPattern {
                        XCTFail("\(kind), shard \(r), element \(i): \(partValues[r].tensor[i]), expected \(expected)")
                        break
                    }
                }
                for (state, reference) in zip(parts[r].stateBuffers, full.stateBuffers) {
                    XCTAssertEqual(Array(state.buffer.tensor.toArray()[shard]).map(\.bitPattern),
                                   Array(reference.buffer.tensor.toArray()[shard]).map(\.bitPattern), "\(kind) \(state.name)")
                }
            }
        }
    }

    /// Parameter groups (--encoder-lr-mult): a group of scale s updates as an optimizer of its own
    /// over those elements at s x the rate (PyTorch's param_groups), the rest at the rate, bitwise;
    /// also on a shard that cuts the group.
    func testGroupsUpdateAsSeparateOptimizersAtScaledRates() {
        let count = 5_003, group = 1_000..<3_500, scale = 0.25
        for kind in OptimizerKind.allCases {
            for shard in [nil, 2_000..<4_000] as [Range<Int>?] {
                let config = OptimizerConfig(kind: kind, weightDecay: 0.01)
                let start = randomValues(count, seed: 4)
                let grouped = Optimizer(config, parameterCount: count), groupedValues = owned(start)
                grouped.groups = [(group, scale)]
                grouped.shard = shard
                // The reference: one optimizer for the group at scale x the rate, one for the rest.
                let inside = Optimizer(config, parameterCount: count), outside = [Optimizer(config, parameterCount: count),
                                                                                 Optimizer(config, parameterCount: count)]
                let elements = shard ?? 0..<count
                inside.shard = group.clamped(to: elements)
                outside[0].shard = elements.lowerBound..<max(elements.lowerBound, min(group.lowerBound, elements.upperBound))
                outside[1].shard = min(elements.upperBound, max(group.upperBound, elements.lowerBound))..<elements.upperBound
                let referenceValues = owned(start)
                for step in 0..<5 {
                    // Each update its own copy, alive until the updates are done (a Tensor does not
                    // keep its storage alive).
                    let g = stepGradients(count, step: step), copies = (0..<4).map { _ in owned(g) }
                    grouped.apply(values: groupedValues.tensor, gradients: copies[0].tensor, learningRate: 0.01, pool: Self.pool)
                    inside.apply(values: referenceValues.tensor, gradients: copies[1].tensor, learningRate: Float(0.01 * scale),
                                 pool: Self.pool)
                    for (o, copy) in zip(outside, copies[2...]) {
                        o.apply(values: referenceValues.tensor, gradients: copy.tensor, learningRate: 0.01, pool: Self.pool)
                    }
                    withExtendedLifetime(copies) {}
                }
                XCTAssertEqual(groupedValues.tensor.toArray().map(\.bitPattern), referenceValues.tensor.toArray().map(\.bitPattern),
                               "\(kind), shard \(String(describing: shard))")
                // And the group did move at another rate than the rest would have.
                let plain = Optimizer(config, parameterCount: count), plainValues = owned(start)
                for step in 0..<5 {
                    let gradient = owned(stepGradients(count, step: step))
                    plain.apply(values: plainValues.tensor, gradients: gradient.tensor, learningRate: 0.01, pool: Self.pool)
                    withExtendedLifetime(gradient) {}
                }
                let probe = group.clamped(to: elements).lowerBound + 1
                XCTAssertNotEqual(plainValues.tensor[probe], groupedValues.tensor[probe], "\(kind)")
            }
        }
    }

    /// A frozen range (--freeze-encoder) is skipped as PyTorch skips a parameter without a
    /// gradient: while frozen its values and state stay bitwise as they were (also with weight
    /// decay and a gradient there), and after unfreezing it updates as a fresh optimizer of its own
    /// whose first update is step 1 (its bias corrections count its own steps); the rest updates
    /// throughout as if nothing were frozen. With an --encoder-lr-mult group over the range and on
    /// a shard that cuts it; and a restore with the frozen steps continues bitwise.
    func testAFrozenRangeIsSkippedAndLaterCountsItsOwnSteps() {
        let count = 5_003, range = 1_000..<3_500, frozenFor = 3, total = 7
        for kind in OptimizerKind.allCases {
            for (shard, scale) in [(nil, 1.0), (2_000..<4_000, 0.25)] as [(Range<Int>?, Double)] {
                let config = OptimizerConfig(kind: kind, weightDecay: 0.01)
                let start = randomValues(count, seed: 6)
                let optimizer = Optimizer(config, parameterCount: count), values = owned(start)
                if scale != 1 { optimizer.groups = [(range, scale)] }
                optimizer.freezable = range
                optimizer.shard = shard
                let elements = shard ?? 0..<count
                // The reference: the range as an optimizer that starts after the frozen steps, the rest
                // as two optimizers that run throughout.
                let inside = Optimizer(config, parameterCount: count), outside = [Optimizer(config, parameterCount: count),
                                                                                 Optimizer(config, parameterCount: count)]
                inside.shard = range.clamped(to: elements)
                outside[0].shard = elements.lowerBound..<max(elements.lowerBound, min(range.lowerBound, elements.upperBound))
                outside[1].shard = min(elements.upperBound, max(range.upperBound, elements.lowerBound))..<elements.upperBound
                let referenceValues = owned(start)
                var resumed: (Optimizer, OwnedTensor)? = nil
                for step in 0..<total {
                    optimizer.frozen = step < frozenFor
                    let g = stepGradients(count, step: step), copies = (0..<5).map { _ in owned(g) }
                    optimizer.apply(values: values.tensor, gradients: copies[0].tensor, learningRate: 0.01, pool: Self.pool)
                    if step >= frozenFor {
                        inside.apply(values: referenceValues.tensor, gradients: copies[1].tensor, learningRate: Float(0.01 * scale),
                                     pool: Self.pool)
                    }
                    for (o, copy) in zip(outside, copies[2..<4]) {
                        o.apply(values: referenceValues.tensor, gradients: copy.tensor, learningRate: 0.01, pool: Self.pool)
                    }
                    if let (b, bValues) = resumed {
                        b.apply(values: bValues.tensor, gradients: copies[4].tensor, learningRate: 0.01, pool: Self.pool)
                    }
                    withExtendedLifetime(copies) {}
                    if step + 1 == frozenFor {
                        let now = values.tensor.toArray()
                        XCTAssertEqual(Array(now[range]).map(\.bitPattern), Array(start[range]).map(\.bitPattern), "\(kind): frozen values")
                        for state in optimizer.stateBuffers {
                            XCTAssertTrue(state.buffer.tensor.toArray()[range].allSatisfy { $0 == 0 }, "\(kind): frozen \(state.name)")
                        }
                        XCTAssertEqual(optimizer.frozenSteps, frozenFor)
                    }
                    if step == frozenFor + 1 {
                        // A checkpoint here: the state buffers, the step and the frozen steps.
                        let b = Optimizer(config, parameterCount: count)
                        if scale != 1 { b.groups = [(range, scale)] }
                        b.freezable = range
                        b.shard = shard
                        for (target, source) in zip(b.stateBuffers, optimizer.stateBuffers) { target.buffer.tensor.copy(from: source.buffer.tensor) }
                        b.restore(step: optimizer.step, frozenSteps: optimizer.frozenSteps)
                        resumed = (b, owned(values.tensor.toArray()))
                    }
                }
                let label = "\(kind), shard \(String(describing: shard))"
                XCTAssertEqual(optimizer.step, total)
                XCTAssertEqual(values.tensor.toArray().map(\.bitPattern), referenceValues.tensor.toArray().map(\.bitPattern), label)
                XCTAssertEqual(resumed?.1.tensor.toArray().map(\.bitPattern), values.tensor.toArray().map(\.bitPattern),
                               "\(label): restored with the frozen steps")
                XCTAssertNotEqual(values.tensor[range.clamped(to: elements).lowerBound], start[range.clamped(to: elements).lowerBound],
                                  "\(label): the range trains after unfreezing")
            }
        }
    }

    /// Checkpoint round trip: load the state buffers into a new optimizer, restore the step, and
    /// the next updates are bitwise those of the uninterrupted run.
    func testStateBuffersAndRestoreContinueTheRun() {
        XCTAssertEqual(Optimizer(OptimizerConfig(kind: .sgd, momentum: 0), parameterCount: 4).stateBuffers.map(\.name), [])
        XCTAssertEqual(Optimizer(OptimizerConfig(kind: .sgd), parameterCount: 4).stateBuffers.map(\.name), ["momentum_buffer"])
        for kind: OptimizerKind in [.adam, .adamw, .radam] {
            XCTAssertEqual(Optimizer(OptimizerConfig(kind: kind), parameterCount: 4).stateBuffers.map(\.name), ["exp_avg", "exp_avg_sq"])
        }
        let count = 64
        for kind in OptimizerKind.allCases {
            let config = OptimizerConfig(kind: kind, weightDecay: 0.01)
            let a = Optimizer(config, parameterCount: count)
            let valuesA = owned(randomValues(count, seed: 5)), gradients = OwnedTensor(.vector(count))
            func run(_ optimizer: Optimizer, _ values: OwnedTensor, steps: Range<Int>) {
                for step in steps {
                    let g = stepGradients(count, step: step)
                    for i in 0..<count { gradients.tensor[i] = g[i] }
                    optimizer.apply(values: values.tensor, gradients: gradients.tensor, learningRate: 0.01, pool: Self.pool)
                }
            }
            run(a, valuesA, steps: 0..<7)
            let b = Optimizer(config, parameterCount: count)
            for (target, source) in zip(b.stateBuffers, a.stateBuffers) { target.buffer.tensor.copy(from: source.buffer.tensor) }
            b.restore(step: a.step)
            let valuesB = owned(valuesA.tensor.toArray())
            run(a, valuesA, steps: 7..<10)
            run(b, valuesB, steps: 7..<10)
            XCTAssertEqual(b.step, 10)
            XCTAssertEqual(valuesA.tensor.toArray(), valuesB.tensor.toArray(), "\(kind)")
        }
    }

    /// Minimise sum((p - target)^2): every optimizer gets the loss from ~40 below 1e-4.
    func testEachOptimizerMinimisesAQuadratic() {
        let count = 64
        // (config, initial learning rate, decay per step): RAdam's rectifier r_t is still ~0.2 at
        // step 100, so it gets a larger rate that decays more slowly.
        let cases: [(OptimizerConfig, Float, Double)] = [
            (OptimizerConfig(kind: .sgd, momentum: 0), 0.1, 0.98),
            (OptimizerConfig(kind: .sgd, momentum: 0.9), 0.05, 0.98),
            (OptimizerConfig(kind: .sgd, momentum: 0.9, nesterov: true), 0.05, 0.98),
            (OptimizerConfig(kind: .adam), 0.1, 0.98),
            (OptimizerConfig(kind: .adamw, weightDecay: 1e-4), 0.1, 0.98),
            (OptimizerConfig(kind: .radam), 0.3, 0.99),
        ]
        let target = randomValues(count, seed: 21)
        for (config, lr0, decay) in cases {
            let values = owned(randomValues(count, seed: 22)), gradients = OwnedTensor(.vector(count))
            let optimizer = Optimizer(config, parameterCount: count)
            func loss() -> Double {
                (0..<count).reduce(0.0) { $0 + pow(Double(values.tensor[$1] - target[$1]), 2) }
            }
            let initial = loss()
            XCTAssertGreaterThan(initial, 10)
            for step in 0..<500 {
                for i in 0..<count { gradients.tensor[i] = 2 * (values.tensor[i] - target[i]) }
                // Exponential decay, so the adaptive methods settle instead of hovering at ~lr.
                let lr = lr0 * Float(pow(decay, Double(step)))
                optimizer.apply(values: values.tensor, gradients: gradients.tensor, learningRate: lr, pool: Self.pool)
            }
            XCTAssertLessThan(loss(), 1e-4, "\(config.kind) momentum \(config.momentum) nesterov \(config.nesterov)")
        }
    }

    func testValidateRejectsBadValues() {
        let valid = OptimizerConfig(kind: .adam)
        XCTAssertNil(OptimizerConfig.validate(valid, learningRate: 1e-3))
        XCTAssertNil(OptimizerConfig.validate(OptimizerConfig(kind: .sgd, nesterov: true), learningRate: 0.1))
        XCTAssertNotNil(OptimizerConfig.validate(valid, learningRate: -1e-3))
        XCTAssertNotNil(OptimizerConfig.validate(valid, learningRate: .nan))
        var bad = valid
        bad.weightDecay = -0.1
        XCTAssertNotNil(OptimizerConfig.validate(bad, learningRate: 1e-3))
        for beta: Float in [1, -0.1, 1.5] {
            bad = valid
            bad.beta1 = beta
            XCTAssertNotNil(OptimizerConfig.validate(bad, learningRate: 1e-3), "beta1 \(beta)")
            bad = valid
            bad.beta2 = beta
            XCTAssertNotNil(OptimizerConfig.validate(bad, learningRate: 1e-3), "beta2 \(beta)")
        }
        XCTAssertNotNil(OptimizerConfig.validate(OptimizerConfig(kind: .sgd, momentum: 0, nesterov: true), learningRate: 0.1))
        XCTAssertNotNil(OptimizerConfig.validate(OptimizerConfig(kind: .adam, nesterov: true), learningRate: 0.1))
        XCTAssertNotNil(OptimizerConfig.validate(OptimizerConfig(kind: .sgd, momentum: -0.5), learningRate: 0.1))
        XCTAssertNotNil(OptimizerConfig.validate(OptimizerConfig(kind: .adam, epsilon: -1), learningRate: 0.1))
        XCTAssertNotNil(OptimizerConfig.validate(OptimizerConfig(kind: .adam, clipNorm: 0), learningRate: 0.1))
        let message = OptimizerConfig.validate(OptimizerConfig(kind: .adam, beta2: 1), learningRate: 0.1) ?? ""
        XCTAssertTrue(message.contains("beta2") && !message.contains("\n"), message)
    }
}
