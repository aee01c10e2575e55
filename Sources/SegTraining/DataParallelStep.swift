// One data-parallel step over a global batch: each rank runs forward and backward on its share,
// with the loss divided by the GLOBAL number of terms (pixels, images; summed over ranks first),
// so that the sum of the ranks' gradients is exactly the gradient of the mean loss over the
// global batch, also when shares are uneven. One allreduce of the flat gradient buffer (in buckets
// while backward runs: from the store's gradients into a second buffer of the same layout, which
// the optimizer then reads). Then each rank updates its share of the weights (and of the
// optimizer's state) and the ranks exchange the new weights, so they stay bitwise identical while
// each does 1/N of the optimizer's work; the state is gathered only for checkpoints.
// While the encoder is frozen (--freeze-encoder) its gradients are zero on every rank: the sums
// leave out its range when it starts the buffer (the encoder's parameters come first).

import SegEngine
import SegModel

public final class DataParallelStep {
    public let local: LocalStep
    public let collectives: Collectives
    /// Called once, with the summed gradient of the first step, before the optimizer touches it.
    public var firstGradientHook: ((ParameterStore) throws -> Void)?
    /// Called with the step number before the gradient allreduce (tests inject faults here); with
    /// buckets, before the last bucket, which holds the start of the buffer, is summed.
    public var beforeAllreduce: ((Int) -> Void)?
    /// Values summed over ranks together with the step's loss, once per optimizer step (saves a
    /// collective); their sums are in `alsoSummed` after the step.
    public var alsoSum: (() -> [Double])?
    public private(set) var alsoSummed: [Double] = []
    /// Skip (instead of stopping at) a step whose loss or gradient is not finite.
    public var skipNonFinite = false
    public private(set) var skippedSteps = 0
    private var stepsTried = 0
    /// Micro-batches per optimizer step (`--accumulate`): gradients add up over them and are summed
    /// over ranks once, on the last. Each micro-batch's loss is divided by K times its global terms:
    /// exact because every micro-batch has the same number of images and pixels.
    public var accumulate = 1
    /// Sum the gradient in buckets while backward runs (ranks > 1); off: one sum after backward.
    public var overlap = true
    /// Floats per bucket (1 MiB; see docs/DISTRIBUTED.md for the measurement behind it).
    public var bucketFloats = 1 << 18
    private var microStep = 0
    private var accumulatedLoss = 0.0
    // The bucket plan (made once) and the sums in flight.
    var buckets: [Bucket] = []
    var bucketsPlannedFor = 0
    var nextBucket = 0
    var pendingSums: [PendingSum] = []
    /// Where the bucket sums land: the gradient buffer's layout, allocated on the first such step.
    /// (A sum from one buffer into another spares Open MPI a copy of every bucket and lets it pick
    /// its algorithm by size; see `Communicator.startAllreduceSum`.)
    private lazy var summed = FloatBuffer(count: local.model.store.parameterCount)
    /// Floats at the start of the buffer that the sums leave out this step (a frozen encoder's).
    var skippedPrefix = 0
    /// How much of `summed`'s start is known to hold zeros (not written by a sum since zeroed).
    private var summedZeroPrefix = 0
    /// `advanceBuckets` as the backward pass's per-op hook (made once, not per step).
    private lazy var advanceHook: (Int) throws -> Void = { [unowned self] op in try self.advanceBuckets(op) }

    /// True when the next call starts a new optimizer step (no gradient is half accumulated).
    public var atStepBoundary: Bool { microStep == 0 }

    public init(local: LocalStep, collectives: Collectives) {
        self.local = local
        self.collectives = collectives
        if collectives.size > 1 {
            local.optimizer.shard = shareOf(local.model.store.parameterCount, ranks: collectives.size, rank: collectives.rank)
        }
    }

    /// Gives every rank the whole optimizer state (each rank keeps only its share current): call on
    /// every rank before a checkpoint is written.
    public func gatherOptimizerState() throws {
        guard local.optimizer.shard != nil else { return }
        try local.model.profile.measure(.communication) {
            for state in local.optimizer.stateBuffers { try collectives.allgatherShares(state.buffer.tensor) }
        }
    }

