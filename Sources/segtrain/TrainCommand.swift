import ArgumentParser
import SegData
import SegEngine
import SegModel
import SegTraining
#if canImport(Glibc)
import Glibc
#endif

/// The synthetic dataset as a sample source: samples [offset, offset + count) of the generator.
struct SyntheticSource: SampleSource {
    let generator: SyntheticGenerator
    let offset: Int
    let count: Int
    let pool: WorkerPool

    func fill(images: Tensor, masks: Tensor, indices: [Int]) {
        generator.fill(images: images, masks: masks, indices: indices.map { $0 + offset }, pool: pool)
    }
}

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train the UNet on the built-in synthetic dataset (single process for now).",
        discussion: """
            Training and validation samples are drawn by the synthetic generator from --seed (validation \
            samples are different images). Each epoch prints one line and rewrites OUT/metrics.csv.
            """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var training: TrainingOptions
    @Option(help: "Epochs.")
    var epochs = 5
    @Option(help: "Synthetic training samples per epoch.")
    var trainSamples = 256
    @Option(help: "Synthetic validation samples.")
    var valSamples = 64
    @Option(help: "Output folder (metrics.csv).")
    var out = "runs/latest"

    func validate() throws {
        try training.validate(classes: model.classes)
        if model.inChannels != 3 { throw ValidationError("--in-channels must be 3 for the synthetic dataset (RGB)") }
        if epochs < 1 { throw ValidationError("--epochs must be at least 1 (got \(epochs))") }
        if trainSamples < training.batchSize {
            throw ValidationError("--train-samples \(trainSamples) is fewer than one batch (--batch-size \(training.batchSize))")
        }
        if valSamples < 0 { throw ValidationError("--val-samples must be >= 0 (got \(valSamples))") }
        if model.classes > 255 { throw ValidationError("--classes must be at most 255 for the synthetic dataset") }
    }

    func run() throws {
        if let error = makeDirectories(out) { throw UserError("--out \(out): cannot create folder: \(error)") }
        let metricsPath = out + "/metrics.csv"
        let pool = WorkerPool(threads: model.threadCount)
        let config = model.unetConfig
        let unet = UNet(config, pool: pool)
        let lossKind = training.lossKind(classes: config.classes)
        let step = LocalStep(model: unet, loss: LossFunction(LossConfig(kind: lossKind), classes: config.classes),
                             optimizer: Optimizer(training.optimizerConfig, parameterCount: unet.parameterCount))
        let generator = SyntheticGenerator(size: model.imageSize, classes: config.classes, seed: config.seed)
        let trainer = Trainer(step: step,
                              train: SyntheticSource(generator: generator, offset: 0, count: trainSamples, pool: pool),
                              validation: valSamples > 0
                                ? SyntheticSource(generator: generator, offset: trainSamples, count: valSamples, pool: pool)
                                : nil,
                              imageSize: model.imageSize, batchSize: training.batchSize, seed: config.seed,
                              learningRate: training.lr)
        print("segtrain train: synthetic \(model.imageSize)x\(model.imageSize), \(config.classes) class(es), "
              + "\(trainSamples) train / \(valSamples) val samples, batch \(training.batchSize), "
              + "\(pool.threadCount) thread(s), \(grouped(unet.parameterCount)) parameters, loss \(lossKind.rawValue)")
        var csv = EpochRecord.csvHeader + "\n"
        for epoch in 1...epochs {
            let r = trainer.runEpoch(epoch)
            var line = "epoch \(epoch)/\(epochs)  train_loss \(fixed(r.trainLoss, 4))"
            if let loss = r.validationLoss, let v = r.validation {
                line += "  val_loss \(fixed(loss, 4))  val_acc \(fixed(v.accuracy, 3))  val_dice \(fixed(v.meanDice, 3))"
                    + "  val_iou \(fixed(v.meanIoU, 3))"
            }
            line += "  \(fixed(r.imagesPerSecond, 1)) img/s  \(fixed(r.seconds, 1)) s"
            print(line)
            fflush(stdout)
            if !r.trainLoss.isFinite {
                throw UserError("epoch \(epoch): the training loss is not finite (\(r.trainLoss)); try a lower --lr")
            }
            csv += r.csvLine + "\n"
            if let error = writeFileAtomically(metricsPath, csv) { throw UserError(error) }
        }
        print("metrics: \(metricsPath)")
    }
}

/// mkdir -p: creates `path` and its missing parents; returns the failure's reason, or nil.
func makeDirectories(_ path: String) -> String? {
    var prefix = path.hasPrefix("/") ? "/" : ""
    for component in path.split(separator: "/") {
        prefix += component + "/"
        if mkdir(prefix, 0o755) != 0 && errno != EEXIST { return String(cString: strerror(errno)) }
    }
    var info = stat()
    if stat(path, &info) != 0 || (info.st_mode & S_IFMT) != S_IFDIR { return "not a folder" }
    return nil
}
