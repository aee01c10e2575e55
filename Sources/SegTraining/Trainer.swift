// The single-process training loop: epochs of shuffled batches, then validation with loss and
// confusion-count metrics. (The distributed trainer of issue #4 shards the same loop over ranks
// and reduces the same sums.)

import SegEngine
import SegModel
#if canImport(Glibc)
import Glibc
#endif

/// Where samples come from: `fill` writes images (N, Cin, S, S) in [0, 1] and masks
/// (N, 1, S, S) of class indices for the given sample indices.
public protocol SampleSource {
    var count: Int { get }
    func fill(images: Tensor, masks: Tensor, indices: [Int])
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
    public let step: LocalStep
    public let train: SampleSource
    public let validation: SampleSource?
    public let batchSize: Int
    public let seed: UInt64
    public let learningRate: Float
    private let images: OwnedTensor
    private let masks: OwnedTensor

    public init(step: LocalStep, train: SampleSource, validation: SampleSource?, imageSize: Int,
                batchSize: Int, seed: UInt64, learningRate: Float) {
        precondition(train.count >= batchSize, "fewer training samples (\(train.count)) than one batch (\(batchSize))")
        self.step = step
        self.train = train
        self.validation = validation
        self.batchSize = batchSize
        self.seed = seed
        self.learningRate = learningRate
        let config = step.model.config
        images = OwnedTensor(Shape(batchSize, config.inChannels, imageSize, imageSize))
        masks = OwnedTensor(Shape(batchSize, 1, imageSize, imageSize))
        step.plan(batch: batchSize, height: imageSize, width: imageSize)
    }

    /// The order of training samples in `epoch`: a permutation from (seed, epoch) only.
    public static func permutation(count: Int, seed: UInt64, epoch: Int) -> [Int] {
        var order = Array(0..<count)
        var rng = SplitMix64(seed: seed, stream: 0x5348_5546 &+ UInt64(epoch))
        for i in stride(from: count - 1, to: 0, by: -1) {
            order.swapAt(i, Int(rng.next() % UInt64(i + 1)))
        }
        return order
    }

    /// Trains one epoch (the last partial batch is dropped) and validates; returns its record.
    public func runEpoch(_ epoch: Int) -> EpochRecord {
        let start = monotonicSeconds()
        let order = Trainer.permutation(count: train.count, seed: seed, epoch: epoch)
        let batches = train.count / batchSize
        var lossSum = 0.0
        for b in 0..<batches {
            let indices = Array(order[(b * batchSize)..<((b + 1) * batchSize)])
            train.fill(images: images.tensor, masks: masks.tensor, indices: indices)
            lossSum += step.step(images: images.tensor, target: masks.tensor, learningRate: learningRate)
        }
        let trainSeconds = monotonicSeconds() - start
        var record = EpochRecord(epoch: epoch, trainLoss: lossSum / Double(batches), validationLoss: nil,
                                 validation: nil, learningRate: Double(learningRate),
                                 imagesPerSecond: Double(batches * batchSize) / trainSeconds, seconds: 0)
        if let validation {
            let (loss, counts) = validate(validation)
            record.validationLoss = loss
            record.validation = counts
        }
        record.seconds = monotonicSeconds() - start
        return record
    }

    /// Mean loss (images weighted equally) and confusion counts over every sample of `source`.
    /// The last partial batch is padded with its last sample, which is not counted.
    public func validate(_ source: SampleSource) -> (loss: Double, counts: ConfusionCounts) {
        let model = step.model
        var counts = ConfusionCounts(classes: model.config.classes)
        var lossSum = 0.0
        var start = 0
        while start < source.count {
            let real = min(batchSize, source.count - start)
            let indices = (0..<batchSize).map { start + min($0, real - 1) }
            source.fill(images: images.tensor, masks: masks.tensor, indices: indices)
            let logits = model.forward(images.tensor, training: false)
            let target = masks.tensor.batchSlice(0, real)
            let loss = step.loss.evaluate(logits: logits.batchSlice(0, real), target: target, weights: nil,
                                          dlogits: nil, normalizers: nil, pool: model.pool)
            lossSum += loss * Double(real)
            counts.add(logits: logits, target: masks.tensor, images: real)
            start += real
        }
        return (lossSum / Double(source.count), counts)
    }
}

/// Writes `contents` to `path` atomically: a temporary file in the same folder, fsync, rename.
/// Returns an error message naming the path, or nil.
public func writeFileAtomically(_ path: String, _ contents: String) -> String? {
    let temporary = path + ".tmp.\(getpid())"
    guard let file = fopen(temporary, "w") else { return "\(path): cannot write: \(String(cString: strerror(errno)))" }
    let bytes = Array(contents.utf8)
    let written = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
    let flushed = fflush(file) == 0 && fsync(fileno(file)) == 0
    fclose(file)
    guard written == bytes.count && flushed else {
        unlink(temporary)
        return "\(path): write failed: \(String(cString: strerror(errno)))"
    }
    guard rename(temporary, path) == 0 else {
        unlink(temporary)
        return "\(path): cannot rename into place: \(String(cString: strerror(errno)))"
    }
    return nil
}
