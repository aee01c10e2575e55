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
        for norm in NormLayer.allCases {
            for upsampling in Upsampling.allCases {
                var config = UNetConfig()
                config.baseChannels = 8
                config.depth = 3
                config.norm = norm
                config.upsampling = upsampling
                config.classes = norm == .group ? 3 : 1
                config.seed = 5
                // 20 px: 20 -> 10 -> 5 -> 2, so the deepest upsampling (4) is padded to the skip (5).
                check({ UNet(config, pool: WorkerPool(threads: 2)) }, "UNet norm \(norm) upsampling \(upsampling)", size: 20)
            }
        }
        var wide = UNetConfig()
        wide.baseChannels = 16
        wide.depth = 2
        check({ UNet(wide, pool: WorkerPool(threads: 2)) }, "UNet base 16 (Winograd layers)", size: 64, batch: 1)
    }

    func testEncoderUNetsAndDeepLabV3Plus() {
        for encoder in [EncoderKind.resnet18, .resnet50, .mobilenetV2] {
            var config = EncoderUNetConfig(encoder: encoder, classes: 2)
            config.widthDivisor = 16
            config.decoderChannels = [16, 8, 8, 4, 4]
            config.seed = 7
            check({ GraphModel(config, pool: WorkerPool(threads: 2)) }, "encoder UNet \(encoder.rawValue)", size: 64)
        }
        for (encoder, outputStride) in [(EncoderKind.resnet18, 16), (.mobilenetV2, 8)] {
            var config = DeepLabV3PlusConfig(encoder: encoder, classes: 2)
            config.widthDivisor = 16
            config.decoderChannels = 8
            config.highResChannels = 4
            config.outputStride = outputStride
            config.seed = 7
            check({ GraphModel(config, pool: WorkerPool(threads: 2)) }, "DeepLabV3+ \(encoder.rawValue) os \(outputStride)", size: 64)
        }
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
