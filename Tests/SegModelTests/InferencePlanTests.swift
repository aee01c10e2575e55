import XCTest
import SegEngine
@testable import SegModel

/// A plan for inference (`plan(..., gradients: false)`, what Predictor makes for predict, evaluate
/// and serve) keeps no activation gradients and lets activations whose lifetimes on the forward
/// pass do not overlap share memory. Its forward must be the training plan's evaluation forward
/// bit for bit (the same kernels on the same values: only where the values live differs); a
/// lifetime that ends too early lets a later op overwrite a value still to be read, and the
/// logits differ. Every model family and the UNet's optional ops (BatchNorm, GroupNorm, padding
/// to an odd skip size, transposed-convolution upsampling) are covered.
final class InferencePlanTests: XCTestCase {
    private func check(_ make: () -> any SegmentationModel, _ name: String, size: Int, batch: Int = 2,
                       file: StaticString = #filePath, line: UInt = #line) {
        let training = make(), inference = make()
        XCTAssertEqual(training.store.values.tensor.toArray(), inference.store.values.tensor.toArray(), "\(name): same weights")
        let images = OwnedTensor(Shape(batch, training.inChannels, size, size))
        var random = SplitMix64(seed: 11)
        for i in 0..<images.tensor.count { images.tensor.data[i] = random.nextFloat(in: -1...1) }
        training.plan(batch: batch, height: size, width: size)
        inference.plan(batch: batch, height: size, width: size, gradients: false)
        let expected = training.forward(images.tensor, training: false).toArray()
        let actual = inference.forward(images.tensor, training: false).toArray()
        XCTAssertEqual(actual, expected, "\(name): the inference plan's logits differ from the training plan's", file: file, line: line)
        XCTAssertTrue(expected.allSatisfy(\.isFinite), "\(name)", file: file, line: line)
        // Twice in a row: nothing the first pass left behind is read by the second.
        XCTAssertEqual(inference.forward(images.tensor, training: false).toArray(), expected, "\(name): second pass", file: file, line: line)
        // No gradient memory, and less value memory (the kernels' scratch is the same in both).
        let withoutGradients = training.plannedActivationMemory.values + training.plannedActivationMemory.scratch
        XCTAssertLessThan(inference.plannedActivationBytes, withoutGradients,
                          "\(name): the inference plan keeps no gradients and shares values", file: file, line: line)
        XCTAssertEqual(inference.activationGradientFloats.shared, 0, "\(name)", file: file, line: line)
        // A later plan with gradients (training after predicting) gets them.
        inference.plan(batch: batch, height: size, width: size)
        XCTAssertGreaterThan(inference.activationGradientFloats.shared, 0, "\(name)", file: file, line: line)
        XCTAssertEqual(inference.forward(images.tensor, training: false).toArray(), expected, "\(name): replanned", file: file, line: line)
    }

    func testThePlainUNetInEveryVariant() {
        for model in SmallModel.plainUNets { check(model.make, model.name, size: model.size, batch: model.batch) }
    }

    func testEncoderUNetsAndDeepLabV3Plus() {
        for model in SmallModel.graphModels { check(model.make, model.name, size: model.size, batch: model.batch) }
    }

    /// The placement itself: buffers whose lifetimes overlap never overlap in memory; others may.
    func testPlacementNeverOverlapsBuffersThatLiveAtTheSameTime() {
        var random = SplitMix64(seed: 3)
        for _ in 0..<50 {
            let count = 1 + Int(random.next() % 12)
            let sizes = (0..<count).map { _ in 16 * (1 + Int(random.next() % 8)) }
            let lifetimes: [ClosedRange<Int>?] = (0..<count).map { _ in
                if random.next() % 6 == 0 { return nil }
                let a = Int(random.next() % 10)
                return a...(a + Int(random.next() % 4))
            }
            let (offsets, end) = ActivationArena.place(sizes: sizes, lifetimes: lifetimes)
            for i in 0..<count {
                XCTAssertEqual(offsets[i] == nil, lifetimes[i] == nil)
                guard let oi = offsets[i], let li = lifetimes[i] else { continue }
                XCTAssertLessThanOrEqual(oi + sizes[i], end)
                for j in 0..<i {
                    guard let oj = offsets[j], let lj = lifetimes[j], li.overlaps(lj) else { continue }
                    XCTAssertFalse((oi..<(oi + sizes[i])).overlaps(oj..<(oj + sizes[j])), "\(sizes) \(lifetimes) \(offsets)")
                }
            }
            XCTAssertLessThanOrEqual(end, zip(sizes, lifetimes).reduce(0) { $0 + ($1.1 == nil ? 0 : $1.0) })
        }
    }
}
