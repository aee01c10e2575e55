import XCTest
@testable import SegEngine

#if canImport(Glibc)
import Glibc
#endif

final class LossTests: XCTestCase {
    static let ignore = 255

    /// A loss configuration as the tests exercise it: every one ignores `LossTests.ignore`.
    struct LossCase {
        let name: String, classes: Int, config: LossConfig

        init(_ components: [LossComponent], classes: Int, _ adjust: (inout LossConfig) -> Void = { _ in }) {
            var config = LossConfig(components: components, ignoreIndex: LossTests.ignore)
            adjust(&config)
            self.config = config
            self.classes = classes
            name = "\(config.name) classes \(classes)"
                + (config.classWeights.map { " class weights \($0)" } ?? "") + (config.focalAlpha.map { " alpha \($0)" } ?? "")
        }

        init(_ kind: LossKind, classes: Int, _ adjust: (inout LossConfig) -> Void = { _ in }) {
            self.init([LossComponent(kind, 1)], classes: classes, adjust)
        }
    }

    /// Every kind with every class count it allows, the parameters, and weighted sums.
    static let cases: [LossCase] = [
        LossCase(.bce, classes: 1), LossCase(.dice, classes: 1), LossCase(.dice, classes: 3),
        LossCase([LossComponent(.bce, 0.7), LossComponent(.dice, 1.3)], classes: 1), LossCase(.ce, classes: 3),
        LossCase(.weightedCE, classes: 1), LossCase(.weightedCE, classes: 3),
        LossCase(.bce, classes: 1) { $0.classWeights = [2.5] },
        LossCase(.ce, classes: 3) { $0.classWeights = [0.4, 2, 1.3] },
        LossCase(.focal, classes: 1), LossCase(.focal, classes: 1) { $0.focalAlpha = 0.25; $0.focalGamma = 1.5 },
        LossCase(.focal, classes: 3), LossCase(.focal, classes: 3) { $0.classWeights = [0.4, 2, 1.3]; $0.focalGamma = 0.5 },
        LossCase(.tversky, classes: 1), LossCase(.tversky, classes: 3),
        LossCase(.focalTversky, classes: 1), LossCase(.focalTversky, classes: 3) { $0.tverskyGamma = 1.5 },
        LossCase(.lovasz, classes: 1), LossCase(.lovasz, classes: 3),
        LossCase([LossComponent(.ce, 1), LossComponent(.dice, 0.5), LossComponent(.focal, 0.3),
                  LossComponent(.focalTversky, 0.7), LossComponent(.lovasz, 0.4)], classes: 3) { $0.classWeights = [0.4, 2, 1.3] },
        LossCase([LossComponent(.bce, 0.6), LossComponent(.tversky, 1.2), LossComponent(.lovasz, 0.5),
                  LossComponent(.weightedCE, 0.3)], classes: 1) { $0.classWeights = [3] },
    ]

    // MARK: - Fixtures

    /// Random logits, targets (with ~20% ignore pixels when `ignore` is set) and weights in [0.5, 3].
    struct Batch {
        let logits: OwnedTensor, target: OwnedTensor, weights: OwnedTensor

        init(n: Int, classes: Int, h: Int, w: Int, ignore: Int?, seed: UInt64, logitRange: ClosedRange<Float> = -3...3) {
            var rng = SplitMix64(seed: seed)
            logits = OwnedTensor(Shape(n, classes, h, w))
            target = OwnedTensor(Shape(n, 1, h, w))
            weights = OwnedTensor(Shape(n, 1, h, w))
            for i in 0..<logits.tensor.count { logits.tensor[i] = rng.nextFloat(in: logitRange) }
            for i in 0..<target.tensor.count {
                let u = rng.nextUnitFloat()
                if let ignore, u < 0.2 {
                    target.tensor[i] = Float(ignore)
                } else if classes == 1 {
                    // Mostly hard labels, some soft ones.
                    target.tensor[i] = u < 0.3 ? 0.25 : (u < 0.65 ? 0 : 1)
                } else {
                    target.tensor[i] = Float(Int(rng.next() % UInt64(classes)))
                }
                weights.tensor[i] = rng.nextFloat(in: 0.5...3)
            }
        }
    }

