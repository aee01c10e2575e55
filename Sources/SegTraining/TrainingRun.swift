// One `segtrain train` run over its epochs, on every rank: resume from a checkpoint, the epoch
// loop around `Trainer`, and the run's policy, taken alike on every rank from the validation loss
// (best model, early stop, the plateau schedule's state: `RunDecisions`), the checkpoints rank 0
// writes (last after every epoch, best, the last --keep epochs, every N steps, on SIGTERM/SIGUSR1),
// metrics.csv, the sample grids, summary.json, the exported weights and the report. The CLI builds
// the model, data and trainer from flags and hands them here.

import CSupport
import Foundation
import SegData
import SegEngine
import SegInference
import SegModel
import SegTensorBoard
#if canImport(Glibc)
import Glibc
#endif

/// What the run decides from the validation loss, the same on every rank; kept in checkpoints.
public struct RunDecisions: Codable, Equatable, Sendable {
    public var bestValidationLoss: Double?
    public var bestEpoch: Int?
    /// ReduceLROnPlateau's state (--schedule plateau only).
    public var plateau: PlateauState?

    public init(bestValidationLoss: Double? = nil, bestEpoch: Int? = nil, plateau: PlateauState? = nil) {
        self.bestValidationLoss = bestValidationLoss
        self.bestEpoch = bestEpoch
        self.plateau = plateau
    }

    /// Records `loss` of `epoch`; true when it is the best so far (a loss that is not finite never is).
    mutating func record(validationLoss loss: Double?, epoch: Int) -> Bool {
        guard let loss, loss.isFinite, bestValidationLoss.map({ loss < $0 }) ?? true else { return false }
        (bestValidationLoss, bestEpoch) = (loss, epoch)
        return true
    }
}

/// The run's checkpoint and stopping rules (train's flags).
public struct RunPolicy: Sendable {
    public var epochs: Int
    /// Stop after this many epochs without a better validation loss.
    public var patience: Int?
    /// Also write checkpoints/last every N optimizer steps (mid-epoch).
    public var checkpointEvery: Int?
    /// Keep the checkpoints of the last K epochs as checkpoints/epoch-NNN.
    public var keep = 0
    /// Every rank prints where its time went after each epoch.
    public var verbose = false

    public init(epochs: Int) { self.epochs = epochs }
}

/// What identifies the run in its checkpoints and summary (compared when resuming).
public struct RunIdentity: Sendable {
    public var model: ModelDescription
    /// The command line, stored in checkpoints and summary.json.
    public var arguments: [String]
    /// The training list's hash (files; nil for synthetic data).
    public var trainListHash: UInt64?
    /// This rank's name in --verbose lines ("rank 1/2 (host)").
    public var rankName: String
    /// Class names for metrics.csv's per-class columns and confusion.csv (--class-names); nil:
    /// the class indices.
    public var classNames: [String]?

    public init(model: ModelDescription, arguments: [String], trainListHash: UInt64?, rankName: String,
                classNames: [String]? = nil) {
        self.classNames = classNames
        self.model = model
        self.arguments = arguments
        self.trainListHash = trainListHash
        self.rankName = rankName
    }
}

