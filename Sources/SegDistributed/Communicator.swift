// The MPI layer: one `Communicator` over MPI_COMM_WORLD (plus the ranks on this node).
//
// Error policy (docs/DISTRIBUTED.md): the world communicator returns errors (MPI_ERRORS_RETURN)
// instead of aborting, every MPI return code is checked, and a failure throws an `MPIError` naming
// the call and MPI's own error string. Where throwing is impossible (a `Request` dropped without
// `wait()`), the whole job is aborted with a one-line message. A thrown error is local to a rank:
// callers that cannot agree on it with the other ranks must `abort`, never just exit, or the
// other ranks would wait forever in their next collective. `checkSame` is the exception: every
// rank sees the same result and throws the same `RankMismatchError`.
//
// Threading: MPI is started with MPI_THREAD_FUNNELED; call the communicator from the main thread
// only (worker pools may run meanwhile, but must not call MPI).

import CMPI
import CSupport
import SegEngine
#if canImport(Glibc)
import Glibc
#endif

/// An MPI call returned an error code.
public struct MPIError: Error, CustomStringConvertible {
    /// The MPI function, e.g. "MPI_Allreduce".
    public let call: String
    public let code: Int32
    /// MPI_Error_string of `code`.
    public let message: String

    public var description: String { "\(call) failed: \(message) (MPI error code \(code))" }
}

/// Ranks hold different values of something that must be the same everywhere (`checkSame`).
/// Thrown on every rank, so no rank is left waiting.
public struct RankMismatchError: RaisedOnEveryRank, CustomStringConvertible {
    public let what: String
    public let minimum: UInt64
    public let maximum: UInt64
    /// This rank's value.
    public let local: UInt64

    public var description: String {
        "ranks disagree on \(what): values range from \(hex(minimum)) to \(hex(maximum)) (this rank: \(hex(local)))"
    }

    private func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
}

/// A misuse the communicator detects itself (started twice, thread level too low, ...).
public struct CommunicatorError: Error, CustomStringConvertible {
    public let description: String
}

/// Reduction operation of `allreduce`.
public enum ReduceOperation: Sendable {
    case sum, max, min

    var handle: MPI_Op {
        switch self {
        case .sum: return cmpi_sum()
        case .max: return cmpi_max()
        case .min: return cmpi_min()
        }
    }
}

/// The world communicator of this process. Start it once with `start()`, `finalize()` at the end.
/// Every collective must be called by every rank in the same order with the same counts.
public final class Communicator {
    /// Largest element count passed to one MPI call: MPI counts are `Int32`, so bigger buffers go
    /// in several calls. Lowered (`start(chunkElements:)`, `segtrain mpi-check --chunk-elements`)
    /// only to test the chunked path.
    static let defaultChunkElements = Int(Int32.max)

    /// This rank in MPI_COMM_WORLD and the number of ranks.
    public let rank: Int
    public let size: Int
    /// This rank among the ranks on the same node (MPI_Comm_split_type SHARED), and their number.
    public let localRank: Int
    public let localSize: Int
    /// MPI_Get_processor_name: the node's name.
    public let hostname: String
    /// Elements per MPI call (see `defaultChunkElements`).
    public let chunkElements: Int
    /// MPI communication calls issued so far by this communicator (a chunked allreduce counts each
    /// chunk): lets tests see the chunked path run.
    public private(set) var callCount = 0

    private let world: MPI_Comm
    private var node: MPI_Comm?
    /// `allgatherShares`'s counts and displacements (one per rank), kept so a step allocates nothing.
    private var shareCounts: [Int32], shareOffsets: [Int32]
    private var finalized = false

    private init(world: MPI_Comm, node: MPI_Comm, rank: Int, size: Int, localRank: Int, localSize: Int,
                 hostname: String, chunkElements: Int) {
        self.world = world; self.node = node
        self.rank = rank; self.size = size
        self.localRank = localRank; self.localSize = localSize
        self.hostname = hostname; self.chunkElements = chunkElements
        shareCounts = Array(repeating: 0, count: size); shareOffsets = shareCounts
    }

