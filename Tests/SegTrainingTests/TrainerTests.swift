// The trainer in process: the epoch permutation, validation counting every pixel once and skipping
// ignored ones, training that improves the validation Dice, and a stop request's timing.

import XCTest
import SegEngine
import SegModel
import SegData
@testable import SegTraining

final class TrainerTests: XCTestCase {
    func testPermutationIsSeededAndComplete() {
        let a = Trainer.permutation(count: 101, seed: 7, epoch: 3)
        XCTAssertEqual(a.sorted(), Array(0..<101))
        XCTAssertEqual(a, Trainer.permutation(count: 101, seed: 7, epoch: 3))
        XCTAssertNotEqual(a, Trainer.permutation(count: 101, seed: 7, epoch: 4))
        XCTAssertNotEqual(a, Array(0..<101))
    }

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

/// A stop requested during an epoch's last batch completes the epoch (validation included) and
/// says so; earlier, it stops after that batch.
final class StopTests: XCTestCase {
    func testAStopAtTheLastBatchCompletesTheEpoch() throws {
        for stopAt in [2, 5] {  // 5 batches of 8 in 40 samples: batch index 4 is the last
            let source = RecordingSource(count: 40, size: 16)
            let trainer = tinyTrainer(train: source, validation: RecordingSource(count: 4, size: 16))
            trainer.stopRequested = { source.filled.count >= stopAt }
            let outcome = try trainer.runEpoch(1)
            if stopAt == 5 {
                XCTAssertNotNil(outcome.record, "the epoch is completed")
                XCTAssertNotNil(outcome.record?.validationLoss)
                XCTAssertTrue(trainer.stopAfterEpoch)
                XCTAssertEqual(outcome.record?.batchesTrained, 5)
            } else {
                guard case .stopped(let batch) = outcome else { return XCTFail("expected a stop") }
                XCTAssertEqual(batch, 1)
                XCTAssertFalse(trainer.stopAfterEpoch)
            }
        }
    }
}
