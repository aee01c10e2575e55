// What data-parallel training needs from the ranks: the MPI Communicator provides it (adapted in
// the CLI), `SingleProcess` is the trivial one-rank version used by tests and tools.

import SegEngine

public protocol Collectives: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Sums `tensor` over all ranks, in place.
    func sumInPlace(_ tensor: Tensor) throws
    /// Element-wise sums of `values` over all ranks.
    func sum(_ values: [Double]) throws -> [Double]
    /// Copies rank 0's `tensor` to every rank.
    func broadcastFromRoot(_ tensor: Tensor) throws
}

public final class SingleProcess: Collectives {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func sumInPlace(_ tensor: Tensor) throws {}
    public func sum(_ values: [Double]) throws -> [Double] { values }
    public func broadcastFromRoot(_ tensor: Tensor) throws {}
}

/// Rank r's part of `count` items split over `ranks`: shares differ by at most one, the first
/// `count % ranks` ranks take one more (PyTorch-style remainder spreading, no duplicates).
public func shareOf(_ count: Int, ranks: Int, rank: Int) -> Range<Int> {
    WorkerPool.split(count, parts: ranks, index: rank)
}
