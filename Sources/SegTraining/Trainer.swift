// The training loop of one rank: epochs of batches in the order every rank computes alike (its
// share of each global batch through `DistributedSampler`), one `DataParallelStep` each, then
// validation sharded over the ranks with loss and confusion counts summed through `Collectives`.
// With `SingleProcess` it is the plain single-process loop.

import SegData
import SegEngine
import SegModel

/// The ranks' weights differ (found by --check-sync): every rank throws it at the same step.
public struct SyncError: RaisedOnEveryRank, CustomStringConvertible {
    public let step: Int
    public var description: String {
        "--check-sync: the weights differ between ranks after optimizer step \(step); stopping"
    }
}

/// A request the trainer cannot carry out (a resume position outside the epoch).
public struct TrainerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum EpochOutcome {
    case completed(EpochRecord)
    /// A stop was requested; global batches 0...afterBatch of the epoch are trained.
    case stopped(afterBatch: Int)

    /// The record of a completed epoch; nil when stopped.
    public var record: EpochRecord? {
        if case .completed(let r) = self { return r }
        return nil
    }
}

/// One line of metrics.csv.
public struct EpochRecord: Sendable {
    public var epoch: Int
    public var trainLoss: Double
    public var validationLoss: Double?
    public var validation: ConfusionCounts?
    public var learningRate: Double
    public var imagesPerSecond: Double
    public var seconds: Double
    /// Global batches this run trained in the epoch (not in metrics.csv).
    public var batchesTrained = 0

    public static let csvHeader = "epoch,train_loss,val_loss,val_accuracy,val_precision,val_recall,val_dice,val_iou,lr,images_per_second,seconds"

    /// metrics.csv's header: `csvHeader`, and for a multi-class run (two or more names) each
    /// class's validation IoU and Dice, `val_iou_NAME` and `val_dice_NAME`.
    public static func csvHeader(classNames: [String]) -> String {
        guard classNames.count >= 2 else { return csvHeader }
        return csvHeader + "," + classNames.map { "val_iou_\($0)" }.joined(separator: ",") + ","
            + classNames.map { "val_dice_\($0)" }.joined(separator: ",")
    }

    /// One row under `csvHeader(classNames:)` (empty fields where there was no validation).
    public func csvLine(classes: Int) -> String {
        guard classes >= 2 else { return csvLine }
        let v = validation
        let perClass = (0..<classes).map { k in v.map { "\($0.iou(k))" } ?? "" }
            + (0..<classes).map { k in v.map { "\($0.dice(k))" } ?? "" }
        return csvLine + "," + perClass.joined(separator: ",")
    }

    public var csvLine: String {
        let v = validation
        let fields: [String] = [
            String(epoch), "\(trainLoss)", validationLoss.map { "\($0)" } ?? "",
            v.map { "\($0.accuracy)" } ?? "", v.map { "\($0.meanPrecision)" } ?? "",
            v.map { "\($0.meanRecall)" } ?? "", v.map { "\($0.meanDice)" } ?? "", v.map { "\($0.meanIoU)" } ?? "",
            "\(learningRate)", "\(imagesPerSecond)", "\(seconds)",
        ]
        return fields.joined(separator: ",")
    }
}

/// Fine-tuning: the encoder frozen (weights and BatchNorm statistics fixed) until an epoch.
public struct EncoderFreeze: Sendable, Equatable {
    /// The first epoch (1-based) in which the encoder trains; nil: frozen for the whole run.
    public var unfreezeAtEpoch: Int?

    public init(unfreezeAtEpoch: Int? = nil) { self.unfreezeAtEpoch = unfreezeAtEpoch }

    /// Whether the encoder is frozen in `epoch` (1-based): derived from the epoch alone, so a
    /// resumed run is in the state the epoch calls for.
    public func isFrozen(epoch: Int) -> Bool { unfreezeAtEpoch.map { epoch < $0 } ?? true }
}

public final class Trainer {
    public let step: DataParallelStep
    public let train: SampleSource
    public let validation: SampleSource?
    /// Images per step over all ranks.
    public let globalBatch: Int
    /// Which samples this rank trains on in each batch.
    public let sampler: DistributedSampler
    /// This rank's share of a full global batch, the batch validation runs; the model is planned
    /// for it, and re-planned for a smaller last batch.
    public let localCapacity: Int
    public let imageSize: Int
    public let seed: UInt64
    /// The learning rate of every step; plateau decisions are taken at the end of each epoch.
    public var schedule: LearningRateSchedule
    private let images: OwnedTensor
    private let masks: OwnedTensor
    /// The UNet weight map of the current masks, when the loss needs one (weighted-ce).
    private let weights: OwnedTensor?
    private var collectives: Collectives { step.collectives }

