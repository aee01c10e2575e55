// `segtrain bench`'s training steps: random images and masks (or batches from a dataset through
// the loader), warm-up steps, then timed steps: images/s, GFLOP/s, seconds per step and each
// step's time, peak RSS, page faults, heap allocations (with scripts/alloc-counter's shim), the
// loader's waits and where the time went by kind. One rank runs the plain local step (what the
// allocation check measures); several run data-parallel steps.

import SegData
import SegEngine
import SegModel
#if canImport(Glibc)
import Glibc
#endif

public final class StepBenchmark {
    public let step: LocalStep
    public let parallel: DataParallelStep
    /// This rank's batch buffers.
    public let images: OwnedTensor
    public let target: OwnedTensor
    private let weights: OwnedTensor?
    private var loader: BatchLoader?
    private var nextBatch: () throws -> Void = {}
    private var model: any SegmentationModel { step.model }
    private var collectives: Collectives { parallel.collectives }

    /// `batch` images of `imageSize` on this rank: random pixels and a random mask (one class:
    /// 0/1, else class indices) from `seed`, until `feed` replaces them with a dataset's.
    public init(step: LocalStep, collectives: Collectives, batch: Int, imageSize: Int, seed: UInt64) {
        self.step = step
        parallel = DataParallelStep(local: step, collectives: collectives)
        let model = step.model, classes = model.classes
        images = OwnedTensor(Shape(batch, model.inChannels, imageSize, imageSize))
        target = OwnedTensor(Shape(batch, 1, imageSize, imageSize))
        var rng = SplitMix64(seed: seed, stream: 99)
        for i in 0..<images.tensor.count { images.tensor[i] = rng.nextUnitFloat() }
        for i in 0..<target.tensor.count {
            target.tensor[i] = classes == 1 ? Float(rng.next() & 1) : Float(rng.next() % UInt64(classes))
        }
        weights = step.loss.config.needsWeightMap ? OwnedTensor(target.shape) : nil
        step.plan(batch: batch, height: imageSize, width: imageSize)
    }

    /// Each step's batch from `listing` through `threads` loader threads, in the sampler's order
    /// (full global batches of `globalBatch`, announced an epoch at a time as the trainer does).
    public func feed(from listing: DatasetListing, spec: SampleSpec, cache: Bool, threads: Int, globalBatch: Int,
                     seed: UInt64) throws {
        let sampler = DistributedSampler(count: listing.count, globalBatch: globalBatch, ranks: collectives.size,
                                         rank: collectives.rank, dropLast: true, seed: seed)
        guard sampler.batchesPerEpoch > 0 else {
            throw TrainingRunError("--data: \(listing.count) training samples, fewer than one batch of \(globalBatch)")
        }
        let dataLoader = BatchLoader(dataset: FileDataset(listing: listing, spec: spec, cache: cache), threads: threads,
                                     capacity: images.shape.n)
        loader = dataLoader
        var epoch = 0, b = sampler.batchesPerEpoch, order: [Int] = []
        let (images, target) = (self.images.tensor, self.target.tensor)
        nextBatch = {
            if b == sampler.batchesPerEpoch {
                epoch += 1
                b = 0
                order = sampler.order(epoch: epoch)
                dataLoader.schedule(sampler.announcement(order, epoch: epoch, batches: 0..<sampler.batchesPerEpoch))
            }
            try dataLoader.next(sampler.indices(order, batch: b), epoch: epoch, images: images, masks: target)
            b += 1
        }
    }

    private func prepareBatch() throws {
        try nextBatch()
        if let weights {
            let loss = step.loss.config
            unetWeightMap(weights.tensor, mask: target.tensor, classes: model.classes, w0: loss.w0, sigma: loss.sigma)
        }
    }

    private func trainStep(learningRate: Float) throws -> Double {
        if loader != nil { try model.profile.measure(.data) { try prepareBatch() } }
        if collectives.size == 1 {
            return step.step(images: images.tensor, target: target.tensor, weights: weights?.tensor, learningRate: learningRate)
        }
        return try parallel.step(images: images.tensor, target: target.tensor, weights: weights?.tensor,
                                 learningRate: learningRate) ?? .nan
    }