/// A failure of the run the user can act on (a flag or file is named).
public struct TrainingRunError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public final class TrainingRun {
    public let directory: RunDirectory
    public let trainer: Trainer
    public let policy: RunPolicy
    public let identity: RunIdentity
    /// Rank 0's progress display (nil elsewhere, or for none).
    public var progress: Progress?
    /// Rank 0's validation sample grid, written after every epoch.
    public var samples: SampleGrid?
    /// --tensorboard DIR: the folder in which `run()` starts rank 0's event file (set on every rank).
    public var tensorboardDirectory: String?
    /// Rank 0's TensorBoard log, once `run()` started it.
    public private(set) var tensorboard: TensorBoardLog?
    /// Runs first after every optimizer step (tests perturb weights here).
    public var afterStep: ((Trainer.StepInfo) throws -> Void)?
    /// The decisions so far: the best epoch, and the schedule's plateau state (--schedule plateau).
    public var decisions: RunDecisions {
        var d = best
        d.plateau = trainer.schedule.config.kind == .plateau ? trainer.schedule.plateau : nil
        return d
    }
    /// The best validation loss and epoch so far (the plateau state lives in `trainer.schedule`).
    private var best = RunDecisions()
    /// Epochs done and global batches done of the next epoch, from the checkpoint resumed.
    public private(set) var resumedEpoch = 0, resumedBatch = 0
    /// This invocation's epoch records (rank 0).
    public private(set) var records: [EpochRecord] = []
    private var metricsRows: [String] = []
    private let isRoot: Bool

    private var collectives: Collectives { trainer.step.collectives }
    private var model: any SegmentationModel { trainer.step.local.model }
    private var optimizer: Optimizer { trainer.step.local.optimizer }
    private var ranks: Int { collectives.size }

    public init(directory: RunDirectory, trainer: Trainer, policy: RunPolicy, identity: RunIdentity) {
        self.directory = directory
        self.trainer = trainer
        self.policy = policy
        self.identity = identity
        isRoot = trainer.step.collectives.rank == 0
    }

    /// Rank 0 creates the run folder and removes temporary checkpoint folders a killed write left.
    public func prepareDirectory() throws {
        guard isRoot else { return }
        if let error = directory.create() { throw TrainingRunError("--out \(directory.path): cannot create folder: \(error)") }
        let stale = try Checkpoint.removeStaleTemporaries(in: directory.checkpointsFolder)
        if !stale.isEmpty { log("removed \(stale.count) stale temporary checkpoint folder(s): \(stale.joined(separator: ", "))") }
    }

    // MARK: resume

    /// --resume: rank 0 reads the checkpoint (`from`: a folder, or "auto" for checkpoints/last if it
    /// exists) and every rank receives its weights, buffers, optimizer state, position and
    /// decisions, so the files are read once and every rank continues alike.
    public func resume(from: String?) throws {
        var state: CheckpointState? = nil
        if isRoot, let from { state = try readCheckpoint(from) }
        resumedEpoch = try collectives.broadcast(state?.epoch ?? 0)
        resumedBatch = try collectives.broadcast(state?.batchesDone ?? 0)
        let step = try collectives.broadcast(state?.step ?? 0)
        // Whether rank 0 loaded a checkpoint (also one from the middle of epoch 1: epoch 0 done).
        guard try collectives.broadcast(state == nil ? 0 : 1) == 1 else { return }
        try collectives.broadcast(model.store.values.tensor)
        try collectives.broadcast(model.store.buffers.tensor)
        for buffer in optimizer.stateBuffers { try collectives.broadcast(buffer.buffer.tensor) }
        if let average = trainer.average {
            try collectives.broadcast(average.values.tensor)
            try collectives.broadcast(average.buffers.tensor)
        }
        // The frozen encoder's lag (--freeze-encoder), as rank 0 read it.
        let frozenSteps = try collectives.broadcast(optimizer.frozenSteps)
        if !isRoot { optimizer.restore(step: step, frozenSteps: frozenSteps) }
        // Rank 0's decisions so far on every rank: every rank then takes the same best-model,
        // plateau and early-stop decisions.
        var bytes: [UInt8] = []
        if let state {
            let past = RunDecisions(bestValidationLoss: state.bestValidationLoss, bestEpoch: state.bestEpoch, plateau: state.plateau)
            do { bytes = [UInt8](try JSONEncoder().encode(past)) } catch {
                throw TrainingRunError("--resume: cannot encode the checkpoint's decisions (\(error))")
            }
        }
        try collectives.broadcast(&bytes, root: 0)
        let received: RunDecisions
        do { received = try JSONDecoder().decode(RunDecisions.self, from: Data(bytes)) } catch {
            throw TrainingRunError("--resume: cannot decode rank 0's decisions (\(error))")
        }
        best = RunDecisions(bestValidationLoss: received.bestValidationLoss, bestEpoch: received.bestEpoch)
        if trainer.schedule.config.kind == .plateau {
            trainer.schedule = LearningRateSchedule(trainer.schedule.config, plateau: received.plateau)
        }
    }

