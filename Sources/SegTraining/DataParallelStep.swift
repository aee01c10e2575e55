// One data-parallel step over a global batch: each rank runs forward and backward on its share,
// with the loss divided by the GLOBAL number of terms (pixels, images; summed over ranks first),
// so that the sum of the ranks' gradients is exactly the gradient of the mean loss over the
// global batch, also when shares are uneven. One allreduce of the flat gradient buffer, then
// every rank applies the same update to the same weights.

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

    /// True when the next call starts a new optimizer step (no gradient is half accumulated).
    public var atStepBoundary: Bool { microStep == 0 }

    public init(local: LocalStep, collectives: Collectives) {
        self.local = local
        self.collectives = collectives
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
        let terms = target.map { local.loss.terms(target: $0) } ?? LossTerms(pixels: 0, images: 0)
        let global = try model.profile.measure(.communication) { try collectives.sum([terms.pixels, terms.images]) }
        let k = Double(accumulate)
        let last = microStep + 1 == accumulate
        // On the last micro-batch the gradient sum starts while backward still runs (buckets).
        // (Decided from settings every rank shares: the ranks must start the same sums.)
        let buckets = last && overlap && collectives.size > 1 ? BucketedSum(self) : nil
        if let images, let target {
            accumulatedLoss += try local.accumulateGradients(images: images, target: target, weights: weights,
                                                             normalizers: LossTerms(pixels: global[0] * k, images: global[1] * k),
                                                             afterOp: buckets.map { b in { op in try b.advance(afterOp: op) } })
        } else if let buckets {
            // No sample here: the same buckets as the other ranks, in the same order.
            for op in model.gradientFrontiers.indices { try buckets.advance(afterOp: op) }
        }
        microStep += 1
        guard microStep == accumulate else { return nil }
        microStep = 0
        stepsTried += 1
        beforeAllreduce?(stepsTried)
        let loss = try model.profile.measure(.communication) { () -> Double in
            if let buckets { try buckets.finish() } else { try collectives.sumInPlace(model.store.gradients.tensor) }
            // One small sum for the loss and whatever the caller adds (the trainer's stop flag).
            let totals = try collectives.sum([accumulatedLoss] + (alsoSum?() ?? []))
            alsoSummed = Array(totals.dropFirst())
            return totals[0]
        }
        let norm = model.profile.measure(.optimizer) { local.optimizer.gradientNorm(model.store.gradients.tensor, pool: model.pool) }
        guard loss.isFinite && norm.isFinite else {
            if skipNonFinite { skippedSteps += 1; return nil }
            throw NonFiniteError(step: stepsTried, loss: loss, gradientNorm: norm)
        }
        if let hook = firstGradientHook {
            firstGradientHook = nil
            try hook(model.store)
        }
        local.update(learningRate: learningRate, gradientNorm: norm)
        return loss
    }
}

/// The gradient sum in buckets, started while backward runs: after each backward op the gradients
/// from the model's frontier to the end of the buffer are final; once at least `bucketFloats` of
/// them (a quarter of that for the first bucket) are not yet handed over, they are (one
/// non-blocking sum), and every op lets the pending sums progress. Buckets depend on the model only, so every rank starts the same sums.
final class BucketedSum {
    let step: DataParallelStep
    var start: Int
    var pending: [PendingSum] = []

    init(_ step: DataParallelStep) {
        self.step = step
        start = step.local.model.store.parameterCount
    }

    func advance(afterOp op: Int) throws {
        let model = step.local.model
        let frontier = model.gradientFrontiers[op]
        try model.profile.measure(.communication) {
            // The first bucket is a quarter of the others, so the sums start early in backward.
            let size = start == model.store.parameterCount ? max(1, step.bucketFloats / 4) : step.bucketFloats
            if start - frontier >= size {
                pending.append(try step.collectives.startSum(model.store.gradients.view(.vector(start - frontier), offset: frontier)))
                start = frontier
            }
            for p in pending { _ = try p.test() }
        }
    }

    func finish() throws {
        let gradients = step.local.model.store.gradients
        if start > 0 { pending.append(try step.collectives.startSum(gradients.view(.vector(start), offset: 0))) }
        start = 0
        for p in pending { try p.wait() }
        pending = []
    }
}

/// A step whose loss or gradient is not finite; the weights were not touched.
public struct NonFiniteError: Error, CustomStringConvertible {
    public let step: Int, loss: Double, gradientNorm: Double
    public var description: String {
        "step \(step): the loss (\(loss)) or the gradient norm (\(gradientNorm)) is not finite; stopped without "
            + "updating the weights (the last checkpoint is intact; try a lower --lr, or --skip-nonfinite)"
    }
}
