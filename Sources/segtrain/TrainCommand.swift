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
    @OptionGroup var convOptions: ConvOptions
    @OptionGroup(title: "Data") var dataOptions: DataOptions
    @Option(help: "Epochs.")
    var epochs = 5
    @Option(help: "Synthetic training samples per epoch.")
    var trainSamples = 256
    @Option(help: "Synthetic validation samples.")
    var valSamples = 64
    @Option(help: "Which synthetic set: standard (with distractors in the objects' colours: a model must learn shapes) or plain (the objects on a textured background alone).")
    var syntheticSet = SyntheticSet.standard
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
    @Option(help: "Rank 0 writes a TensorBoard event file into this folder (created if needed; a resumed run adds a file): per optimizer step the loss, learning rate, img/s, data wait and communication ms; per epoch every metrics.csv column and the sample grid. View with `tensorboard --logdir DIR`.")
    var tensorboard: String?
    @Option(help: "Seconds between progress lines when the output is not a terminal (Slurm logs).")
    var logEvery = 30.0
    @Option(help: "Progress display: auto (a bar on a terminal outside mpirun/Slurm), bar, lines.")
    var progress = ProgressStyle.auto
    @Option(help: "Keep an exponential moving average of the weights with this decay (e.g. 0.999; timm's ModelEmaV2): validation, the best model, samples and the exported model use it.")
    var ema: Double?
    @Option(help: "Start from these weights (a safetensors file with the model's tensor names).")
    var initWeights: String?
    @Option(help: "With --encoder: the encoder's learning rate is this times --lr (a parameter group, as PyTorch's param_groups; e.g. 0.1 to fine-tune gently).")
    var encoderLrMult: Double?
    @Flag(help: "With --encoder: fine-tune with the encoder frozen (its weights and BatchNorm statistics fixed, BatchNorm in evaluation mode, no gradient computed into it); only the decoder and head train.")
    var freezeEncoder = false
    @Option(help: "With --freeze-encoder: from this epoch on (1-based, 2...--epochs) the encoder trains too (its BatchNorm back in training mode).")
    var unfreezeAtEpoch: Int?
    @Option(help: "Load the encoder from an ImageNet classification checkpoint in torchvision's naming, as safetensors (scripts/convert-weights.py makes one from a .pth); with --data, ImageNet normalisation becomes the default.")
    var encoderWeights: String?

    func validate() throws {
        try training.validate(classes: model.classes)
        try dataOptions.validate(classes: model.classes, inChannels: model.inChannels)
        let synthetic = dataOptions.data == nil
        if !synthetic && syntheticSet != .standard { throw ValidationError("--synthetic-set chooses the built-in data; it does not go with --data") }
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
        if encoderWeights != nil && !model.hasEncoder { throw ValidationError("--encoder-weights needs --encoder (resnet18, resnet34, resnet50 or mobilenet_v2)") }
        if encoderLrMult != nil && !model.hasEncoder { throw ValidationError("--encoder-lr-mult needs --encoder") }
        if freezeEncoder && !model.hasEncoder { throw ValidationError("--freeze-encoder needs --encoder") }
        if unfreezeAtEpoch != nil && !freezeEncoder { throw ValidationError("--unfreeze-at-epoch needs --freeze-encoder") }
        if let e = unfreezeAtEpoch, !(e >= 2 && e <= epochs) {
            throw ValidationError("--unfreeze-at-epoch must be 2...\(epochs) (--epochs; epoch 1 is the first) (got \(e))")
        }
        if let m = encoderLrMult, !(m >= 0 && m <= 1e6) { throw ValidationError("--encoder-lr-mult must be 0...1e6 (got \(m))") }
        if encoderWeights != nil && initWeights != nil { throw ValidationError("--encoder-weights and --init-weights both set the weights; give one") }
        try training.validateSyncBn(model)
        if let d = ema, !(d > 0 && d < 1) { throw ValidationError("--ema must be a decay in (0, 1), e.g. 0.999 (got \(d))") }
        if synthetic && training.batchPerRank == nil && trainSamples < training.batchSize * accumulate {
            throw ValidationError("--train-samples \(trainSamples) is fewer than one optimizer step (--batch-size x --accumulate)")
        }
        if let folder = tensorboard, folder.isEmpty { throw ValidationError("--tensorboard needs a folder (got an empty name)") }
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
        try Communicator.runJob { communicator in
            // --batch-per-rank: the global batch follows from the number of ranks.
            var command = self
            command.training = training.resolved(ranks: communicator.size)
            try command.train(communicator)
        }
    }

    private func train(_ communicator: Communicator) throws {
        let ranks = communicator.size, isRoot = communicator.rank == 0
        // Every rank must run the same configuration: compare a hash of the command line.
        try communicator.checkSame(FNV1a.hash(CommandLine.arguments.dropFirst().joined(separator: "\u{1}")),
                                   what: "the command line (configuration)")
        if training.batchSize < ranks {
            // Every rank finds this, so rank 0 alone says it and the job ends without MPI_Abort's banner.
            throw SharedError(description: "--batch-size \(training.batchSize) is smaller than the \(ranks) ranks: every rank needs an image")
        }
        try checkMemory(communicator)
        let pool = WorkerPool(threads: model.threadCount)
        let architecture = model.architecture
        let net = architecture.build(pool: pool, convPolicy: convOptions.policy)
        if let path = initWeights, isRoot {
            do {
                try SafetensorsFile(path: path).read(into: Safetensors.items(of: net.store, gradients: false))
            } catch { throw UserError("--init-weights \(error)") }
        }
        if let path = encoderWeights, isRoot {
            do { try EncoderWeights.load(path, into: net.store) } catch { throw UserError("--encoder-weights \(error)") }
            if let n = try? dataOptions.normalization(channels: architecture.inChannels), n.mean != Normalization.imagenetMean
                || n.std != Normalization.imagenetStd {
                print("warning: --encoder-weights: ImageNet weights expect ImageNet normalisation (--mean imagenet --std imagenet); "
                      + "this run uses mean \(n.mean), std \(n.std)")
            }
        }
        // The same start on every rank: rank 0's weights and buffers.
        try communicator.broadcast(net.store.values.tensor)
        try communicator.broadcast(net.store.buffers.tensor)
        let lossConfig = try training.lossConfig(classes: architecture.classes)
        let labels = dataOptions.labels(classes: architecture.classes)
        let local = LocalStep(model: net, loss: LossFunction(lossConfig, labels: labels),
                              optimizer: Optimizer(training.optimizerConfig, parameterCount: net.parameterCount))
        if let mult = encoderLrMult {
            guard let encoder = net.store.parameterRange(prefix: "encoder.") else { throw SharedError(description: "--encoder-lr-mult: the model has no encoder") }
            local.optimizer.groups = [(encoder, mult)]
        }
        let data = try makeSources(communicator: communicator, pool: pool)
        if dataOptions.data != nil {
            // Now that the files are counted: their order arrays, and --cache's decoded samples.
            let files = data.train.count + (data.validation?.count ?? 0)
            try checkMemory(communicator, files: (data.train.count, data.validation?.count ?? 0),
                            cached: dataOptions.cache ? files : 0)
        }
        let normalization = (try? dataOptions.normalization(channels: architecture.inChannels,
                                                             imagenetByDefault: encoderWeights != nil)) ?? nil
        var modelDescription = ModelDescription(architecture, imageSize: model.imageSize,
                                                mean: normalization?.mean, std: normalization?.std)
        modelDescription.ignoreIndex = labels.ignoreIndex
        modelDescription.classNames = dataOptions.classNameList
        if (schedule == .plateau || patience != nil) && data.validation == nil {
            throw SharedError(description: "--schedule plateau and --patience watch the validation loss, but there is no validation set")
        }
        // Every collective and data wait of the training loop is watched (--stall-timeout).
        let watchdog = stallTimeout > 0
            ? StallWatchdog(rank: communicator.rank, size: communicator.size, minimumTimeout: stallTimeout) : nil
        let trainer = Trainer(step: local, collectives: watchdog.map { WatchedCollectives(communicator, watchdog: $0) } ?? communicator,
                              train: data.train, validation: data.validation,
                              imageSize: model.imageSize, batchSize: training.batchSize, seed: model.seed,
                              dropLast: dropLast, schedule: LearningRateSchedule(scheduleConfig))
        trainer.watchdog = watchdog
        if training.syncBn { trainer.synchronizeBatchNorm() }
        trainer.average = ema.map { WeightAverage(of: net.store, decay: $0) }  // from rank 0's start
        trainer.step.accumulate = accumulate  // before resuming: it sets the epoch's batch count
        trainer.checkSyncEvery = checkSync
        trainer.step.skipNonFinite = skipNonfinite
        if freezeEncoder { try trainer.freezeEncoder(EncoderFreeze(unfreezeAtEpoch: unfreezeAtEpoch)) }
        training.configure(trainer.step)
        try addDebugHooks(trainer, rank: communicator.rank)

        var policy = RunPolicy(epochs: epochs)
        (policy.patience, policy.checkpointEvery, policy.keep, policy.verbose) = (patience, checkpointEvery, keep, verbose)
        let run = TrainingRun(directory: RunDirectory(out), trainer: trainer, policy: policy, identity: RunIdentity(
            model: modelDescription, arguments: Array(CommandLine.arguments.dropFirst()), trainListHash: data.trainHash,
            rankName: "rank \(communicator.rank)/\(ranks) (\(communicator.hostname))", classNames: dataOptions.classNameList))
        try run.prepareDirectory()
        try run.resume(from: resume)
        run.tensorboardDirectory = tensorboard  // rank 0 alone writes there
        if isRoot {
            print("segtrain train: \(data.description) at \(model.imageSize)x\(model.imageSize), \(architecture.classes) class(es), "
                  + "\(data.train.count) train / \(data.validation?.count ?? 0) val samples, global batch \(training.batchSize) on "
                  + "\(ranks) rank(s) x \(pool.threadCount) thread(s), \(grouped(net.parameterCount)) parameters"
                  + frozenNote(trainer, firstEpoch: run.resumedEpoch + 1) + ", loss \(lossConfig.name)")
            run.progress = Progress(epochs: epochs, globalBatch: training.batchSize, logEvery: logEvery, style: progress)
            if let validation = data.validation {
                run.samples = SampleGrid(source: validation, count: 4, imageSize: model.imageSize, inChannels: architecture.inChannels,
                                         batch: trainer.localCapacity)
            }
        }
        if debugDesyncRank == communicator.rank {
            run.afterStep = { info in if info.optimizerStep == 2 { net.store.values.tensor[0] += 1e-3 } }
        }
        try run.run()
    }

    /// ", of which N trainable (encoder frozen ...)" while the encoder is frozen in `firstEpoch`.
    private func frozenNote(_ trainer: Trainer, firstEpoch: Int) -> String {
        guard let freeze = trainer.encoderFreeze, freeze.isFrozen(epoch: firstEpoch) else { return "" }
        let until = freeze.unfreezeAtEpoch.map { "until epoch \($0)" } ?? "for the whole run"
        return " (\(grouped(trainer.trainableParameters(epoch: firstEpoch))) trainable: encoder frozen \(until))"
    }

    /// The hidden test flags: --dump-gradients, --debug-nan-step, --debug-stall-rank.
    private func addDebugHooks(_ trainer: Trainer, rank: Int) throws {
        let store = trainer.step.local.model.store, ranks = trainer.step.collectives.size
        if let path = dumpGradients, rank == 0 {
            trainer.step.firstGradientHook = { store in
                let bytes = Safetensors.encode(Safetensors.items(of: store, gradients: true),
                                               metadata: ["what": "summed gradient of the first step", "ranks": "\(ranks)"])
                if let error = writeFileAtomically(path, bytes: bytes) { throw UserError("--dump-gradients \(error)") }
            }
        }
        if let nanStep = debugNanStep, rank == 0 {
            trainer.step.beforeAllreduce = { step in if step == nanStep { store.gradients.tensor[0] = .nan } }
        }
        if debugStallRank == rank {
            let stallStep = debugStallStep
            trainer.step.beforeAllreduce = { step in if step == stallStep { sleep(3600) } }
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
        var plan = RunMemoryPlan(model: model.architecture, imageSize: model.imageSize,
                                 localBatch: shareOf(training.batchSize, ranks: ranks, rank: 0).count,
                                 threads: model.threadCount, optimizerBuffers: (training.optimizer == .sgd ? 1 : 2) + (ema == nil ? 0 : 1),
                                 trainSamples: counts.0, validationSamples: (counts.1 + ranks - 1) / ranks)
        if dataOptions.data != nil { plan.loaderThreads = dataOptions.loaderThreads }
        plan.cacheSamples = cached
        plan.convPolicy = convOptions.policy
        plan.loss = try training.lossConfig(classes: model.architecture.classes)
        try plan.checkOnEveryRank(communicator, ranksOnNode: min(ranks, ThreadDefaults.ranksOnNode()))
    }

    /// The training and validation samples: files (--data) or the synthetic generator.
    func makeSources(communicator: Communicator, pool: WorkerPool)
        throws -> (train: SampleSource, validation: SampleSource?, description: String, trainHash: UInt64?) {
        let architecture = model.architecture
        guard let root = dataOptions.data else {
            let generator = SyntheticGenerator(size: model.imageSize, classes: architecture.classes, seed: model.seed,
                                               set: syntheticSet)
            return (SyntheticSource(generator: generator, offset: 0, count: trainSamples, pool: pool),
                    valSamples > 0 ? SyntheticSource(generator: generator, offset: trainSamples, count: valSamples, pool: pool) : nil,
                    "synthetic", nil)
        }
        let spec: SampleSpec
        do {
            spec = try dataOptions.spec(imageSize: model.imageSize, inChannels: architecture.inChannels, classes: architecture.classes,
                                        seed: model.seed, imagenetByDefault: encoderWeights != nil)
        } catch { throw UserError("\(error)") }
        let loaded = try dataOptions.load(root: root, collectives: communicator, pool: pool, spec: spec, seed: model.seed)
        let capacity = shareOf(training.batchSize, ranks: communicator.size, rank: communicator.rank).count
        func source(_ listing: DatasetListing) -> FileSource {
            FileSource(loader: BatchLoader(dataset: FileDataset(listing: listing, spec: spec, cache: dataOptions.cache),
                                           threads: dataOptions.loaderThreads, capacity: capacity))
        }
        return (source(loaded.train), loaded.validation.count > 0 ? source(loaded.validation) : nil,
                "\(root) (layout \(dataOptions.layoutValue.rawValue))", loaded.train.hash)
    }
}

extension ScheduleKind: ExpressibleByArgument {}
extension ProgressStyle: ExpressibleByArgument {}
