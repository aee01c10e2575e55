import ArgumentParser
import Foundation
import SegData
import SegDistributed
import SegEngine
import SegInference
import SegModel
import SegTraining
import CSupport
#if canImport(Glibc)
import Glibc
#endif

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a UNet on a dataset folder (--data) or the built-in synthetic data, alone or as `mpirun -np N segtrain train`.",
        discussion: """
            Training and validation samples are drawn by the synthetic generator from --seed (validation \
            samples are different images). --batch-size is the global batch: each rank takes its share \
            (shares differ by at most one) and the gradients are summed so that every step equals the \
            single-process step on the whole batch. Rank 0 prints one line per epoch and rewrites \
            OUT/metrics.csv.
            """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var training: TrainingOptions
    @OptionGroup(title: "Data") var dataOptions: DataOptions
    @Option(help: "Epochs.")
    var epochs = 5
    @Option(help: "Synthetic training samples per epoch.")
    var trainSamples = 256
    @Option(help: "Synthetic validation samples.")
    var valSamples = 64
    @Option(help: "Output folder (metrics.csv, model.safetensors, checkpoints/last and best).")
    var out = "runs/latest"
    @Option(help: "Write the summed gradient of the first step to this safetensors file (weights' names).")
    var dumpGradients: String?
    @Option(help: "Continue from a checkpoint folder, or 'auto': OUT/checkpoints/last if it exists.")
    var resume: String?
    @Option(help: "Learning-rate schedule: constant, step, cosine, poly, plateau (ReduceLROnPlateau on val loss).")
    var schedule = ScheduleKind.constant
    @Option(help: "Linear warm-up of the learning rate over this many epochs.")
    var warmupEpochs = 0.0
    @Option(help: "step: multiply the rate by --gamma every this many epochs.")
    var stepEpochs = 30
    @Option(help: "step: the factor.")
    var gamma = 0.1
    @Option(help: "poly: the exponent.")
    var power = 0.9
    @Option(help: "cosine/poly: the final rate; plateau: the lowest rate.")
    var minLr = 0.0
    @Option(help: "plateau: factor applied when the validation loss stops improving (Keras' ReduceLROnPlateau).")
    var plateauFactor = 0.1
    @Option(help: "plateau: epochs without improvement before reducing.")
    var plateauPatience = 5
    @Option(help: "plateau: epochs to wait after a reduction.")
    var plateauCooldown = 0
    @Flag(help: "Linear scaling rule (Goyal et al.): learning rate x global batch / 256.")
    var scaleLr = false
    @Option(help: "Stop early after this many epochs without a better validation loss.")
    var patience: Int?
    @Option(help: "Every N optimizer steps, verify that all ranks hold bitwise the same weights.")
    var checkSync: Int?
    @Option(help: .hidden)  // tests: perturb this rank's weights after step 2, to prove --check-sync
    var debugDesyncRank: Int?
    @Option(help: .hidden)  // tests: put a NaN into rank 0's gradient at this step
    var debugNanStep: Int?
    @Flag(help: "Skip a step whose loss or gradient is not finite instead of stopping.")
    var skipNonfinite = false
    @Option(help: "End the job (exit 124) when a rank waits longer than this many seconds in a collective or for the data loader; the limit grows to 20x the slowest step seen. 0: off.")
    var stallTimeout = 300.0
    @Option(help: .hidden)  // tests: this rank sleeps for an hour before the gradient sum of --debug-stall-step
    var debugStallRank: Int?
    @Option(help: .hidden)
    var debugStallStep = 2
    @Flag(help: "Every rank prints where its time went after each epoch (compute, data wait, communication).")
    var verbose = false
    @Flag(help: "Drop the last, smaller global batch of each epoch (default: train it; it is never padded).")
    var dropLast = false
    @Option(help: "Micro-batches per optimizer step: gradients of K global batches add up before one allreduce.")
    var accumulate = 1
    @Option(help: "Also write checkpoints/last every N optimizer steps (mid-epoch).")
    var checkpointEvery: Int?
    @Option(help: "Keep the checkpoints of the last K epochs as checkpoints/epoch-NNN (0: none).")
    var keep = 0
    @Option(help: "Seconds between progress lines when the output is not a terminal (Slurm logs).")
    var logEvery = 30.0
    @Option(help: "Progress display: auto (a bar on a terminal outside mpirun/Slurm), bar, lines.")
    var progress = ProgressStyle.auto
    @Option(help: "Start from these weights (a safetensors file with the model's tensor names).")
    var initWeights: String?

    func validate() throws {
        try training.validate(classes: model.classes)
        try dataOptions.validate(classes: model.classes, inChannels: model.inChannels)
        let synthetic = dataOptions.data == nil
        if synthetic && model.inChannels != 3 { throw ValidationError("--in-channels must be 3 for the synthetic dataset (RGB)") }
        if synthetic, let problem = SyntheticGenerator.problem(size: model.imageSize, classes: model.classes) { throw ValidationError(problem) }
        let maxEpochs = CheckpointState.maximumEpochs, maxSamples = 1 << 40
        if !(1...maxEpochs).contains(epochs) { throw ValidationError("--epochs must be 1...\(maxEpochs) (got \(epochs))") }
        if !(1...maxSamples).contains(trainSamples) { throw ValidationError("--train-samples must be 1...2^40 (got \(trainSamples))") }
        if valSamples > maxSamples { throw ValidationError("--val-samples must be at most 2^40 (got \(valSamples))") }
        if !(1...(1 << 20)).contains(accumulate) { throw ValidationError("--accumulate must be 1...\(1 << 20) (got \(accumulate))") }
        if synthetic && training.batchPerRank == nil && trainSamples < training.batchSize && dropLast {
            throw ValidationError("--train-samples \(trainSamples) is fewer than one batch (--batch-size \(training.batchSize)) with --drop-last")
        }
        if valSamples < 0 { throw ValidationError("--val-samples must be >= 0 (got \(valSamples))") }
        if !(stallTimeout >= 0 && stallTimeout <= 7 * 86400) {
            throw ValidationError("--stall-timeout must be 0 (off) to 604800 seconds (got \(stallTimeout))")
        }
        if model.classes > 255 { throw ValidationError("--classes must be at most 255 (masks are 8-bit)") }
        if let message = scheduleConfig.validate() { throw ValidationError(message) }
        if let p = patience, p < 1 { throw ValidationError("--patience must be at least 1 (got \(p))") }
        if let n = checkSync, n < 1 { throw ValidationError("--check-sync must be at least 1 (got \(n))") }
        if let n = checkpointEvery, n < 1 { throw ValidationError("--checkpoint-every must be at least 1 (got \(n))") }
        if keep < 0 { throw ValidationError("--keep must be >= 0 (got \(keep))") }
        if synthetic && training.batchPerRank == nil && trainSamples < training.batchSize * accumulate {
            throw ValidationError("--train-samples \(trainSamples) is fewer than one optimizer step (--batch-size x --accumulate)")
        }
        if !(logEvery > 0) { throw ValidationError("--log-every must be positive (got \(logEvery))") }
        if (schedule == .plateau || patience != nil) && synthetic && valSamples == 0 {
            throw ValidationError("--val-samples must be > 0 for --schedule plateau and --patience (they watch the validation loss)")
        }
    }

    var scheduleConfig: ScheduleConfig {
        let base = Double(training.lr) * (scaleLr ? Double(training.batchSize) / 256 : 1)
        var c = ScheduleConfig(kind: schedule, baseRate: base, epochs: epochs)
        c.warmupEpochs = warmupEpochs
        c.stepEpochs = stepEpochs
        c.gamma = gamma
        c.power = power
        c.minimumRate = minLr
        c.plateauFactor = plateauFactor
        c.plateauPatience = plateauPatience
        c.plateauCooldown = plateauCooldown
        return c
    }

    func run() throws {
        let communicator: Communicator
        do { communicator = try Communicator.start() } catch { throw UserError("cannot start MPI: \(error)") }
        do {
            // --batch-per-rank: the global batch follows from the number of ranks.
            var command = self
            command.training = training.resolved(ranks: communicator.size)
            try command.train(communicator)
            try communicator.finalize()
        } catch {
            // Failures every rank detects together (weights out of sync, configurations that
            // differ) end each rank cleanly; anything else may be one rank's alone: abort the job.
            if error is RaisedOnEveryRank {
                // Rank 0 speaks before MPI_Finalize, which no rank leaves before all have entered:
                // no rank can exit (and make mpirun kill the job) before the message is out.
                if communicator.rank == 0 { fputs("segtrain: error: \(error)\n", stderr) }
                try? communicator.finalize()
                throw AlreadyReported()
            }
            if communicator.size > 1 { communicator.abort(code: 1, message: "\(error)") }
            throw error
        }
    }

    private func train(_ communicator: Communicator) throws {
        let ranks = communicator.size, isRoot = communicator.rank == 0
        // Every rank must run the same configuration: compare a hash of the command line.
        try communicator.checkSame(FNV1a.hash(CommandLine.arguments.dropFirst().joined(separator: "\u{1}")),
                                   what: "the command line (configuration)")
        if training.batchSize < ranks {
            throw UserError("--batch-size \(training.batchSize) is smaller than the \(ranks) ranks: every rank needs an image")
        }
        try checkMemory(communicator)
        let metricsPath = out + "/metrics.csv"
        if isRoot, let error = makeDirectories(out + "/checkpoints") ?? makeDirectories(out + "/samples") {
            throw UserError("--out \(out): cannot create folder: \(error)")
        }
        if isRoot {
            // Left by a write that failed or was killed (never by a live process).
            let stale = try Checkpoint.removeStaleTemporaries(in: out + "/checkpoints")
            if !stale.isEmpty { print("removed \(stale.count) stale temporary checkpoint folder(s): \(stale.joined(separator: ", "))") }
        }
        let pool = WorkerPool(threads: model.threadCount)
        let config = model.unetConfig
        let unet = UNet(config, pool: pool)
        if let path = initWeights, isRoot {
            do {
                try SafetensorsFile(path: path).read(into: Safetensors.items(of: unet.store, gradients: false))
            } catch { throw UserError("--init-weights \(error)") }
        }
        // The same start on every rank: rank 0's weights and buffers.
        try communicator.broadcast(unet.store.values.tensor)
        try communicator.broadcast(unet.store.buffers.tensor)
        let lossKind = training.lossKind(classes: config.classes)
        let labels = dataOptions.labels(classes: config.classes)
        let local = LocalStep(model: unet, loss: LossFunction(LossConfig(kind: lossKind), labels: labels),
                              optimizer: Optimizer(training.optimizerConfig, parameterCount: unet.parameterCount))
        let data = try makeSources(communicator: communicator, pool: pool)
        if dataOptions.data != nil {
            // Now that the files are counted: their order arrays, and --cache's decoded samples.
            let files = data.train.count + (data.validation?.count ?? 0)
            try checkMemory(communicator, files: (data.train.count, data.validation?.count ?? 0),
                            cached: dataOptions.cache ? files : 0)
        }
        let normalization = (try? dataOptions.normalization(channels: config.inChannels)) ?? nil
        var modelDescription = ModelDescription(.unet(config), imageSize: model.imageSize,
                                                mean: normalization?.mean, std: normalization?.std)
        modelDescription.ignoreIndex = labels.ignoreIndex
        if (schedule == .plateau || patience != nil) && data.validation == nil {
            throw SharedError(description: "--schedule plateau and --patience watch the validation loss, but there is no validation set")
        }
        // Every collective and data wait of the training loop is watched (--stall-timeout).
        let watchdog = stallTimeout > 0
            ? StallWatchdog(rank: communicator.rank, size: communicator.size, minimumTimeout: stallTimeout) : nil
        let trainer = Trainer(step: local, collectives: watchdog.map { WatchedCollectives(communicator, watchdog: $0) } ?? communicator,
                              train: data.train, validation: data.validation,
                              imageSize: model.imageSize, batchSize: training.batchSize, seed: config.seed,
                              dropLast: dropLast, schedule: LearningRateSchedule(scheduleConfig))
        trainer.watchdog = watchdog
        trainer.step.accumulate = accumulate  // before resuming: it sets the epoch's batch count
        if let path = dumpGradients, isRoot {
            trainer.step.firstGradientHook = { store in
                let bytes = Safetensors.encode(Safetensors.items(of: store, gradients: true),
                                               metadata: ["what": "summed gradient of the first step", "ranks": "\(ranks)"])
                if let error = writeFileAtomically(path, bytes: bytes) { throw UserError("--dump-gradients \(error)") }
            }
        }

        // Resume: rank 0 reads the checkpoint and every rank receives it (the files are read once).
        let checkpoints = out + "/checkpoints"
        var state: CheckpointState? = nil
        var csv = EpochRecord.csvHeader + "\n"
        if isRoot, let resume {
            let folder = resume == "auto" ? checkpoints + "/last" : resume
            if resume == "auto" && !FileManager.default.fileExists(atPath: folder) {
                print("--resume auto: no checkpoint in \(checkpoints), starting from scratch")
            } else {
                let run = ResumeRun(seed: config.seed, model: modelDescription, globalBatch: training.batchSize,
                                    trainSamples: data.train.count, batchesPerEpoch: trainer.batchesPerEpoch,
                                    trainListHash: data.trainHash.map { String($0, radix: 16) })
                do {
                    state = try Checkpoint.read(from: folder, store: unet.store, optimizer: local.optimizer, resuming: run)
                } catch { throw UserError("--resume \(error)") }
                // Keep the metrics of the epochs the checkpoint has (a new --out has none yet; an
                // unreadable file is an error, not a reason to start it afresh).
                if FileManager.default.fileExists(atPath: metricsPath) {
                    let text: String
                    do { text = try String(contentsOfFile: metricsPath, encoding: .utf8) } catch {
                        throw UserError("\(metricsPath): cannot read the metrics of the resumed run: \(error.localizedDescription)")
                    }
                    for row in text.split(separator: "\n").dropFirst() {
                        if let epoch = Int(row.prefix { $0 != "," }), epoch <= state!.epoch { csv += row + "\n" }
                    }
                }
                print("resumed from \(folder): epoch \(state!.epoch), optimizer step \(state!.step)")
                if let saved = state!.trainListHash, let now = data.trainHash.map({ String($0, radix: 16) }), saved != now {
                    print("warning: the training list differs from the checkpoint's (hash \(now), was \(saved)): "
                          + "the dataset changed, so the sample order differs from the interrupted run")
                }
            }
        }
        let resumedEpoch = try communicator.broadcast(state?.epoch ?? 0)
        let resumedBatch = try communicator.broadcast(state?.batchesDone ?? 0)
        let resumedStep = try communicator.broadcast(state?.step ?? 0)
        // Whether rank 0 loaded a checkpoint (also one from the middle of epoch 1: epoch 0 done).
        let resumed = try communicator.broadcast(state == nil ? 0 : 1) == 1
        if resumed {
            try communicator.broadcast(unet.store.values.tensor)
            try communicator.broadcast(unet.store.buffers.tensor)
            for buffer in local.optimizer.stateBuffers { try communicator.broadcast(buffer.buffer.tensor) }
            if !isRoot { local.optimizer.restore(step: resumedStep) }
        }
        // Rank 0's view of the run so far, on every rank (exact sums with zeros): every rank then
        // takes the same best-model, plateau and early-stop decisions.
        func fromRoot(_ values: [Double]) throws -> [Double] { try communicator.allreduceSum(isRoot ? values : values.map { _ in 0 }) }
        let past = try fromRoot([state?.bestValidationLoss ?? .infinity, Double(state?.bestEpoch ?? 0),
                                 state?.plateau?.rate ?? scheduleConfig.baseRate, state?.plateau?.best ?? .infinity,
                                 Double(state?.plateau?.badEpochs ?? 0), Double(state?.plateau?.cooldownLeft ?? 0)])
        var best = (loss: past[0].isFinite ? Optional(past[0]) : nil, epoch: past[1] > 0 ? Optional(Int(past[1])) : nil)
        if resumed && schedule == .plateau {
            trainer.schedule = LearningRateSchedule(scheduleConfig, plateau: PlateauState(
                rate: past[2], best: past[3].isFinite ? past[3] : nil, badEpochs: Int(past[4]), cooldownLeft: Int(past[5])))
        }

        if isRoot {
            print("segtrain train: \(data.description) at \(model.imageSize)x\(model.imageSize), \(config.classes) class(es), "
                  + "\(data.train.count) train / \(data.validation?.count ?? 0) val samples, global batch \(training.batchSize) on "
                  + "\(ranks) rank(s) x \(pool.threadCount) thread(s), \(grouped(unet.parameterCount)) parameters, "
                  + "loss \(lossKind.rawValue)")
        }
        if resumedEpoch >= epochs {
            // As Keras' fit(initial_epoch=E, epochs=E) and Lightning at max_epochs: a finished run
            // trains nothing and succeeds; nothing in --out is rewritten.
            if isRoot {
                print("nothing to train: the checkpoint has \(resumedEpoch) of \(epochs) epochs (a larger --epochs trains more); "
                      + "nothing written")
            }
            return
        }
        trainer.checkSyncEvery = checkSync
        trainer.step.skipNonFinite = skipNonfinite
        training.configure(trainer.step)
        if let nanStep = debugNanStep, isRoot {
            trainer.step.beforeAllreduce = { step in if step == nanStep { unet.store.gradients.tensor[0] = .nan } }
        }
        if debugStallRank == communicator.rank {
            let stallStep = debugStallStep
            trainer.step.beforeAllreduce = { step in if step == stallStep { sleep(3600) } }
        }
        let samples = isRoot && data.validation != nil
            ? SampleGrid(source: data.validation!, count: 4, imageSize: model.imageSize, inChannels: config.inChannels, batch: trainer.localCapacity)
            : nil
        var records: [EpochRecord] = []
        let runStart = monotonicSeconds()
        let desync = debugDesyncRank == communicator.rank
        let progress = isRoot ? Progress(epochs: epochs, globalBatch: training.batchSize, logEvery: logEvery,
                                         style: self.progress) : nil
        /// What a run that stops now leaves (rank 0 knows; it alone prints a shared error).
        var keptCheckpoint: String {
            FileManager.default.fileExists(atPath: checkpoints + "/last/state.json")
                ? "\(checkpoints)/last keeps the previous checkpoint" : "no checkpoint written"
        }
        // Rank 0 only, after every rank's `gatherOptimizerState()`.
        func checkpoint(epochsDone: Int, batchesDone: Int?) throws {
            // Mid-epoch no validation loss has vouched for the weights: the last batch's outputs do.
            if batchesDone != nil && trainer.lastBatchOutputsAreFinite() == false {
                throw UserError("step \(local.optimizer.step): the model's outputs on the last batch are not finite with the "
                                + "current weights (the run diverged; try a lower --lr); checkpoint not written; " + keptCheckpoint)
            }
            var state = CheckpointState(epoch: epochsDone, step: local.optimizer.step, seed: config.seed, ranks: ranks,
                                        bestValidationLoss: best.loss, bestEpoch: best.epoch,
                                        arguments: Array(CommandLine.arguments.dropFirst()))
            state.batchesDone = batchesDone
            state.plateau = schedule == .plateau ? trainer.schedule.plateau : nil
            state.trainListHash = data.trainHash.map { String($0, radix: 16) }
            state.model = modelDescription
            state.globalBatch = training.batchSize
            state.trainSamples = data.train.count
            try Checkpoint.write(to: checkpoints + "/last", store: unet.store, optimizer: local.optimizer, state: state)
        }
        trainer.afterStep = { info in
            if desync && info.optimizerStep == 2 { unet.store.values.tensor[0] += 1e-3 }
            progress?.step(info)
            if let every = checkpointEvery, info.optimizerStep % every == 0, info.batch + 1 < info.batches {
                try trainer.step.gatherOptimizerState()
                if isRoot { try checkpoint(epochsDone: info.epoch - 1, batchesDone: info.batch + 1) }
            }
        }
        // SIGTERM or SIGUSR1 (Slurm pre-emption): finish the step, checkpoint, exit 0.
        segtrain_install_stop_handlers()
        trainer.stopRequested = { segtrain_stop_signal() != 0 }
        watchdog?.start()
        for epoch in stride(from: resumedEpoch + 1, through: epochs, by: 1) {
            let plateauAtEpochStart = trainer.schedule.plateau
            let before = (unet.profile.total, unet.profile[.data], unet.profile[.communication], monotonicSeconds())
            let outcome = try trainer.runEpoch(epoch, firstBatch: epoch == resumedEpoch + 1 ? resumedBatch : 0)
            if verbose {
                // Every rank: where its time went this epoch (the other ranks are quiet otherwise).
                let p = unet.profile
                print("rank \(communicator.rank)/\(ranks) (\(communicator.hostname)): epoch \(epoch): "
                      + "\(fixed(monotonicSeconds() - before.3, 2)) s, compute \(fixed(p.total - before.0 - (p[.data] - before.1) - (p[.communication] - before.2), 2)) s, "
                      + "waiting for data \(fixed(p[.data] - before.1, 3)) s, communication \(fixed(p[.communication] - before.2, 3)) s")
                fflush(stdout)
            }
            guard let r = outcome.record else {
                guard case .stopped(let batch) = outcome else { break }
                try trainer.step.gatherOptimizerState()
                if isRoot {
                    // The plateau state as at this epoch's start: its end-of-epoch decision is to come.
                    let current = trainer.schedule
                    trainer.schedule = LearningRateSchedule(scheduleConfig, plateau: plateauAtEpochStart)
                    try checkpoint(epochsDone: epoch - 1, batchesDone: batch + 1)
                    trainer.schedule = current
                    let signal = [SIGUSR1: "SIGUSR1", SIGTERM: "SIGTERM"][segtrain_stop_signal()] ?? "a signal to another rank"
                    print("stopped by \(signal) after batch \(batch + 1)/\(trainer.batchesPerEpoch) of epoch \(epoch); "
                          + "checkpoint written to \(checkpoints)/last; continue with --resume auto")
                    fflush(stdout)
                }
                return
            }
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
            // Decisions from the validation loss, identical on every rank (see fromRoot). A loss
            // that is not finite never gets here, so it is never "best".
            let improved = r.validationLoss.map { loss in loss.isFinite && (best.loss.map { loss < $0 } ?? true) } ?? false
            if improved { best = (r.validationLoss, epoch) }
            let stopEarly = patience.map { p in best.epoch.map { epoch - $0 >= p } ?? false } ?? false
            let stopNow = trainer.stopAfterEpoch && epoch < epochs
            // Every rank, for rank 0's checkpoint below (each rank keeps only its share current).
            try trainer.step.gatherOptimizerState()
            guard isRoot else {
                if stopEarly { break }
                if stopNow { return }
                continue
            }
            var line = "epoch \(epoch)/\(epochs)  train_loss \(fixed(r.trainLoss, 4))"
            if let loss = r.validationLoss, let v = r.validation {
                line += "  val_loss \(fixed(loss, 4))  val_acc \(fixed(v.accuracy, 3))  val_dice \(fixed(v.meanDice, 3))"
                    + "  val_iou \(fixed(v.meanIoU, 3))"
            }
            line += "  \(fixed(r.imagesPerSecond, 1)) img/s  \(fixed(r.seconds, 1)) s"
            csv += r.csvLine + "\n"
            records.append(r)
            if let error = writeFileAtomically(metricsPath, csv) { throw UserError(error) }
            if let samples {
                do { try samples.write(model: unet, to: RunDirectory(out).sampleGrid(epoch: epoch)) } catch { throw UserError("\(error)") }
            }
            // Checkpoints: last after every epoch; best when the validation loss improves; epoch-NNN
            // for the last --keep epochs.
            progress?.endEpoch()
            try checkpoint(epochsDone: epoch, batchesDone: nil)
            if improved {
                try Checkpoint.copy(checkpoints + "/last", to: checkpoints + "/best")
                line += "  (best)"
            }
            if keep > 0 {
                try Checkpoint.copy(checkpoints + "/last", to: checkpoints + "/" + RunDirectory.epochName(epoch))
                let old = checkpoints + "/" + RunDirectory.epochName(epoch - keep)
                if epoch > keep && FileManager.default.fileExists(atPath: old) {
                    do { try FileManager.default.removeItem(atPath: old) } catch {
                        throw UserError("\(old): cannot remove the checkpoint beyond --keep \(keep): \(error.localizedDescription)")
                    }
                }
            }
            print(line)
            fflush(stdout)
            if stopEarly {
                print("early stop: no better validation loss for \(patience!) epochs (best \(fixed(best.loss!, 4)) at epoch \(best.epoch!))")
                break
            }
            if stopNow {
                let signal = [SIGUSR1: "SIGUSR1", SIGTERM: "SIGTERM"][segtrain_stop_signal()] ?? "a signal to another rank"
                print("stopped by \(signal) after the last batch of epoch \(epoch) (the epoch is complete); checkpoint "
                      + "written to \(checkpoints)/last; continue with --resume auto")
                fflush(stdout)
                return
            }
        }
        if isRoot && trainer.step.skippedSteps > 0 {
            print("skipped \(trainer.step.skippedSteps) step(s) with a non-finite loss or gradient (--skip-nonfinite)")
        }
        if isRoot {
            try writeSummary(records: records, best: best, seconds: monotonicSeconds() - runStart, ranks: ranks,
                             threads: pool.threadCount, parameters: unet.parameterCount)
            // The trained weights (and BN running statistics) under the model's tensor names.
            let modelPath = out + "/model.safetensors"
            let bytes = Safetensors.encode(Safetensors.items(of: unet.store, gradients: false),
                                           metadata: ["format": "pt", "epochs": "\(epochs)", "ranks": "\(ranks)"])
            if let error = writeFileAtomically(modelPath, bytes: bytes) { throw UserError(error) }
            let report = try writeReport(RunDirectory(out))
            print("metrics: \(metricsPath)\nweights: \(modelPath)\nreport: \(report)")
        }
    }
}