    // MARK: - Start and stop

    /// Starts MPI (MPI_Init_thread, FUNNELED) and sets MPI_ERRORS_RETURN on the world communicator.
    /// Without `mpirun` the process is a singleton job of size 1.
    /// - Parameter chunkElements: elements per MPI call, at most Int32.max (lower only in tests).
    public static func start(chunkElements: Int? = nil) throws -> Communicator {
        let chunk = chunkElements ?? defaultChunkElements
        guard chunk >= 1 && chunk <= defaultChunkElements else {
            throw CommunicatorError(description: "chunk size \(chunk) outside 1...\(defaultChunkElements)")
        }
        var flag: Int32 = 0
        try check(MPI_Initialized(&flag), "MPI_Initialized")
        if flag != 0 { throw CommunicatorError(description: "MPI is already started; start one Communicator per process") }

        // Open MPI's non-blocking allreduce (libnbc) mallocs a scratch buffer as large as each
        // bucket (1 MiB) and frees it when the sum is done. With glibc's defaults those buffers came
        // now and then from fresh mmaps, or from heap pages trimmed back to the kernel at a free:
        // `segtrain bench` under `mpirun -np 2` counted 29 to 400 page faults per step on the worse
        // rank in four runs, and 2,900 (11 MiB of zeroed pages) in one. Buffers below 32 MiB now
        // come from the heap, and up to 64 MiB of freed heap top stays mapped (0 to 47 in four
        // runs). The engine allocates its own buffers once (plans, arenas); peak RSS is unchanged.
        segtrain_keep_freed_memory_mapped()
        var provided: Int32 = 0
        try check(MPI_Init_thread(nil, nil, cmpi_thread_funneled(), &provided), "MPI_Init_thread")
        let world: MPI_Comm = cmpi_comm_world()
        try check(MPI_Comm_set_errhandler(world, cmpi_errors_return()), "MPI_Comm_set_errhandler")
        if provided < cmpi_thread_funneled() {
            throw CommunicatorError(description: "MPI_Init_thread provided thread level \(provided), segtrain needs MPI_THREAD_FUNNELED")
        }

        var rank: Int32 = 0, size: Int32 = 0
        try check(MPI_Comm_rank(world, &rank), "MPI_Comm_rank")
        try check(MPI_Comm_size(world, &size), "MPI_Comm_size")

        var node: MPI_Comm? = nil
        try check(MPI_Comm_split_type(world, cmpi_comm_type_shared(), rank, cmpi_info_null(), &node),
                  "MPI_Comm_split_type")
        guard let node else { throw CommunicatorError(description: "MPI_Comm_split_type returned no communicator") }
        try check(MPI_Comm_set_errhandler(node, cmpi_errors_return()), "MPI_Comm_set_errhandler")
        var localRank: Int32 = 0, localSize: Int32 = 0
        try check(MPI_Comm_rank(node, &localRank), "MPI_Comm_rank")
        try check(MPI_Comm_size(node, &localSize), "MPI_Comm_size")

        var name = [CChar](repeating: 0, count: Int(cmpi_max_processor_name()) + 1)
        var length: Int32 = 0
        try check(MPI_Get_processor_name(&name, &length), "MPI_Get_processor_name")
        let hostname = String(decoding: name.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)

        return Communicator(world: world, node: node, rank: Int(rank), size: Int(size),
                            localRank: Int(localRank), localSize: Int(localSize),
                            hostname: hostname, chunkElements: chunk)
    }

    /// Frees the node communicator and calls MPI_Finalize. Every rank must call it. Idempotent.
    /// Never called from deinit: MPI_Finalize is collective and belongs at a known point.
    public func finalize() throws {
        if finalized { return }
        finalized = true
        if node != nil {
            try Communicator.check(MPI_Comm_free(&node), "MPI_Comm_free")
        }
        try Communicator.check(MPI_Finalize(), "MPI_Finalize")
    }

    /// Prints `segtrain: rank R: message` on stderr and aborts every rank of the job (MPI_Abort).
    public func abort(code: Int32 = 1, message: String) -> Never {
        Communicator.abortJob(code: code, message: "rank \(rank): \(message)")
    }