    func batch(for lossCase: LossCase, n: Int, h: Int, w: Int, seed: UInt64) -> Batch {
        Batch(n: n, classes: lossCase.classes, h: h, w: w, ignore: lossCase.config.ignoreIndex, seed: seed)
    }

    func evaluate(_ loss: LossFunction, _ batch: Batch, dlogits: Tensor?, normalizers: LossTerms?,
                  pool: WorkerPool) -> Double {
        loss.evaluate(logits: batch.logits.tensor, target: batch.target.tensor, weights: batch.weights.tensor,
                      dlogits: dlogits, normalizers: normalizers, pool: pool)
    }

    // MARK: - Gradients

    /// The finite-difference check's error model (docs/ENGINE.md "Numeric tolerances"), with the
    /// checker's scaled error |analytic - numeric| / max(1, |analytic|, |numeric|):
    /// - the analytic gradient is computed in Double and rounded to float once per gradient pass
    ///   (at most 3), each of terms up to the gradient's size (<= 3 here): 3 x 3 x 2^-24 = 5.4e-7;
    /// - the central difference's truncation error is h^2/6 |f'''|; the losses' third derivative in
    ///   one logit is bounded by 10 at these scales (per unit weight the sigmoid's s'' <= 0.1 and
    ///   the softmax's likewise, times class or map weights <= 3 and the per-image terms' factor
    ///   20 / (P + T + s) <= 4): 1e-6/6 x 10 = 1.7e-6 at h = 1e-3;
    /// - the objective is summed in Double (m <= 200 terms, |f| <= 100): m 2^-53 |f| / h = 2e-9.
    /// Sum: 2.3e-6. The largest scaled error measured over all cases is 1.0e-7 (focal); at
    /// h = 1e-2 it is 5.5e-6, 50 times more: the h^2 term dominates there, the float rounding here.
    static let step: Float = 1e-3
    static let tolerance = 3.0 * 3.0 * 0x1p-24 + 1e-6 / 6 * 10 + 2e-9

    /// Checks d(loss)/d(logits) by central differences. `normalizers` scale the loss so that the
    /// gradients are O(1) and the checker's relative tolerance (floor 1) is meaningful.
    func checkGradient(_ lossCase: LossCase, n: Int, h: Int, w: Int, normalizers: LossTerms?,
                       file: StaticString = #filePath, line: UInt = #line) {
        let batch = batch(for: lossCase, n: n, h: h, w: w, seed: 11)
        let loss = LossFunction(lossCase.config, classes: lossCase.classes)
        let pool = WorkerPool(threads: 2)
        let grad = OwnedTensor(batch.logits.shape)
        let report = GradientChecker(step: LossTests.step, tolerance: LossTests.tolerance).check(
            inputs: [batch.logits.tensor], gradients: [grad.tensor],
            objective: { self.evaluate(loss, batch, dlogits: nil, normalizers: normalizers, pool: pool) },
            backward: { _ = self.evaluate(loss, batch, dlogits: grad.tensor, normalizers: normalizers, pool: pool) })
        let name = "\(lossCase.name) normalizers \(String(describing: normalizers))"
        XCTAssertTrue(report.passed, "\(name): \(report)", file: file, line: line)
        XCTAssertGreaterThan(report.checked, batch.logits.tensor.count * 9 / 10, "\(name): \(report)", file: file, line: line)
    }

    func testGradientsOfEveryLossMatchFiniteDifferences() {
        for lossCase in LossTests.cases {
            // Scaled: the pixel terms summed, the per-image terms times 20, so gradients are O(1).
            checkGradient(lossCase, n: 2, h: 5, w: 4, normalizers: LossTerms(pixels: 1, images: 0.05))
            // The plain mean.
            checkGradient(lossCase, n: 2, h: 4, w: 5, normalizers: nil)
        }
    }

