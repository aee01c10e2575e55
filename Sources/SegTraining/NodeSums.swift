// Gradient sums through memory the ranks of one node share, instead of MPI messages.
//
// Every rank's gradient buffer lives in a node-shared window (`Communicator.allocateNodeShared`,
// moved there with `ParameterStore.moveGradients`). A sum of one range of the buffer (a bucket)
// then goes: each rank, once its own gradients in the range are final, raises its `ready`
// counter to the sum's sequence number; once every rank is ready, rank r adds slice r of the
// range over all ranks' buffers (in rank order, so the result does not depend on who adds) and
// writes the total into every buffer, then raises its `done` counter; the sum is complete on a
// rank once every rank is done. No copies through MPI buffers, and the additions are spread over
// the ranks (with Open MPI's binomial sum rank 0 adds everything). After a rank's last sum of a
// step is complete no other rank touches its buffer until the next step's first `ready`.
//
// Every rank must start the same sums in the same order (as with MPI); the small sums of values
// (`sum(_:)`) still go through MPI.

import CSupport
import Glibc
import SegEngine

public final class NodeSums: Collectives {
    public let base: Collectives
    public var rank: Int { base.rank }
    public var size: Int { base.size }
    /// Every rank's gradient buffer, by rank.
    let buffers: [UnsafeMutablePointer<Float>]
    /// Every rank's counters, by rank: `ready` at [0], `done` at [8] (a cache line apart).
    let counters: [UnsafeMutablePointer<Int64>]
    let count: Int
    /// Sequence number of the last sum started here, and of the last one whose slice is added.
    var started: Int64 = 0
    var added: Int64 = 0
    /// Started sums whose slice is not added yet, oldest first (from `next`).
    private var waiting: [(offset: Int, count: Int)] = []
    private var next = 0
    /// Floats added per pass: a chunk of the sum stays in L1 while the ranks' parts are added.
    static let chunk = 2048
    private let scratch = UnsafeMutablePointer<Float>.allocate(capacity: NodeSums.chunk)

    /// Bytes each rank's part of the shared window needs for `count` gradients.
    public static func bytesPerRank(count: Int) -> Int { 128 + count * MemoryLayout<Float>.stride }

    /// `parts[r]`: rank r's part of a node-shared window of `bytesPerRank(count:)` bytes; every
    /// rank of `base` must be on this node, with local rank = rank. Zeroes this rank's counters;
    /// the caller must make every rank finish this (a barrier) before any sum starts.
    public init(base: Collectives, parts: [UnsafeMutableRawPointer], count: Int) {
        precondition(parts.count == base.size, "\(parts.count) shared parts for \(base.size) ranks")
        self.base = base
        self.count = count
        counters = parts.map { $0.bindMemory(to: Int64.self, capacity: 16) }
        buffers = parts.map { ($0 + 128).bindMemory(to: Float.self, capacity: max(count, 1)) }
        counters[base.rank][0] = 0
        counters[base.rank][8] = 0
    }

    deinit { scratch.deallocate() }

    /// This rank's gradient buffer (for `ParameterStore.moveGradients`); `owner` keeps the
    /// window mapped.
    public func gradientBuffer(owner: AnyObject) -> FloatBuffer {
        FloatBuffer(borrowing: buffers[rank], count: count, owner: owner)
    }

    /// The offset of `tensor` in this rank's gradient buffer, when it lies inside it.
    func offset(of tensor: Tensor) -> Int? {
        let start = tensor.data - buffers[rank]
        return start >= 0 && start + tensor.count <= count ? start : nil
    }

    public func startSum(_ tensor: Tensor) throws -> PendingSum {
        guard let offset = offset(of: tensor) else { return try base.startSum(tensor) }
        started += 1
        if next == waiting.count { waiting.removeAll(keepingCapacity: true); next = 0 }
        waiting.append((offset, tensor.count))
        segtrain_store_release(counters[rank], started)
        return NodePendingSum(owner: self, sequence: started)
    }

    public func sumInPlace(_ tensor: Tensor) throws {
        guard offset(of: tensor) != nil else { return try base.sumInPlace(tensor) }
        try startSum(tensor).wait()
    }

    public func sum(_ values: [Double]) throws -> [Double] { try base.sum(values) }

    func allReached(_ index: Int, _ sequence: Int64) -> Bool {
        counters.allSatisfy { segtrain_load_acquire($0 + index) >= sequence }
    }

    /// Adds this rank's slices of the started sums, oldest first, while every rank is ready for
    /// them.
    func progress() {
        while next < waiting.count, allReached(0, added + 1) {
            let (offset, count) = waiting[next]
            add(offset: offset, count: count)
            next += 1
            added += 1
            segtrain_store_release(counters[rank] + 8, added)
        }
    }

    /// Slice `rank` of `offset ..< offset + count`: the sum over the ranks' buffers, in rank
    /// order, written into every buffer.
    private func add(offset: Int, count: Int) {
        let slice = WorkerPool.split(count, parts: size, index: rank)
        var i = offset + slice.lowerBound
        let end = offset + slice.upperBound
        let s = scratch
        while i < end {
            let n = min(NodeSums.chunk, end - i)
            let first = buffers[0] + i
            for k in 0..<n { s[k] = first[k] }
            for r in 1..<size {
                let part = buffers[r] + i
                for k in 0..<n { s[k] += part[k] }
            }
            for r in 0..<size {
                let part = buffers[r] + i
                for k in 0..<n { part[k] = s[k] }
            }
            i += n
        }
    }
}

/// One sum in flight through `NodeSums`.
final class NodePendingSum: PendingSum {
    let owner: NodeSums
    let sequence: Int64
    private var complete = false

    init(owner: NodeSums, sequence: Int64) {
        self.owner = owner
        self.sequence = sequence
    }

    func test() throws -> Bool {
        if complete { return true }
        owner.progress()
        complete = owner.added >= sequence && owner.allReached(8, sequence)
        return complete
    }

    /// Spins (yielding the core, for ranks that share one) until every rank added its slice.
    func wait() throws {
        while try !test() { sched_yield() }
    }
}
