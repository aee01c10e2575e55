// The class-imbalance losses of issue #18 against small cases computed here in Double from their
// published formulas: class-weighted ce (PyTorch's weighted mean), BCE's pos_weight, focal
// (torchvision / Lin et al.), Tversky and focal Tversky (Salehi et al., Abraham & Khan), Lovász
// hinge and Lovász-softmax (Berman et al., from the set-function definition); weighted sums, the
// --loss list and the configuration errors. LossTests runs the generic checks (finite
// differences, ignore index, split batches, thread counts) over all of them.

import XCTest
@testable import SegEngine

#if canImport(Glibc)
import Glibc
#endif

final class ImbalanceLossTests: XCTestCase {
    let pool = WorkerPool(threads: 2)

    /// A 2x2 batch of one image: logits (1, classes, 2, 2) and targets (1, 1, 2, 2).
    func evaluate(_ config: LossConfig, classes: Int, logits: [Float], target: [Float], dlogits: Tensor? = nil) -> Double {
        let x = OwnedTensor(Shape(1, classes, 2, 2), logits), t = OwnedTensor(Shape(1, 1, 2, 2), target)
        return LossFunction(config, classes: classes).evaluate(logits: x.tensor, target: t.tensor, weights: nil,
                                                               dlogits: dlogits, normalizers: nil, pool: pool)
    }

    func config(_ kind: LossKind, _ adjust: (inout LossConfig) -> Void = { _ in }) -> LossConfig {
        var config = LossConfig(kind: kind, ignoreIndex: 255)
        adjust(&config)
        return config
    }

    func sigmoid(_ x: Float) -> Double { 1 / (1 + exp(-Double(x))) }

    /// Softmax of pixel i of a (classes, 2, 2) logits list, in Double.
    func softmax(_ logits: [Float], classes: Int, pixel i: Int) -> [Double] {
        let e = (0..<classes).map { exp(Double(logits[$0 * 4 + i])) }
        let sum = e.reduce(0, +)
        return e.map { $0 / sum }
    }

    // MARK: - Class weights

    /// PyTorch's CrossEntropyLoss(weight=w, ignore_index=255): sum w_t (-log p_t) / sum w_t.
    func testClassWeightedCEDividesBySummedWeights() {
        let logits: [Float] = [1, 0.5, -1, 2, 0, 1.5, 0.25, -2, -1, 0, 3, 0.5]
        let target: [Float] = [0, 2, 255, 1]
        let weights = [0.4, 2, 1.3]
        var numerator = 0.0, denominator = 0.0
        for i in 0..<4 where target[i] != 255 {
            let k = Int(target[i])
            numerator += weights[k] * -log(softmax(logits, classes: 3, pixel: i)[k])
            denominator += weights[k]
        }
        let value = evaluate(config(.ce) { $0.classWeights = weights }, classes: 3, logits: logits, target: target)
        XCTAssertEqual(value, numerator / denominator, accuracy: 1e-12 * numerator / denominator)
        // All weights 1: plain ce.
        XCTAssertEqual(evaluate(config(.ce) { $0.classWeights = [1, 1, 1] }, classes: 3, logits: logits, target: target),
                       evaluate(config(.ce), classes: 3, logits: logits, target: target), accuracy: 1e-15)
    }

    /// PyTorch's BCEWithLogitsLoss(pos_weight=pw): -[pw t log s(x) + (1 - t) log(1 - s(x))], the mean
    /// over counted pixels (pos_weight does not enter the denominator); soft targets too.
    func testPosWeightBCE() {
        let logits: [Float] = [0, 2, -1.5, 0.5], target: [Float] = [1, 0, 0.25, 1]
        let pw = 3.0
        var sum = 0.0
        for i in 0..<4 {
            let p = sigmoid(logits[i]), t = Double(target[i])
            sum += -(pw * t * log(p) + (1 - t) * log(1 - p))
        }
        let value = evaluate(config(.bce) { $0.classWeights = [pw] }, classes: 1, logits: logits, target: target)
        XCTAssertEqual(value, sum / 4, accuracy: 1e-12)
        // d/dx = -pw t (1 - s) + (1 - t) s, divided by 4.
        let grad = OwnedTensor(Shape(1, 1, 2, 2))
        _ = evaluate(config(.bce) { $0.classWeights = [pw] }, classes: 1, logits: logits, target: target, dlogits: grad.tensor)
        for i in 0..<4 {
            let p = sigmoid(logits[i]), t = Double(target[i])
            XCTAssertEqual(Double(grad.tensor[i]), (-pw * t * (1 - p) + (1 - t) * p) / 4, accuracy: 1e-7, "pixel \(i)")
        }
    }