    /// The checker used above can fail: a gradient 2% off is caught.
    func testGradientCheckCatchesAWrongGradient() {
        let cfg = LossConfig(kind: .ce, ignoreIndex: LossTests.ignore)
        let batch = Batch(n: 2, classes: 3, h: 4, w: 5, ignore: cfg.ignoreIndex, seed: 12)
        let loss = LossFunction(cfg, classes: 3)
        let pool = WorkerPool(threads: 1)
        let grad = OwnedTensor(batch.logits.shape)
        let scaled = LossTerms(pixels: 1, images: 1)
        let report = GradientChecker().check(
            inputs: [batch.logits.tensor], gradients: [grad.tensor],
            objective: { self.evaluate(loss, batch, dlogits: nil, normalizers: scaled, pool: pool) },
            backward: {
                _ = self.evaluate(loss, batch, dlogits: grad.tensor, normalizers: scaled, pool: pool)
                for i in 0..<grad.tensor.count { grad.tensor[i] *= 1.02 }
            })
        XCTAssertFalse(report.passed, "a 2% gradient error went unnoticed: \(report)")
    }

    /// The loss of each component of `lossCase` alone at weight 1 (with the same normalizers), times
    /// its weight, summed: the value, the gradient summed in Double, and per element the sum of the
    /// parts' |gradient|.
    static func parts(of lossCase: LossCase, _ batch: Batch, normalizers: LossTerms, pool: WorkerPool)
        -> (value: Double, gradient: [Double], magnitude: [Double]) {
        var value = 0.0
        var gradient = [Double](repeating: 0, count: batch.logits.tensor.count), magnitude = gradient
        for component in lossCase.config.components {
            var single = LossConfig(components: [LossComponent(component.kind, 1)], ignoreIndex: lossCase.config.ignoreIndex)
            if [.ce, .bce, .focal].contains(component.kind) { single.classWeights = lossCase.config.classWeights }
            single.focalAlpha = component.kind == .focal ? lossCase.config.focalAlpha : nil
            (single.focalGamma, single.tverskyAlpha, single.tverskyBeta, single.tverskyGamma) = (lossCase.config.focalGamma,
                lossCase.config.tverskyAlpha, lossCase.config.tverskyBeta, lossCase.config.tverskyGamma)
            let part = OwnedTensor(batch.logits.shape)
            let w = component.weight
            value += w * LossFunction(single, classes: lossCase.classes).evaluate(
                logits: batch.logits.tensor, target: batch.target.tensor, weights: batch.weights.tensor,
                dlogits: part.tensor, normalizers: normalizers, pool: pool)
            for i in gradient.indices { gradient[i] += w * Double(part.tensor[i]); magnitude[i] += w * abs(Double(part.tensor[i])) }
        }
        return (value, gradient, magnitude)
    }

    /// The gradient passes that add into dlogits, one float rounding each per element: the pixel
    /// means, the Dice/Tversky ratios, Lovász.
    static func gradientPasses(_ config: LossConfig) -> Int {
        let kinds = config.components.map(\.kind)
        return [kinds.contains { $0.isPixelMean }, kinds.contains { $0.isRegionRatio }, kinds.contains(.lovasz)]
            .filter { $0 }.count
    }

    /// Gradients are added into dlogits, not written: bitwise when one pass writes them; within a
    /// float rounding per pass and tensor (of the preset 0.5 plus the parts' magnitudes) otherwise.
    func testGradientIsAddedIntoDlogits() {
        for lossCase in LossTests.cases {
            let (kind, classes, cfg) = (lossCase.name, lossCase.classes, lossCase.config)
            let batch = Batch(n: 2, classes: classes, h: 3, w: 4, ignore: cfg.ignoreIndex, seed: 13)
            let loss = LossFunction(cfg, classes: classes)
            let pool = WorkerPool(threads: 2)
            let fresh = OwnedTensor(batch.logits.shape), preset = OwnedTensor(batch.logits.shape)
            preset.tensor.fill(0.5)
            _ = evaluate(loss, batch, dlogits: fresh.tensor, normalizers: nil, pool: pool)
            _ = evaluate(loss, batch, dlogits: preset.tensor, normalizers: nil, pool: pool)
            let passes = LossTests.gradientPasses(cfg)
            let magnitude = passes == 1 ? [] : LossTests.parts(of: lossCase, batch, normalizers: loss.terms(target: batch.target.tensor),
                                                               pool: pool).magnitude
            for i in 0..<fresh.tensor.count {
                if passes == 1 {
                    XCTAssertEqual(preset.tensor[i], 0.5 + fresh.tensor[i], "\(kind) element \(i)")
                } else {
                    let bound = Double(2 * passes + 1) * 0x1p-24 * (0.5 + magnitude[i])
                    XCTAssertEqual(Double(preset.tensor[i]) - 0.5, Double(fresh.tensor[i]), accuracy: bound, "\(kind) element \(i)")
                }
            }
            XCTAssertGreaterThan(fresh.tensor.toArray().map(abs).max()!, 0, "\(kind): no gradient at all")
        }
    }