    static func abortJob(code: Int32, message: String) -> Never {
        fputs("segtrain: error: \(message)\n", stderr)
        let status = MPI_Abort(cmpi_comm_world(), code)
        // MPI_Abort does not return when it works.
        fputs("segtrain: error: MPI_Abort failed: \(errorString(status))\n", stderr)
        exit(code == 0 ? 1 : code)
    }

    // MARK: - Errors

    /// Throws an `MPIError` unless `code` is MPI_SUCCESS.
    static func check(_ code: Int32, _ call: @autoclosure () -> String) throws {
        if code != cmpi_success() {
            throw MPIError(call: call(), code: code, message: errorString(code))
        }
    }

    /// Aborts the job unless `code` is MPI_SUCCESS: for places that cannot throw.
    static func checkOrAbort(_ code: Int32, _ call: @autoclosure () -> String) {
        if code != cmpi_success() {
            abortJob(code: 1, message: "\(call()) failed: \(errorString(code)) (MPI error code \(code))")
        }
    }

    /// MPI_Error_string of `code`.
    static func errorString(_ code: Int32) -> String {
        var text = [CChar](repeating: 0, count: Int(cmpi_max_error_string()) + 1)
        var length: Int32 = 0
        guard MPI_Error_string(code, &text, &length) == cmpi_success() else {
            return "unknown MPI error code \(code)"
        }
        return String(decoding: text.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private func check(_ code: Int32, _ call: @autoclosure () -> String) throws {
        callCount += 1
        try Communicator.check(code, call())
    }

    /// Calls `body(offset, count)` for consecutive chunks of at most `chunkElements` of `count`.
    private func forEachChunk(_ count: Int, _ body: (Int, Int32) throws -> Void) rethrows {
        var offset = 0
        while offset < count {
            let n = min(chunkElements, count - offset)
            try body(offset, Int32(n))
            offset += n
        }
    }

    // MARK: - Barrier, broadcast

    /// MPI_Barrier on the world communicator.
    public func barrier() throws {
        try check(MPI_Barrier(world), "MPI_Barrier")
    }

    /// Broadcasts `count` elements of `elementSize` bytes at `pointer` from `root`, in chunks.
    private func broadcastRaw(_ pointer: UnsafeMutableRawPointer?, count: Int, elementSize: Int,
                              type: MPI_Datatype, root: Int) throws {
        guard let pointer else { return }
        try forEachChunk(count) { offset, n in
            try check(MPI_Bcast(pointer + offset * elementSize, n, type, Int32(root), world), "MPI_Bcast")
        }
    }

    /// Broadcasts an Int from `root`; returns root's value on every rank.
    public func broadcast(_ value: Int, root: Int = 0) throws -> Int {
        var v = Int64(value)
        try check(MPI_Bcast(&v, 1, cmpi_int64(), Int32(root), world), "MPI_Bcast")
        return Int(v)
    }

    /// Broadcasts root's bytes; other ranks' arrays are replaced (any length on entry).
    public func broadcast(_ bytes: inout [UInt8], root: Int = 0) throws {
        let count = try broadcast(bytes.count, root: root)
        if rank != root { bytes = [UInt8](repeating: 0, count: count) }
        try bytes.withUnsafeMutableBytes { raw in
            try broadcastRaw(raw.baseAddress, count: count, elementSize: 1, type: cmpi_byte(), root: root)
        }
    }

    /// Broadcasts a fixed-size byte buffer from `root`. Every rank must pass the same size
    /// (checked with `checkSame` first, so a mismatch throws on every rank instead of hanging).
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int = 0) throws {
        try checkSame(UInt64(buffer.count), what: "byte count of a broadcast")
        try broadcastRaw(buffer.baseAddress, count: buffer.count, elementSize: 1, type: cmpi_byte(), root: root)
    }

    /// Broadcasts root's string; returns it on every rank.
    public func broadcast(_ string: String, root: Int = 0) throws -> String {
        var bytes = Array(string.utf8)
        try broadcast(&bytes, root: root)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Broadcasts a float buffer from `root` in place. Every rank must pass the same count
    /// (checked with `checkSame` first: a mismatch throws on every rank).
    public func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int = 0) throws {
        try checkSame(UInt64(buffer.count), what: "element count of a float broadcast")
        try broadcastRaw(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count,
                         elementSize: MemoryLayout<Float>.stride, type: cmpi_float(), root: root)
    }

    /// Broadcasts a tensor's elements from `root` in place (e.g. the initial parameters).
    public func broadcast(_ tensor: Tensor, root: Int = 0) throws {
        try broadcast(tensor.buffer, root: root)
    }

    // MARK: - Allreduce

    /// Sums `buffer` over all ranks, in place (MPI_Allreduce, MPI_IN_PLACE), in chunks.
    /// Every rank must pass the same count; this is the hot path, so it is not checked here
    /// (check the parameter count once with `checkSame`).
    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard let base = buffer.baseAddress else { return }
        try forEachChunk(buffer.count) { offset, n in
            try check(MPI_Allreduce(UnsafeRawPointer(cmpi_in_place()), base + offset, n, cmpi_float(), cmpi_sum(), world),
                      "MPI_Allreduce")
        }
    }

