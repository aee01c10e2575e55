import XCTest
@testable import SegEngine

#if canImport(Glibc)
import Glibc
#endif

final class LossTests: XCTestCase {
    /// Every (kind, classes) pair the losses allow, as the tests exercise them.
    static let cases: [(LossKind, Int)] = [
        (.bce, 1), (.dice, 1), (.dice, 3), (.bceDice, 1), (.ce, 3), (.weightedCE, 1), (.weightedCE, 3),
    ]
    static let ignore = 255

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

    func config(_ kind: LossKind, classes: Int) -> LossConfig {
        // Ignore pixels for every kind (the batches mark ~20% of the targets with it), binary ones too.
        LossConfig(kind: kind, bceWeight: 0.7, diceWeight: 1.3, ignoreIndex: LossTests.ignore)
    }

    func evaluate(_ loss: LossFunction, _ batch: Batch, dlogits: Tensor?, normalizers: LossTerms?,
                  pool: WorkerPool) -> Double {
        loss.evaluate(logits: batch.logits.tensor, target: batch.target.tensor, weights: batch.weights.tensor,
                      dlogits: dlogits, normalizers: normalizers, pool: pool)
    }

    // MARK: - Gradients

    /// Checks d(loss)/d(logits) by central differences. `normalizers` scale the loss so that the
    /// gradients are O(1) and the checker's relative tolerance (floor 1) is meaningful.
    func checkGradient(_ kind: LossKind, classes: Int, n: Int, h: Int, w: Int, normalizers: LossTerms?,
                       file: StaticString = #filePath, line: UInt = #line) {
        let cfg = config(kind, classes: classes)
        let batch = Batch(n: n, classes: classes, h: h, w: w, ignore: cfg.ignoreIndex, seed: 11)
        let loss = LossFunction(cfg, classes: classes)
        let pool = WorkerPool(threads: 2)
        let grad = OwnedTensor(batch.logits.shape)
        // The losses are smooth and evaluated in Double: a tolerance far below the default.
        let report = GradientChecker(tolerance: 1e-4).check(
            inputs: [batch.logits.tensor], gradients: [grad.tensor],
            objective: { self.evaluate(loss, batch, dlogits: nil, normalizers: normalizers, pool: pool) },
            backward: { _ = self.evaluate(loss, batch, dlogits: grad.tensor, normalizers: normalizers, pool: pool) })
        let name = "\(kind.rawValue) classes \(classes) normalizers \(String(describing: normalizers))"
        XCTAssertTrue(report.passed, "\(name): \(report)", file: file, line: line)
        XCTAssertGreaterThan(report.checked, batch.logits.tensor.count * 9 / 10, "\(name): \(report)", file: file, line: line)
    }

    func testGradientsOfEveryLossMatchFiniteDifferences() {
        for (kind, classes) in LossTests.cases {
            // Scaled: the pixel terms summed, the Dice terms times 20, so gradients are O(1).
            checkGradient(kind, classes: classes, n: 2, h: 5, w: 4, normalizers: LossTerms(pixels: 1, images: 0.05))
            // The plain mean.
            checkGradient(kind, classes: classes, n: 2, h: 4, w: 5, normalizers: nil)
        }
    }