    /// `warmup` untimed steps, then `steps` timed ones. Every rank takes part; the page faults are
    /// the most of any rank, everything else is this rank's.
    public func run(warmup: Int, steps: Int, learningRate: Float) throws -> StepBenchmarkResult {
        // Every rank takes the same decision: from the global batch, the last rank's share (the least).
        let globalBatch = Int(try collectives.allreduceSum([Double(images.shape.n)])[0])
        let fewest = shareOf(globalBatch, ranks: collectives.size, rank: collectives.size - 1).count
        let minimum = model.minimumTrainingBatch(height: images.shape.h, width: images.shape.w)
        if fewest < minimum {
            let cause = model.singleValueBatchNorm(imageSize: images.shape.h).cause
            throw SharedError(description: "\(cause): every rank needs at least \(minimum) images per step, but "
                              + "--batch-size \(globalBatch) on \(collectives.size) rank(s) gives a rank \(fewest)")
        }
        try prepareBatch()
        try collectives.broadcast(model.store.values.tensor)
        for _ in 0..<warmup { _ = try trainStep(learningRate: learningRate) }
        model.profile.reset()
        // Each timed step's seconds (scripts/bench-data-parallel.sh pairs two runs step by step);
        // reserved here, outside the counted allocations.
        var stepSeconds: [Double] = []
        stepSeconds.reserveCapacity(steps)
        let loaderBefore = loader?.statistics()
        let allocationsBefore = heapAllocationCount(), largeBefore = heapAllocationCount(large: true)
        let faultsBefore = minorPageFaults()
        let start = monotonicSeconds()
        var lastLoss = 0.0, stepStart = start
        for _ in 0..<steps {
            lastLoss = try trainStep(learningRate: learningRate)
            let now = monotonicSeconds()
            stepSeconds.append(now - stepStart)
            stepStart = now
        }
        let allocationsAfter = heapAllocationCount(), largeAfter = heapAllocationCount(large: true)
        var r = StepBenchmarkResult()
        r.globalBatch = globalBatch
        r.steps = steps
        r.seconds = stepStart - start
        r.stepSeconds = stepSeconds
        r.lastLoss = lastLoss
        if let allocationsBefore, let largeBefore, let now = allocationsAfter, let large = largeAfter {
            r.heapAllocations = (now - allocationsBefore, large - largeBefore)
        }
        // The loader over the timed steps: waiting per step, and seconds per sample per thread.
        if let loader, let (w, seconds, samples) = loaderBefore {
            let now = loader.statistics()
            r.loader = ((now.waitSeconds - w) / Double(steps),
                        now.samplesLoaded > samples ? (now.loadSeconds - seconds) / Double(now.samplesLoaded - samples) : .nan)
        }
        // Fresh pages the timed steps touched, on the rank that touched the most.
        var faults = [Double](repeating: 0, count: collectives.size)
        faults[collectives.rank] = Double(minorPageFaults() - faultsBefore)
        r.pageFaultsPerStep = try collectives.allreduceSum(faults).max()! / Double(steps)
        r.parameters = model.parameterCount
        r.flopsPerImage = model.layers.reduce(0) { $0 + $1.trainingFLOPs }
        r.peakResidentMiB = peakResidentMiB()
        r.planned = model.plannedActivationMemory
        r.byKind = WorkKind.allCases.filter { model.profile[$0] > 0 }.map { ($0, model.profile[$0] / Double(steps)) }
        return r
    }
}

/// What `StepBenchmark.run` measured.
public struct StepBenchmarkResult {
    public var globalBatch = 0, steps = 0, parameters = 0
    public var seconds = 0.0, lastLoss = 0.0, pageFaultsPerStep = 0.0, flopsPerImage = 0.0, peakResidentMiB = 0.0
    public var stepSeconds: [Double] = []
    /// What the model's plan allocated for the batch (values kept for backward, gradients, scratch).
    public var planned = PlannedActivationMemory()
    /// Heap allocations in the timed steps (all, over 256 bytes), with the counting shim loaded.
    public var heapAllocations: (all: Int, large: Int)?
    /// With a dataset: the wait per step and the seconds per sample per loader thread.
    public var loader: (waitPerStep: Double, secondsPerSample: Double)?
    /// Seconds per step by kind of work (this rank's).
    public var byKind: [(kind: WorkKind, seconds: Double)] = []