    /// Sums a tensor over all ranks, in place (e.g. the gradients).
    public func allreduceSum(_ tensor: Tensor) throws {
        try allreduceSum(tensor.buffer)
    }

    /// Starts summing `source` over all ranks into `buffer` (MPI_Iallreduce, one request per chunk;
    /// without `source`, `buffer` in place) and returns at once. Both must stay alive and untouched
    /// until `wait()` returns. With a separate source, Open MPI's non-blocking allreduce neither
    /// copies the buffer aside first (in place it does, on every rank, when ceil(log2 ranks) is
    /// odd) nor is held to its binomial tree for 4 ranks or more (in place it always is).
    public func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>,
                                  from source: UnsafeBufferPointer<Float>? = nil) throws -> Request {
        precondition(source == nil || source!.count == buffer.count, "the source and the result differ in size")
        let request = Request()
        guard let base = buffer.baseAddress else { return request }
        try forEachChunk(buffer.count) { offset, n in
            var handle: MPI_Request? = cmpi_request_null()
            let send = source.map { UnsafeRawPointer($0.baseAddress! + offset) } ?? UnsafeRawPointer(cmpi_in_place())
            try check(MPI_Iallreduce(send, base + offset, n, cmpi_float(), cmpi_sum(), world, &handle), "MPI_Iallreduce")
            request.handles.append(handle)
        }
        return request
    }

    /// Every rank's share of `buffer` (rank r's is `WorkerPool.split(count, parts: size, index: r)`)
    /// from that rank to all the others, in place (MPI_Allgatherv, in rounds of at most
    /// `chunkElements` per rank): the sharded optimizer update's exchange of the new weights.
    public func allgatherShares(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard size > 1, let base = buffer.baseAddress else { return }
        guard buffer.count <= Int(Int32.max) else {
            throw MPIError(call: "MPI_Allgatherv", code: 0,
                           message: "\(buffer.count) elements, more than its 32-bit displacements address")
        }
        let count = buffer.count, largest = WorkerPool.split(count, parts: size, index: 0).count
        // Round k: rank r sends up to chunkElements of its share from share.lowerBound + done, with
        // displacements counted from base + done (rank 0's share is the largest).
        for done in stride(from: 0, to: largest, by: chunkElements) {
            for r in 0..<size {
                let share = WorkerPool.split(count, parts: size, index: r)
                shareCounts[r] = Int32(max(0, min(chunkElements, share.count - done)))
                shareOffsets[r] = Int32(share.lowerBound)
            }
            try shareCounts.withUnsafeMutableBufferPointer { counts in
                try shareOffsets.withUnsafeMutableBufferPointer { offsets in
                    try check(MPI_Allgatherv(UnsafeRawPointer(cmpi_in_place()), 0, cmpi_float(), base + done,
                                             counts.baseAddress, offsets.baseAddress, cmpi_float(), world), "MPI_Allgatherv")
                }
            }
        }
    }

    /// `allgatherShares` of a tensor's elements.
    public func allgatherShares(_ tensor: Tensor) throws { try allgatherShares(tensor.buffer) }

    /// `startAllreduceSum` of a tensor's elements (of `source`'s into `tensor`'s, when given).
    public func startAllreduceSum(_ tensor: Tensor, from source: Tensor? = nil) throws -> Request {
        try startAllreduceSum(tensor.buffer, from: source.map { UnsafeBufferPointer($0.buffer) })
    }

    /// Reduces `count` elements at `pointer` in place, in chunks.
    private func allreduceRaw(_ pointer: UnsafeMutableRawPointer?, count: Int, elementSize: Int,
                              type: MPI_Datatype, _ operation: ReduceOperation) throws {
        guard let pointer else { return }
        try forEachChunk(count) { offset, n in
            try check(MPI_Allreduce(UnsafeRawPointer(cmpi_in_place()), pointer + offset * elementSize, n, type,
                                    operation.handle, world), "MPI_Allreduce")
        }
    }

    /// Sum, maximum or minimum of a Double over all ranks.
    public func allreduce(_ value: Double, _ operation: ReduceOperation) throws -> Double {
        try allreduce([value], operation)[0]
    }

    /// Element-wise sum, maximum or minimum of Double arrays (same count on every rank).
    public func allreduce(_ values: [Double], _ operation: ReduceOperation) throws -> [Double] {
        var result = values
        try result.withUnsafeMutableBytes { raw in
            try allreduceRaw(raw.baseAddress, count: values.count, elementSize: MemoryLayout<Double>.stride,
                             type: cmpi_double(), operation)
        }
        return result
    }

    /// Sum, maximum or minimum of an Int over all ranks.
    public func allreduce(_ value: Int, _ operation: ReduceOperation) throws -> Int {
        try allreduce([value], operation)[0]
    }

    /// Element-wise sum, maximum or minimum of Int arrays (same count on every rank).
    public func allreduce(_ values: [Int], _ operation: ReduceOperation) throws -> [Int] {
        var result = values.map { Int64($0) }
        try result.withUnsafeMutableBytes { raw in
            try allreduceRaw(raw.baseAddress, count: values.count, elementSize: MemoryLayout<Int64>.stride,
                             type: cmpi_int64(), operation)
        }
        return result.map { Int($0) }
    }

    /// Throws `RankMismatchError` on every rank unless all ranks pass the same `value` (a
    /// configuration hash, a parameter count). One allreduce MAX of (value, ~value): the maximum
    /// and, complemented, the minimum.
    public func checkSame(_ value: UInt64, what: String) throws {
        var pair: [UInt64] = [value, ~value]
        try pair.withUnsafeMutableBytes { raw in
            try check(MPI_Allreduce(UnsafeRawPointer(cmpi_in_place()), raw.baseAddress, 2, cmpi_uint64(), cmpi_max(), world),
                      "MPI_Allreduce")
        }
        let maximum = pair[0], minimum = ~pair[1]
        if minimum != maximum {
            throw RankMismatchError(what: what, minimum: minimum, maximum: maximum, local: value)
        }
    }

    // MARK: - Gather

    /// Gathers every rank's bytes (any length, may differ) to `root`: returns them in rank order
    /// on `root`, nil elsewhere. MPI_Gather of the lengths, then MPI_Gatherv in rounds of at most
    /// max(1, chunkElements / size) bytes per rank, so counts and displacements fit in Int32.
    public func gather(_ bytes: [UInt8], root: Int = 0) throws -> [[UInt8]]? {
        let isRoot = rank == root
        var myLength = Int64(bytes.count)
        var lengths = [Int64](repeating: 0, count: isRoot ? size : 0)
        try lengths.withUnsafeMutableBytes { raw in
            try check(MPI_Gather(&myLength, 1, cmpi_int64(), raw.baseAddress, 1, cmpi_int64(), Int32(root), world),
                      "MPI_Gather")
        }
        let longest = try allreduce(bytes.count, .max)
        let perRound = max(1, chunkElements / size)
        var result = [[UInt8]](repeating: [], count: isRoot ? size : 0)
        var counts = [Int32](repeating: 0, count: size), displacements = [Int32](repeating: 0, count: size)
        var received = [UInt8]()
        var start = 0
        while start < longest {
            let mine = Int32(max(0, min(perRound, bytes.count - start)))
            if isRoot {
                var total = 0
                for r in 0..<size {
                    counts[r] = Int32(max(0, min(perRound, Int(lengths[r]) - start)))
                    displacements[r] = Int32(total)
                    total += Int(counts[r])
                }
                received = [UInt8](repeating: 0, count: max(total, 1))
            }
            try bytes.withUnsafeBytes { send in
                try received.withUnsafeMutableBytes { receive in
                    let sendPointer = mine > 0 ? send.baseAddress! + start : send.baseAddress
                    try check(MPI_Gatherv(sendPointer, mine, cmpi_byte(), receive.baseAddress, counts, displacements,
                                          cmpi_byte(), Int32(root), world), "MPI_Gatherv")
                }
            }
            if isRoot {
                for r in 0..<size {
                    let from = Int(displacements[r])
                    result[r].append(contentsOf: received[from..<from + Int(counts[r])])
                }
            }
            start += perRound
        }
        return isRoot ? result : nil
    }

    /// Gathers every rank's string to `root` (rank order on root, nil elsewhere).
    public func gather(_ string: String, root: Int = 0) throws -> [String]? {
        try gather(Array(string.utf8), root: root)?.map { String(decoding: $0, as: UTF8.self) }
    }
}