    /// The checker used above can fail: a gradient 2% off is caught.
    func testGradientCheckCatchesAWrongGradient() {
        let cfg = config(.ce, classes: 3)
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

    /// Gradients are added into dlogits, not written.
    func testGradientIsAddedIntoDlogits() {
        for (kind, classes) in LossTests.cases {
            let cfg = config(kind, classes: classes)
            let batch = Batch(n: 2, classes: classes, h: 3, w: 4, ignore: cfg.ignoreIndex, seed: 13)
            let loss = LossFunction(cfg, classes: classes)
            let pool = WorkerPool(threads: 2)
            let fresh = OwnedTensor(batch.logits.shape), preset = OwnedTensor(batch.logits.shape)
            preset.tensor.fill(0.5)
            _ = evaluate(loss, batch, dlogits: fresh.tensor, normalizers: nil, pool: pool)
            _ = evaluate(loss, batch, dlogits: preset.tensor, normalizers: nil, pool: pool)
            for i in 0..<fresh.tensor.count {
                XCTAssertEqual(preset.tensor[i], 0.5 + fresh.tensor[i], "\(kind.rawValue) element \(i)")
            }
            XCTAssertGreaterThan(fresh.tensor.toArray().map(abs).max()!, 0, "\(kind.rawValue): no gradient at all")
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
        for (kind, classes) in LossTests.cases {
            let cfg = config(kind, classes: classes)
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
            XCTAssertTrue(value.isFinite, "\(kind.rawValue) classes \(classes): loss \(value)")
            XCTAssertTrue(grad.tensor.toArray().allSatisfy(\.isFinite), "\(kind.rawValue) classes \(classes): gradient")
            // Half the pixels wrong: binary loss 1000 each; softmax 2000 + log 2 (two wrong classes at +1000).
            if kind == .bce || (kind == .weightedCE && classes == 1) { XCTAssertEqual(value, 500, accuracy: 1e-9) }
            if kind == .ce || (kind == .weightedCE && classes == 3) { XCTAssertEqual(value, 1000 + log(2.0) / 2, accuracy: 1e-9) }
        }
    }

    // MARK: - Distributed splitting and reproducibility

    /// A batch evaluated whole with normalizers = terms(all) equals the sum over parts evaluated with
    /// the same normalizers: values within 1e-6 relative, gradients bitwise. Images span two chunks.
    func testSplitBatchGivesTheSameLossAndBitwiseGradients() {
        let pool = WorkerPool(threads: 2)
        let (h, w) = (70, 71)
        XCTAssertGreaterThan(h * w, LossFunction.chunkPixels)
        for (kind, classes) in LossTests.cases {
            let cfg = config(kind, classes: classes)
            let batch = Batch(n: 4, classes: classes, h: h, w: w, ignore: cfg.ignoreIndex, seed: 41)
            let loss = LossFunction(cfg, classes: classes)
            let global = loss.terms(target: batch.target.tensor)
            let whole = OwnedTensor(batch.logits.shape)
            let total = evaluate(loss, batch, dlogits: whole.tensor, normalizers: global, pool: pool)
            for parts in [[2, 2], [1, 2, 1]] {
                let split = OwnedTensor(batch.logits.shape)
                var sum = 0.0, start = 0
                var summedTerms = LossTerms(pixels: 0, images: 0)
                for count in parts {
                    let target = batch.target.tensor.batchSlice(start, count)
                    summedTerms = summedTerms + loss.terms(target: target)
                    sum += loss.evaluate(logits: batch.logits.tensor.batchSlice(start, count), target: target,
                                         weights: batch.weights.tensor.batchSlice(start, count),
                                         dlogits: split.tensor.batchSlice(start, count), normalizers: global, pool: pool)
                    start += count
                }
                let name = "\(kind.rawValue) classes \(classes) parts \(parts)"
                XCTAssertEqual(summedTerms, global, name)
                XCTAssertEqual(sum, total, accuracy: 1e-6 * abs(total), name)
                XCTAssertTrue(whole.tensor.toArray() == split.tensor.toArray(), "\(name): gradients differ")
            }
        }
    }

    /// Loss and gradient are bitwise equal for 1 and 3 threads (images of two chunks, 2 images).
    func testThreadCountDoesNotChangeLossOrGradient() {
        let one = WorkerPool(threads: 1), three = WorkerPool(threads: 3)
        for (kind, classes) in LossTests.cases {
            let cfg = config(kind, classes: classes)
            let batch = Batch(n: 2, classes: classes, h: 66, w: 65, ignore: cfg.ignoreIndex, seed: 51)
            let loss = LossFunction(cfg, classes: classes)
            let g1 = OwnedTensor(batch.logits.shape), g3 = OwnedTensor(batch.logits.shape)
            let v1 = evaluate(loss, batch, dlogits: g1.tensor, normalizers: nil, pool: one)
            let v3 = evaluate(loss, batch, dlogits: g3.tensor, normalizers: nil, pool: three)
            XCTAssertEqual(v1.bitPattern, v3.bitPattern, "\(kind.rawValue) classes \(classes): \(v1) vs \(v3)")
            XCTAssertTrue(g1.tensor.toArray() == g3.tensor.toArray(), "\(kind.rawValue) classes \(classes): gradients differ")
        }
    }

    // MARK: - Ignore index

    func testIgnoredPixelsGetNoGradientAndDoNotCount() {
        let pool = WorkerPool(threads: 2)
        let ignoreCases: [(LossKind, Int)] = [(.bce, 1), (.dice, 1), (.dice, 3), (.ce, 3), (.weightedCE, 1), (.weightedCE, 3)]
        for (kind, classes) in ignoreCases {
            let cfg = LossConfig(kind: kind, ignoreIndex: LossTests.ignore)
            let batch = Batch(n: 2, classes: classes, h: 5, w: 6, ignore: LossTests.ignore, seed: 61)
            let loss = LossFunction(cfg, classes: classes)
            let ignored = (0..<batch.target.tensor.count).filter { batch.target.tensor[$0] == Float(LossTests.ignore) }
            XCTAssertFalse(ignored.isEmpty)
            let terms = loss.terms(target: batch.target.tensor)
            XCTAssertEqual(terms, LossTerms(pixels: Double(batch.target.tensor.count - ignored.count), images: 2))
            let grad = OwnedTensor(batch.logits.shape)
            let value = evaluate(loss, batch, dlogits: grad.tensor, normalizers: nil, pool: pool)
            let plane = 30
            for i in ignored {
                let n = i / plane, p = i % plane
                for c in 0..<classes {
                    XCTAssertEqual(grad.tensor.plane(n, c)[p], 0, "\(kind.rawValue): ignored pixel \(i) class \(c)")
                }
            }
            // Whatever the logits at ignored pixels, the loss is the same.
            for i in ignored {
                for c in 0..<classes { batch.logits.tensor.plane(i / plane, c)[i % plane] = 50 * Float(c + 1) }
            }
            XCTAssertEqual(evaluate(loss, batch, dlogits: nil, normalizers: nil, pool: pool), value, "\(kind.rawValue)")
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
            for (kind, classes) in LossTests.cases {
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
                let name = "\(kind.rawValue) classes \(classes) \(h)x\(w)"
                let withIgnore = LossFunction(config(kind, classes: classes), classes: classes)
                let grad = OwnedTensor(batch.logits.shape)
                let value = evaluate(withIgnore, batch, dlogits: grad.tensor, normalizers: nil, pool: pool)

                var plain = config(kind, classes: classes)
                plain.ignoreIndex = nil
                let inner = LossFunction(plain, classes: classes)
                let counted = (0..<n).reduce(0) { $0 + (h - 2 * border($1)) * (w - 2 * border($1)) }
                XCTAssertEqual(withIgnore.terms(target: batch.target.tensor), LossTerms(pixels: Double(counted), images: Double(n)), name)
                let global = LossTerms(pixels: Double(counted), images: Double(n))
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
        XCTAssertEqual(LossFunction.validate(LossConfig(kind: .ce), classes: 1), "ce needs --classes >= 2; use bce for a binary (sigmoid) output")
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .bce), classes: 3))
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .bceDice), classes: 2))
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .dice), classes: 0))
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .dice, diceSmooth: 0), classes: 1))
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .bceDice, diceWeight: -1), classes: 1))
        XCTAssertNotNil(LossFunction.validate(LossConfig(kind: .weightedCE, sigma: 0), classes: 3))
        for (kind, classes) in LossTests.cases {
            XCTAssertNil(LossFunction.validate(LossConfig(kind: kind), classes: classes), kind.rawValue)
        }
        XCTAssertEqual(LossKind(rawValue: "bce+dice"), .bceDice)
        XCTAssertEqual(LossKind(rawValue: "weighted-ce"), .weightedCE)
    }

    // MARK: - Weight map and distance transform

    /// Brute-force Euclidean distance from (y, x) to the nearest of `pixels`.
    func distance(_ y: Int, _ x: Int, to pixels: [(Int, Int)]) -> Double {
        var best = Double.infinity
        for (py, px) in pixels {
            let dy = py - y, dx = px - x
            best = min(best, Double(dy * dy + dx * dx))
        }
        return best.squareRoot()
    }

    func testWeightMapOfTwoSquaresAndOfOneComponent() {
        let (h, w, w0, sigma) = (20, 30, 10.0, 5.0)
        let mask = OwnedTensor(Shape(2, 1, h, w)), weights = OwnedTensor(Shape(2, 1, h, w))
        // Image 0: squares A (rows 5..<15, cols 3..<12) and B (cols 15..<24), a gap of 3 columns.
        // Image 1: square A only.
        var a: [(Int, Int)] = [], b: [(Int, Int)] = []
        for y in 5..<15 {
            for x in 3..<12 { a.append((y, x)); mask.tensor[0, 0, y, x] = 1; mask.tensor[1, 0, y, x] = 1 }
            for x in 15..<24 { b.append((y, x)); mask.tensor[0, 0, y, x] = 1 }
        }
        unetWeightMap(weights.tensor, mask: mask.tensor, classes: 1, w0: w0, sigma: sigma)
        // w_c = pixels / (K * count_k), K = 2.
        let wc0 = 600.0 / (2 * 420), wc1 = 600.0 / (2 * 180)
        for y in 0..<h {
            for x in 0..<w {
                let value = Double(weights.tensor[0, 0, y, x])
                if mask.tensor[0, 0, y, x] == 1 {
                    XCTAssertEqual(value, wc1, accuracy: 1e-6, "foreground (\(y), \(x))")
                } else {
                    let s = distance(y, x, to: a) + distance(y, x, to: b)
                    XCTAssertEqual(value, wc0 + w0 * exp(-s * s / (2 * sigma * sigma)), accuracy: 1e-5, "background (\(y), \(x))")
                }
            }
        }
        // Between the squares d1 + d2 = 4: nearly w_c + w0. Far away: nearly w_c.
        XCTAssertEqual(Double(weights.tensor[0, 0, 10, 13]), wc0 + w0 * exp(-16 / 50.0), accuracy: 1e-5)
        XCTAssertGreaterThan(Double(weights.tensor[0, 0, 10, 13]), wc0 + 0.7 * w0)
        XCTAssertEqual(Double(weights.tensor[0, 0, 19, 29]), wc0, accuracy: 1e-4)
        // One component: class weights only, 90 foreground pixels of 600.
        for i in 0..<(h * w) {
            let expected = mask.tensor.plane(1, 0)[i] == 1 ? 600.0 / (2 * 90) : 600.0 / (2 * 510)
            XCTAssertEqual(Double(weights.tensor.plane(1, 0)[i]), expected, accuracy: 1e-6, "image 1 pixel \(i)")
        }
    }

    /// Class balance over the classes present; ignored labels weigh 0; diagonal neighbours are one
    /// component (8-connectivity), so they get no border term.
    func testWeightMapClassBalanceIgnoreAndConnectivity() {
        let mask = OwnedTensor(Shape(1, 1, 4, 5), [
            0, 1, 1, 0, 0,
            0, 0, 0, 3, 0,
            0, 0, 0, 0, 255,
            0, 0, 0, 0, 0,
        ])
        let weights = OwnedTensor(mask.shape)
        unetWeightMap(weights.tensor, mask: mask.tensor, classes: 4, w0: 10, sigma: 2)
        // 19 labelled pixels, 3 classes present (0: 16, 1: 2, 3: 1).
        let expected: [Float: Double] = [0: 19.0 / (3 * 16), 1: 19.0 / (3 * 2), 3: 19.0 / (3 * 1), 255: 0]
        for i in 0..<20 {
            XCTAssertEqual(Double(weights.tensor[i]), expected[mask.tensor[i]]!, accuracy: 1e-6, "pixel \(i)")
        }
    }

    /// The weight map on random masks with many components (and a small sigma, so the per-component
    /// windows are cut by the image) against a brute-force d1, d2 over all components.
    func testWeightMapMatchesBruteForceOnRandomMasks() {
        var rng = SplitMix64(seed: 71)
        let (h, w, w0, sigma) = (24, 40, 10.0, 1.5)
        let mask = OwnedTensor(Shape(2, 1, h, w)), weights = OwnedTensor(mask.shape)
        for i in 0..<mask.tensor.count { mask.tensor[i] = rng.nextUnitFloat() < 0.08 ? Float(1 + rng.next() % 2) : 0 }
        unetWeightMap(weights.tensor, mask: mask.tensor, classes: 3, w0: w0, sigma: sigma)
        for n in 0..<2 {
            let m = mask.tensor.plane(n, 0)
            // Components by union-find over 8-neighbours.
            var parent = Array(0..<(h * w))
            func root(_ i: Int) -> Int { var i = i; while parent[i] != i { i = parent[i] }; return i }
            for y in 0..<h {
                for x in 0..<w where m[y * w + x] != 0 {
                    for (dy, dx) in [(0, 1), (1, -1), (1, 0), (1, 1)] {
                        let ny = y + dy, nx = x + dx
                        if ny < h && nx >= 0 && nx < w && m[ny * w + nx] != 0 { parent[root(ny * w + nx)] = root(y * w + x) }
                    }
                }
            }
            var components: [Int: [(Int, Int)]] = [:]
            var counts = [0, 0, 0]
            for i in 0..<(h * w) {
                counts[Int(m[i])] += 1
                if m[i] != 0 { components[root(i), default: []].append((i / w, i % w)) }
            }
            XCTAssertGreaterThan(components.count, 10)
            let present = Double(counts.filter { $0 > 0 }.count)
            for y in 0..<h {
                for x in 0..<w {
                    let label = Int(m[y * w + x])
                    var expected = Double(h * w) / (present * Double(counts[label]))
                    if label == 0 {
                        let d = components.values.map { distance(y, x, to: $0) }.sorted()
                        let s = d[0] + d[1]
                        expected += w0 * exp(-s * s / (2 * sigma * sigma))
                    }
                    XCTAssertEqual(Double(weights.tensor[n, 0, y, x]), expected, accuracy: 1e-5 * expected, "image \(n) (\(y), \(x))")
                }
            }
        }
    }

    func testDistanceTransformIsExact() {
        var rng = SplitMix64(seed: 81)
        for (h, w, density) in [(13, 17, 0.05), (13, 17, 0.3), (1, 9, 0.2), (9, 1, 0.2), (8, 8, 0.0), (16, 11, 0.01)] {
            var grid = [Double](repeating: .infinity, count: h * w)
            var features: [(Int, Int)] = []
            for i in 0..<(h * w) where rng.nextUnitDouble() < density {
                grid[i] = 0
                features.append((i / w, i % w))
            }
            if density == 0.01 {
                // A single feature.
                grid = [Double](repeating: .infinity, count: h * w)
                grid[5 * w + 7] = 0
                features = [(5, 7)]
            }
            squaredDistanceTransform(&grid, height: h, width: w)
            for i in 0..<(h * w) {
                let y = i / w, x = i % w
                var brute = Double.infinity
                for (fy, fx) in features {
                    let dy = fy - y, dx = fx - x
                    brute = min(brute, Double(dy * dy + dx * dx))
                }
                XCTAssertEqual(grid[i], brute, "\(h)x\(w) density \(density) at (\(y), \(x))")
            }
        }
    }
}
