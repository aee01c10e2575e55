// Segmentation metrics in process (SegEngine/Metrics.swift): confusion counts from logits and from
// label masks, with an ignore index, their sums over ranks, and the scores they give.

import XCTest
import SegEngine

final class MetricsTests: XCTestCase {
    /// Binary: logits > 0 predict foreground. 2 TP, 1 FP, 1 FN, 4 TN by construction.
    func testBinaryCountsAndMetrics() {
        let logits = OwnedTensor(Shape(1, 1, 2, 4), [3, 2, 1, -1, -2, -3, -1, -5])
        let target = OwnedTensor(Shape(1, 1, 2, 4), [1, 1, 0, 1, 0, 0, 0, 0])
        var counts = ConfusionCounts(classes: 1)
        counts.add(logits: logits.tensor, target: target.tensor)
        XCTAssertEqual(counts.truePositive, [2]); XCTAssertEqual(counts.falsePositive, [1])
        XCTAssertEqual(counts.falseNegative, [1]); XCTAssertEqual(counts.trueNegative, [4])
        XCTAssertEqual(counts.accuracy, 6.0 / 8)
        XCTAssertEqual(counts.meanPrecision, 2.0 / 3)
        XCTAssertEqual(counts.meanRecall, 2.0 / 3)
        XCTAssertEqual(counts.meanDice, 4.0 / 6)
        XCTAssertEqual(counts.meanIoU, 2.0 / 4)
    }

    /// Three classes by argmax, with an ignored pixel; per-class counts by hand.
    func testMultiClassCountsIgnoreAndSum() {
        // Pixels: predicted (argmax) 0, 1, 2, 2, 1; truth 0, 2, 2, 255 (ignored), 1.
        let logits = OwnedTensor(Shape(1, 3, 1, 5), [5, 0, 0, 0, 0,
                                                    0, 5, 0, 0, 5,
                                                    0, 0, 5, 5, 0])
        let target = OwnedTensor(Shape(1, 1, 1, 5), [0, 2, 2, 255, 1])
        var counts = ConfusionCounts(classes: 3)
        counts.add(logits: logits.tensor, target: target.tensor, ignoreIndex: 255)
        XCTAssertEqual(counts.truePositive, [1, 1, 1])
        XCTAssertEqual(counts.falsePositive, [0, 1, 0])
        XCTAssertEqual(counts.falseNegative, [0, 0, 1])
        XCTAssertEqual(counts.accuracy, 3.0 / 4)
        XCTAssertEqual(counts.iou(1), 0.5)
        XCTAssertEqual(counts.dice(2), 2.0 / 3)
        // Counts are sums: two halves add up to the whole.
        let doubled = counts + counts
        XCTAssertEqual(doubled.truePositive, [2, 2, 2])
        XCTAssertEqual(doubled.meanIoU, counts.meanIoU)
    }
}

/// Per-image scores from label masks with known counts (what `segtrain evaluate` reports).
final class LabelCountTests: XCTestCase {
    func testBinaryCountsAndScores() {
        // truth:     1 1 1 0 0 0 0 0 0 9(ignored)     prediction: 1 1 0 1 0 0 0 0 0 1
        let truth: [UInt8] = [1, 1, 1, 0, 0, 0, 0, 0, 0, 9], predicted: [UInt8] = [1, 1, 0, 1, 0, 0, 0, 0, 0, 1]
        var c = ConfusionCounts(classes: 1)
        c.add(predicted: predicted, truth: truth, ignoreIndex: 9)
        XCTAssertEqual([c.truePositive[0], c.falsePositive[0], c.falseNegative[0], c.trueNegative[0]], [2, 1, 1, 5])
        XCTAssertEqual(c.accuracy, 7.0 / 9.0, accuracy: 1e-12)
        XCTAssertEqual(c.precision(0), 2.0 / 3.0, accuracy: 1e-12)
        XCTAssertEqual(c.recall(0), 2.0 / 3.0, accuracy: 1e-12)
        XCTAssertEqual(c.dice(0), 4.0 / 6.0, accuracy: 1e-12)
        XCTAssertEqual(c.iou(0), 2.0 / 4.0, accuracy: 1e-12)
        // Nothing there and nothing predicted: a perfect image.
        var empty = ConfusionCounts(classes: 1)
        empty.add(predicted: [0, 0], truth: [0, 0])
        XCTAssertEqual([empty.precision(0), empty.recall(0), empty.dice(0), empty.iou(0)], [1, 1, 1, 1])
        XCTAssertEqual(ConfusionCounts(flat: c.flat[...], classes: 1), c)
    }

    func testMultiClassCounts() {
        let truth: [UInt8] = [0, 1, 2, 2, 1, 0], predicted: [UInt8] = [0, 2, 2, 2, 1, 1]
        var c = ConfusionCounts(classes: 3)
        c.add(predicted: predicted, truth: truth)
        XCTAssertEqual(c.truePositive, [1, 1, 2])
        XCTAssertEqual(c.falsePositive, [0, 1, 1])
        XCTAssertEqual(c.falseNegative, [1, 1, 0])
        XCTAssertEqual(c.accuracy, 4.0 / 6.0, accuracy: 1e-12)
        XCTAssertEqual(c.iou(2), 2.0 / 3.0, accuracy: 1e-12)
    }
}