    // MARK: - Known values

    func testKnownValuesOfBCEAndWeightedBCE() {
        let pool = WorkerPool(threads: 1)
        let logits = OwnedTensor(Shape(1, 1, 1, 2), [0, 2])
        let target = OwnedTensor(Shape(1, 1, 1, 2), [1, 0])
        let bce = LossFunction(LossConfig(kind: .bce), classes: 1)
        let expected = (log(2.0) + log(1 + exp(2.0))) / 2
        let value = bce.evaluate(logits: logits.tensor, target: target.tensor, weights: nil, dlogits: nil,
                                 normalizers: nil, pool: pool)
        XCTAssertEqual(value, expected, accuracy: 1e-12)
        // Gradient (sigmoid(x) - t) / pixels.
        let grad = OwnedTensor(logits.shape)
        _ = bce.evaluate(logits: logits.tensor, target: target.tensor, weights: nil, dlogits: grad.tensor,
                         normalizers: nil, pool: pool)
        XCTAssertEqual(Double(grad.tensor[0]), (0.5 - 1) / 2, accuracy: 1e-7)
        XCTAssertEqual(Double(grad.tensor[1]), 1 / (1 + exp(-2.0)) / 2, accuracy: 1e-7)
        // Global normalizers: the sum divided by them.
        let global = bce.evaluate(logits: logits.tensor, target: target.tensor, weights: nil, dlogits: nil,
                                  normalizers: LossTerms(pixels: 8, images: 4), pool: pool)
        XCTAssertEqual(global, expected * 2 / 8, accuracy: 1e-12)
        // Weighted BCE: (1 * l0 + 3 * l1) / 2.
        let weights = OwnedTensor(Shape(1, 1, 1, 2), [1, 3])
        let weighted = LossFunction(LossConfig(kind: .weightedCE), classes: 1)
        let weightedValue = weighted.evaluate(logits: logits.tensor, target: target.tensor, weights: weights.tensor,
                                              dlogits: nil, normalizers: nil, pool: pool)
        XCTAssertEqual(weightedValue, (log(2.0) + 3 * log(1 + exp(2.0))) / 2, accuracy: 1e-12)
    }

    func testKnownValuesOfCE() {
        let pool = WorkerPool(threads: 2)
        // Uniform logits: log C whatever the targets; ignored pixels do not count.
        let batch = Batch(n: 2, classes: 3, h: 3, w: 3, ignore: LossTests.ignore, seed: 21)
        batch.logits.tensor.fill(0.75)
        let ce = LossFunction(LossConfig(kind: .ce, ignoreIndex: LossTests.ignore), classes: 3)
        XCTAssertEqual(evaluate(ce, batch, dlogits: nil, normalizers: nil, pool: pool), log(3.0), accuracy: 1e-12)
        // One pixel, logits (1, 2, 3), target 0: log(e + e^2 + e^3) - 1. Weighted by 2.5: 2.5 times that.
        let logits = OwnedTensor(Shape(1, 3, 1, 1), [1, 2, 3])
        let target = OwnedTensor(Shape(1, 1, 1, 1), [0])
        let weights = OwnedTensor(Shape(1, 1, 1, 1), [2.5])
        let expected = log(exp(1.0) + exp(2.0) + exp(3.0)) - 1
        let value = ce.evaluate(logits: logits.tensor, target: target.tensor, weights: nil, dlogits: nil,
                                normalizers: nil, pool: pool)
        XCTAssertEqual(value, expected, accuracy: 1e-12)
        let weighted = LossFunction(LossConfig(kind: .weightedCE), classes: 3)
        let weightedValue = weighted.evaluate(logits: logits.tensor, target: target.tensor, weights: weights.tensor,
                                              dlogits: nil, normalizers: nil, pool: pool)
        XCTAssertEqual(weightedValue, 2.5 * expected, accuracy: 1e-12)
    }

