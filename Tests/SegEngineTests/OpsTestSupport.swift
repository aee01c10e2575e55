import XCTest
@testable import SegEngine
import SegEngineTestSupport

/// Helpers shared by the op tests (Elementwise, Pooling, Resize, ShapeOps, BatchNorm).
enum OpsTestSupport {
    /// A tensor of uniform random values in `range`.
    static func random(_ shape: Shape, seed: UInt64, in range: ClosedRange<Float> = -1...1) -> OwnedTensor {
        let t = OwnedTensor(shape)
        var rng = SplitMix64(seed: seed)
        for i in 0..<shape.count { t.tensor[i] = rng.nextFloat(in: range) }
        return t
    }

    /// A kernel's per-image bits: `run(images, threads)` computes its outputs (name, values) for the
    /// first `images` of a batch of 5; every run (5, 3 and 1 images, 1 and 2 threads) must give the
    /// first run's values for its images bit for bit.
    static func assertSameBitsInAnyBatch(_ label: String, file: StaticString = #filePath, line: UInt = #line,
                                         run: (_ images: Int, _ threads: Int) -> [(String, [Float])]) {
        var reference: [[Float]]?
        for threads in [1, 2] {
            for images in [5, 3, 1] {
                let outputs = run(images, threads)
                guard let first = reference else { reference = outputs.map(\.1); continue }
                for ((name, values), whole) in zip(outputs, first) {
                    XCTAssertEqual(zip(values, whole).filter { $0.bitPattern != $1.bitPattern }.count, 0,
                                   "\(label): \(name) of the first \(images) image(s), \(threads) thread(s): values that differ",
                                   file: file, line: line)
                }
            }
        }
    }

    /// Gradient check of an op against L = sum(r * output): `forward` writes `output` from the
    /// inputs, `backward(dy)` adds the op's input gradients into `gradients` given dy = r.
    /// Fails unless every element was checked or skipped as a kink, at least `minimumCheckedFraction`
    /// of them checked, and none failed.
    static func checkGradients(inputs: [Tensor], gradients: [Tensor], output: Tensor, seed: UInt64 = 99,
                               checker: GradientChecker = GradientChecker(), minimumCheckedFraction: Double = 0.9,
                               forward: @escaping () -> Void, backward: @escaping (Tensor) -> Void,
                               _ message: String = "", file: StaticString = #filePath, line: UInt = #line) {
        let projection = Projection(shape: output.shape, seed: seed)
        let dy = OwnedTensor(output.shape)
        let report = checker.check(
            inputs: inputs, gradients: gradients,
            objective: {
                forward()
                return projection.value(output)
            },
            backward: {
                forward()
                projection.seed(dy.tensor)
                backward(dy.tensor)
            })
        let total = inputs.reduce(0) { $0 + $1.count }
        XCTAssertTrue(report.passed, "\(message): \(report)", file: file, line: line)
        XCTAssertEqual(report.checked + report.skippedKinks, total, "\(message): \(report)", file: file, line: line)
        XCTAssertGreaterThanOrEqual(Double(report.checked), minimumCheckedFraction * Double(total),
                                    "\(message): too many kinks skipped: \(report)", file: file, line: line)
    }

    /// Backward adds: from zeroed gradients, running `backward` twice gives twice what running it
    /// once gave (exactly when each element receives one addition per call).
    static func assertAccumulates(_ gradients: [Tensor], tolerance: Float = 0, _ message: String = "",
                                  file: StaticString = #filePath, line: UInt = #line, backward: () -> Void) {
        for g in gradients { g.zero() }
        backward()
        let once = gradients.map { $0.toArray() }
        backward()
        for (t, g) in gradients.enumerated() {
            XCTAssertTrue(once[t].contains { $0 != 0 }, "\(message): gradient \(t) is all zero", file: file, line: line)
            for i in 0..<g.count where abs(g[i] - 2 * once[t][i]) > tolerance * max(1, abs(once[t][i])) {
                XCTFail("\(message): gradient \(t)[\(i)] is \(g[i]) after two calls, \(once[t][i]) after one",
                        file: file, line: line)
                return
            }
        }
    }

    /// Every element of `actual` within the rounding bound of `reference` (SegEngineTestSupport's
    /// RoundingModel: the exact float64 result, gamma(n) times the magnitude of the algorithm's terms).
    static func assertWithinRounding(_ actual: Tensor, _ reference: RoundingReference, _ message: String,
                                     file: StaticString = #filePath, line: UInt = #line) {
        let check = reference.check(actual)
        check.report(message)
        XCTAssertTrue(check.passed, "\(message): \(check)", file: file, line: line)
    }

    static func maxAbsDifference(_ a: Tensor, _ b: Tensor) -> Float {
        precondition(a.shape == b.shape)
        var worst: Float = 0
        for i in 0..<a.count {
            let difference = abs(a[i] - b[i])
            worst = max(worst, difference.isNaN ? .infinity : difference)  // Swift's max drops a NaN
        }
        return worst
    }

    static func assertClose(_ actual: Tensor, _ expected: [Float], tolerance: Float = 1e-6, _ message: String = "",
                            file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(actual.count, expected.count, message, file: file, line: line)
        for i in 0..<min(actual.count, expected.count) where abs(actual[i] - expected[i]) > tolerance {
            XCTFail("\(message): element \(i) is \(actual[i]), expected \(expected[i]); all: \(actual.toArray())",
                    file: file, line: line)
            return
        }
    }

    /// Same bits, element by element.
    static func assertBitwiseEqual(_ a: Tensor, _ b: Tensor, _ message: String = "",
                                   file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.shape, b.shape, message, file: file, line: line)
        XCTAssertEqual(a.toArray().map(\.bitPattern), b.toArray().map(\.bitPattern), message, file: file, line: line)
    }
}