    /// Class-weighted ce split over two "ranks" (two half-batches), each with the global
    /// normalizers (their terms summed as the trainer's allreduce does: `values`, added, read
    /// back): the values add up to the whole batch's and the gradients are bitwise those of the
    /// whole batch.
    func testClassWeightedCESplitOverTwoRanksEqualsTheWholeBatch() {
        let batch = LossTests.Batch(n: 4, classes: 3, h: 9, w: 7, ignore: 255, seed: 91)
        for kinds in [[LossComponent(.ce, 1)], [LossComponent(.ce, 1), LossComponent(.focal, 0.5), LossComponent(.dice, 0.3)]] {
            var cfg = LossConfig(components: kinds, ignoreIndex: 255)
            cfg.classWeights = [0.4, 2, 1.3]
            let loss = LossFunction(cfg, classes: 3)
            let whole = OwnedTensor(batch.logits.shape), split = OwnedTensor(batch.logits.shape)
            let total = loss.evaluate(logits: batch.logits.tensor, target: batch.target.tensor, weights: nil,
                                      dlogits: whole.tensor, normalizers: nil, pool: pool)
            let halves = [(0, 2), (2, 2)]
            let summed = halves.map { loss.terms(target: batch.target.tensor.batchSlice($0.0, $0.1)).values }
                .reduce([Double](repeating: 0, count: 5)) { zip($0, $1).map { $0 + $1 } }
            let global = LossTerms(values: summed)
            XCTAssertEqual(global, loss.terms(target: batch.target.tensor), cfg.name)
            XCTAssertEqual(global.classPixels.count, 3)
            var sum = 0.0
            for (start, count) in halves {
                sum += loss.evaluate(logits: batch.logits.tensor.batchSlice(start, count), target: batch.target.tensor.batchSlice(start, count),
                                     weights: nil, dlogits: split.tensor.batchSlice(start, count), normalizers: global, pool: pool)
            }
            // Two partial sums added instead of one running sum: a few Double roundings of the total.
            XCTAssertEqual(sum, total, accuracy: 8 * 0x1p-52 * abs(total), cfg.name)
            XCTAssertTrue(whole.tensor.toArray() == split.tensor.toArray(), "\(cfg.name): gradients differ")
        }
    }

    // MARK: - Focal

    /// torchvision's sigmoid_focal_loss (alpha 0.25, gamma 2) on a 2x2 image, mean reduction.
    func testBinaryFocalKnownValue() {
        let logits: [Float] = [0.5, -1, 2, -0.25], target: [Float] = [1, 0, 0, 1]
        var sum = 0.0
        for i in 0..<4 {
            let p = sigmoid(logits[i]), t = Double(target[i])
            let pt = p * t + (1 - p) * (1 - t), alphaT = 0.25 * t + 0.75 * (1 - t)
            sum += alphaT * pow(1 - pt, 2) * -log(pt)
        }
        let value = evaluate(config(.focal) { $0.focalAlpha = 0.25 }, classes: 1, logits: logits, target: target)
        XCTAssertEqual(value, sum / 4, accuracy: 1e-12)
    }