    func testKnownValuesOfDice() {
        let pool = WorkerPool(threads: 2)
        // Sigmoid: logits 0 (p = 1/2), targets all 1, 8 pixels: 1 - (2*4 + 1) / (4 + 8 + 1) per image.
        let half = OwnedTensor(Shape(2, 1, 2, 4)), ones = OwnedTensor(Shape(2, 1, 2, 4))
        ones.tensor.fill(1)
        let dice = LossFunction(LossConfig(kind: .dice), classes: 1)
        XCTAssertEqual(dice.evaluate(logits: half.tensor, target: ones.tensor, weights: nil, dlogits: nil,
                                     normalizers: nil, pool: pool), 4.0 / 13.0, accuracy: 1e-12)
        // Softmax, 2 classes, uniform p, targets (0, 0, 0, 1):
        // class 0: 1 - (2*1.5 + 1)/(2 + 3 + 1) = 1/3, class 1: 1 - (2*0.5 + 1)/(2 + 1 + 1) = 1/2; mean 5/12.
        let uniform = OwnedTensor(Shape(1, 2, 2, 2))
        let labels = OwnedTensor(Shape(1, 1, 2, 2), [0, 0, 0, 1])
        let dice2 = LossFunction(LossConfig(kind: .dice), classes: 2)
        XCTAssertEqual(dice2.evaluate(logits: uniform.tensor, target: labels.tensor, weights: nil, dlogits: nil,
                                      normalizers: nil, pool: pool), 5.0 / 12.0, accuracy: 1e-12)
        // A perfect, confident prediction: Dice ~ 0, for 1 and 3 classes.
        for classes in [1, 3] {
            let batch = Batch(n: 2, classes: classes, h: 6, w: 5, ignore: nil, seed: 22)
            for n in 0..<2 {
                for i in 0..<30 {
                    let t = batch.target.tensor.plane(n, 0)[i]
                    if classes == 1 {
                        batch.target.tensor.plane(n, 0)[i] = t >= 0.5 ? 1 : 0
                        batch.logits.tensor.plane(n, 0)[i] = t >= 0.5 ? 30 : -30
                    } else {
                        for c in 0..<classes { batch.logits.tensor.plane(n, c)[i] = Float(c) == t ? 30 : -30 }
                    }
                }
            }
            let perfect = LossFunction(LossConfig(kind: .dice), classes: classes)
            let value = evaluate(perfect, batch, dlogits: nil, normalizers: nil, pool: pool)
            XCTAssertEqual(value, 0, accuracy: 1e-9, "classes \(classes)")
        }
    }

    /// bce+dice = bceWeight * BCE + diceWeight * Dice, value and gradient.
    func testBCEDiceIsTheWeightedSumOfItsParts() {
        let pool = WorkerPool(threads: 2)
        let batch = Batch(n: 3, classes: 1, h: 5, w: 6, ignore: nil, seed: 23)
        let both = LossFunction(LossConfig(kind: .bceDice, bceWeight: 0.7, diceWeight: 1.3), classes: 1)
        let bce = LossFunction(LossConfig(kind: .bce), classes: 1)
        let dice = LossFunction(LossConfig(kind: .dice), classes: 1)
        let gBoth = OwnedTensor(batch.logits.shape), gBCE = OwnedTensor(batch.logits.shape)
        let gDice = OwnedTensor(batch.logits.shape)
        let value = evaluate(both, batch, dlogits: gBoth.tensor, normalizers: nil, pool: pool)
        let vBCE = evaluate(bce, batch, dlogits: gBCE.tensor, normalizers: nil, pool: pool)
        let vDice = evaluate(dice, batch, dlogits: gDice.tensor, normalizers: nil, pool: pool)
        XCTAssertEqual(value, 0.7 * vBCE + 1.3 * vDice, accuracy: 1e-12)
        for i in 0..<gBoth.tensor.count {
            XCTAssertEqual(gBoth.tensor[i], 0.7 * gBCE.tensor[i] + 1.3 * gDice.tensor[i], accuracy: 1e-6)
        }
    }

    // MARK: - Stability

