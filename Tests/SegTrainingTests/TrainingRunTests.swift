// TrainingRun in-process, on one rank: what it writes, the decisions it keeps (best, early stop,
// plateau) and a resume that ends bitwise where the uninterrupted run ends.

import Foundation
import SegData
import SegEngine
import SegModel
import SegTraining
import XCTest

final class TrainingRunTests: XCTestCase {
    private var folders: [String] = []

    override func tearDown() {
        for folder in folders { try? FileManager.default.removeItem(atPath: folder) }
    }

    private func temporaryFolder() -> String {
        let path = NSTemporaryDirectory() + "segtrain-run-\(UUID().uuidString)"
        folders.append(path)
        return path
    }

    /// A tiny UNet on synthetic 16x16 samples (24 train, 8 validation), batch 8, Adam; the
    /// schedule `kind` (plateau with patience 0 reduces after every epoch without improvement).
    private func makeRun(out: String, epochs: Int, patience: Int? = nil, schedule kind: ScheduleKind = .constant,
                         learningRate: Double = 1e-3, classes: Int = 1, classNames: [String]? = nil,
                         ema: Double? = nil) -> TrainingRun {
        var config = UNetConfig()
        config.baseChannels = 4
        config.depth = 2
        config.classes = classes
        let pool = WorkerPool(threads: 1)
        let unet = UNet(config, pool: pool)
        let step = LocalStep(model: unet, loss: LossFunction(LossConfig(kind: classes == 1 ? .bce : .ce), classes: classes),
                             optimizer: Optimizer(OptimizerConfig(kind: .adam), parameterCount: unet.parameterCount))
        let generator = SyntheticGenerator(size: 16, classes: classes, seed: 3)
        var schedule = ScheduleConfig(kind: kind, baseRate: learningRate, epochs: epochs)
        schedule.plateauPatience = 0
        let trainer = Trainer(step: step, train: SyntheticSource(generator: generator, offset: 0, count: 24, pool: pool),
                              validation: SyntheticSource(generator: generator, offset: 24, count: 8, pool: pool),
                              imageSize: 16, batchSize: 8, seed: 3, schedule: LearningRateSchedule(schedule))
        trainer.average = ema.map { WeightAverage(of: unet.store, decay: $0) }
        var policy = RunPolicy(epochs: epochs)
        policy.patience = patience
        let identity = RunIdentity(model: ModelDescription(.unet(config), imageSize: 16, mean: nil, std: nil),
                                   arguments: ["test"], trainListHash: nil, rankName: "rank 0/1", classNames: classNames)
        return TrainingRun(directory: RunDirectory(out), trainer: trainer, policy: policy, identity: identity)
    }

    /// Runs `run` to its end (from `resume`, if given); returns it.
    @discardableResult
    private func finish(_ run: TrainingRun, resume: String? = nil) throws -> TrainingRun {
        try run.prepareDirectory()
        try run.resume(from: resume)
        try run.run()
        return run
    }

    private func weights(_ run: TrainingRun) -> [Float] { run.trainer.step.local.model.store.values.tensor.toArray() }

    func testWritesTheRunFolderAndKeepsTheBestEpoch() throws {
        let out = temporaryFolder()
        let run = try finish(makeRun(out: out, epochs: 3))
        let dir = RunDirectory(out)
        for file in [dir.metricsFile, dir.summaryFile, dir.modelFile, dir.reportFile, dir.lastCheckpoint + "/state.json",
                     dir.bestCheckpoint + "/state.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: file), file)
        }
        XCTAssertEqual(try dir.readMetrics().epochs, [1, 2, 3])
        // The best epoch is the one of the lowest validation loss, in the decisions, the
        // summary and checkpoints/best.
        let losses = run.records.map { $0.validationLoss! }
        let bestEpoch = losses.indices.min { losses[$0] < losses[$1] }! + 1
        XCTAssertEqual(run.decisions.bestEpoch, bestEpoch)
        XCTAssertEqual(run.decisions.bestValidationLoss, losses[bestEpoch - 1])
        XCTAssertEqual(try dir.readSummary()?.bestEpoch, bestEpoch)
        XCTAssertEqual(try Checkpoint.readState(from: dir.bestCheckpoint).epoch, bestEpoch)
        XCTAssertEqual(try Checkpoint.readState(from: dir.lastCheckpoint).epoch, 3)
    }