    /// Softmax focal -alpha_k (1 - p_k)^gamma log p_k, alpha from the class weights, mean over counted pixels.
    func testSoftmaxFocalKnownValue() {
        let logits: [Float] = [1, 0.5, -1, 2, 0, 1.5, 0.25, -2, -1, 0, 3, 0.5]
        let target: [Float] = [0, 2, 255, 1]
        let alphas = [0.4, 2, 1.3]
        var sum = 0.0
        for i in 0..<4 where target[i] != 255 {
            let k = Int(target[i]), p = softmax(logits, classes: 3, pixel: i)[k]
            sum += alphas[k] * pow(1 - p, 1.5) * -log(p)
        }
        let value = evaluate(config(.focal) { $0.classWeights = alphas; $0.focalGamma = 1.5 }, classes: 3, logits: logits, target: target)
        XCTAssertEqual(value, sum / 3, accuracy: 1e-12)
    }

    /// gamma 0 without alpha is plain bce / ce, value and gradient.
    func testFocalWithGammaZeroIsCrossEntropy() {
        for (classes, plain) in [(1, LossKind.bce), (3, .ce)] {
            let batch = LossTests.Batch(n: 2, classes: classes, h: 5, w: 6, ignore: 255, seed: 92)
            let focal = LossFunction(config(.focal) { $0.focalGamma = 0 }, classes: classes)
            let reference = LossFunction(config(plain), classes: classes)
            let gFocal = OwnedTensor(batch.logits.shape), gPlain = OwnedTensor(batch.logits.shape)
            let v1 = focal.evaluate(logits: batch.logits.tensor, target: batch.target.tensor, weights: nil,
                                    dlogits: gFocal.tensor, normalizers: nil, pool: pool)
            let v2 = reference.evaluate(logits: batch.logits.tensor, target: batch.target.tensor, weights: nil,
                                        dlogits: gPlain.tensor, normalizers: nil, pool: pool)
            XCTAssertEqual(v1, v2, accuracy: 1e-14, "classes \(classes)")
            for i in 0..<gFocal.tensor.count {
                // Both rounded once to float from Double values within 1e-15 of each other.
                XCTAssertEqual(gFocal.tensor[i], gPlain.tensor[i], accuracy: abs(gPlain.tensor[i]) * 0x1p-23, "classes \(classes) element \(i)")
            }
        }
    }

    // MARK: - Tversky

    /// The Tversky index per class from (I, P, T) of Double probabilities.
    func tverskyLoss(_ probabilities: [[Double]], _ onehot: [[Double]], alpha: Double, beta: Double,
                     gamma: Double?, smooth: Double = 1) -> Double {
        var sum = 0.0
        for c in probabilities.indices {
            var tp = 0.0, fp = 0.0, fn = 0.0
            for i in probabilities[c].indices {
                let p = probabilities[c][i], t = onehot[c][i]
                tp += p * t; fp += p * (1 - t); fn += (1 - p) * t
            }
            let index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
            sum += gamma.map { pow(1 - index, $0) } ?? 1 - index
        }
        return sum / Double(probabilities.count)
    }

    func testTverskyAndFocalTverskyKnownValues() {
        // Binary: p = (1/2, 3/4, 1/4, 1/2), t = (1, 1, 0, 0): TP 1.25, FP 0.75, FN 0.75,
        // TI = 2.25 / 3 = 0.75 with alpha 0.3, beta 0.7, smooth 1.
        let binary: [Float] = [0, Float(log(3.0)), -Float(log(3.0)), 0], labels: [Float] = [1, 1, 0, 0]
        let p = [binary.map(sigmoid)], t = [labels.map(Double.init)]
        let tversky = evaluate(config(.tversky), classes: 1, logits: binary, target: labels)
        XCTAssertEqual(tversky, tverskyLoss(p, t, alpha: 0.3, beta: 0.7, gamma: nil), accuracy: 1e-12)
        XCTAssertEqual(tversky, 0.25, accuracy: 1e-7)
        let focal = evaluate(config(.focalTversky), classes: 1, logits: binary, target: labels)
        XCTAssertEqual(focal, tverskyLoss(p, t, alpha: 0.3, beta: 0.7, gamma: 0.75), accuracy: 1e-12)
        // Other alpha, beta, gamma; 3 classes, one ignored pixel.
        let logits: [Float] = [1, 0.5, -1, 2, 0, 1.5, 0.25, -2, -1, 0, 3, 0.5], target: [Float] = [0, 2, 255, 1]
        let counted = [0, 1, 3]
        let probabilities = (0..<3).map { c in counted.map { softmax(logits, classes: 3, pixel: $0)[c] } }
        let onehot = (0..<3).map { c in counted.map { Int(target[$0]) == c ? 1.0 : 0.0 } }
        let adjust: (inout LossConfig) -> Void = { $0.tverskyAlpha = 0.6; $0.tverskyBeta = 0.2; $0.tverskyGamma = 1.5 }
        XCTAssertEqual(evaluate(config(.tversky, adjust), classes: 3, logits: logits, target: target),
                       tverskyLoss(probabilities, onehot, alpha: 0.6, beta: 0.2, gamma: nil), accuracy: 1e-12)
        XCTAssertEqual(evaluate(config(.focalTversky, adjust), classes: 3, logits: logits, target: target),
                       tverskyLoss(probabilities, onehot, alpha: 0.6, beta: 0.2, gamma: 1.5), accuracy: 1e-12)
    }