    /// Rank 0: the checkpoint's state (nil for "auto" without one), checked against this run, and
    /// the metrics rows of its epochs.
    private func readCheckpoint(_ from: String) throws -> CheckpointState? {
        let folder = from == "auto" ? directory.lastCheckpoint : from
        if from == "auto" && !FileManager.default.fileExists(atPath: folder) {
            log("--resume auto: no checkpoint in \(directory.checkpointsFolder), starting from scratch")
            return nil
        }
        let run = ResumeRun(seed: trainer.seed, model: identity.model, globalBatch: trainer.globalBatch,
                            trainSamples: trainer.train.count, batchesPerEpoch: trainer.batchesPerEpoch,
                            trainListHash: hashText)
        let state: CheckpointState
        do {
            state = try Checkpoint.read(from: folder, store: model.store, optimizer: optimizer, resuming: run,
                                        average: trainer.average)
        } catch {
            throw TrainingRunError("--resume \(error)")
        }
        // Keep the metrics of the epochs the checkpoint has (a new --out has none yet; an
        // unreadable file is an error, not a reason to start it afresh).
        metricsRows = try directory.metricsRows(throughEpoch: state.epoch)
        log("resumed from \(folder): epoch \(state.epoch), optimizer step \(state.step)")
        if let saved = state.trainListHash, let now = hashText, saved != now {
            log("warning: the training list differs from the checkpoint's (hash \(now), was \(saved)): "
                + "the dataset changed, so the sample order differs from the interrupted run")
        }
        return state
    }

    private var hashText: String? { identity.trainListHash.map { String($0, radix: 16) } }

    // MARK: the epochs

    /// Trains the epochs after the resumed one; rank 0 writes metrics, checkpoints, summary, the
    /// weights, the report and the TensorBoard log. Returns early, with a checkpoint, on SIGTERM/SIGUSR1.
    public func run() throws {
        do { try trainEpochs() } catch {
            // A run that fails (e.g. a loss that is not finite) keeps its TensorBoard log up to there.
            if let tensorboard, !(error is EventFileError) {
                do { try tensorboard.flush() } catch let failure {
                    fputs("segtrain: warning: \(failure)\n", stderr)
                }
            }
            throw error
        }
    }