    func testLogitsOfThousandGiveFiniteLossAndGradient() {
        let pool = WorkerPool(threads: 2)
        for lossCase in LossTests.cases {
            let (kind, classes, cfg) = (lossCase.name, lossCase.classes, lossCase.config)
            let batch = Batch(n: 2, classes: classes, h: 4, w: 4, ignore: nil, seed: 31)
            // Alternate confident right and confident wrong predictions.
            for n in 0..<2 {
                for i in 0..<16 {
                    let t = batch.target.tensor.plane(n, 0)[i]
                    let right = i % 2 == 0
                    if classes == 1 {
                        batch.target.tensor.plane(n, 0)[i] = t >= 0.5 ? 1 : 0
                        batch.logits.tensor.plane(n, 0)[i] = (t >= 0.5) == right ? 1000 : -1000
                    } else {
                        for c in 0..<classes { batch.logits.tensor.plane(n, c)[i] = (Float(c) == t) == right ? 1000 : -1000 }
                    }
                }
            }
            batch.weights.tensor.fill(1)
            let loss = LossFunction(cfg, classes: classes)
            let grad = OwnedTensor(batch.logits.shape)
            let value = evaluate(loss, batch, dlogits: grad.tensor, normalizers: nil, pool: pool)
            XCTAssertTrue(value.isFinite, "\(kind): loss \(value)")
            XCTAssertTrue(grad.tensor.toArray().allSatisfy(\.isFinite), "\(kind): gradient")
            // Half the pixels wrong: binary loss 1000 each; softmax 2000 + log 2 (two wrong classes at +1000).
            let single = cfg.components.count == 1 && cfg.classWeights == nil ? cfg.components[0].kind : nil
            if classes == 1 && (single == .bce || single == .weightedCE) { XCTAssertEqual(value, 500, accuracy: 1e-9) }
            if classes == 3 && (single == .ce || single == .weightedCE) { XCTAssertEqual(value, 1000 + log(2.0) / 2, accuracy: 1e-9) }
        }
    }

    // MARK: - Distributed splitting and reproducibility

    /// A batch evaluated whole with normalizers = terms(all) equals the sum over parts evaluated with
    /// the same normalizers: values within 1e-6 relative, gradients bitwise. Images span two chunks.
    func testSplitBatchGivesTheSameLossAndBitwiseGradients() {
        let pool = WorkerPool(threads: 2)
        let (h, w) = (70, 71)
        XCTAssertGreaterThan(h * w, LossFunction.chunkPixels)
        for lossCase in LossTests.cases {
            let (kind, classes, cfg) = (lossCase.name, lossCase.classes, lossCase.config)
            let batch = Batch(n: 4, classes: classes, h: h, w: w, ignore: cfg.ignoreIndex, seed: 41)
            let loss = LossFunction(cfg, classes: classes)
            let global = loss.terms(target: batch.target.tensor)
            let whole = OwnedTensor(batch.logits.shape)
            let total = evaluate(loss, batch, dlogits: whole.tensor, normalizers: global, pool: pool)
            for parts in [[2, 2], [1, 2, 1]] {
                let split = OwnedTensor(batch.logits.shape)
                var sum = 0.0, start = 0
                var summedTerms = loss.noTerms
                for count in parts {
                    let target = batch.target.tensor.batchSlice(start, count)
                    summedTerms = summedTerms + loss.terms(target: target)
                    sum += loss.evaluate(logits: batch.logits.tensor.batchSlice(start, count), target: target,
                                         weights: batch.weights.tensor.batchSlice(start, count),
                                         dlogits: split.tensor.batchSlice(start, count), normalizers: global, pool: pool)
                    start += count
                }
                let name = "\(kind) parts \(parts)"
                XCTAssertEqual(summedTerms, global, name)
                XCTAssertEqual(sum, total, accuracy: 1e-6 * abs(total), name)
                XCTAssertTrue(whole.tensor.toArray() == split.tensor.toArray(), "\(name): gradients differ")
            }
        }
    }