    // MARK: - Lovász

    /// The Lovász extension of the Jaccard loss from its definition (Berman et al. 2018, eq. 8-9):
    /// errors sorted decreasing, sum_k e_(k) (D(S_k) - D(S_{k-1})) with S_k the first k pixels and
    /// D(M) = 1 - |fg \ M| / |fg u M| the Jaccard loss when M is mispredicted. Sets, not counts.
    func lovaszReference(_ errors: [Double], _ foreground: [Bool]) -> Double {
        let order = errors.indices.sorted { errors[$0] > errors[$1] || (errors[$0] == errors[$1] && $0 < $1) }
        let fg = Set(foreground.indices.filter { foreground[$0] })
        var mispredicted = Set<Int>(), previous = 0.0, loss = 0.0
        for i in order {
            mispredicted.insert(i)
            let jaccard = 1 - Double(fg.subtracting(mispredicted).count) / Double(fg.union(mispredicted).count)
            loss += errors[i] * (jaccard - previous)
            previous = jaccard
        }
        return loss
    }

    /// Errors of 0 and 1 (logits at the hinge's margin or 0) give the Jaccard loss of the pixels with
    /// error 1: targets (1, 1, 0, 0), pixels 0 and 2 wrong: 1 - |{1}| / |{0, 1, 2}| = 2/3.
    func testLovaszHingeAtIndicatorErrorsIsTheJaccardLoss() {
        let value = evaluate(config(.lovasz), classes: 1, logits: [0, 1, 0, -1], target: [1, 1, 0, 0])
        XCTAssertEqual(value, 2.0 / 3.0, accuracy: 1e-15)
        // All right beyond the margin: 0. All ignored: 0, and no gradient.
        XCTAssertEqual(evaluate(config(.lovasz), classes: 1, logits: [3, 2, -2, -5], target: [1, 1, 0, 0]), 0)
        let grad = OwnedTensor(Shape(1, 1, 2, 2))
        XCTAssertEqual(evaluate(config(.lovasz), classes: 1, logits: [1, 2, 3, 4], target: [255, 255, 255, 255], dlogits: grad.tensor), 0)
        XCTAssertEqual(grad.tensor.toArray(), [0, 0, 0, 0])
    }