    private func trainEpochs() throws {
        let epochs = policy.epochs
        if resumedEpoch >= epochs {
            // As Keras' fit(initial_epoch=E, epochs=E) and Lightning at max_epochs: a finished run
            // trains nothing and succeeds; nothing in --out is rewritten.
            log("nothing to train: the checkpoint has \(resumedEpoch) of \(epochs) epochs (a larger --epochs trains more); "
                + "nothing written")
            return
        }
        try trainer.checkBatchesFitTheModel()
        if isRoot, let folder = tensorboardDirectory {
            tensorboard = try TensorBoardLog(directory: folder)
            log("tensorboard: \(tensorboard!.path)")
        }
        let runStart = monotonicSeconds()
        trainer.afterStep = { [unowned self] info in
            try afterStep?(info)
            progress?.step(info)
            try tensorboard?.step(info, profile: model.profile)
            if let every = policy.checkpointEvery, info.optimizerStep % every == 0, info.batch + 1 < info.batches {
                try trainer.step.gatherOptimizerState()
                if isRoot {
                    try tensorboard?.flush()
                    try checkpoint(epochsDone: info.epoch - 1, batchesDone: info.batch + 1)
                }
            }
        }
        // SIGTERM or SIGUSR1 (Slurm pre-emption): finish the step, checkpoint, exit 0.
        segtrain_install_stop_handlers()
        trainer.stopRequested = { segtrain_stop_signal() != 0 }
        trainer.watchdog?.start()
        epochs: for epoch in stride(from: resumedEpoch + 1, through: epochs, by: 1) {
            let plateauAtEpochStart = trainer.schedule.plateau
            let before = (model.profile.total, model.profile[.data], model.profile[.communication], monotonicSeconds())
            tensorboard?.startEpoch(profile: model.profile)
            if let at = trainer.encoderFreeze?.unfreezeAtEpoch, at == epoch {
                log("epoch \(epoch): the encoder is unfrozen (--unfreeze-at-epoch \(at)): all \(grouped(model.parameterCount)) "
                    + "parameters train from here")
            }
            let outcome = try trainer.runEpoch(epoch, firstBatch: epoch == resumedEpoch + 1 ? resumedBatch : 0)
            if policy.verbose { printTimes(epoch: epoch, since: before) }
            guard let record = outcome.record else {
                guard case .stopped(let batch) = outcome else { break epochs }
                try stopMidEpoch(epoch: epoch, afterBatch: batch, plateauAtEpochStart: plateauAtEpochStart)
                return
            }
            switch try endEpoch(record) {
            case .goOn: continue
            case .earlyStop: break epochs
            case .stopped: return
            }
        }
        if isRoot { try finish(seconds: monotonicSeconds() - runStart) }
    }

    private enum AfterEpoch { case goOn, earlyStop, stopped }

    /// Decisions, metrics and checkpoints of a completed epoch.
    private func endEpoch(_ r: EpochRecord) throws -> AfterEpoch {
        let epoch = r.epoch
        // The same record on every rank: every rank stops here together, before any checkpoint
        // of this epoch, so checkpoints/last keeps the previous epoch (Keras' TerminateOnNaN).
        if !r.trainLoss.isFinite && r.batchesTrained > 0 {
            throw SharedError(description: "epoch \(epoch): the training loss is not finite (\(r.trainLoss)); try a lower --lr; "
                              + keptCheckpoint)
        }
        if let loss = r.validationLoss, !loss.isFinite {
            throw SharedError(description: "epoch \(epoch): the validation loss is not finite (\(loss)): the model diverged; "
                              + "try a lower --lr; " + keptCheckpoint)
        }
        // Decisions from the validation loss, identical on every rank.
        let improved = best.record(validationLoss: r.validationLoss, epoch: epoch)
        let stopEarly = policy.patience.map { p in best.bestEpoch.map { epoch - $0 >= p } ?? false } ?? false
        let stopNow = trainer.stopAfterEpoch && epoch < policy.epochs
        // Every rank, for rank 0's checkpoint below (each rank keeps only its share current).
        try trainer.step.gatherOptimizerState()
        guard isRoot else { return stopEarly ? .earlyStop : stopNow ? .stopped : .goOn }

        var line = "epoch \(epoch)/\(policy.epochs)  train_loss \(fixed(r.trainLoss, 4))"
        if let loss = r.validationLoss, let v = r.validation {
            line += "  val_loss \(fixed(loss, 4))  val_acc \(fixed(v.accuracy, 3))  val_dice \(fixed(v.meanDice, 3))"
                + "  val_iou \(fixed(v.meanIoU, 3))"
        }
        line += "  \(fixed(r.imagesPerSecond, 1)) img/s  \(fixed(r.seconds, 1)) s"
        let classes = model.classes, names = identity.classNames ?? (0..<classes).map(String.init)
        let header = EpochRecord.csvHeader(classNames: classes >= 2 ? names : []), row = r.csvLine(classes: classes)
        metricsRows.append(row)
        records.append(r)
        try directory.writeMetrics(header: header, rows: metricsRows)
        let grid = try withAverage { try samples?.write(model: model, to: directory.sampleGrid(epoch: epoch)) }
        progress?.endEpoch()
        if let tensorboard {
            try tensorboard.epoch(header: header, row: row, step: optimizer.step)
            if let grid { try tensorboard.samples(grid, step: optimizer.step) }
            // Before the checkpoint: a run resumed from it never lacks this epoch's log.
            try tensorboard.flush()
        }
        try checkpoint(epochsDone: epoch, batchesDone: nil)
        if improved {
            try Checkpoint.copy(directory.lastCheckpoint, to: directory.bestCheckpoint)
            if let v = r.validation, classes >= 2 { try directory.writeConfusion(v, classNames: names, epoch: epoch) }
            line += "  (best)"
        }
        if policy.keep > 0 { try keepEpochCheckpoint(epoch) }
        log(line)
        if stopEarly {
            log("early stop: no better validation loss for \(policy.patience!) epochs "
                + "(best \(fixed(best.bestValidationLoss!, 4)) at epoch \(best.bestEpoch!))")
            return .earlyStop
        }
        if stopNow {
            log("stopped by \(stopSignalName) after the last batch of epoch \(epoch) (the epoch is complete); checkpoint "
                + "written to \(directory.lastCheckpoint); continue with --resume auto")
            return .stopped
        }
        return .goOn
    }

