// Which samples each rank trains on, with PyTorch DistributedSampler semantics: one permutation of
// the dataset from (seed, epoch), the same on every rank; global batch b is positions
// [b * G, (b + 1) * G) of it, and rank r takes positions b * G + r, b * G + r + N, ... of that
// range (with G = N * B this is exactly DistributedSampler's `order[r::N]` cut into batches of B).
// The last global batch is smaller when G does not divide the dataset, unless `dropLast`; it is
// never padded with duplicates, so no sample counts twice (a rank may then get no sample at all).

import SegData
import SegEngine

public struct DistributedSampler: Sendable {
    public let count: Int
    public let globalBatch: Int
    public let ranks: Int
    public let rank: Int
    public let dropLast: Bool
    public let seed: UInt64

    public init(count: Int, globalBatch: Int, ranks: Int, rank: Int, dropLast: Bool, seed: UInt64) {
        precondition(count >= 0 && globalBatch >= 1 && ranks >= 1 && (0..<ranks).contains(rank))
        self.count = count; self.globalBatch = globalBatch; self.ranks = ranks; self.rank = rank
        self.dropLast = dropLast; self.seed = seed
    }

    /// Global batches per epoch: the last, smaller one included unless `dropLast`.
    public var batchesPerEpoch: Int { dropLast ? count / globalBatch : (count + globalBatch - 1) / globalBatch }

    /// Images in global batch `b` (all ranks).
    public func globalBatchSize(_ b: Int) -> Int { min(globalBatch, count - b * globalBatch) }

    /// The order of samples in `epoch`: a permutation from (seed, epoch) only.
    public func order(epoch: Int) -> [Int] { DistributedSampler.permutation(count: count, seed: seed, epoch: epoch) }

    /// This rank's dataset indices in global batch `b` of an epoch whose order is `order`.
    public func indices(_ order: [Int], batch b: Int) -> [Int] {
        let start = b * globalBatch, end = start + globalBatchSize(b)
        return Array(stride(from: start + rank, to: end, by: ranks).map { order[$0] })
    }

    /// What a loader is told at the start of `epoch` (whose order is `order`): this rank's batches
    /// `batches`, then the next epoch's first `lookahead`, so that no epoch starts by waiting for
    /// data. Batches without a sample for this rank are left out.
    public func announcement(_ order: [Int], epoch: Int, batches: Range<Int>, lookahead: Int = 2) -> [BatchLoader.Batch] {
        let next = self.order(epoch: epoch + 1)
        let this = batches.map { BatchLoader.Batch(indices(order, batch: $0), epoch: epoch) }
        let ahead = (0..<min(lookahead, batches.upperBound)).map { BatchLoader.Batch(indices(next, batch: $0), epoch: epoch + 1) }
        return (this + ahead).filter { !$0.indices.isEmpty }
    }

    /// Fisher-Yates from a SplitMix64 stream of (seed, epoch).
    public static func permutation(count: Int, seed: UInt64, epoch: Int) -> [Int] {
        var order = Array(0..<count)
        var rng = SplitMix64(seed: seed, stream: 0x5348_5546 &+ UInt64(epoch))
        for i in stride(from: count - 1, to: 0, by: -1) {
            order.swapAt(i, Int(rng.next() % UInt64(i + 1)))
        }
        return order
    }
}
