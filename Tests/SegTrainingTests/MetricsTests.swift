import XCTest
import SegEngine
import SegModel
import SegTraining
import SegData

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

    func testPermutationIsSeededAndComplete() {
        let a = Trainer.permutation(count: 101, seed: 7, epoch: 3)
        XCTAssertEqual(a.sorted(), Array(0..<101))
        XCTAssertEqual(a, Trainer.permutation(count: 101, seed: 7, epoch: 3))
        XCTAssertNotEqual(a, Trainer.permutation(count: 101, seed: 7, epoch: 4))
        XCTAssertNotEqual(a, Array(0..<101))
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

/// A learnable toy source: the mask is where channel 0 is brighter than channel 1.
struct ToySource: SampleSource {
    let count: Int
    let size: Int
    let seed: UInt64
    func fill(images: Tensor, masks: Tensor, indices: [Int], epoch: Int?) {
        for (n, index) in indices.enumerated() {
            var rng = SplitMix64(seed: seed, stream: UInt64(index))
            for c in 0..<3 { for p in 0..<(size * size) { images.plane(n, c)[p] = rng.nextUnitFloat() } }
            for p in 0..<(size * size) { masks.sample(n)[p] = images.plane(n, 0)[p] > images.plane(n, 1)[p] ? 1 : 0 }
        }
    }
}

/// `ToySource` with a border of `border` pixels marked `ignore` in every mask.
struct BorderedSource: SampleSource {
    let toy: ToySource
    let border: Int
    let ignore: Float
    var count: Int { toy.count }
    func fill(images: Tensor, masks: Tensor, indices: [Int], epoch: Int?) {
        toy.fill(images: images, masks: masks, indices: indices, epoch: epoch)
        let s = toy.size
        for n in 0..<indices.count {
            for y in 0..<s {
                for x in 0..<s where min(x, y, s - 1 - x, s - 1 - y) < border { masks.sample(n)[y * s + x] = ignore }
            }
        }
    }
}

final class TrainerTests: XCTestCase {
    private func makeTrainer(validationCount: Int, labels: LabelSpec = LabelSpec(classes: 1)) -> Trainer {
        var config = UNetConfig()
        config.baseChannels = 4
        config.depth = 2
        config.seed = 2
        let unet = UNet(config, pool: WorkerPool(threads: 2))
        let step = LocalStep(model: unet, loss: LossFunction(LossConfig(kind: .bce), labels: labels),
                             optimizer: Optimizer(OptimizerConfig(kind: .adam), parameterCount: unet.parameterCount))
        return Trainer(step: step, train: ToySource(count: 40, size: 16, seed: 1),
                       validation: ToySource(count: validationCount, size: 16, seed: 99),
                       imageSize: 16, batchSize: 8, seed: 5, learningRate: 1e-2)
    }

    /// A validation set that is not a multiple of the batch counts every pixel exactly once.
    func testValidationCountsEveryPixelOnce() throws {
        let trainer = makeTrainer(validationCount: 13)
        let (loss, counts) = try trainer.validate(ToySource(count: 13, size: 16, seed: 99))
        let total = counts.truePositive[0] + counts.falsePositive[0] + counts.falseNegative[0] + counts.trueNegative[0]
        XCTAssertEqual(total, Double(13 * 16 * 16))
        XCTAssertTrue(loss.isFinite && loss > 0)
    }

    /// The loss's ignore index reaches the validation metrics: a 3-pixel border of 255 in every
    /// mask is neither counted nor scored, and the loss stays a loss (BCE on a target of 255 would
    /// be hugely negative).
    func testValidationSkipsTheIgnoredPixels() throws {
        let trainer = makeTrainer(validationCount: 13, labels: LabelSpec(classes: 1, ignoreIndex: 255))
        let source = BorderedSource(toy: ToySource(count: 13, size: 16, seed: 99), border: 3, ignore: 255)
        let (loss, counts) = try trainer.validate(source)
        let total = counts.truePositive[0] + counts.falsePositive[0] + counts.falseNegative[0] + counts.trueNegative[0]
        XCTAssertEqual(total, Double(13 * 10 * 10), "only the 10 x 10 inner pixels of each image are scored")
        XCTAssertTrue(loss.isFinite && loss > 0 && loss < 5, "validation loss \(loss)")
        // The same as the metrics of the inner pixels, counted directly from the model's logits.
        let model = trainer.step.local.model
        let images = OwnedTensor(Shape(8, 3, 16, 16)), masks = OwnedTensor(Shape(8, 1, 16, 16))
        var expected = ConfusionCounts(classes: 1)
        for start in stride(from: 0, to: 13, by: 8) {
            let indices = (0..<8).map { min(start + $0, 12) }, real = min(8, 13 - start)
            source.fill(images: images.tensor, masks: masks.tensor, indices: indices, epoch: nil)
            model.plan(batch: 8, height: 16, width: 16)
            let logits = model.forward(images.tensor, training: false)
            for n in 0..<real {
                for p in 0..<256 where masks.tensor.sample(n)[p] != 255 {
                    expected.add(predicted: [logits.sample(n)[p] > 0 ? 1 : 0], truth: [UInt8(masks.tensor.sample(n)[p])])
                }
            }
        }
        XCTAssertEqual(counts, expected)
    }

    func testTrainingImprovesValidationDice() throws {
        let trainer = makeTrainer(validationCount: 16)
        let before = try trainer.validate(ToySource(count: 16, size: 16, seed: 99))
        var last = try trainer.runEpoch(1).record!
        for epoch in 2...8 { last = try trainer.runEpoch(epoch).record! }
        XCTAssertLessThan(last.validationLoss!, 0.7 * before.loss, "val loss \(before.loss) -> \(last.validationLoss!)")
        // 40 steps: measured 0.29 -> 0.74.
        XCTAssertGreaterThan(last.validation!.meanDice, max(0.6, before.counts.meanDice + 0.3),
                             "dice \(before.counts.meanDice) -> \(last.validation!.meanDice)")
        XCTAssertEqual(last.csvLine.split(separator: ",", omittingEmptySubsequences: false).count,
                       EpochRecord.csvHeader.split(separator: ",").count)
    }
}
