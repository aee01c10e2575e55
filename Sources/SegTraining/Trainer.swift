// The single-process training loop: epochs of shuffled batches, then validation with loss and
// confusion-count metrics. (The distributed trainer of issue #4 shards the same loop over ranks
// and reduces the same sums.)

import SegEngine
import SegModel

/// Where samples come from: `fill` writes images (N, Cin, S, S) in [0, 1] and masks
/// (N, 1, S, S) of class indices for the given sample indices.
public protocol SampleSource {
    var count: Int { get }
    func fill(images: Tensor, masks: Tensor, indices: [Int])
}

/// The ranks' weights differ (found by --check-sync): every rank throws it at the same step.
public struct SyncError: Error, CustomStringConvertible {
    public let step: Int
    public var description: String {
        "--check-sync: the weights differ between ranks after optimizer step \(step); stopping"
    }
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

    public static let csvHeader = "epoch,train_loss,val_loss,val_accuracy,val_precision,val_recall,val_dice,val_iou,lr,images_per_second,seconds"

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

public final class Trainer {
    public let step: DataParallelStep
    public let train: SampleSource
    public let validation: SampleSource?
    /// Images per step over all ranks, and this rank's share of them.
    public let globalBatch: Int
    public let localBatch: Range<Int>
    public let seed: UInt64
    /// The learning rate of every step; plateau decisions are taken at the end of each epoch.
    public var schedule: LearningRateSchedule
    private let images: OwnedTensor
    private let masks: OwnedTensor
    /// The UNet weight map of the current masks, when the loss needs one (weighted-ce).
    private let weights: OwnedTensor?
    private var collectives: Collectives { step.collectives }

    public convenience init(step local: LocalStep, collectives: Collectives = SingleProcess(), train: SampleSource,
                            validation: SampleSource?, imageSize: Int, batchSize: Int, seed: UInt64, learningRate: Float) {
        self.init(step: local, collectives: collectives, train: train, validation: validation, imageSize: imageSize,
                  batchSize: batchSize, seed: seed,
                  schedule: LearningRateSchedule(ScheduleConfig(baseRate: Double(learningRate), epochs: 1)))
    }

    public init(step local: LocalStep, collectives: Collectives = SingleProcess(), train: SampleSource,
                validation: SampleSource?, imageSize: Int, batchSize: Int, seed: UInt64, schedule: LearningRateSchedule) {
        precondition(train.count >= batchSize, "fewer training samples (\(train.count)) than one batch (\(batchSize))")
        precondition(batchSize >= collectives.size, "a global batch of \(batchSize) cannot feed \(collectives.size) ranks")
        step = DataParallelStep(local: local, collectives: collectives)
        self.train = train
        self.validation = validation
        globalBatch = batchSize
        localBatch = shareOf(batchSize, ranks: collectives.size, rank: collectives.rank)
        self.seed = seed
        self.schedule = schedule
        let config = local.model.config
        images = OwnedTensor(Shape(localBatch.count, config.inChannels, imageSize, imageSize))
        masks = OwnedTensor(Shape(localBatch.count, 1, imageSize, imageSize))
        weights = local.loss.config.kind == .weightedCE ? OwnedTensor(masks.shape) : nil
        local.plan(batch: localBatch.count, height: imageSize, width: imageSize)
    }

    /// Loads samples into the batch buffers, and their weight map when the loss needs one.
    private func fill(_ source: SampleSource, _ indices: [Int]) {
        source.fill(images: images.tensor, masks: masks.tensor, indices: indices)
        if let weights {
            let config = step.local.loss.config
            unetWeightMap(weights.tensor, mask: masks.tensor, classes: step.local.model.config.classes,
                          w0: config.w0, sigma: config.sigma)
        }
    }

    /// The order of training samples in `epoch`: a permutation from (seed, epoch) only, the same
    /// on every rank.
    public static func permutation(count: Int, seed: UInt64, epoch: Int) -> [Int] {
        var order = Array(0..<count)
        var rng = SplitMix64(seed: seed, stream: 0x5348_5546 &+ UInt64(epoch))
        for i in stride(from: count - 1, to: 0, by: -1) {
            order.swapAt(i, Int(rng.next() % UInt64(i + 1)))
        }
        return order
    }

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
        public let seconds: Double
    }

    /// Called after every step, on every rank.
    public var afterStep: ((StepInfo) throws -> Void)? = nil

    /// Global batches per epoch (the last partial one, and with --accumulate K those beyond a
    /// multiple of K, are dropped).
    public var batchesPerEpoch: Int { train.count / globalBatch / step.accumulate * step.accumulate }