    /// A stop request inside an epoch: every rank gathers the optimizer state, rank 0 writes the
    /// checkpoint of the batches done, with the plateau state as at the epoch's start (its
    /// end-of-epoch decision is to come).
    private func stopMidEpoch(epoch: Int, afterBatch batch: Int, plateauAtEpochStart: PlateauState) throws {
        try trainer.step.gatherOptimizerState()
        guard isRoot else { return }
        let current = trainer.schedule
        trainer.schedule = LearningRateSchedule(current.config, plateau: plateauAtEpochStart)
        try tensorboard?.flush()
        try checkpoint(epochsDone: epoch - 1, batchesDone: batch + 1)
        trainer.schedule = current
        log("stopped by \(stopSignalName) after batch \(batch + 1)/\(trainer.batchesPerEpoch) of epoch \(epoch); "
            + "checkpoint written to \(directory.lastCheckpoint); continue with --resume auto")
    }

    /// checkpoints/epoch-NNN for this epoch; the one --keep epochs older goes.
    private func keepEpochCheckpoint(_ epoch: Int) throws {
        try Checkpoint.copy(directory.lastCheckpoint, to: directory.epochCheckpoint(epoch))
        let old = directory.epochCheckpoint(epoch - policy.keep)
        guard epoch > policy.keep && FileManager.default.fileExists(atPath: old) else { return }
        do { try FileManager.default.removeItem(atPath: old) } catch {
            throw TrainingRunError("\(old): cannot remove the checkpoint beyond --keep \(policy.keep): \(error.localizedDescription)")
        }
    }

    private var stopSignalName: String {
        [SIGUSR1: "SIGUSR1", SIGTERM: "SIGTERM"][segtrain_stop_signal()] ?? "a signal to another rank"
    }

    /// What a run that stops now leaves (rank 0 knows; it alone prints a shared error).
    private var keptCheckpoint: String {
        FileManager.default.fileExists(atPath: directory.lastCheckpoint + "/state.json")
            ? "\(directory.lastCheckpoint) keeps the previous checkpoint" : "no checkpoint written"
    }