    func testResumeEndsBitwiseWhereTheUninterruptedRunEnds() throws {
        let whole = try finish(makeRun(out: temporaryFolder(), epochs: 3, schedule: .plateau))

        let out = temporaryFolder()
        let first = try finish(makeRun(out: out, epochs: 2, schedule: .plateau))
        let second = makeRun(out: out, epochs: 3, schedule: .plateau)
        try second.prepareDirectory()
        try second.resume(from: "auto")
        XCTAssertEqual(second.resumedEpoch, 2)
        // The decisions come back from the checkpoint, named.
        XCTAssertEqual(second.decisions, first.decisions)
        XCTAssertNotNil(second.decisions.plateau)
        XCTAssertEqual(second.trainer.schedule.plateau, first.trainer.schedule.plateau)
        try second.run()
        XCTAssertEqual(weights(second), weights(whole))
        XCTAssertEqual(second.decisions, whole.decisions)
        XCTAssertEqual(try RunDirectory(out).readMetrics().epochs, [1, 2, 3])
    }

    func testEarlyStopAfterPatienceEpochsWithoutABetterLoss() throws {
        // Learning rate 0 and no BatchNorm: the weights and so the validation loss stay as they
        // are; epoch 1 is the best (a loss must be lower to be better), and patience 1 stops
        // after epoch 2.
        let run = try finish(makeRun(out: temporaryFolder(), epochs: 6, patience: 1, learningRate: 0))
        XCTAssertEqual(run.records.count, 2)
        XCTAssertEqual(run.decisions.bestEpoch, 1)
        XCTAssertEqual(run.records[0].validationLoss, run.records[1].validationLoss)
    }

    func testAFinishedRunTrainsNothing() throws {
        let out = temporaryFolder()
        let first = try finish(makeRun(out: out, epochs: 1))
        let before = try String(contentsOfFile: RunDirectory(out).metricsFile, encoding: .utf8)
        let again = makeRun(out: out, epochs: 1)
        try again.resume(from: "auto")
        try again.run()
        XCTAssertTrue(again.records.isEmpty)
        XCTAssertEqual(weights(again), weights(first))
        XCTAssertEqual(try String(contentsOfFile: RunDirectory(out).metricsFile, encoding: .utf8), before)
    }

    func testMultiClassRunWritesPerClassScoresAndTheBestEpochsConfusionMatrix() throws {
        let out = temporaryFolder()
        let run = try finish(makeRun(out: out, epochs: 2, classes: 3, classNames: ["bg", "disc", "square"]))
        let dir = RunDirectory(out)
        let table = try dir.readMetrics()
        let confusion = try XCTUnwrap(try dir.readConfusion())
        XCTAssertEqual(confusion.epoch, run.decisions.bestEpoch)
        XCTAssertEqual(confusion.classNames, ["bg", "disc", "square"])
        // Every validation pixel once (8 images of 16x16), and the per-class IoU of the best
        // epoch's row follows from the matrix: M[k][k] / (row k + column k - M[k][k]).
        XCTAssertEqual(confusion.matrix.joined().reduce(0, +), 8 * 16 * 16)
        let row = try XCTUnwrap(table.epochs.firstIndex(of: confusion.epoch))
        for (k, name) in confusion.classNames.enumerated() {
            let m = confusion.matrix
            let hit = m[k][k], truth = m[k].reduce(0, +), predicted = m.map { $0[k] }.reduce(0, +)
            let iou = truth + predicted - hit == 0 ? 1 : hit / (truth + predicted - hit)
            XCTAssertEqual(try XCTUnwrap(table.values("val_iou_" + name)[row]), iou, accuracy: 1e-12, name)
            XCTAssertNotNil(table.values("val_dice_" + name)[row])
        }
        let report = try String(contentsOfFile: dir.reportFile, encoding: .utf8)
        XCTAssertTrue(report.contains("Validation IoU per class"))
        XCTAssertTrue(report.contains("Confusion matrix, validation of epoch \(confusion.epoch)"))
    }