extension TrainCommand {
    /// Refuses, on every rank with one line, a run whose estimated memory (from the flags: model,
    /// batch, image size, sample counts, loader) does not fit this node's available memory or
    /// `ulimit -v`; before the model or any data buffer exists.
    /// With --data it runs twice: before the model (files not yet counted), and once the files are
    /// listed (`files`: training and validation samples; `cached`: samples --cache will hold).
    func checkMemory(_ communicator: Communicator, files: (train: Int, validation: Int)? = nil, cached: Int = 0) throws {
        let ranks = communicator.size
        let counts = dataOptions.data == nil ? (trainSamples, valSamples) : (files ?? (0, 0))
        var plan = RunMemoryPlan(model: model.unetConfig, imageSize: model.imageSize,
                                 localBatch: shareOf(training.batchSize, ranks: ranks, rank: 0).count,
                                 threads: model.threadCount, optimizerBuffers: training.optimizer == .sgd ? 1 : 2,
                                 trainSamples: counts.0, validationSamples: (counts.1 + ranks - 1) / ranks)
        if dataOptions.data != nil { plan.loaderThreads = dataOptions.loaderThreads }
        plan.cacheSamples = cached
        try plan.checkOnEveryRank(communicator, ranksOnNode: min(ranks, ThreadDefaults.ranksOnNode()))
    }