    public convenience init(step local: LocalStep, collectives: Collectives = SingleProcess(), train: SampleSource,
                            validation: SampleSource?, imageSize: Int, batchSize: Int, seed: UInt64, learningRate: Float,
                            dropLast: Bool = false) {
        self.init(step: local, collectives: collectives, train: train, validation: validation, imageSize: imageSize,
                  batchSize: batchSize, seed: seed, dropLast: dropLast,
                  schedule: LearningRateSchedule(ScheduleConfig(baseRate: Double(learningRate), epochs: 1)))
    }

    public init(step local: LocalStep, collectives: Collectives = SingleProcess(), train: SampleSource,
                validation: SampleSource?, imageSize: Int, batchSize: Int, seed: UInt64, dropLast: Bool = false,
                schedule: LearningRateSchedule) {
        precondition(train.count >= 1, "no training samples")
        precondition(batchSize >= collectives.size, "a global batch of \(batchSize) cannot feed \(collectives.size) ranks")
        step = DataParallelStep(local: local, collectives: collectives)
        self.train = train
        self.validation = validation
        globalBatch = batchSize
        sampler = DistributedSampler(count: train.count, globalBatch: batchSize, ranks: collectives.size,
                                     rank: collectives.rank, dropLast: dropLast, seed: seed)
        localCapacity = shareOf(batchSize, ranks: collectives.size, rank: collectives.rank).count
        self.imageSize = imageSize
        self.seed = seed
        self.schedule = schedule
        images = OwnedTensor(Shape(localCapacity, local.model.inChannels, imageSize, imageSize))
        masks = OwnedTensor(Shape(localCapacity, 1, imageSize, imageSize))
        weights = local.loss.config.needsWeightMap ? OwnedTensor(masks.shape) : nil
        local.plan(batch: localCapacity, height: imageSize, width: imageSize)
        // The stop flag, and every rank's last step time for the stall watchdog (when there is one).
        step.alsoSum = { [unowned self] in [self.stopRequested() ? 1 : 0] + (self.watchdog?.stepTimeTerms() ?? []) }
    }

    /// The first `n` images, masks and weights of the batch buffers, with the model planned for n
    /// (re-planning allocates: it happens for a smaller last batch only).
    private func batch(_ n: Int) -> (images: Tensor, masks: Tensor, weights: Tensor?) {
        step.local.plan(batch: n, height: imageSize, width: imageSize)
        return (images.tensor.batchSlice(0, n), masks.tensor.batchSlice(0, n), weights?.tensor.batchSlice(0, n))
    }

    /// Loads samples into the first `indices.count` batch buffers, and their weight map when the
    /// loss needs one.
    private func fill(_ source: SampleSource, _ indices: [Int], epoch: Int?) throws
        -> (images: Tensor, masks: Tensor, weights: Tensor?) {
        let b = batch(indices.count)
        try step.local.model.profile.measure(.data) {
            if let watchdog {
                try watchdog.waiting(for: "the data loader") {
                    try source.fill(images: b.images, masks: b.masks, indices: indices, epoch: epoch)
                }
            } else {
                try source.fill(images: b.images, masks: b.masks, indices: indices, epoch: epoch)
            }
        }
        if let weights = b.weights {
            let config = step.local.loss.config
            unetWeightMap(weights, mask: b.masks, classes: step.local.model.classes,
                          w0: config.w0, sigma: config.sigma)
        }
        return b
    }

    /// The order of training samples in `epoch`: a permutation from (seed, epoch) only, the same
    /// on every rank.
    public static func permutation(count: Int, seed: UInt64, epoch: Int) -> [Int] {
        DistributedSampler.permutation(count: count, seed: seed, epoch: epoch)
    }

    /// Marks data waits (and, through `WatchedCollectives`, collective waits) and ends the job when
    /// one lasts too long; set on every rank or on none (its step times join the per-step sum).
    public var watchdog: StallWatchdog?