    /// Random images (with ignored pixels and tied logits) against the reference, per image, mean over images.
    func testLovaszMatchesTheDefinitionOnRandomImages() {
        for classes in [1, 4] {
            let (n, h, w) = (3, 5, 7)
            let batch = LossTests.Batch(n: n, classes: classes, h: h, w: w, ignore: 255, seed: 93)
            // Ties: some pixels share logits.
            for i in stride(from: 0, to: batch.logits.tensor.count - 1, by: 5) { batch.logits.tensor[i + 1] = batch.logits.tensor[i] }
            let plane = h * w
            var expected = 0.0
            for image in 0..<n {
                let t = batch.target.tensor.plane(image, 0)
                let counted = (0..<plane).filter { t[$0] != 255 }
                if classes == 1 {
                    let errors = counted.map { i -> Double in
                        let s = t[i] >= 0.5 ? 1.0 : -1.0
                        return max(0, 1 - Double(batch.logits.tensor.plane(image, 0)[i]) * s)
                    }
                    expected += lovaszReference(errors, counted.map { t[$0] >= 0.5 })
                    continue
                }
                var sum = 0.0, present = 0
                for c in 0..<classes {
                    let fg = counted.map { Int(t[$0]) == c }
                    guard fg.contains(true) else { continue }
                    let errors = counted.enumerated().map { j, i -> Double in
                        let x = (0..<classes).map { Double(batch.logits.tensor.plane(image, $0)[i]) }
                        let p = exp(x[c]) / x.map(exp).reduce(0, +)
                        return abs((fg[j] ? 1 : 0) - p)
                    }
                    sum += lovaszReference(errors, fg)
                    present += 1
                }
                if present > 0 { expected += sum / Double(present) }
            }
            let loss = LossFunction(config(.lovasz), classes: classes)
            let value = loss.evaluate(logits: batch.logits.tensor, target: batch.target.tensor, weights: nil, dlogits: nil,
                                      normalizers: nil, pool: pool)
            XCTAssertEqual(value, expected / Double(n), accuracy: 1e-12, "classes \(classes)")
        }
    }

    /// Lovász-softmax on uniform logits (p = 1/3): classes 0 and 1 present, 2 absent (not averaged).
    func testLovaszSoftmaxKnownValue() {
        let value = evaluate(config(.lovasz), classes: 3, logits: [Float](repeating: 0.5, count: 12), target: [0, 0, 1, 255])
        let third = 1.0 / 3
        let class0 = lovaszReference([1 - third, 1 - third, third], [true, true, false])
        let class1 = lovaszReference([third, third, 1 - third], [false, false, true])
        // By hand: class 0 sorted (2/3 fg, 2/3 fg, 1/3 bg): J = 1/2, 1, 1: 2/3 * 1/2 + 2/3 * 1/2 = 2/3;
        // class 1 (2/3 fg, 1/3, 1/3): J = 1, 1, 1: 2/3.
        XCTAssertEqual(class0, 2.0 / 3, accuracy: 1e-15)
        XCTAssertEqual(class1, 2.0 / 3, accuracy: 1e-15)
        XCTAssertEqual(value, (class0 + class1) / 2, accuracy: 1e-7)
    }

    func testSortByDecreasingErrorIsATotalOrder() {
        var rng = SplitMix64(seed: 94)
        for count in [0, 1, 2, 3, 17, 200] {
            var errors = (0..<count).map { _ in Double(rng.next() % 7) / 3 }   // many ties
            var order = (0..<count).map(Int32.init).shuffled(using: &rng)
            errors.withUnsafeMutableBufferPointer { e in
                order.withUnsafeMutableBufferPointer { sortByDecreasingError($0.baseAddress!, count, e.baseAddress!) }
            }
            let expected = (0..<count).sorted { errors[$0] > errors[$1] || (errors[$0] == errors[$1] && $0 < $1) }
            XCTAssertEqual(order.map(Int.init), expected, "count \(count)")
        }
    }

    // MARK: - Weighted sums

    /// A weighted sum is the sum of its weighted parts: values, and gradients within the float
    /// roundings of adding them (each part's gradient pass rounds once per element).
    func testWeightedSumIsTheSumOfItsParts() {
        for lossCase in LossTests.cases where lossCase.config.components.count > 1 {
            let batch = LossTests.Batch(n: 2, classes: lossCase.classes, h: 6, w: 5, ignore: 255, seed: 95)
            let whole = LossFunction(lossCase.config, classes: lossCase.classes)
            let norm = whole.terms(target: batch.target.tensor)
            let g = OwnedTensor(batch.logits.shape)
            let value = whole.evaluate(logits: batch.logits.tensor, target: batch.target.tensor, weights: batch.weights.tensor,
                                       dlogits: g.tensor, normalizers: norm, pool: pool)
            let (sum, parts, magnitude) = LossTests.parts(of: lossCase, batch, normalizers: norm, pool: pool)
            XCTAssertEqual(value, sum, accuracy: 1e-12 * abs(sum), lossCase.name)
            // Whole: one rounding per pass; parts: one each, then summed in Double.
            let roundings = Double(LossTests.gradientPasses(lossCase.config) + lossCase.config.components.count)
            for i in parts.indices {
                XCTAssertEqual(Double(g.tensor[i]), parts[i], accuracy: roundings * 0x1p-24 * magnitude[i], "\(lossCase.name) element \(i)")
            }
        }
    }