    /// Trains on this rank's share (`images` (n, Cin, H, W), `target` (n, 1, H, W)) of a global
    /// batch; nil images and target when this rank has no sample in it (a small last batch): it
    /// then adds nothing but still takes part in the sums. After the last micro-batch of an
    /// optimizer step returns the mean loss over its micro-batches, else nil (also when the step was
    /// skipped because its loss or gradient was not finite, with `skipNonFinite`; otherwise that
    /// throws `NonFiniteError`, on every rank alike: they all hold the same summed gradient).
    public func step(images: Tensor?, target: Tensor?, weights: Tensor? = nil, learningRate: Float) throws -> Double? {
        precondition((images == nil) == (target == nil), "images and target come together")
        let model = local.model
        if microStep == 0 {
            model.profile.measure(.other) { model.store.zeroGradients() }
            accumulatedLoss = 0
        }
        let terms = target.map { local.loss.terms(target: $0) } ?? local.loss.noTerms
        let global = try model.profile.measure(.communication) { try collectives.allreduceSum(terms.values) }
        let k = Double(accumulate)
        let last = microStep + 1 == accumulate
        // On the last micro-batch the gradient sum starts while backward still runs (buckets).
        // (Decided from settings every rank shares: the ranks must start the same sums.)
        let overlapping = last && overlap && collectives.size > 1
        if last { skippedPrefix = DataParallelStep.frozenPrefix(local.optimizer) }
        if overlapping { startBuckets() }
        if let images, let target {
            accumulatedLoss += try local.accumulateGradients(images: images, target: target, weights: weights,
                                                             normalizers: LossTerms(values: global).scaled(by: k),
                                                             afterOp: overlapping ? advanceHook : nil)
        } else if overlapping {
            // No sample here: the same buckets as the other ranks, in the same order.
            for op in model.gradientFrontiers.indices { try advanceBuckets(op) }
        }
        microStep += 1
        guard microStep == accumulate else { return nil }
        microStep = 0
        stepsTried += 1
        beforeAllreduce?(stepsTried)
        let loss = try model.profile.measure(.communication) { () -> Double in
            if overlapping {
                try finishBuckets()
            } else {
                let count = model.store.parameterCount - skippedPrefix
                try collectives.allreduceSum(model.store.gradients.view(.vector(count), offset: skippedPrefix))
            }
            // One small sum for the loss and whatever the caller adds (the trainer's stop flag).
            let totals = try collectives.allreduceSum([accumulatedLoss] + (alsoSum?() ?? []))
            alsoSummed = Array(totals.dropFirst())
            return totals[0]
        }
        // The summed gradient: in `summed` after bucket sums, else in place.
        let gradients = overlapping ? summed.tensor : model.store.gradients.tensor
        let norm = model.profile.measure(.optimizer) { local.optimizer.gradientNorm(gradients, pool: model.pool) }
        guard loss.isFinite && norm.isFinite else {
            if skipNonFinite { skippedSteps += 1; return nil }
            throw NonFiniteError(step: stepsTried, loss: loss, gradientNorm: norm)
        }
        if let hook = firstGradientHook {
            firstGradientHook = nil
            // The hook reads the store: the sum goes there (once).
            if overlapping { model.store.gradients.tensor.copy(from: gradients) }
            try hook(model.store)
        }
        // This rank's share of the weights moves (`optimizer.shard`), then every rank sends its share.
        local.update(learningRate: learningRate, gradients: gradients, gradientNorm: norm)
        try model.profile.measure(.communication) { try collectives.allgatherShares(model.store.values.tensor) }
        return loss
    }
}

// MARK: - The gradient sum in buckets, started while backward runs