    /// The training and validation samples: files (--data) or the synthetic generator.
    func makeSources(communicator: Communicator, pool: WorkerPool)
        throws -> (train: SampleSource, validation: SampleSource?, description: String, trainHash: UInt64?) {
        let config = model.unetConfig
        guard let root = dataOptions.data else {
            let generator = SyntheticGenerator(size: model.imageSize, classes: config.classes, seed: config.seed)
            return (SyntheticSource(generator: generator, offset: 0, count: trainSamples, pool: pool),
                    valSamples > 0 ? SyntheticSource(generator: generator, offset: trainSamples, count: valSamples, pool: pool) : nil,
                    "synthetic", nil)
        }
        let spec: SampleSpec
        do {
            spec = try dataOptions.spec(imageSize: model.imageSize, inChannels: config.inChannels, classes: config.classes,
                                        seed: config.seed)
        } catch { throw UserError("\(error)") }
        let loaded = try dataOptions.load(root: root, collectives: communicator, pool: pool, spec: spec, seed: config.seed)
        let capacity = shareOf(training.batchSize, ranks: communicator.size, rank: communicator.rank).count
        func source(_ listing: DatasetListing) -> FileSource {
            FileSource(loader: BatchLoader(dataset: FileDataset(listing: listing, spec: spec, cache: dataOptions.cache),
                                           threads: dataOptions.loaderThreads, capacity: capacity))
        }
        return (source(loaded.train), loaded.validation.count > 0 ? source(loaded.validation) : nil,
                "\(root) (layout \(dataOptions.layoutValue.rawValue))", loaded.train.hash)
    }

    /// OUT/summary.json: the run at a glance (this invocation's epochs; metrics.csv has them all).
    func writeSummary(records: [EpochRecord], best: (loss: Double?, epoch: Int?), seconds: Double, ranks: Int,
                      threads: Int, parameters: Int) throws {
        var summary = RunSummary(epochsTrained: records.count, seconds: seconds, ranks: ranks, threadsPerRank: threads,
                                 parameters: parameters, arguments: Array(CommandLine.arguments.dropFirst()))
        let last = records.last
        summary.lastEpoch = last?.epoch
        summary.bestEpoch = best.epoch
        summary.bestValidationLoss = best.loss
        summary.lastValidationDice = last?.validation?.meanDice
        summary.lastValidationIoU = last?.validation?.meanIoU
        summary.lastTrainLoss = last?.trainLoss
        summary.meanImagesPerSecond = records.isEmpty ? nil : records.map(\.imagesPerSecond).reduce(0, +) / Double(records.count)
        try RunDirectory(out).writeSummary(summary)
    }
}

extension ScheduleKind: ExpressibleByArgument {}
extension ProgressStyle: ExpressibleByArgument {}

/// An error already printed (by rank 0): exit 1 without printing it again.
struct AlreadyReported: Error {}