    /// Asked after every step whether to stop (e.g. a SIGTERM arrived on this rank). Ranks agree
    /// through one allreduce, so all stop after the same step.
    public var stopRequested: () -> Bool = { false }

    /// Every this many optimizer steps, check that the weights are bitwise the same on every rank.
    public var checkSyncEvery: Int? = nil
    /// What a step did, for progress output, periodic checkpoints and tests.
    public struct StepInfo {
        public let epoch: Int
        /// Global batch index within the epoch, and the epoch's number of batches.
        public let batch: Int, batches: Int
        public let optimizerStep: Int
        /// The global batch's mean loss; nil for a skipped (non-finite) step.
        public let loss: Double?
        /// Seconds since the epoch's start (its first batch trained by this run).
        public let seconds: Double
        /// The learning rate of the step (before parameter-group multipliers).
        public let learningRate: Double
        /// Images of every rank in the step (its --accumulate global batches).
        public let images: Int
    }

    /// A stop was requested at the last batch of the epoch just run: the epoch was completed, and
    /// the caller should stop after its end-of-epoch work.
    public private(set) var stopAfterEpoch = false

    /// --freeze-encoder: which epochs train with the encoder frozen (`freezeEncoder(_:)` sets it).
    public private(set) var encoderFreeze: EncoderFreeze?

    /// Freezes the model's encoder (its `"encoder."` parameters, one contiguous range) in the epochs
    /// `freeze` says: each epoch sets the model's `frozenEncoder` and the optimizer's `frozen` alike.
    /// Throws for a model without an encoder.
    public func freezeEncoder(_ freeze: EncoderFreeze) throws {
        try step.local.freezeEncoder(freeze.isFrozen(epoch: 1))
        encoderFreeze = freeze
    }

    /// Parameters that train in `epoch`: all, less a frozen encoder's (Keras' trainable params).
    public func trainableParameters(epoch: Int) -> Int {
        let store = step.local.model.store
        guard let freeze = encoderFreeze, freeze.isFrozen(epoch: epoch),
              let range = step.local.optimizer.freezable else { return store.parameterCount }
        return store.parameterCount - range.count
    }

    /// --ema: the weight average, updated after every optimizer step; validation runs on it.
    public var average: WeightAverage?

    /// Called after every step, on every rank.
    public var afterStep: ((StepInfo) throws -> Void)? = nil

    /// Global batches per epoch: the sampler's (the last one smaller unless dropLast); with
    /// --accumulate K > 1 only full batches, and a multiple of K of them (the rest is dropped).
    public var batchesPerEpoch: Int {
        step.accumulate == 1 ? sampler.batchesPerEpoch : train.count / globalBatch / step.accumulate * step.accumulate
    }

    /// SyncBatchNorm (`--sync-bn`): the model's BatchNorm layers take their training statistics over
    /// every rank's batch (a no-op on one rank, where they already are). Call before training.
    public func synchronizeBatchNorm() {
        step.local.model.synchronizeBatchNorm(over: collectives)
    }

    /// Refuses, on every rank alike, a run in which some step would give a rank fewer images than
    /// the model's BatchNorm can train on (`minimumTrainingBatch`), e.g. the last, smaller batch of
    /// an epoch; checked from the sampler's counts before anything trains. With --sync-bn the
    /// statistics are the global batch's, so the minimum holds for the global batch, but every rank
    /// needs an image in every step (each takes part in every BatchNorm layer's sums).
    public func checkBatchesFitTheModel() throws {
        let minimum = step.local.model.minimumTrainingBatch(height: imageSize, width: imageSize)
        let synchronized = step.local.model.batchStatistics != nil
        guard minimum > 1 || synchronized else { return }
        let ranks = collectives.size
        let (cause, sizeHelps) = step.local.model.singleValueBatchNorm(imageSize: imageSize)
        let larger = sizeHelps ? ", or use a larger --image-size" : ""
        for b in 0..<batchesPerEpoch {
            let global = sampler.globalBatchSize(b)
            let shares = (0..<ranks).map { shareOf(global, ranks: ranks, rank: $0).count }
            let batchText = "global batch \(b + 1) of \(batchesPerEpoch) (\(global) of \(train.count) samples on \(ranks) rank(s))"
            if synchronized {
                if let empty = shares.firstIndex(of: 0) {
                    throw SharedError(description: "--sync-bn needs an image on every rank in every step, but \(batchText) "
                        + "gives rank \(empty) none: add --drop-last or change --batch-size")
                }
                if global < minimum {
                    throw SharedError(description: "\(cause), so every step needs at least \(minimum) images, but "
                        + "\(batchText) has \(global): add --drop-last, change --batch-size\(larger)")
                }
                continue
            }
            guard let fewest = shares.filter({ $0 > 0 }).min(), fewest < minimum else { continue }
            throw SharedError(description: "\(cause), so every rank needs at least \(minimum) images in every step, but "
                + "\(batchText) gives a rank \(fewest): change --batch-size (or --batch-per-rank), add --drop-last"
                + (synchronized ? "" : ", use --sync-bn") + larger)
        }
    }

