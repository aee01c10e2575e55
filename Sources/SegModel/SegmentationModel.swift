// What training, inference and the tools need of a model family: its parameters in one flat store
// (gradients in a second with the same layout), a plan for one batch shape, forward, and backward
// as a tape whose ops report how far the parameter gradients are final (so the bucket sums can
// start while backward goes on). `UNet` is the first family; `Architecture.build` makes one from
// a `ModelDescription`.

import SegEngine

/// What a plan allocates for one batch shape, in bytes.
public struct PlannedActivationMemory: Sendable {
    /// What the activations alone would span (kept for backward in a plan for training; sharing
    /// memory by lifetime in a plan for inference) and their gradients alone (sharing memory by
    /// lifetime; 0 in a plan for inference).
    public var values = 0, gradients = 0
    /// What the two take together: less than their sum in a plan for training, where a gradient
    /// takes the memory of values backward has finished with.
    public var valuesAndGradients = 0
    /// The kernels' scratch.
    public var scratch = 0
    public var total: Int { valuesAndGradients + scratch }
    public init(values: Int = 0, gradients: Int = 0, valuesAndGradients: Int = 0, scratch: Int = 0) {
        self.values = values; self.gradients = gradients; self.valuesAndGradients = valuesAndGradients; self.scratch = scratch
    }
}

extension SegmentationModel {
    /// Bytes of activations, activation gradients and kernel scratch planned for the batch.
    public var plannedActivationBytes: Int { plannedActivationMemory.total }
}

public protocol SegmentationModel: AnyObject {
    var store: ParameterStore { get }
    var pool: WorkerPool { get }
    /// Where each step's time goes (forward, backward, data, communication...).
    var profile: Profile { get }
    var inChannels: Int { get }
    /// 1: one sigmoid output (binary); >= 2: softmax over classes.
    var classes: Int { get }
    var parameterCount: Int { get }
    /// The planned batch shape (N, Cin, H, W), nil before `plan`.
    var batchShape: Shape? { get }
    /// One row per layer for the planned shape (`segtrain info`, FLOP counts).
    var layers: [LayerInfo] { get }
    /// After backward op k, the parameter gradients at flat offsets >= gradientFrontiers[k] are
    /// final; ends at 0; the same on every rank.
    var gradientFrontiers: [Int] { get }
    /// The last forward's output (N, classes, H, W) and its gradient, which the loss writes.
    var logits: Tensor { get }
    var logitsGradient: Tensor { get }
    /// Bytes of activations, activation gradients and kernel scratch planned for the batch.
    var plannedActivationMemory: PlannedActivationMemory { get }
    /// Activation-gradient floats (shared by lifetime, and not shared), for memory reports.
    var activationGradientFloats: (shared: Int, unshared: Int) { get }
    /// SyncBatchNorm (`--sync-bn`): training forwards take their BatchNorm statistics over every
    /// rank's batch through this exchange; nil (the default): each rank's own batch.
    var batchStatistics: BatchStatisticsSum? { get set }
    /// The evaluation-mode forward as plain operations over the store's parameters, for any batch
    /// and image size the model takes (what `segtrain export` writes as ONNX).
    var inferenceGraph: InferenceGraph { get }

    /// The fewest images a training forward of `height` x `width` may hold: BatchNorm in training
    /// mode needs more than one value per channel (PyTorch refuses one too), so a model whose
    /// smallest normalised map is 1 x 1 needs 2.
    func minimumTrainingBatch(height: Int, width: Int) -> Int
    /// Fine-tuning (--freeze-encoder): the encoder's weights and BatchNorm statistics stay fixed
    /// (its BatchNorm normalises with the running statistics even in a training forward) and
    /// backward stops at the decoder, leaving the encoder's parameter gradients zero. Only a model
    /// with an encoder (`"encoder."` tensors) can be frozen.
    var frozenEncoder: Bool { get set }
    /// What the dropout masks of training forwards follow from (the trainer sets it before each
    /// step: the run's seed, the global batch, this rank's positions in it); a model without
    /// dropout ignores it.
    var dropoutDraw: DropoutDraw { get set }
    /// Re-initialises every parameter from the configuration's seed (buffers reset).
    func initializeParameters()
    /// Allocates activations, gradients and scratch for batches of this shape (again only when it
    /// changes). `gradients: false` plans for inference: no activation-gradient memory, and no
    /// backward until a plan with gradients (`predict`, `evaluate` and `serve` plan so).
    func plan(batch: Int, height: Int, width: Int, gradients: Bool)
    /// Runs the model on `images` (N, Cin, H, W) as planned; returns the logits. `training`: batch
    /// statistics (and updated running statistics) for BatchNorm, and what backward needs is kept.
    func forward(_ images: Tensor, training: Bool) -> Tensor
    /// Zeroes what backward accumulates into (before the loss writes `logitsGradient`).
    func zeroActivationGradients()
    /// Backward through the last training forward, adding to the store's gradients; `afterOp(k)`
    /// runs after op k (see `gradientFrontiers`).
    func backward(afterOp: ((Int) throws -> Void)?) rethrows
}

extension SegmentationModel {
    public func backward() { backward(afterOp: nil) }

    /// Why a training forward at `imageSize` needs `minimumTrainingBatch` images (for errors), and
    /// whether a larger image size would lift it: a map that is 1 x 1 at this size only, or one that
    /// is 1 x 1 at every size (DeepLabV3+'s image pooling).
    public func singleValueBatchNorm(imageSize: Int) -> (cause: String, largerImagesHelp: Bool) {
        if minimumTrainingBatch(height: 1 << 14, width: 1 << 14) > 1 {
            return ("the model's image-pooling BatchNorm (ASPP) normalises one value per channel and image", false)
        }
        return ("at --image-size \(imageSize) the model's smallest BatchNorm map is 1 x 1", true)
    }

    /// The channels of the widest BatchNorm layer (0 without BatchNorm): what `batchStatistics`
    /// must hold room for.
    public var widestBatchNorm: Int {
        store.entries.filter { $0.name.hasSuffix(".running_mean") }.map(\.shape.count).max() ?? 0
    }

    /// SyncBatchNorm (--sync-bn): the BatchNorm layers' training statistics summed over
    /// `collectives`' ranks from here on; nothing to sum in a single process.
    public func synchronizeBatchNorm(over collectives: Collectives) {
        guard collectives.size > 1 else { return }
        batchStatistics = BatchStatisticsSum(collectives: collectives, channels: widestBatchNorm)
    }
}

extension UNet: SegmentationModel {
    public var inChannels: Int { config.inChannels }
    /// Its BatchNorm layers run at 1/2^(depth-1) of the input at the least: 2 x 2 or more.
    public func minimumTrainingBatch(height: Int, width: Int) -> Int { 1 }
    public var classes: Int { config.classes }
    /// No encoder: never frozen.
    public var frozenEncoder: Bool {
        get { false }
        set { precondition(!newValue, "the plain UNet has no encoder to freeze") }
    }
    /// No dropout.
    public var dropoutDraw: DropoutDraw {
        get { DropoutDraw() }
        set {}
    }
}

extension SegmentationModel {
    /// Plans for training: activations, their gradients and scratch.
    public func plan(batch: Int, height: Int, width: Int) { plan(batch: batch, height: height, width: width, gradients: true) }
}
