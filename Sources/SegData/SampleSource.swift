// Where a training or validation batch comes from: a `SampleSource` fills images and masks for
// sample indices. `FileSource` reads files through the loader threads (which prepare announced
// batches ahead); `SyntheticSource` draws them from the synthetic generator.

import SegEngine

/// Where samples come from: `fill` writes images (N, Cin, S, S) (normalised) and masks
/// (N, 1, S, S) of class indices for the given sample indices, N = indices.count.
public protocol SampleSource {
    var count: Int { get }
    /// `epoch`: the training epoch, which seeds augmentation; nil for validation (no augmentation).
    func fill(images: Tensor, masks: Tensor, indices: [Int], epoch: Int?) throws
    /// The batches `fill` will be asked for next, in order, each with its epoch (a loader may
    /// prepare them ahead); replaces whatever was announced before.
    func prefetch(_ batches: [BatchLoader.Batch])
}

extension SampleSource {
    public func prefetch(_ batches: [BatchLoader.Batch]) {}
}

/// Files as a sample source: the loader threads prepare the announced batches.
public final class FileSource: SampleSource {
    public let loader: BatchLoader
    public init(loader: BatchLoader) { self.loader = loader }
    public var count: Int { loader.dataset.count }
    public func fill(images: Tensor, masks: Tensor, indices: [Int], epoch: Int?) throws {
        try loader.next(indices, epoch: epoch, images: images, masks: masks)
    }
    public func prefetch(_ batches: [BatchLoader.Batch]) { loader.schedule(batches) }
}

/// The synthetic dataset as a sample source: samples [offset, offset + count) of the generator.
public struct SyntheticSource: SampleSource {
    public let generator: SyntheticGenerator
    public let offset: Int
    public let count: Int
    public let pool: WorkerPool

    public init(generator: SyntheticGenerator, offset: Int, count: Int, pool: WorkerPool) {
        self.generator = generator
        self.offset = offset
        self.count = count
        self.pool = pool
    }

    public func fill(images: Tensor, masks: Tensor, indices: [Int], epoch: Int?) {
        generator.fill(images: images, masks: masks, indices: indices.map { $0 + offset }, pool: pool)
    }
}