    /// Trains epoch `epoch` from global batch `firstBatch` on and validates; returns its record, the
    /// same on every rank, or, when a stop was requested, `.stopped(after:)` the batch last trained.
    public func runEpoch(_ epoch: Int, firstBatch: Int = 0) throws -> EpochOutcome {
        let start = monotonicSeconds()
        stopAfterEpoch = false
        if let encoderFreeze { try step.local.freezeEncoder(encoderFreeze.isFrozen(epoch: epoch)) }
        watchdog?.setEpoch(epoch)
        let order = sampler.order(epoch: epoch)
        let batches = batchesPerEpoch
        guard (0..<max(1, batches)).contains(firstBatch) else {
            throw TrainerError("epoch \(epoch): cannot start at batch \(firstBatch) of \(batches)")
        }
        var lossSum = 0.0, lossCount = 0
        var rate = schedule.rate(progress: Double(epoch - 1))
        let remaining = firstBatch..<max(firstBatch, batches)
        // This epoch's batches and the next epoch's first few; the validation loader prepares its
        // batches meanwhile.
        train.prefetch(sampler.announcement(order, epoch: epoch, batches: remaining))
        if let validation { validation.prefetch(validationBatches(validation).map { BatchLoader.Batch($0.indices, epoch: nil) }) }
        var trainedImages = 0, stepImages = 0
        for b in remaining {
            let indices = sampler.indices(order, batch: b)
            // A rank without a sample in a small last batch still takes part in the sums.
            let batch = indices.isEmpty ? nil : try fill(train, indices, epoch: epoch)
            lastTrainedImages = indices.count
            rate = schedule.rate(progress: Double(epoch - 1) + Double(b) / Double(batches))
            // Dropout masks from (seed, epoch, batch, position in the global batch): this rank's
            // images are positions rank, rank + ranks, ... (the sampler's order).
            step.local.model.dropoutDraw = DropoutDraw(seed: sampler.seed, step: UInt64(epoch) << 32 | UInt64(b),
                                                       firstPosition: collectives.rank, positionStride: collectives.size)
            let loss = try step.step(images: batch?.images, target: batch?.masks, weights: batch?.weights,
                                     learningRate: Float(rate))
            trainedImages += sampler.globalBatchSize(b)
            stepImages += sampler.globalBatchSize(b)
            if let loss {
                lossSum += loss
                lossCount += 1
            }
            let done = step.local.optimizer.step
            guard step.atStepBoundary else { continue }
            if loss != nil { average?.update(from: step.local.model.store, pool: step.local.model.pool) }
            watchdog?.stepFinished(done, everyRank: step.alsoSummed.dropFirst())
            try afterStep?(StepInfo(epoch: epoch, batch: b, batches: batches, optimizerStep: done, loss: loss,
                                    seconds: monotonicSeconds() - start, learningRate: rate, images: stepImages))
            stepImages = 0
            if let every = checkSyncEvery, done % every == 0 {
                let store = step.local.model.store
                guard try collectives.allEqual(fingerprint([store.values.tensor, store.buffers.tensor])) else {
                    throw SyncError(step: done)
                }
            }
            // Stops only between optimizer steps: a checkpoint never holds half an accumulated gradient.
            // The ranks' stop flags were summed with the step's loss.
            if (step.alsoSummed.first ?? 0) > 0 {
                // At the epoch's last batch the epoch is finished instead (validation and its
                // checkpoint): no checkpoint then says "every batch done, epoch not done".
                if b + 1 < batches { return .stopped(afterBatch: b) }
                stopAfterEpoch = true
            }
        }
        let trainSeconds = monotonicSeconds() - start
        var record = EpochRecord(epoch: epoch, trainLoss: lossCount > 0 ? lossSum / Double(lossCount) : .nan,
                                 validationLoss: nil,
                                 validation: nil, learningRate: rate,
                                 imagesPerSecond: Double(trainedImages) / trainSeconds, seconds: 0)
        record.batchesTrained = max(0, batches - firstBatch)
        try shareRootBuffers()
        if let validation {
            let store = step.local.model.store
            let (loss, counts) = try average.map { a in try a.withAverage(in: store, pool: step.local.model.pool) { try validate(validation) } }
                ?? validate(validation)
            // Rank 0's value everywhere (an exact sum with zeros), so every decision taken from it
            // (best model, plateau, early stop) is the same on every rank.
            record.validationLoss = try collectives.allreduceSum([collectives.rank == 0 ? loss : 0])[0]
            record.validation = counts
        }
        schedule.endEpoch(validationLoss: record.validationLoss)
        record.seconds = monotonicSeconds() - start
        return .completed(record)
    }