    /// Loss and gradient are bitwise equal for 1 and 3 threads (images of two chunks, 2 images).
    func testThreadCountDoesNotChangeLossOrGradient() {
        let one = WorkerPool(threads: 1), three = WorkerPool(threads: 3)
        for lossCase in LossTests.cases {
            let (kind, classes, cfg) = (lossCase.name, lossCase.classes, lossCase.config)
            let batch = Batch(n: 2, classes: classes, h: 66, w: 65, ignore: cfg.ignoreIndex, seed: 51)
            let loss = LossFunction(cfg, classes: classes)
            let g1 = OwnedTensor(batch.logits.shape), g3 = OwnedTensor(batch.logits.shape)
            let v1 = evaluate(loss, batch, dlogits: g1.tensor, normalizers: nil, pool: one)
            let v3 = evaluate(loss, batch, dlogits: g3.tensor, normalizers: nil, pool: three)
            XCTAssertEqual(v1.bitPattern, v3.bitPattern, "\(kind): \(v1) vs \(v3)")
            XCTAssertTrue(g1.tensor.toArray() == g3.tensor.toArray(), "\(kind): gradients differ")
        }
    }

    // MARK: - Ignore index

    func testIgnoredPixelsGetNoGradientAndDoNotCount() {
        let pool = WorkerPool(threads: 2)
        for lossCase in LossTests.cases {
            let (kind, classes, cfg) = (lossCase.name, lossCase.classes, lossCase.config)
            let batch = Batch(n: 2, classes: classes, h: 5, w: 6, ignore: LossTests.ignore, seed: 61)
            let loss = LossFunction(cfg, classes: classes)
            let ignored = (0..<batch.target.tensor.count).filter { batch.target.tensor[$0] == Float(LossTests.ignore) }
            XCTAssertFalse(ignored.isEmpty)
            let terms = loss.terms(target: batch.target.tensor)
            XCTAssertEqual(terms.pixels, Double(batch.target.tensor.count - ignored.count), kind)
            XCTAssertEqual(terms.images, 2, kind)
            if !terms.classPixels.isEmpty { XCTAssertEqual(terms.classPixels.reduce(0, +), terms.pixels, kind) }
            let grad = OwnedTensor(batch.logits.shape)
            let value = evaluate(loss, batch, dlogits: grad.tensor, normalizers: nil, pool: pool)
            let plane = 30
            for i in ignored {
                let n = i / plane, p = i % plane
                for c in 0..<classes {
                    XCTAssertEqual(grad.tensor.plane(n, c)[p], 0, "\(kind): ignored pixel \(i) class \(c)")
                }
            }
            // Whatever the logits at ignored pixels, the loss is the same.
            for i in ignored {
                for c in 0..<classes { batch.logits.tensor.plane(i / plane, c)[i % plane] = 50 * Float(c + 1) }
            }
            XCTAssertEqual(evaluate(loss, batch, dlogits: nil, normalizers: nil, pool: pool), value, "\(kind)")
        }
    }