    func testEMAIsWhatValidationExportAndInferenceUseAndResumesBitwise() throws {
        let decay = 0.9
        let whole = try finish(makeRun(out: temporaryFolder(), epochs: 3, ema: decay))
        let average = try XCTUnwrap(whole.trainer.average)
        let store = whole.trainer.step.local.model.store
        // The average differs from the weights, and it is what was exported.
        XCTAssertNotEqual(average.values.tensor.toArray(), store.values.tensor.toArray())
        let exported = UNet((whole.trainer.step.local.model as! UNet).config, pool: WorkerPool(threads: 1))
        try SafetensorsFile(path: whole.directory.modelFile).read(into: Safetensors.items(of: exported.store, gradients: false))
        XCTAssertEqual(exported.store.values.tensor.toArray(), average.values.tensor.toArray())
        // Inference from a checkpoint loads the average.
        try Checkpoint.readWeights(from: whole.directory.lastCheckpoint, into: exported.store)
        XCTAssertEqual(exported.store.values.tensor.toArray(), average.values.tensor.toArray())
        // Validation ran on the average: the last epoch's loss is the average's.
        let last = try XCTUnwrap(whole.records.last?.validationLoss)
        let (withAverage, _) = try average.withAverage(in: store, pool: whole.trainer.step.local.model.pool) { try whole.trainer.validate(whole.trainer.validation!) }
        let (withWeights, _) = try whole.trainer.validate(whole.trainer.validation!)
        XCTAssertEqual(last, withAverage)
        XCTAssertNotEqual(last, withWeights)

        // Resumed after epoch 2: weights and average end bitwise where the whole run's do.
        let out = temporaryFolder()
        try finish(makeRun(out: out, epochs: 2, ema: decay))
        let second = try finish(makeRun(out: out, epochs: 3, ema: decay), resume: "auto")
        XCTAssertEqual(weights(second), weights(whole))
        XCTAssertEqual(second.trainer.average?.values.tensor.toArray(), average.values.tensor.toArray())
        XCTAssertEqual(second.trainer.average?.buffers.tensor.toArray(), average.buffers.tensor.toArray())
        // A run with --ema cannot resume a checkpoint that has no average.
        let plain = temporaryFolder()
        try finish(makeRun(out: plain, epochs: 1))
        XCTAssertThrowsError(try finish(makeRun(out: plain, epochs: 2, ema: decay), resume: "auto")) {
            XCTAssertTrue("\($0)".contains("no weight average"), "\($0)")
        }
    }

    func testWeightAverageStep() {
        var config = UNetConfig()
        config.baseChannels = 4
        config.depth = 2
        config.norm = .batch
        let unet = UNet(config, pool: WorkerPool(threads: 1))
        let average = WeightAverage(of: unet.store, decay: 0.75)
        let before = unet.store.values.tensor.toArray(), beforeBuffers = unet.store.buffers.tensor.toArray()
        for i in 0..<unet.store.values.count { unet.store.values.pointer[i] += 1 }
        for i in 0..<unet.store.buffers.count { unet.store.buffers.pointer[i] += 2 }
        average.update(from: unet.store, pool: unet.pool)
        for i in [0, 7, unet.store.values.count - 1] {
            XCTAssertEqual(average.values.pointer[i], 0.75 * before[i] + 0.25 * (before[i] + 1), accuracy: 1e-6)
        }
        XCTAssertEqual(average.buffers.pointer[0], 0.75 * beforeBuffers[0] + 0.25 * (beforeBuffers[0] + 2), accuracy: 1e-6)
        // swap twice restores both.
        let weightsNow = unet.store.values.tensor.toArray(), averageNow = average.values.tensor.toArray()
        average.swap(with: unet.store, pool: unet.pool)
        XCTAssertEqual(unet.store.values.tensor.toArray(), averageNow)
        average.swap(with: unet.store, pool: unet.pool)
        XCTAssertEqual(unet.store.values.tensor.toArray(), weightsNow)
    }
}