    private func mib(_ bytes: Int) -> Double { Double(bytes) / 1_048_576 }

    public var imagesPerSecond: Double { Double(globalBatch * steps) / seconds }
    public var gflopsPerSecond: Double { flopsPerImage * imagesPerSecond / 1e9 }
    public var secondsPerStep: Double { seconds / Double(steps) }

    /// One JSON object; `extra` fields ("\"key\": value") first.
    public func json(_ extra: [String]) -> String {
        var fields = extra + [
            "\"steps\": \(steps)", "\"parameters\": \(parameters)",
            "\"images_per_second\": \(imagesPerSecond)", "\"gflops_per_second\": \(gflopsPerSecond)",
            "\"seconds_per_step\": \(secondsPerStep)", "\"peak_rss_mib\": \(peakResidentMiB)",
            "\"last_loss\": \(lastLoss)",
            "\"planned_activation_mib\": {\"values\": \(mib(planned.values)), \"gradients\": \(mib(planned.gradients)), \"values_and_gradients\": \(mib(planned.valuesAndGradients)), \"scratch\": \(mib(planned.scratch))}", "\"page_faults_per_step\": \(pageFaultsPerStep)",
            "\"step_seconds\": [\(stepSeconds.map { "\($0)" }.joined(separator: ", "))]",
        ]
        if let loader {
            fields.append("\"loader_wait_seconds_per_step\": \(loader.waitPerStep)")
            fields.append("\"loader_seconds_per_sample\": \(loader.secondsPerSample.isFinite ? "\(loader.secondsPerSample)" : "null")")
        }
        if let heapAllocations {
            fields.append("\"heap_allocations_in_timed_steps\": \(heapAllocations.all)")
            fields.append("\"large_heap_allocations_in_timed_steps\": \(heapAllocations.large)")
        }
        let split = byKind.map { "\"\($0.kind.key)\": \($0.seconds)" }.joined(separator: ", ")
        fields.append("\"seconds_per_step_by_kind\": {\(split)}")
        return "{" + fields.joined(separator: ", ") + "}"
    }

    /// The table's lines after the heading (`dataLine`: the data source's line, with a dataset).
    public func table(ranks: Int, dataLine: String?) -> [String] {
        var lines = [
            "  \(grouped(parameters)) parameters, \(fixed(flopsPerImage / 1e9, 2)) GFLOP per image per step",
            "  images/s      \(fixed(imagesPerSecond, 2))",
            "  GFLOP/s       \(fixed(gflopsPerSecond, 1))",
            "  s/step        \(fixed(secondsPerStep, 3))",
            "  peak RSS      \(fixed(peakResidentMiB, 0)) MiB",
            "  activations   \(fixed(mib(planned.total), 0)) MiB planned: \(fixed(mib(planned.values), 0)) values and "
                + "\(fixed(mib(planned.gradients), 0)) gradients in \(fixed(mib(planned.valuesAndGradients), 0)), "
                + "\(fixed(mib(planned.scratch), 0)) scratch",
            "  last loss     \(fixed(lastLoss, 5))",
            "  page faults   \(fixed(pageFaultsPerStep, 0)) per step" + (ranks > 1 ? " (the most of any rank)" : ""),
        ]
        if let loader, let dataLine {
            lines.append("  data          " + dataLine)
            lines.append("  loader        \(loader.secondsPerSample.isFinite ? fixed(1000 * loader.secondsPerSample, 2) : "-") ms per sample per thread")
            lines.append("  data wait     \(fixed(1000 * loader.waitPerStep, 2)) ms per step")
        }
        if let heapAllocations {
            lines.append("  heap allocations in timed steps: \(heapAllocations.all) (\(heapAllocations.large) over 256 bytes)")
        }
        lines.append("  time per step by kind\(ranks > 1 ? " (rank 0)" : ""):")
        let total = byKind.reduce(0) { $0 + $1.seconds }
        for (kind, s) in byKind {
            lines.append("    " + pad(kind.label, 24) + lpad(fixed(1000 * s, 1) + " ms", 12) + lpad(fixed(100 * s / total, 1) + " %", 9))
        }
        return lines
    }
}
