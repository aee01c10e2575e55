// Segmentation metrics from confusion counts. Counts are sums, so ranks (or batches) add them
// before any ratio is taken: the metrics of a sharded validation equal those of a single pass.

/// Per-class pixel counts: true/false positives/negatives. For one sigmoid output (classes = 1)
/// the counts are of the foreground class. With `matrix`, a multi-class count also keeps the
/// confusion matrix (pixels of true class i predicted as j).
public struct ConfusionCounts: Equatable, Sendable {
    public var truePositive: [Double], falsePositive: [Double], falseNegative: [Double], trueNegative: [Double]
    /// classes x classes, row = true class, column = predicted (empty unless asked for, and for one class).
    public var matrix: [Double]

    public init(classes: Int, matrix: Bool = false) {
        let k = max(classes, 1)
        truePositive = [Double](repeating: 0, count: k)
        falsePositive = truePositive
        falseNegative = truePositive
        trueNegative = truePositive
        self.matrix = matrix && k > 1 ? [Double](repeating: 0, count: k * k) : []
    }

    /// Pixels of true class `truth` predicted as `predicted` (needs `matrix`).
    public func confusion(truth: Int, predicted: Int) -> Double { matrix[truth * classes + predicted] }

    public var classes: Int { truePositive.count }

    /// Adds the counts of one batch: predictions from `logits` (N, C, H, W) — logit > 0 for one
    /// class, the argmax otherwise — against `target` (N, 1, H, W). Pixels equal to `ignoreIndex`
    /// are not counted.
    public mutating func add(logits: Tensor, target: Tensor, ignoreIndex: Int? = nil, images: Int? = nil) {
        let c = logits.c, plane = logits.h * logits.w
        precondition(target.shape == Shape(logits.n, 1, logits.h, logits.w), "target \(target.shape) for logits \(logits.shape)")
        precondition(c == classes, "logits have \(c) channels for \(classes) classes")
        for n in 0..<(images ?? logits.n) {
            let t = target.sample(n)
            for p in 0..<plane {
                let label = Int(t[p].rounded())
                if let ignore = ignoreIndex, label == ignore { continue }
                if c == 1 {
                    let predicted = logits.sample(n)[p] > 0, actual = label >= 1
                    switch (predicted, actual) {
                    case (true, true): truePositive[0] += 1
                    case (true, false): falsePositive[0] += 1
                    case (false, true): falseNegative[0] += 1
                    case (false, false): trueNegative[0] += 1
                    }
                } else {
                    var best = 0
                    var bestValue = logits.plane(n, 0)[p]
                    for k in 1..<c where logits.plane(n, k)[p] > bestValue { best = k; bestValue = logits.plane(n, k)[p] }
                    countClasses(predicted: best, actual: label)
                }
            }
        }
    }

    /// Adds the counts of one predicted label mask against the true one (1 channel each, same
    /// size; class indices, binary masks 0/1); pixels whose truth is `ignoreIndex` are not counted.
    public mutating func add(predicted: [UInt8], truth: [UInt8], ignoreIndex: Int? = nil) {
        precondition(predicted.count == truth.count, "\(predicted.count) predicted pixels for \(truth.count) true ones")
        let k = classes
        for p in predicted.indices {
            let label = Int(truth[p])
            if let ignore = ignoreIndex, label == ignore { continue }
            if k == 1 {
                switch (predicted[p] >= 1, label >= 1) {
                case (true, true): truePositive[0] += 1
                case (true, false): falsePositive[0] += 1
                case (false, true): falseNegative[0] += 1
                case (false, false): trueNegative[0] += 1
                }
                continue
            }
            countClasses(predicted: Int(predicted[p]), actual: label)
        }
    }

    /// One multi-class pixel: a hit, miss or correct rejection for every class.
    @inline(__always) private mutating func countClasses(predicted: Int, actual: Int) {
        if !matrix.isEmpty && (0..<classes).contains(actual) && (0..<classes).contains(predicted) {
            matrix[actual * classes + predicted] += 1
        }
        for c in 0..<classes {
            let isPredicted = predicted == c, isActual = actual == c
            if isPredicted && isActual { truePositive[c] += 1 }
            else if isPredicted { falsePositive[c] += 1 }
            else if isActual { falseNegative[c] += 1 }
            else { trueNegative[c] += 1 }
        }
    }

    /// The counts as one flat array (tp, fp, fn, tn per class, then the matrix), and back: what ranks sum.
    public var flat: [Double] { truePositive + falsePositive + falseNegative + trueNegative + matrix }
    public init(flat: ArraySlice<Double>, classes: Int, matrix: Bool = false) {
        self.init(classes: classes, matrix: matrix)
        let k = self.classes, b = flat.startIndex
        truePositive = Array(flat[b..<(b + k)])
        falsePositive = Array(flat[(b + k)..<(b + 2 * k)])
        falseNegative = Array(flat[(b + 2 * k)..<(b + 3 * k)])
        trueNegative = Array(flat[(b + 3 * k)..<(b + 4 * k)])
        if !self.matrix.isEmpty { self.matrix = Array(flat[(b + 4 * k)..<(b + 4 * k + k * k)]) }
    }

    public static func + (a: ConfusionCounts, b: ConfusionCounts) -> ConfusionCounts {
        precondition(a.classes == b.classes && a.matrix.count == b.matrix.count)
        var sum = a
        for i in a.matrix.indices { sum.matrix[i] += b.matrix[i] }
        for k in 0..<a.classes {
            sum.truePositive[k] += b.truePositive[k]
            sum.falsePositive[k] += b.falsePositive[k]
            sum.falseNegative[k] += b.falseNegative[k]
            sum.trueNegative[k] += b.trueNegative[k]
        }
        return sum
    }

    /// Ratio with 0/0 = 1 (a class absent from both prediction and truth is predicted perfectly).
    private static func ratio(_ a: Double, _ b: Double) -> Double { b == 0 ? 1 : a / b }

    /// Pixel accuracy over all pixels counted.
    public var accuracy: Double {
        if classes == 1 {
            return ConfusionCounts.ratio(truePositive[0] + trueNegative[0],
                                         truePositive[0] + trueNegative[0] + falsePositive[0] + falseNegative[0])
        }
        // Every pixel is a true positive of exactly one class or a false negative of one.
        let correct = truePositive.reduce(0, +)
        return ConfusionCounts.ratio(correct, correct + falseNegative.reduce(0, +))
    }

    public func precision(_ k: Int) -> Double { ConfusionCounts.ratio(truePositive[k], truePositive[k] + falsePositive[k]) }
    public func recall(_ k: Int) -> Double { ConfusionCounts.ratio(truePositive[k], truePositive[k] + falseNegative[k]) }
    public func dice(_ k: Int) -> Double {
        ConfusionCounts.ratio(2 * truePositive[k], 2 * truePositive[k] + falsePositive[k] + falseNegative[k])
    }
    public func iou(_ k: Int) -> Double {
        ConfusionCounts.ratio(truePositive[k], truePositive[k] + falsePositive[k] + falseNegative[k])
    }

    private func mean(_ f: (Int) -> Double) -> Double { (0..<classes).map(f).reduce(0, +) / Double(classes) }
    /// Means over classes (for one class: the foreground's value).
    public var meanPrecision: Double { mean(precision) }
    public var meanRecall: Double { mean(recall) }
    public var meanDice: Double { mean(dice) }
    public var meanIoU: Double { mean(iou) }
}
