import ArgumentParser
import SegData
import SegEngine
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

            --conv-layers, --conv-kernels, --jpeg-decode, --augment-speed and --synthetic time one part \
            alone instead of training steps (one of them at a time, no MPI): e.g. \
            `segtrain bench --conv-layers --threads 2` prints the per-layer table of docs/PERFORMANCE.md.
            """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var training: TrainingOptions
    @OptionGroup(title: "Data") var dataOptions: DataOptions
    @Option(help: "Timed steps.")
    var steps = 5
    @Option(help: "Untimed warm-up steps before them.")
    var warmup = 1
    @Flag(help: "Print one JSON object instead of the table.")
    var json = false
    @Option(help: "3x3 convolution kernel: auto, gemm (im2col + GEMM), winograd (F(2x2,3x3)) or winograd4 (F(4x4,3x3)).")
    var conv = ConvAlgorithm.auto
    @Option(help: "Floats of transformed tiles per Winograd chunk (tuning; docs/PERFORMANCE.md).")
    var winogradChunkFloats = ConvPolicy.standard.winogradTargetChunkFloats

    @Flag(help: "Time each distinct 3x3 layer of the model (--image-size, --in-channels, --base-channels, --depth; batch --batch-size) in each pass under every algorithm; * marks what --conv runs.")
    var convLayers = false
    @Flag(help: "Time conv2d (3x3 and 1x1, --base-channels in and out, --image-size px, batch --batch-size) and convTranspose2x2 to that size.")
    var convKernels = false
    @Option(help: "Time decoding JPEG (4:4:4, 4:2:0) and PNG images of these sizes on one thread, e.g. 128x128,512x512,1918x1280.")
    var jpegDecode: String?
    @Option(help: "Time resizing a 1918x1280 photo to these sides and augmenting at them on one thread, e.g. 128,512.")
    var augmentSpeed: String?
    @Flag(help: "Time generating synthetic samples (--image-size, --classes) on one thread.")
    var synthetic = false

    /// The convolution policy the flags ask for: --conv and --winograd-chunk-floats over the standard one.
    var convPolicy: ConvPolicy {
        var policy = ConvPolicy.standard
        policy.algorithm = conv
        policy.winogradTargetChunkFloats = winogradChunkFloats
        return policy
    }

    func validate() throws {
        try training.validate(classes: model.classes)
        try dataOptions.validate(classes: model.classes, inChannels: model.inChannels)
        if steps < 1 { throw ValidationError("--steps must be at least 1 (got \(steps))") }
        if warmup < 0 { throw ValidationError("--warmup must be >= 0 (got \(warmup))") }
        let parts = [convLayers, convKernels, jpegDecode != nil, augmentSpeed != nil, synthetic].filter { $0 }.count
        if parts > 1 { throw ValidationError("--conv-layers, --conv-kernels, --jpeg-decode, --augment-speed and --synthetic: one at a time") }
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
        if convLayers {
            let pool = WorkerPool(threads: model.threadCount), policy = convPolicy
            let batch = training.batchPerRank ?? training.batchSize
            print("segtrain bench --conv-layers: batch \(batch), \(pool.threadCount) thread(s), ms best of 3; * = what --conv \(conv.rawValue) runs")
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

    func run() throws {
        if try runPartTiming() { return }
        // Under mpirun: data-parallel steps over the ranks, --batch-size global; alone: one process.
        let communicator: Communicator
        do { communicator = try Communicator.start() } catch { throw UserError("cannot start MPI: \(error)") }
        defer { try? communicator.finalize() }
        let ranks = communicator.size, isRoot = communicator.rank == 0
        let training = self.training.resolved(ranks: ranks)
        if training.batchSize < ranks { throw UserError("--batch-size \(training.batchSize) is smaller than the \(ranks) ranks") }
        let threads = model.threadCount
        let pool = WorkerPool(threads: threads)
        let config = model.unetConfig
        let unet = UNet(config, convPolicy: convPolicy, pool: pool)
        let globalBatch = training.batchSize, size = model.imageSize
        let batch = shareOf(globalBatch, ranks: ranks, rank: communicator.rank).count

        // Random images and a random blob mask (classes = 1) or random labels (classes >= 2).
        let images = OwnedTensor(Shape(batch, config.inChannels, size, size))
        let target = OwnedTensor(Shape(batch, 1, size, size))
        var rng = SplitMix64(seed: config.seed, stream: 99)
        for i in 0..<images.tensor.count { images.tensor[i] = rng.nextUnitFloat() }
        for i in 0..<target.tensor.count {
            target.tensor[i] = config.classes == 1 ? Float(rng.next() & 1) : Float(rng.next() % UInt64(config.classes))
        }
        let lossConfig = try training.lossConfig(classes: config.classes)
        var weights: OwnedTensor? = nil
        if lossConfig.needsWeightMap { weights = OwnedTensor(target.shape) }
        // --data: each step's batch comes from the loader (announced an epoch at a time).
        var loader: BatchLoader? = nil
        var nextBatch: () throws -> Void = {}
        if let root = dataOptions.data {
            let spec: SampleSpec
            do {
                spec = try dataOptions.spec(imageSize: size, inChannels: config.inChannels, classes: config.classes, seed: config.seed)
            } catch { throw UserError("\(error)") }
            let loaded = try dataOptions.load(root: root, collectives: communicator, pool: pool, spec: spec, seed: config.seed)
            let sampler = DistributedSampler(count: loaded.train.count, globalBatch: globalBatch, ranks: ranks,
                                             rank: communicator.rank, dropLast: true, seed: config.seed)
            guard sampler.batchesPerEpoch > 0 else {
                throw UserError("--data \(root): \(loaded.train.count) training samples, fewer than one batch of \(globalBatch)")
            }
            let dataLoader = BatchLoader(dataset: FileDataset(listing: loaded.train, spec: spec, cache: dataOptions.cache),
                                         threads: dataOptions.loaderThreads, capacity: batch)
            loader = dataLoader
            var epoch = 0, b = sampler.batchesPerEpoch, order: [Int] = []
            nextBatch = {
                if b == sampler.batchesPerEpoch {
                    epoch += 1
                    b = 0
                    order = sampler.order(epoch: epoch)
                    // As the trainer: this epoch and the first batches of the next.
                    dataLoader.schedule(sampler.announcement(order, epoch: epoch, batches: 0..<sampler.batchesPerEpoch))
                }
                try dataLoader.next(sampler.indices(order, batch: b), epoch: epoch, images: images.tensor, masks: target.tensor)
                b += 1
            }
        }
        func prepareBatch() throws {
            try nextBatch()
            if let weights { unetWeightMap(weights.tensor, mask: target.tensor, classes: config.classes, w0: 10, sigma: 5) }
        }
        try prepareBatch()
        let step = LocalStep(model: unet, loss: LossFunction(lossConfig, labels: dataOptions.labels(classes: config.classes)),
                             optimizer: Optimizer(training.optimizerConfig, parameterCount: unet.parameterCount))
        step.plan(batch: batch, height: size, width: size)
        try communicator.broadcast(unet.store.values.tensor)
        let parallel = DataParallelStep(local: step, collectives: communicator)
        training.configure(parallel)
        // One rank: the plain local step (what the allocation check measures); several: data-parallel.
        func trainStep() throws -> Double {
            if loader != nil { try unet.profile.measure(.data) { try prepareBatch() } }
            if ranks == 1 {
                return step.step(images: images.tensor, target: target.tensor, weights: weights?.tensor,
                                 learningRate: training.lr)
            }
            return try parallel.step(images: images.tensor, target: target.tensor, weights: weights?.tensor,
                                     learningRate: training.lr) ?? .nan
        }

        for _ in 0..<warmup { _ = try trainStep() }
        unet.profile.reset()
        // Each timed step's seconds (scripts/bench-data-parallel.sh pairs two runs step by step);
        // reserved here, outside the counted allocations.
        var stepSeconds: [Double] = []
        stepSeconds.reserveCapacity(steps)
        let loaderBefore = loader?.statistics()
        let allocationsBefore = heapAllocationCount()
        let largeBefore = heapAllocationCount(large: true)
        let faultsBefore = minorPageFaults()
        let start = monotonicSeconds()
        var lastLoss = 0.0
        var stepStart = start
        for _ in 0..<steps {
            lastLoss = try trainStep()
            let now = monotonicSeconds()
            stepSeconds.append(now - stepStart)
            stepStart = now
        }
        let elapsed = stepStart - start
        let allocations = heapAllocationCount().map { $0 - allocationsBefore! }
        let large = heapAllocationCount(large: true).map { $0 - largeBefore! }
        let imagesPerSecond = Double(globalBatch * steps) / elapsed
        // The loader over the timed steps: waiting per step, and seconds per sample per thread.
        let loaderStats = loader.map { l -> (wait: Double, perSample: Double) in
            let (w, seconds, samples) = loaderBefore!
            let now = l.statistics()
            return ((now.waitSeconds - w) / Double(steps),
                    now.samplesLoaded > samples ? (now.loadSeconds - seconds) / Double(now.samplesLoaded - samples) : .nan)
        }
        // Fresh pages the timed steps touched, on the rank that touched the most.
        let faultsPerStep = Double(try communicator.allreduce(minorPageFaults() - faultsBefore, .max)) / Double(steps)
        guard isRoot else { return }
        let flopsPerImage = unet.layers.reduce(0) { $0 + $1.trainingFLOPs }
        let gflops = flopsPerImage * imagesPerSecond / 1e9
        let rssMiB = peakResidentMiB()
        let kinds = WorkKind.allCases.filter { unet.profile[$0] > 0 }

        if json {
            var fields = [
                "\"image_size\": \(size)", "\"batch_size\": \(globalBatch)", "\"threads\": \(threads)",
                "\"ranks\": \(ranks)",
                "\"steps\": \(steps)", "\"conv\": \"\(conv.rawValue)\"", "\"parameters\": \(unet.parameterCount)",
                "\"images_per_second\": \(imagesPerSecond)", "\"gflops_per_second\": \(gflops)",
                "\"seconds_per_step\": \(elapsed / Double(steps))", "\"peak_rss_mib\": \(rssMiB)",
                "\"last_loss\": \(lastLoss)", "\"page_faults_per_step\": \(faultsPerStep)",
                "\"step_seconds\": [\(stepSeconds.map { "\($0)" }.joined(separator: ", "))]",
            ]
            if let loaderStats {
                fields.append("\"loader_threads\": \(dataOptions.loaderThreads)")
                fields.append("\"loader_wait_seconds_per_step\": \(loaderStats.wait)")
                fields.append("\"loader_seconds_per_sample\": \(loaderStats.perSample.isFinite ? "\(loaderStats.perSample)" : "null")")
            }
            if let allocations, let large {
                fields.append("\"heap_allocations_in_timed_steps\": \(allocations)")
                fields.append("\"large_heap_allocations_in_timed_steps\": \(large)")
            }
            let split = kinds.map { "\"\($0.key)\": \(unet.profile[$0] / Double(steps))" }.joined(separator: ", ")
            fields.append("\"seconds_per_step_by_kind\": {\(split)}")
            print("{" + fields.joined(separator: ", ") + "}")
            return
        }
        print("segtrain bench: \(size)x\(size), batch \(globalBatch) on \(ranks) rank(s) x \(threads) thread(s), "
              + "\(steps) steps after \(warmup) warm-up, conv \(conv.rawValue)")
        print("  \(grouped(unet.parameterCount)) parameters, \(fixed(flopsPerImage / 1e9, 2)) GFLOP per image per step")
        print("  images/s      \(fixed(imagesPerSecond, 2))")
        print("  GFLOP/s       \(fixed(gflops, 1))")
        print("  s/step        \(fixed(elapsed / Double(steps), 3))")
        print("  peak RSS      \(fixed(rssMiB, 0)) MiB")
        print("  last loss     \(fixed(lastLoss, 5))")
        print("  page faults   \(fixed(faultsPerStep, 0)) per step" + (ranks > 1 ? " (the most of any rank)" : ""))
        if let loaderStats {
            print("  data          \(dataOptions.data!), \(dataOptions.loaderThreads) loader thread(s)"
                  + (dataOptions.noAugment ? "" : ", augmented"))
            print("  loader        \(loaderStats.perSample.isFinite ? fixed(1000 * loaderStats.perSample, 2) : "-") ms per sample per thread")
            print("  data wait     \(fixed(1000 * loaderStats.wait, 2)) ms per step")
        }
        if let allocations, let large {
            print("  heap allocations in timed steps: \(allocations) (\(large) over 256 bytes)")
        }
        print("  time per step by kind\(ranks > 1 ? " (rank 0)" : ""):")
        let total = unet.profile.total
        for kind in kinds {
            let s = unet.profile[kind]
            print("    " + pad(kind.label, 24) + lpad(fixed(1000 * s / Double(steps), 1) + " ms", 12)
                  + lpad(fixed(100 * s / total, 1) + " %", 9))
        }
    }
}

/// Heap allocations so far (only those over 256 bytes when `large`), when scripts/alloc-counter's
/// LD_PRELOAD shim is loaded; else nil.
func heapAllocationCount(large: Bool = false) -> Int? {
    typealias Counter = @convention(c) () -> Int
    let name = large ? "segtrain_large_alloc_count" : "segtrain_alloc_count"
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }
    return unsafeBitCast(symbol, to: Counter.self)()
}

/// This process's resource usage so far (getrusage).
private func resourceUsage() -> rusage {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage
}

/// Minor page faults of this process so far.
func minorPageFaults() -> Int { resourceUsage().ru_minflt }

/// Peak resident set size of this process in MiB (Linux reports KiB).
func peakResidentMiB() -> Double { Double(resourceUsage().ru_maxrss) / 1024 }