    /// Trains epoch `epoch` from global batch `firstBatch` on and validates; returns its record, the
    /// same on every rank, or, when a stop was requested, `.stopped(after:)` the batch last trained.
    public func runEpoch(_ epoch: Int, firstBatch: Int = 0) throws -> EpochOutcome {
        let start = monotonicSeconds()
        let order = Trainer.permutation(count: train.count, seed: seed, epoch: epoch)
        let batches = batchesPerEpoch
        var lossSum = 0.0, lossCount = 0
        var rate = schedule.rate(progress: Double(epoch - 1))
        for b in firstBatch..<batches {
            let indices = Array(order[(b * globalBatch + localBatch.lowerBound)..<(b * globalBatch + localBatch.upperBound)])
            fill(train, indices)
            rate = schedule.rate(progress: Double(epoch - 1) + Double(b) / Double(batches))
            let loss = try step.step(images: images.tensor, target: masks.tensor, weights: weights?.tensor,
                                     learningRate: Float(rate))
            if let loss {
                lossSum += loss
                lossCount += 1
            }
            let done = step.local.optimizer.step
            guard step.atStepBoundary else { continue }
            try afterStep?(StepInfo(epoch: epoch, batch: b, batches: batches, optimizerStep: done, loss: loss,
                                    seconds: monotonicSeconds() - start))
            if let every = checkSyncEvery, done % every == 0 {
                let store = step.local.model.store
                guard try collectives.allEqual(fingerprint([store.values.tensor, store.buffers.tensor])) else {
                    throw SyncError(step: done)
                }
            }
            // Stops only between optimizer steps: a checkpoint never holds half an accumulated gradient.
            if step.atStepBoundary, try collectives.sum([stopRequested() ? 1 : 0])[0] > 0 { return .stopped(afterBatch: b) }
        }
        let trained = batches - firstBatch
        let trainSeconds = monotonicSeconds() - start
        var record = EpochRecord(epoch: epoch, trainLoss: lossCount > 0 ? lossSum / Double(lossCount) : .nan,
                                 validationLoss: nil,
                                 validation: nil, learningRate: rate,
                                 imagesPerSecond: Double(trained * globalBatch) / trainSeconds, seconds: 0)
        if let validation {
            let (loss, counts) = try validate(validation)
            // Rank 0's value everywhere (an exact sum with zeros), so every decision taken from it
            // (best model, plateau, early stop) is the same on every rank.
            record.validationLoss = try collectives.sum([collectives.rank == 0 ? loss : 0])[0]
            record.validation = counts
        }
        schedule.endEpoch(validationLoss: record.validationLoss)
        record.seconds = monotonicSeconds() - start
        return .completed(record)
    }

    /// Mean loss (images weighted equally) and confusion counts over every sample of `source`,
    /// sharded over the ranks (rank r takes samples r, r + N, ...) and summed. The last partial
    /// batch of a rank is padded with its last sample, which is not counted.
    public func validate(_ source: SampleSource) throws -> (loss: Double, counts: ConfusionCounts) {
        let model = step.local.model
        let classes = model.config.classes
        var counts = ConfusionCounts(classes: classes)
        var lossSum = 0.0
        let mine = Array(stride(from: collectives.rank, to: source.count, by: collectives.size))
        let batch = localBatch.count
        var start = 0
        while start < mine.count {
            let real = min(batch, mine.count - start)
            let indices = (0..<batch).map { mine[start + min($0, real - 1)] }
            fill(source, indices)
            let logits = model.forward(images.tensor, training: false)
            let loss = step.local.loss.evaluate(logits: logits.batchSlice(0, real), target: masks.tensor.batchSlice(0, real),
                                                weights: weights.map { $0.tensor.batchSlice(0, real) },
                                                dlogits: nil, normalizers: nil, pool: model.pool)
            lossSum += loss * Double(real)
            counts.add(logits: logits, target: masks.tensor, images: real)
            start += real
        }
        let totals = try collectives.sum([lossSum, Double(mine.count)] + counts.truePositive + counts.falsePositive
                                         + counts.falseNegative + counts.trueNegative)
        let k = counts.classes
        counts.truePositive = Array(totals[2..<(2 + k)])
        counts.falsePositive = Array(totals[(2 + k)..<(2 + 2 * k)])
        counts.falseNegative = Array(totals[(2 + 2 * k)..<(2 + 3 * k)])
        counts.trueNegative = Array(totals[(2 + 3 * k)..<(2 + 4 * k)])
        return (totals[0] / max(totals[1], 1), counts)
    }
}
