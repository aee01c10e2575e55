// A training run's memory, estimated from its plan before anything large is allocated, and the
// check that refuses a run that cannot fit (issue 14): every size and count flag (image size,
// batch, channels and depth, sample counts, loader threads, cache) enters the estimate; the
// figure is compared with the machine's available memory (shared by the ranks on this node) and
// with `ulimit -v`, and a refusal is one line giving the estimate, its largest parts and the limit.

import SegEngine
import SegModel

public struct RunMemoryPlan: Sendable {
    public var model: Architecture
    public var imageSize: Int
    /// Images this rank trains per step (its share of the global batch).
    public var localBatch: Int
    public var threads: Int
    /// Optimizer state buffers per parameter (sgd with momentum 1, adam 2; --ema's average adds 1).
    public var optimizerBuffers: Int
    /// Samples in an epoch's permutation (every rank holds all of them), and this rank's
    /// validation samples.
    public var trainSamples: Int
    public var validationSamples: Int
    /// File datasets: loader threads (each with a batch slot, plus one) and the samples --cache
    /// will hold decoded at the training size (8-bit image and mask; a lower bound in crop mode,
    /// which keeps whole images); 0 for the synthetic set.
    public var loaderThreads = 0
    public var cacheSamples = 0
    /// Threads the run starts besides the workers (loader, MPI progress): their stacks and malloc
    /// arenas count against `ulimit -v`.
    public var extraThreads = 2
    /// How the model's convolutions run (`--conv`, `--deterministic`): it sizes their scratch.
    public var convPolicy = ConvPolicy.standard
    /// The loss (Lovász keeps a Double plane per image and class, and a sort buffer per thread).
    public var loss: LossConfig?

    public init(model: Architecture, imageSize: Int, localBatch: Int, threads: Int, optimizerBuffers: Int,
                trainSamples: Int, validationSamples: Int) {
        self.model = model; self.imageSize = imageSize; self.localBatch = localBatch; self.threads = threads
        self.optimizerBuffers = optimizerBuffers; self.trainSamples = trainSamples; self.validationSamples = validationSamples
    }

    /// The estimate's parts in bytes, largest first.
    public var parts: [(what: String, bytes: Double)] {
        let side = Double(imageSize) * Double(imageSize)
        let (parameters, buffers) = model.estimatedParameterCounts
        let sampleFloats = Double(model.inChannels + 2) * side  // image, mask, weight map
        let list: [(String, Double)] = [
            ("model activations", model.estimatedActivationBytes(batch: localBatch, imageSize: imageSize, threads: threads,
                                                                 convPolicy: convPolicy)
                // validation previews (4 images) and the batch buffers
                + (Double(localBatch) + 4) * sampleFloats * 4),
            // values, gradients, the summed gradient, optimizer state
            ("parameters and optimizer state", (parameters * Double(3 + optimizerBuffers) + buffers) * 4),
            // Training: this epoch's and the next epoch's permutation and the announced batches'
            // indices (3 Ints a sample), the batches themselves (an array header and 3 copies of a
            // 24-byte entry, ~104 bytes, for every global batch of at least 1): 40 bytes a sample
            // covers global batches down to 7. Validation: this rank's samples, its batches and the
            // prefetch copy: 32 bytes a sample.
            ("sample order", Double(trainSamples) * 40 + Double(validationSamples) * 32),
            ("loss workspace", loss.map {
                LossFunction.workspaceBytes($0, classes: model.classes, batch: localBatch, plane: imageSize * imageSize, threads: threads)
            } ?? 0),
            ("data loader", Double(loaderThreads == 0 ? 0 : loaderThreads + 1) * Double(localBatch) * sampleFloats * 4
                + Double(cacheSamples) * Double(model.inChannels + 1) * side),
        ]
        return list.sorted { $0.1 > $1.1 }
    }

    public var totalBytes: Double { parts.reduce(0) { $0 + $1.bytes } }

    /// Address space the run maps beyond the estimate and what is mapped at the check: a stack
    /// of 8 MiB per thread still to start and 64 MiB of slack (one more malloc arena).
    public var threadReservationBytes: Double { Double(threads + extraThreads) * 8 * 1_048_576 + 64 * 1_048_576 }

    /// Why the run cannot fit, in one line, or nil. `available`: MemAvailable, shared by
    /// `ranksOnNode` ranks; `addressLimit`: RLIMIT_AS; `mapped`: the virtual size already in use.
    public func refusal(available: Int?, addressLimit: Int?, mapped: Int?, ranksOnNode: Int) -> String? {
        let total = totalBytes
        let top = parts.prefix(2).filter { $0.bytes > 0 }
            .map { "\($0.what) \(SystemMemory.describe($0.bytes))" }.joined(separator: ", ")
        let hint = "lower --image-size, --batch-size, --base-channels/--depth, --train-samples or --val-samples"
        if let available, total * Double(ranksOnNode) > Double(available) {
            let perRank = ranksOnNode > 1 ? " per rank x \(ranksOnNode) rank(s) on this node" : ""
            return "the run needs about \(SystemMemory.describe(total))\(perRank) (\(top)), but \(SystemMemory.describe(Double(available))) "
                + "is available (MemAvailable): \(hint)"
        }
        if let addressLimit {
            let needed = total + Double(mapped ?? 0) + threadReservationBytes
            if needed > Double(addressLimit) {
                return "the run needs about \(SystemMemory.describe(needed)) of address space (\(top), "
                    + "\(SystemMemory.describe(Double(mapped ?? 0))) mapped, thread stacks and arenas "
                    + "\(SystemMemory.describe(threadReservationBytes))), over the limit of \(SystemMemory.describe(Double(addressLimit))) "
                    + "(ulimit -v): \(hint), or raise the limit"
            }
        }
        return nil
    }

    /// The refusal for this machine and process now (see `refusal`).
    public func refusalHere(ranksOnNode: Int) -> String? {
        refusal(available: SystemMemory.availableBytes(), addressLimit: SystemMemory.addressSpaceLimit(),
                mapped: SystemMemory.virtualBytes(), ranksOnNode: ranksOnNode)
    }

    /// Refuses, on every rank with one line, a run that does not fit where some rank runs: each
    /// rank checks its node (`refusalHere`), and the lowest refusing rank's reason reaches every
    /// rank as a `SharedError`.
    public func checkOnEveryRank(_ collectives: Collectives, ranksOnNode: Int) throws {
        let refusal = refusalHere(ranksOnNode: ranksOnNode)
        var mine = [Double](repeating: 0, count: collectives.size)
        if refusal != nil { mine[collectives.rank] = 1 }
        let flags = try collectives.allreduceSum(mine)
        guard let root = flags.firstIndex(where: { $0 > 0 }) else { return }
        throw SharedError(description: try collectives.broadcast(refusal ?? "", root: root))
    }
}