    // MARK: - Configuration

    func testLossListParses() throws {
        let parsed = try LossConfig.parseComponents("ce:1,dice:0.5").get()
        XCTAssertEqual(parsed, [LossComponent(.ce, 1), LossComponent(.dice, 0.5)])
        XCTAssertEqual(try LossConfig.parseComponents("focal-tversky").get(), [LossComponent(.focalTversky, 1)])
        XCTAssertEqual(LossConfig(components: try LossConfig.parseComponents("bce+dice:2,lovasz:0.25").get()).components,
                       [LossComponent(.bce, 2), LossComponent(.dice, 2), LossComponent(.lovasz, 0.25)])
        XCTAssertEqual(LossConfig(components: parsed).name, "ce:1,dice:0.5")
        XCTAssertEqual(LossConfig(kind: .weightedCE).name, "weighted-ce")
        XCTAssertEqual(LossConfig(kind: .bceDice).name, "bce+dice")
        XCTAssertEqual(LossConfig(kind: .bceDice, diceWeight: 2).name, "bce:1,dice:2")
        for kind in LossKind.allCases { XCTAssertNotNil(try? LossConfig.parseComponents(kind.rawValue).get(), kind.rawValue) }
        for bad in ["", "cee", "ce:x", "ce:-1", "ce:inf", "ce:1:2", "dice,dice:2", "bce+dice,bce", "ce,,dice"] {
            guard case .failure(let error) = LossConfig.parseComponents(bad) else { XCTFail("'\(bad)' parsed"); continue }
            XCTAssertTrue(error.description.hasPrefix("--loss"), error.description)
            XCTAssertFalse(error.description.contains("\n"), error.description)
        }
    }

    func testProblemsNameTheFlag() {
        let cases: [(LossConfig, Int, String)] = [
            (config(.ce) { $0.classWeights = [1, 2] }, 3, "--class-weights"),
            (config(.bce) { $0.classWeights = [1, 2] }, 1, "--class-weights"),
            (config(.ce) { $0.classWeights = [1, -2, 1] }, 3, "--class-weights"),
            (config(.dice) { $0.classWeights = [1, 2, 1] }, 3, "--class-weights"),
            (config(.focal) { $0.classWeights = [2] }, 1, "--class-weights"),
            (config(.focal) { $0.focalGamma = -1 }, 1, "--focal-gamma"),
            (config(.focal) { $0.focalAlpha = 1.5 }, 1, "--focal-alpha"),
            (config(.focal) { $0.focalAlpha = 0.25 }, 3, "--focal-alpha"),
            (config(.ce) { $0.focalAlpha = 0.25 }, 3, "--focal-alpha"),
            (config(.tversky) { $0.tverskyAlpha = .nan }, 1, "--tversky-alpha"),
            (config(.tversky) { $0.tverskyBeta = -0.1 }, 1, "--tversky-beta"),
            (config(.focalTversky) { $0.tverskyGamma = 0 }, 1, "--tversky-gamma"),
            (LossConfig(components: [LossComponent(.ce, 1), LossComponent(.dice, -1)]), 3, "--loss"),
            (LossConfig(components: [LossComponent(.bce, 1), LossComponent(.dice, 1)]), 3, "--loss bce"),
        ]
        for (config, classes, flag) in cases {
            let problem = config.problem(classes: classes)
            XCTAssertTrue(problem?.hasPrefix(flag) ?? false, "\(config.name) \(classes): \(problem ?? "accepted")")
        }
        XCTAssertNil(config(.focal) { $0.classWeights = [1, 2, 3]; $0.focalGamma = 0.5 }.problem(classes: 3))
        XCTAssertNil(config(.bce) { $0.classWeights = [4] }.problem(classes: 1))
    }
}