extension DataParallelStep {
    /// The buckets, from the model's frontiers (after backward op k the gradients from
    /// `gradientFrontiers[k]` to the end of the buffer are final): after op `afterOp`, the range
    /// `offset ..< offset + count` is summed; a bucket closes once at least `bucketFloats` (a
    /// quarter of that for the first, so the sums start early) are final and not yet handed over.
    /// The rest of the buffer is summed after backward (`finishBuckets`). The plan depends on the
    /// model and the settings only, so every rank starts the same sums in the same order.
    static func bucketPlan(frontiers: [Int], parameterCount: Int, bucketFloats: Int) -> [Bucket] {
        var plan: [Bucket] = []
        var start = parameterCount
        for (op, frontier) in frontiers.enumerated() {
            let size = start == parameterCount ? max(1, bucketFloats / 4) : bucketFloats
            if start - frontier >= size {
                plan.append(Bucket(afterOp: op, offset: frontier, count: start - frontier))
                start = frontier
            }
        }
        return plan
    }

    /// The frozen range's length when the optimizer skips it and it starts the buffer (its
    /// gradients are then zero on every rank: the frozen model computes none), else 0. From the
    /// optimizer's settings, which every rank shares.
    static func frozenPrefix(_ optimizer: Optimizer) -> Int {
        guard optimizer.frozen, let range = optimizer.freezable, range.lowerBound == 0 else { return 0 }
        return range.upperBound
    }

    func startBuckets() {
        let model = local.model
        // The skipped prefix of `summed` (which the optimizer reads) must hold the zero gradient.
        if skippedPrefix > summedZeroPrefix {
            summed.view(.vector(skippedPrefix), offset: 0).zero()
        }
        summedZeroPrefix = skippedPrefix
        if buckets.isEmpty || bucketsPlannedFor != bucketFloats {
            buckets = DataParallelStep.bucketPlan(frontiers: model.gradientFrontiers, parameterCount: model.store.parameterCount,
                                                  bucketFloats: bucketFloats)
            bucketsPlannedFor = bucketFloats
        }
        nextBucket = 0
        pendingSums.removeAll(keepingCapacity: true)
    }

    /// After backward op `op`: start the bucket that closes there, and let pending sums progress.
    func advanceBuckets(_ op: Int) throws {
        let model = local.model
        try model.profile.measure(.communication) {
            if nextBucket < buckets.count && buckets[nextBucket].afterOp == op {
                let b = buckets[nextBucket]
                // Only the part after a skipped prefix.
                let start = max(b.offset, skippedPrefix), count = b.offset + b.count - start
                if count > 0 {
                    pendingSums.append(try collectives.startAllreduceSum(summed.view(.vector(count), offset: start),
                                                                         from: model.store.gradients.view(.vector(count), offset: start)))
                }
                nextBucket += 1
            }
            for p in pendingSums { _ = try p.test() }
        }
    }

    /// Sums what the buckets left (the start of the buffer) and waits for every sum: then all of
    /// `summed` holds the summed gradient.
    func finishBuckets() throws {
        let rest = buckets.last?.offset ?? local.model.store.parameterCount
        if rest > skippedPrefix {
            let count = rest - skippedPrefix
            pendingSums.append(try collectives.startAllreduceSum(summed.view(.vector(count), offset: skippedPrefix),
                                                                 from: local.model.store.gradients.view(.vector(count), offset: skippedPrefix)))
        }
        try collectives.waitAll(pendingSums)
        pendingSums.removeAll(keepingCapacity: true)
    }
}

/// One bucket of the gradient sum: summed after backward op `afterOp`.
struct Bucket: Equatable {
    let afterOp: Int
    let offset: Int
    let count: Int
}

/// A step whose loss or gradient is not finite; the weights were not touched.
public struct NonFiniteError: RaisedOnEveryRank, CustomStringConvertible {
    public let step: Int, loss: Double, gradientNorm: Double
    public var description: String {
        "step \(step): the loss (\(loss)) or the gradient norm (\(gradientNorm)) is not finite; stopped without "
            + "updating the weights (the last checkpoint is intact; try a lower --lr, or --skip-nonfinite)"
    }
}
