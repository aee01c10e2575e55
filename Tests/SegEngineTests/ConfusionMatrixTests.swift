// The confusion matrix that multi-class validation keeps beside the per-class counts.

import SegEngine
import XCTest

final class ConfusionMatrixTests: XCTestCase {
    func testMatrixCountsTruthByPredictionAndAgreesWithThePerClassCounts() {
        var counts = ConfusionCounts(classes: 3, matrix: true)
        // truth:     0 0 1 1 2 2 2 255
        // predicted: 0 1 1 2 2 2 0 1
        counts.add(predicted: [0, 1, 1, 2, 2, 2, 0, 1], truth: [0, 0, 1, 1, 2, 2, 2, 255], ignoreIndex: 255)
        let expected: [[Double]] = [[1, 1, 0], [0, 1, 1], [1, 0, 2]]
        for t in 0..<3 { for p in 0..<3 { XCTAssertEqual(counts.confusion(truth: t, predicted: p), expected[t][p], "\(t) -> \(p)") } }
        for k in 0..<3 {
            let row = (0..<3).map { expected[k][$0] }.reduce(0, +), column = (0..<3).map { expected[$0][k] }.reduce(0, +)
            XCTAssertEqual(counts.truePositive[k], expected[k][k])
            XCTAssertEqual(counts.falseNegative[k], row - expected[k][k])
            XCTAssertEqual(counts.falsePositive[k], column - expected[k][k])
        }
    }

    func testMatrixSurvivesTheFlatFormAndSums() {
        var a = ConfusionCounts(classes: 2, matrix: true), b = ConfusionCounts(classes: 2, matrix: true)
        a.add(predicted: [0, 1, 1], truth: [0, 0, 1])
        b.add(predicted: [1, 0], truth: [1, 1])
        let sum = a + b
        XCTAssertEqual(sum.matrix, [1, 1, 1, 2])
        XCTAssertEqual(ConfusionCounts(flat: sum.flat[...], classes: 2, matrix: true), sum)
        // Without the matrix the flat form is the per-class counts alone, as before.
        XCTAssertEqual(ConfusionCounts(classes: 2).flat.count, 8)
        XCTAssertEqual(sum.flat.count, 12)
    }
}
