import ArgumentParser
import SegData
import SegEngine
import SegInference
import SegModel
import SegTraining
import SegDistributed
#if canImport(Glibc)
import Glibc
#endif

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Train on random data (or --data DIR) and report img/s, GFLOP/s and where the time goes.",
        discussion: """
            With --data, batches come from the dataset through the loader threads (with augmentation \
            unless --no-augment), and the report adds the loader: seconds per sample per loader thread \
            (decode, resize, augment) and how long the steps waited for data.

            --inference, --gemm-peak, --conv-layers, --conv-kernels, --encoder-ops, --jpeg-decode, \
            --augment-speed and --synthetic time one part alone instead of training steps (one of them at a time, no MPI): e.g. \
            `segtrain bench --conv-layers --threads 2` prints the per-layer table of docs/PERFORMANCE.md.
            """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var training: TrainingOptions
    @OptionGroup var convOptions: ConvOptions
    @OptionGroup(title: "Data") var dataOptions: DataOptions
    @Option(help: "Timed steps.")
    var steps = 5
    @Option(help: "Untimed warm-up steps before them.")
    var warmup = 1
    @Flag(help: "Print one JSON object instead of the table.")
    var json = false
    @Option(help: "Floats of transformed tiles per Winograd chunk (tuning; docs/PERFORMANCE.md).")
    var winogradChunkFloats = ConvPolicy.standard.winogradTargetChunkFloats

    @Flag(help: "Time the forward path of predict, evaluate and serve (normalise, forward in eval mode, sigmoid/softmax) on --batch-size random images at --image-size, with random weights, instead of training steps: --steps timed passes after --warmup.")
    var inference = false
    @Flag(help: "Measure the sgemm peak: each of --threads threads multiplies its own 1024 x 1024 matrices with single-threaded OpenBLAS at the same time (best of 5); the yardstick for the models' GFLOP/s.")
    var gemmPeak = false
    @Flag(help: "Time each distinct 3x3 layer of the model (--image-size, --in-channels, --base-channels, --depth; batch --batch-size) in each pass under every algorithm; * marks what --conv runs.")
    var convLayers = false
    @Flag(help: "Time conv2d (3x3 and 1x1, --base-channels in and out, --image-size px, batch --batch-size) and convTranspose2x2 to that size.")
    var convKernels = false
    @Flag(help: "With --encoder: time training steps with the encoder frozen (train's --freeze-encoder).")
    var freezeEncoder = false
    @Flag(help: "Time the encoder ops at a 256x256 input, batch --batch-size: strided convolution (ResNet-shaped layers) and depthwise 3x3 (MobileNetV2-shaped), forward and backward, against their naive twins.")
    var encoderOps = false
    @Option(help: "Time decoding JPEG (4:4:4, 4:2:0) and PNG images of these sizes on one thread, e.g. 128x128,512x512,1918x1280.")
    var jpegDecode: String?
    @Option(help: "Time resizing a 1918x1280 photo to these sides and augmenting at them on one thread, e.g. 128,512.")
    var augmentSpeed: String?
    @Flag(help: "Time generating synthetic samples (--image-size, --classes) on one thread.")
    var synthetic = false

    /// The convolution policy the flags ask for: --conv, --deterministic and --winograd-chunk-floats.
    var convPolicy: ConvPolicy {
        var policy = convOptions.policy
        policy.winogradTargetChunkFloats = winogradChunkFloats
        return policy
    }

    func validate() throws {
        try training.validate(classes: model.classes)
        try training.validateSyncBn(model)
        try dataOptions.validate(classes: model.classes, inChannels: model.inChannels)
        if steps < 1 { throw ValidationError("--steps must be at least 1 (got \(steps))") }
        if warmup < 0 { throw ValidationError("--warmup must be >= 0 (got \(warmup))") }
        let parts = [inference, gemmPeak, convLayers, convKernels, encoderOps, jpegDecode != nil, augmentSpeed != nil, synthetic].filter { $0 }.count
        if parts > 1 {
            throw ValidationError("--inference, --gemm-peak, --conv-layers, --conv-kernels, --encoder-ops, --jpeg-decode, --augment-speed and --synthetic: one at a time")
        }
        if freezeEncoder && !model.hasEncoder { throw ValidationError("--freeze-encoder needs --encoder") }
        if freezeEncoder && parts > 0 { throw ValidationError("--freeze-encoder times training steps; it does not go with --conv-layers, --encoder-ops, ...") }
        if (convLayers || convKernels) && model.hasEncoder {
            throw ValidationError("--conv-layers and --conv-kernels time the plain UNet's layers; they do not go with --encoder")
        }
        if parts > 0 && dataOptions.data != nil { throw ValidationError("--data trains; it does not go with --conv-layers, --jpeg-decode, ...") }
        _ = try jpegDecodeSizes()
        _ = try augmentSides()
        if !(1...(1 << 30)).contains(winogradChunkFloats) {
            throw ValidationError("--winograd-chunk-floats must be 1...\(1 << 30) (got \(winogradChunkFloats))")
        }
    }

    /// --jpeg-decode's WIDTHxHEIGHT list (empty without the option).
    func jpegDecodeSizes() throws -> [(width: Int, height: Int)] {
        guard let jpegDecode else { return [] }
        return try jpegDecode.split(separator: ",", omittingEmptySubsequences: false).map { item in
            let sides = item.split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
            guard sides.count == 2, let w = sides[0], let h = sides[1], (1...16384).contains(w), (1...16384).contains(h) else {
                throw ValidationError("--jpeg-decode: '\(item)' is not WIDTHxHEIGHT with sides 1...16384 (e.g. 128x128,1918x1280)")
            }
            return (w, h)
        }
    }

    /// --augment-speed's list of sides (empty without the option).
    func augmentSides() throws -> [Int] {
        guard let augmentSpeed else { return [] }
        return try augmentSpeed.split(separator: ",", omittingEmptySubsequences: false).map { item in
            guard let side = Int(item), (1...4096).contains(side) else {
                throw ValidationError("--augment-speed: '\(item)' is not a side of 1...4096 px (e.g. 128,512)")
            }
            return side
        }
    }

    /// Runs the one-part timing the flags ask for, if any; false when there is none (train steps).
    func runPartTiming() throws -> Bool {
        let report: (String) -> Void = { print($0) }
        if inference {
            try runInference()
        } else if gemmPeak {
            let pool = WorkerPool(threads: model.threadCount)
            let gflops = GemmPeak.measure(pool: pool)
            if json {
                print("{\"mode\": \"gemm_peak\", \"threads\": \(pool.threadCount), \"n\": 1024, \"gflops_per_second\": \(gflops)}")
            } else {
                print("segtrain bench --gemm-peak: sgemm 1024 x 1024 x 1024 on each of \(pool.threadCount) thread(s): \(fixed(gflops, 1)) GFLOP/s")
            }
        } else if convLayers {
            let pool = WorkerPool(threads: model.threadCount), policy = convPolicy
            let batch = training.batchPerRank ?? training.batchSize
            print("segtrain bench --conv-layers: batch \(batch), \(pool.threadCount) thread(s), ms best of 3; * = what --conv \(convOptions.conv.rawValue) runs")
            var timings: [ConvLayerTiming] = []
            for layer in model.unetConfig.convLayerShapes(imageSize: model.imageSize) {
                let timing = ConvBenchmark.timeLayer(layer, batch: batch, policy: policy, pool: pool)
                print(ConvBenchmark.line(timing))
                timings.append(timing)
            }
            print(ConvBenchmark.totalsLine(timings))
        } else if convKernels {
            ConvBenchmark.kernels(batch: training.batchPerRank ?? training.batchSize, channels: model.baseChannels,
                                  side: model.imageSize, policy: convPolicy, pool: WorkerPool(threads: model.threadCount),
                                  report: report)
        } else if encoderOps {
            let batch = training.batchPerRank ?? training.batchSize, pool = WorkerPool(threads: model.threadCount)
            EncoderOpsBenchmark.stridedConv(batch: batch, pool: pool, report: report)
            EncoderOpsBenchmark.depthwise(batch: batch, pool: pool, report: report)
        } else if jpegDecode != nil {
            do { try DataBenchmark.jpegDecode(sizes: try jpegDecodeSizes(), report: report) } catch { throw UserError("\(error)") }
        } else if augmentSpeed != nil {
            DataBenchmark.augment(sizes: try augmentSides(), report: report)
        } else if synthetic {
            DataBenchmark.synthetic(size: model.imageSize, classes: model.classes, report: report)
        } else {
            return false
        }
        return true
    }

    /// --inference: Predictor.predict on random images, with the model's random initial weights.
    func runInference() throws {
        let pool = WorkerPool(threads: model.threadCount)
        let net = model.architecture.build(pool: pool, convPolicy: convPolicy)
        let normalization = try dataOptions.normalization(channels: net.inChannels)
        let description = ModelDescription(model.architecture, imageSize: model.imageSize,
                                           mean: normalization?.mean, std: normalization?.std)
        if let problem = description.problem { throw UserError("model flags: \(problem)") }
        let batch = training.batchPerRank ?? training.batchSize
        let predictor = Predictor(model: net, description: description, source: "random weights")
        let result = InferenceBenchmark.run(predictor, batch: batch, warmup: warmup, passes: steps, seed: model.seed)
        if json {
            print(result.json(["\"image_size\": \(model.imageSize)", "\"batch_size\": \(batch)", "\"threads\": \(pool.threadCount)",
                               "\"conv\": \"\(convOptions.conv.rawValue)\"", "\"deterministic\": \(convPolicy.perImageWork)"]))
            return
        }
        print("segtrain bench --inference: \(model.imageSize)x\(model.imageSize), batch \(batch), \(pool.threadCount) thread(s), "
              + "\(steps) passes after \(warmup) warm-up, conv \(convOptions.summary)")
        for line in result.table() { print(line) }
    }

    func run() throws {
        if try runPartTiming() { return }
        // Under mpirun: data-parallel steps over the ranks, --batch-size global; alone: one process.
        try Communicator.runJob { communicator in
            let ranks = communicator.size
            let training = self.training.resolved(ranks: ranks)
            if training.batchSize < ranks { throw UserError("--batch-size \(training.batchSize) is smaller than the \(ranks) ranks") }
            let pool = WorkerPool(threads: model.threadCount)
            let net = model.architecture.build(pool: pool, convPolicy: convPolicy)
            let classes = net.classes, size = model.imageSize
            let lossConfig = try training.lossConfig(classes: classes)
            let step = LocalStep(model: net, loss: LossFunction(lossConfig, labels: dataOptions.labels(classes: classes)),
                                 optimizer: Optimizer(training.optimizerConfig, parameterCount: net.parameterCount))
            let bench = StepBenchmark(step: step, collectives: communicator, batch: shareOf(training.batchSize, ranks: ranks,
                                      rank: communicator.rank).count, imageSize: size, seed: model.seed)
            training.configure(bench.parallel)
            if freezeEncoder { try step.freezeEncoder(true) }
            if training.syncBn { net.synchronizeBatchNorm(over: communicator) }
            if let root = dataOptions.data {
                // --data: each step's batch comes from the loader.
                let spec: SampleSpec
                do { spec = try dataOptions.spec(imageSize: size, inChannels: net.inChannels, classes: classes, seed: model.seed) } catch {
                    throw UserError("\(error)")
                }
                let loaded = try dataOptions.load(root: root, collectives: communicator, pool: pool, spec: spec, seed: model.seed)
                try bench.feed(from: loaded.train, spec: spec, cache: dataOptions.cache, threads: dataOptions.loaderThreads,
                               globalBatch: training.batchSize, seed: model.seed)
            }
            let result = try bench.run(warmup: warmup, steps: steps, learningRate: training.lr)
            guard communicator.rank == 0 else { return }
            if json {
                var fields = ["\"image_size\": \(size)", "\"batch_size\": \(training.batchSize)", "\"threads\": \(pool.threadCount)",
                              "\"ranks\": \(ranks)", "\"conv\": \"\(convOptions.conv.rawValue)\"", "\"deterministic\": \(convPolicy.perImageWork)", "\"sync_bn\": \(net.batchStatistics != nil)"]
                if dataOptions.data != nil { fields.append("\"loader_threads\": \(dataOptions.loaderThreads)") }
                print(result.json(fields))
                return
            }
            print("segtrain bench: \(size)x\(size), batch \(training.batchSize) on \(ranks) rank(s) x \(pool.threadCount) thread(s), "
                  + "\(steps) steps after \(warmup) warm-up, conv \(convOptions.summary)" + (net.batchStatistics != nil ? ", SyncBatchNorm" : ""))
            print("  BLAS kernels  \(BLASKernels.description)")
            print("  GEMM          \(Gemm.description)")
            let dataLine = dataOptions.data.map { "\($0), \(dataOptions.loaderThreads) loader thread(s)" + (dataOptions.noAugment ? "" : ", augmented") }
            for line in result.table(ranks: ranks, dataLine: dataLine) { print(line) }
        }
    }
}
