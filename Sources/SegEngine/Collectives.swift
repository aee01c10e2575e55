// What data-parallel training needs from the ranks, in MPI's words: SegDistributed's `Communicator`
// conforms itself (MPI_Allreduce, MPI_Iallreduce, MPI_Allgatherv); `SingleProcess` is the trivial
// one-rank version used by tests and tools. It sits in the engine so that training (SegTraining)
// and MPI (SegDistributed) both build on it without depending on each other.


/// A sum in progress (`Collectives.startAllreduceSum`).
public protocol PendingSum: AnyObject {
    /// True once done; also lets the sum make progress.
    func test() throws -> Bool
    func wait() throws
}

/// A sum that was done at once.
final class CompletedSum: PendingSum {
    func test() throws -> Bool { true }
    func wait() throws {}
}

public protocol Collectives: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Sums `tensor` over all ranks, in place.
    func allreduceSum(_ tensor: Tensor) throws
    /// Starts summing `source` over all ranks into `result` (as many elements; `source` is only read)
    /// and returns at once; neither may be touched until the sum is done. Every rank must start the
    /// same sums in the same order.
    func startAllreduceSum(_ result: Tensor, from source: Tensor) throws -> PendingSum
    /// Waits for every sum in `sums` (default: each one's `wait`, in order).
    func waitAll(_ sums: [PendingSum]) throws
    /// Element-wise sums of `values` over all ranks.
    func allreduceSum(_ values: [Double]) throws -> [Double]
    /// Every rank's share of `tensor` (`shareOf(tensor.count, ranks: size, rank: r)` for rank r)
    /// from that rank to all the others, in place.
    func allgatherShares(_ tensor: Tensor) throws
}

public final class SingleProcess: Collectives {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func allreduceSum(_ tensor: Tensor) throws {}
    public func allreduceSum(_ values: [Double]) throws -> [Double] { values }
    public func allgatherShares(_ tensor: Tensor) throws {}
}

/// Rank r's part of `count` items split over `ranks`: shares differ by at most one, the first
/// `count % ranks` ranks take one more (PyTorch-style remainder spreading, no duplicates).
public func shareOf(_ count: Int, ranks: Int, rank: Int) -> Range<Int> {
    WorkerPool.split(count, parts: ranks, index: rank)
}

extension Collectives {
    /// Default: the sum at once.
    public func startAllreduceSum(_ result: Tensor, from source: Tensor) throws -> PendingSum {
        result.copy(from: source)
        try allreduceSum(result)
        return CompletedSum()
    }

    public func waitAll(_ sums: [PendingSum]) throws {
        for sum in sums { try sum.wait() }
    }

    /// True when `value` is the same on every rank, through `allreduceSum` alone: the value is cut into
    /// 16-bit chunks c, and N * sum(c^2) == (sum c)^2 holds exactly (all below 2^53) only when every
    /// rank's chunk is the same (Cauchy-Schwarz).
    public func allEqual(_ value: UInt64) throws -> Bool {
        let chunks = (0..<4).map { Double((value >> (16 * UInt64($0))) & 0xffff) }
        let sums = try allreduceSum(chunks + chunks.map { $0 * $0 })
        let n = Double(size)
        return (0..<4).allSatisfy { n * sums[4 + $0] == sums[$0] * sums[$0] }
    }
}

/// FNV-1a over the bytes of float buffers: the weights' fingerprint for --check-sync.
public func fingerprint(_ tensors: [Tensor]) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for t in tensors {
        for i in 0..<t.count {
            var bits = t[i].bitPattern
            for _ in 0..<4 {
                hash = (hash ^ UInt64(bits & 0xff)) &* 0x100_0000_01b3
                bits >>= 8
            }
        }
    }
    return hash
}
