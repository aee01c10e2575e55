// One training step on one rank's share of a batch: forward, loss, backward, optimizer.
// The distributed trainer adds the gradient allreduce between backward and the optimizer.

import SegEngine
import SegModel

public final class LocalStep {
    public let model: any SegmentationModel
    public let loss: LossFunction
    public let optimizer: Optimizer

    public init(model: any SegmentationModel, loss: LossFunction, optimizer: Optimizer) {
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        // An encoder counts its own optimizer steps (see `Optimizer.freezable`), also in a run that
        // does not freeze it but resumes one that did. Unfrozen, the update is bitwise the same.
        if optimizer.freezable == nil, let encoder = model.store.parameterRange(prefix: "encoder.") {
            optimizer.freezable = encoder
        }
    }

    /// Plans the model's activations and the loss's workspace for this batch shape; the steps
    /// that follow allocate nothing.
    public func plan(batch: Int, height: Int, width: Int) {
        model.plan(batch: batch, height: height, width: width)
        loss.reserve(batch: batch, height: height, width: width, threads: model.pool.threadCount)
    }

    /// Forward and backward on `images` (N, Cin, H, W) with `target` (N, 1, H, W); adds the
    /// gradient of loss / `normalizers` into `model.store.gradients` (zero them first for a new
    /// step) and returns that loss.
    public func accumulateGradients(images: Tensor, target: Tensor, weights: Tensor?,
                                    normalizers: LossTerms?, afterOp: ((Int) throws -> Void)? = nil) rethrows -> Double {
        let profile = model.profile
        model.forward(images, training: true)
        model.zeroActivationGradients()
        let value = profile.measure(.loss) {
            loss.evaluate(logits: model.logits, target: target, weights: weights,
                          dlogits: model.logitsGradient, normalizers: normalizers, pool: model.pool)
        }
        try model.backward(afterOp: afterOp)
        return value
    }

    /// Applies the optimizer to the accumulated gradients (or to `gradients`, a buffer of the same
    /// layout) and returns their global norm (`gradientNorm`: already computed by the caller).
    @discardableResult
    public func update(learningRate: Float, gradients: Tensor? = nil, gradientNorm: Double? = nil) -> Double {
        model.profile.measure(.optimizer) {
            optimizer.apply(values: model.store.values.tensor, gradients: gradients ?? model.store.gradients.tensor,
                            learningRate: learningRate, pool: model.pool, gradientNorm: gradientNorm)
        }
    }

    /// Freezes (or unfreezes) the model's encoder for the steps that follow: the model's
    /// `frozenEncoder` and the optimizer's `frozen`, over its `"encoder."` parameters (one
    /// contiguous range, the optimizer's `freezable`, set at init). Throws for a model without an
    /// encoder.
    public func freezeEncoder(_ frozen: Bool) throws {
        guard let range = model.store.parameterRange(prefix: "encoder.") else {
            throw TrainerError("--freeze-encoder: the model has no encoder")
        }
        if optimizer.freezable != range { optimizer.freezable = range }
        model.frozenEncoder = frozen
        optimizer.frozen = frozen
    }

    /// A whole single-process step: zero gradients, forward, backward, update. Returns the loss.
    @discardableResult
    public func step(images: Tensor, target: Tensor, weights: Tensor? = nil, learningRate: Float) -> Double {
        model.profile.measure(.other) { model.store.zeroGradients() }
        let value = accumulateGradients(images: images, target: target, weights: weights, normalizers: nil)
        update(learningRate: learningRate)
        return value
    }
}