    /// Each rank's BatchNorm running statistics follow its own share of the batches: at the end of
    /// every epoch every rank takes rank 0's (and its average's, with --ema), as PyTorch DDP's
    /// broadcast_buffers does, so that validation, the checkpoint rank 0 writes and a run resumed
    /// from it all see the same statistics on every rank.
    private func shareRootBuffers() throws {
        let store = step.local.model.store
        guard collectives.size > 1 && store.buffers.count > 0 else { return }
        try collectives.broadcast(store.buffers.tensor)
        if let average { try collectives.broadcast(average.buffers.tensor) }
    }

    /// Images of this rank's last trained batch (still in the batch buffers); 0 before any.
    private var lastTrainedImages = 0

    /// Whether the model's outputs on this rank's last trained batch are all finite with the
    /// current weights; nil when this rank has trained no image yet. A forward pass (inference
    /// mode, running statistics untouched) between steps: the check before a mid-epoch checkpoint
    /// that weights which are finite but exploded (one step at a huge rate) are not written.
    public func lastBatchOutputsAreFinite() -> Bool? {
        guard lastTrainedImages > 0 else { return nil }
        let b = batch(lastTrainedImages)
        let logits = step.local.model.forward(b.images, training: false)
        for i in 0..<logits.count where !logits[i].isFinite { return false }
        return true
    }

    /// This rank's validation batches of `source`: samples r, r + N, ... in batches of the local
    /// capacity, the last padded with its last sample; `real` is how many of each count.
    func validationBatches(_ source: SampleSource) -> [(indices: [Int], real: Int)] {
        let mine = Array(stride(from: collectives.rank, to: source.count, by: collectives.size))
        let batch = localCapacity
        return stride(from: 0, to: mine.count, by: batch).map { start in
            ((0..<batch).map { mine[start + min($0, mine.count - start - 1)] }, min(batch, mine.count - start))
        }
    }

    /// Mean loss (images weighted equally) and confusion counts over every sample of `source`,
    /// sharded over the ranks (rank r takes samples r, r + N, ...) and summed. The last partial
    /// batch of a rank is padded with its last sample, which is not counted.
    public func validate(_ source: SampleSource) throws -> (loss: Double, counts: ConfusionCounts) {
        let model = step.local.model
        let classes = model.classes
        var counts = ConfusionCounts(classes: classes, matrix: true)
        var lossSum = 0.0
        let batches = validationBatches(source)
        source.prefetch(batches.map { BatchLoader.Batch($0.indices, epoch: nil) })
        for (indices, real) in batches {
            let b = try fill(source, indices, epoch: nil)
            let logits = model.forward(b.images, training: false)
            let loss = step.local.loss.evaluate(logits: logits.batchSlice(0, real), target: b.masks.batchSlice(0, real),
                                                weights: b.weights.map { $0.batchSlice(0, real) },
                                                dlogits: nil, normalizers: nil, pool: model.pool)
            lossSum += loss * Double(real)
            // The loss's labels: pixels it ignores are not scored either.
            counts.add(logits: logits, target: b.masks, ignoreIndex: step.local.loss.config.ignoreIndex, images: real)
        }
        let totals = try collectives.allreduceSum([lossSum, Double(batches.reduce(0) { $0 + $1.real })] + counts.flat)
        counts = ConfusionCounts(flat: totals[2...], classes: classes, matrix: true)
        return (totals[0] / max(totals[1], 1), counts)
    }
}