    /// An ignore region (a border of 1, 2, 3 pixels in images 0, 1, 2) gives, for every loss kind,
    /// the value and gradient of the same loss computed on the other pixels alone: each image's
    /// inner rectangle cut out and evaluated without an ignore index (as the parts of a split
    /// batch, with the counted pixels and the images as normalizers). The border gets no gradient.
    /// The larger size spans two of the loss's chunks.
    func testIgnoreRegionEqualsTheLossOverTheOtherPixels() {
        let pool = WorkerPool(threads: 2)
        for (h, w) in [(9, 11), (68, 70)] {
            for lossCase in LossTests.cases {
                let (kind, classes, cfg) = (lossCase.name, lossCase.classes, lossCase.config)
                let n = 3
                let batch = Batch(n: n, classes: classes, h: h, w: w, ignore: nil, seed: 63)
                func border(_ image: Int) -> Int { image + 1 }
                for image in 0..<n {
                    for y in 0..<h {
                        for x in 0..<w where min(x, y, w - 1 - x, h - 1 - y) < border(image) {
                            batch.target.tensor[image, 0, y, x] = Float(LossTests.ignore)
                        }
                    }
                }
                let name = "\(kind) \(h)x\(w)"
                let withIgnore = LossFunction(cfg, classes: classes)
                let grad = OwnedTensor(batch.logits.shape)
                let value = evaluate(withIgnore, batch, dlogits: grad.tensor, normalizers: nil, pool: pool)

                var plain = cfg
                plain.ignoreIndex = nil
                let inner = LossFunction(plain, classes: classes)
                let counted = (0..<n).reduce(0) { $0 + (h - 2 * border($1)) * (w - 2 * border($1)) }
                // The normalizers of the whole batch (with class-weighted ce: its class counts too).
                let global = withIgnore.terms(target: batch.target.tensor)
                XCTAssertEqual(global.pixels, Double(counted), name)
                XCTAssertEqual(global.images, Double(n), name)
                var sum = 0.0
                var worst: Float = 0, largest: Float = 0
                for image in 0..<n {
                    let b = border(image), ih = h - 2 * b, iw = w - 2 * b
                    let logits = OwnedTensor(Shape(1, classes, ih, iw)), target = OwnedTensor(Shape(1, 1, ih, iw))
                    let weights = OwnedTensor(Shape(1, 1, ih, iw)), g = OwnedTensor(logits.shape)
                    for y in 0..<ih {
                        for x in 0..<iw {
                            for c in 0..<classes { logits.tensor[0, c, y, x] = batch.logits.tensor[image, c, y + b, x + b] }
                            target.tensor[0, 0, y, x] = batch.target.tensor[image, 0, y + b, x + b]
                            weights.tensor[0, 0, y, x] = batch.weights.tensor[image, 0, y + b, x + b]
                        }
                    }
                    sum += inner.evaluate(logits: logits.tensor, target: target.tensor, weights: weights.tensor,
                                          dlogits: g.tensor, normalizers: global, pool: pool)
                    for c in 0..<classes {
                        for y in 0..<h {
                            for x in 0..<w {
                                let full = grad.tensor[image, c, y, x]
                                let inside = y >= b && y < h - b && x >= b && x < w - b
                                if !inside {
                                    XCTAssertEqual(full, 0, "\(name): ignored pixel (\(image), \(c), \(y), \(x)) has a gradient")
                                    continue
                                }
                                let cut = g.tensor[0, c, y - b, x - b]
                                worst = max(worst, abs(full - cut))
                                largest = max(largest, abs(cut))
                            }
                        }
                    }
                }
                XCTAssertEqual(value, sum, accuracy: 1e-12 * max(1, abs(sum)), name)
                XCTAssertGreaterThan(largest, 0, name)
                // Float gradients, summed in another chunk order: a few float roundings apart.
                XCTAssertLessThanOrEqual(worst, 1e-6 * largest, "\(name): gradients differ by \(worst) (largest \(largest))")
            }
        }
    }

    /// CE with ignored pixels equals the mean over the others, computed here directly.
    func testCEWithIgnoreEqualsMeanOverCountedPixels() {
        let pool = WorkerPool(threads: 2)
        let batch = Batch(n: 2, classes: 4, h: 3, w: 5, ignore: LossTests.ignore, seed: 62)
        let loss = LossFunction(LossConfig(kind: .ce, ignoreIndex: LossTests.ignore), classes: 4)
        var sum = 0.0, counted = 0
        for n in 0..<2 {
            for p in 0..<15 {
                let t = batch.target.tensor.plane(n, 0)[p]
                if t == Float(LossTests.ignore) { continue }
                let x = (0..<4).map { Double(batch.logits.tensor.plane(n, $0)[p]) }
                sum += log(x.map { exp($0) }.reduce(0, +)) - x[Int(t)]
                counted += 1
            }
        }
        XCTAssertEqual(evaluate(loss, batch, dlogits: nil, normalizers: nil, pool: pool), sum / Double(counted), accuracy: 1e-12)
    }

    // MARK: - Configuration

    func testValidateRejectsMismatchedConfigurations() {
        XCTAssertEqual(LossFunction.validate(LossConfig(kind: .ce), classes: 1), "--loss ce needs --classes >= 2; use bce for a binary (sigmoid) output")
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .bce), classes: 3))
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .bceDice), classes: 2))
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .dice), classes: 0))
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .dice, diceSmooth: 0), classes: 1))
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .bceDice, diceWeight: -1), classes: 1))
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .weightedCE, sigma: 0), classes: 3))
        for lossCase in LossTests.cases {
            XCTAssertNil(LossFunction.validate(lossCase.config, classes: lossCase.classes), lossCase.name)
        }
        XCTAssertEqual(LossKind(rawValue: "bce+dice"), .bceDice)
        XCTAssertEqual(LossKind(rawValue: "weighted-ce"), .weightedCE)
    }
}