    /// Rank 0, after every rank's `gatherOptimizerState()`: checkpoints/last.
    private func checkpoint(epochsDone: Int, batchesDone: Int?) throws {
        // Mid-epoch no validation loss has vouched for the weights: the last batch's outputs do.
        if batchesDone != nil && trainer.lastBatchOutputsAreFinite() == false {
            throw TrainingRunError("step \(optimizer.step): the model's outputs on the last batch are not finite with the "
                                   + "current weights (the run diverged; try a lower --lr); checkpoint not written; " + keptCheckpoint)
        }
        let decisions = self.decisions
        var state = CheckpointState(epoch: epochsDone, step: optimizer.step, seed: trainer.seed, ranks: ranks,
                                    bestValidationLoss: decisions.bestValidationLoss, bestEpoch: decisions.bestEpoch,
                                    arguments: identity.arguments)
        state.batchesDone = batchesDone
        state.plateau = decisions.plateau
        state.trainListHash = hashText
        state.model = identity.model
        state.globalBatch = trainer.globalBatch
        state.trainSamples = trainer.train.count
        try Checkpoint.write(to: directory.lastCheckpoint, store: model.store, optimizer: optimizer, state: state,
                             average: trainer.average)
    }

    /// Every rank: where its time went this epoch (the other ranks are quiet otherwise).
    private func printTimes(epoch: Int, since before: (Double, Double, Double, Double)) {
        let p = model.profile
        let data = p[.data] - before.1, communication = p[.communication] - before.2
        print("\(identity.rankName): epoch \(epoch): \(fixed(monotonicSeconds() - before.3, 2)) s, "
              + "compute \(fixed(p.total - before.0 - data - communication, 2)) s, "
              + "waiting for data \(fixed(data, 3)) s, communication \(fixed(communication, 3)) s")
        fflush(stdout)
    }

    // MARK: the end

    /// Rank 0: summary.json, the trained weights (with BN running statistics) under the model's
    /// tensor names, and the report.
    private func finish(seconds: Double) throws {
        if trainer.step.skippedSteps > 0 {
            log("skipped \(trainer.step.skippedSteps) step(s) with a non-finite loss or gradient (--skip-nonfinite)")
        }
        var summary = RunSummary(epochsTrained: records.count, seconds: seconds, ranks: ranks,
                                 threadsPerRank: model.pool.threadCount, parameters: model.parameterCount,
                                 arguments: identity.arguments)
        let last = records.last
        summary.lastEpoch = last?.epoch
        summary.trainableParameters = trainer.trainableParameters(epoch: last?.epoch ?? policy.epochs)
        if let freeze = trainer.encoderFreeze {
            summary.freezeEncoder = true
            summary.unfreezeAtEpoch = freeze.unfreezeAtEpoch
        }
        summary.bestEpoch = best.bestEpoch
        summary.bestValidationLoss = best.bestValidationLoss
        summary.lastValidationDice = last?.validation?.meanDice
        summary.lastValidationIoU = last?.validation?.meanIoU
        summary.lastTrainLoss = last?.trainLoss
        summary.meanImagesPerSecond = records.isEmpty ? nil : records.map(\.imagesPerSecond).reduce(0, +) / Double(records.count)
        try directory.writeSummary(summary)
        // With --ema the exported model is the average (what validation chose the best epoch by).
        let bytes = withAverage {
            Safetensors.encode(Safetensors.items(of: model.store, gradients: false),
                               metadata: ["format": "pt", "epochs": "\(policy.epochs)", "ranks": "\(ranks)"])
        }
        if let error = writeFileAtomically(directory.modelFile, bytes: bytes) { throw TrainingRunError(error) }
        let report = try writeReport(directory)
        try tensorboard?.finish()
        log("metrics: \(directory.metricsFile)\nweights: \(directory.modelFile)\nreport: \(report)")
    }

    /// `body` with the weight average in the model (--ema), else with the weights.
    private func withAverage<T>(_ body: () throws -> T) rethrows -> T {
        guard let average = trainer.average else { return try body() }
        return try average.withAverage(in: model.store, pool: model.pool, body)
    }

    /// Rank 0 speaks.
    private func log(_ line: String) {
        guard isRoot else { return }
        print(line)
        fflush(stdout)
    }
}
