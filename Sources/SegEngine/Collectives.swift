// What data-parallel training needs from the ranks, in MPI's words: SegDistributed's `Communicator`
// conforms itself (MPI_Allreduce, MPI_Iallreduce, MPI_Allgatherv); `SingleProcess` is the trivial
// one-rank version used by tests and tools. It sits in the engine so that training (SegTraining)
// and MPI (SegDistributed) both build on it without depending on each other.
#if canImport(Glibc)
import Glibc
#endif


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
    /// The same in place, allocating nothing (SyncBatchNorm's statistics, inside a training step).
    /// Default: through the array version.
    func allreduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws
    /// Ends the whole job from a place that cannot throw (a model's forward): prints
    /// `segtrain: error: rank R: message` and, under MPI, aborts every rank. Default: exit(1).
    func abort(code: Int32, message: String) -> Never
    /// Every rank's share of `tensor` (`shareOf(tensor.count, ranks: size, rank: r)` for rank r)
    /// from that rank to all the others, in place.
    func allgatherShares(_ tensor: Tensor) throws
    /// `root`'s elements of `tensor` on every rank (MPI_Bcast); every rank passes as many elements.
    func broadcast(_ tensor: Tensor, root: Int) throws
    /// `root`'s bytes on every rank; the other ranks' arrays are replaced (any length on entry).
    func broadcast(_ bytes: inout [UInt8], root: Int) throws
    /// Throws on every rank unless every rank passes the same `value` (a configuration hash, a
    /// list's hash); `what` names it in the message. Default: through `allEqual`.
    func checkSame(_ value: UInt64, what: String) throws
}

/// An error every rank throws at the same moment (a bad dataset, weights out of sync, ranks whose
/// configurations differ): rank 0 prints it once and every rank ends cleanly, instead of one rank
/// aborting the job.
public protocol RaisedOnEveryRank: Error {}

/// A problem every rank knows about at the same moment (a bad dataset, a bad flag found after the
/// ranks started).
public struct SharedError: RaisedOnEveryRank, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// The ranks hold different values where they must agree (`Collectives.checkSame`).
public struct RanksDifferError: RaisedOnEveryRank, CustomStringConvertible {
    public let what: String
    public init(what: String) { self.what = what }
    public var description: String { "the ranks differ in \(what); every rank must run the same configuration on the same data" }
}

public final class SingleProcess: Collectives {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func allreduceSum(_ tensor: Tensor) throws {}
    public func allreduceSum(_ values: [Double]) throws -> [Double] { values }
    public func allreduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws {}
    public func allgatherShares(_ tensor: Tensor) throws {}
    public func broadcast(_ tensor: Tensor, root: Int) throws {}
    public func broadcast(_ bytes: inout [UInt8], root: Int) throws {}
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

    public func checkSame(_ value: UInt64, what: String) throws {
        if try !allEqual(value) { throw RanksDifferError(what: what) }
    }

    public func allreduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws {
        let sums = try allreduceSum(Array(values))
        for i in values.indices { values[i] = sums[i] }
    }

    public func abort(code: Int32, message: String) -> Never {
        fputs("segtrain: error: rank \(rank): \(message)\n", stderr)
        exit(code == 0 ? 1 : code)
    }

    /// Rank 0's elements of `tensor` on every rank.
    public func broadcast(_ tensor: Tensor) throws { try broadcast(tensor, root: 0) }

    /// `root`'s text on every rank.
    public func broadcast(_ text: String, root: Int = 0) throws -> String {
        var bytes = Array(text.utf8)
        try broadcast(&bytes, root: root)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// `root`'s integer on every rank (exact up to 2^53, through a sum with zeros).
    public func broadcast(_ value: Int, root: Int = 0) throws -> Int {
        Int(try allreduceSum([rank == root ? Double(value) : 0])[0])
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

/// FNV-1a, 64 bits: a stable hash of bytes (the weights' fingerprint for --check-sync, the
/// configuration check across ranks, the hash of a dataset listing).
public struct FNV1a: Sendable {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    public init() {}
    public mutating func add(_ byte: UInt8) { value = (value ^ UInt64(byte)) &* 0x100_0000_01b3 }
    public mutating func add<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 { for b in bytes { add(b) } }
    public mutating func add(_ text: String) { add(text.utf8) }
    /// The hash of `text`'s UTF-8 bytes.
    public static func hash(_ text: String) -> UInt64 { var h = FNV1a(); h.add(text); return h.value }
}

/// FNV-1a over the bytes (little-endian) of float buffers: the weights' fingerprint for --check-sync.
public func fingerprint(_ tensors: [Tensor]) -> UInt64 {
    var hash = FNV1a()
    for t in tensors {
        for i in 0..<t.count {
            var bits = t[i].bitPattern
            for _ in 0..<4 {
                hash.add(UInt8(bits & 0xff))
                bits >>= 8
            }
        }
    }
    return hash.value
}