/// Outstanding non-blocking operations (one MPI request per chunk). `wait()` before touching the
/// buffer; a request dropped without `wait()` waits in deinit and aborts the job on failure (an
/// active collective request cannot be freed).
public final class Request {
    fileprivate var handles: [MPI_Request?] = []
    public private(set) var isComplete = false

    fileprivate init() {}

    /// True when every chunk is done (MPI_Testall; the call also lets MPI make progress on them).
    public func test() throws -> Bool {
        if isComplete { return true }
        var flag: Int32 = 0
        if !handles.isEmpty {
            try Communicator.check(MPI_Testall(Int32(handles.count), &handles, &flag, cmpi_statuses_ignore()), "MPI_Testall")
        } else {
            flag = 1
        }
        if flag != 0 { isComplete = true }
        return isComplete
    }

    /// Waits for every chunk (MPI_Waitall). Idempotent.
    public func wait() throws {
        if isComplete { return }
        isComplete = true
        if handles.isEmpty { return }
        let count = Int32(handles.count)
        try Communicator.check(MPI_Waitall(count, &handles, cmpi_statuses_ignore()), "MPI_Waitall")
    }

    deinit {
        if !isComplete {
            isComplete = true
            if !handles.isEmpty {
                Communicator.checkOrAbort(MPI_Waitall(Int32(handles.count), &handles, cmpi_statuses_ignore()),
                                          "MPI_Waitall")
            }
        }
    }
}

// MARK: - The training loop's collectives

extension Request: PendingSum {}

/// The communicator is what data-parallel training sums and exchanges through (SegEngine's
/// `Collectives`, in the same words as the MPI calls above).
extension Communicator: Collectives {
    /// MPI_Allreduce(SUM) of a few doubles.
    public func allreduceSum(_ values: [Double]) throws -> [Double] { try allreduce(values, .sum) }

    /// In place (MPI_IN_PLACE), allocating nothing: SyncBatchNorm's statistics.
    public func allreduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws {
        try allreduceRaw(values.baseAddress.map { UnsafeMutableRawPointer($0) }, count: values.count, elementSize: MemoryLayout<Double>.stride,
                         type: cmpi_double(), .sum)
    }

    /// `startAllreduceSum(_:from:)` above, as the protocol's `PendingSum`.
    public func startAllreduceSum(_ result: Tensor, from source: Tensor) throws -> PendingSum {
        let request: Request = try startAllreduceSum(result, from: Optional(source))
        return request
    }
}
