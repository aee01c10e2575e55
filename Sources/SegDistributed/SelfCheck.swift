// `segtrain mpi-check`'s checks: a fixed sequence of every Communicator operation with known
// answers (broadcast of floats, Int, String and bytes; blocking, chunked, non-blocking and
// out-of-place allreduce; allgatherShares; scalar and array reductions; gather; checkSame), run on
// any number of ranks.

import SegEngine

public struct MPISelfCheck: Sendable {
    /// Floats in the broadcast and allreduce arrays.
    public var elements: Int
    /// This rank holds a different value in the checkSame step: every rank must fail.
    public var mismatchRank: Int?
    /// This rank broadcasts from an invalid root: its MPI error must end the job.
    public var failRank: Int?

    public init(elements: Int, mismatchRank: Int? = nil, failRank: Int? = nil) {
        self.elements = elements
        self.mismatchRank = mismatchRank
        self.failRank = failRank
    }

    /// Runs every check on every rank (`say`: progress lines); returns this rank's failures. A
    /// --mismatch-rank makes every rank throw `RankMismatchError`; --fail-rank makes that rank's MPI call fail.
    public func run(_ comm: Communicator, say: (String) -> Void) throws -> [String] {
        var failures: [String] = []
        let rank = comm.rank, size = comm.size, n = elements
        say("rank \(rank) of \(size), local \(comm.localRank) of \(comm.localSize), host \(comm.hostname)")
        for (flag, value) in [("--mismatch-rank", mismatchRank), ("--fail-rank", failRank)] {
            if let r = value, r >= size { failures.append("\(flag) \(r) but the job has \(size) ranks") }
        }

        // Broadcast: rank 0's seeded floats reach every rank bit for bit.
        let seeded = OwnedTensor(.vector(n))
        if rank == 0 {
            var rng = SplitMix64(seed: 2024, stream: 7)
            for i in 0..<n { seeded.tensor[i] = rng.nextUnitFloat() }
        } else {
            seeded.tensor.fill(.nan)
        }
        try comm.broadcast(seeded.tensor, root: rank == failRank ? size : 0)
        var rng = SplitMix64(seed: 2024, stream: 7)
        let wrongBroadcast = (0..<n).filter { seeded.tensor[$0].bitPattern != rng.nextUnitFloat().bitPattern }.count
        if wrongBroadcast > 0 { failures.append("broadcast: \(wrongBroadcast) of \(n) floats differ from rank 0's") }
        if try comm.broadcast(rank == 0 ? 123_456_789_012 : -1) != 123_456_789_012 { failures.append("broadcast of an Int") }
        if try comm.broadcast(rank == 0 ? "segtrain ✓" : "") != "segtrain ✓" { failures.append("broadcast of a String") }
        var bytes: [UInt8] = rank == 0 ? Array(0..<200).map { UInt8($0) } : [9]
        try comm.broadcast(&bytes)
        if bytes != Array(0..<200).map({ UInt8($0) }) { failures.append("broadcast of bytes") }

        // Blocking allreduce: x[i] = (i % 13) + rank sums to size * (i % 13) + size * (size - 1) / 2,
        // exact in float32. Report the calls so tests see the chunked path.
        let summed = OwnedTensor(.vector(n))
        for i in 0..<n { summed.tensor[i] = Float(i % 13 + rank) }
        let callsBefore = comm.callCount
        try comm.allreduceSum(summed.tensor)
        let calls = comm.callCount - callsBefore
        let wrongSum = (0..<n).filter { summed.tensor[$0] != Float(size * ($0 % 13) + size * (size - 1) / 2) }.count
        if wrongSum > 0 { failures.append("allreduce: \(wrongSum) of \(n) sums wrong") }
        if rank == 0 { say("allreduce: \(n) floats in \(calls) MPI calls of at most \(comm.chunkElements) elements") }

        // Non-blocking allreduce: y[i] = (i % 5) * (rank + 1) sums to (i % 5) * size * (size + 1) / 2.
        let started = OwnedTensor(.vector(n))
        for i in 0..<n { started.tensor[i] = Float((i % 5) * (rank + 1)) }
        let request = try comm.startAllreduceSum(started.tensor)
        try request.wait()
        let wrongAsync = (0..<n).filter { started.tensor[$0] != Float(($0 % 5) * size * (size + 1) / 2) }.count
        if wrongAsync > 0 { failures.append("non-blocking allreduce: \(wrongAsync) of \(n) sums wrong") }

        // The same from one buffer into another (the gradient buckets' path): the source stays as it was.
        let into = OwnedTensor(.vector(n))
        into.tensor.fill(.nan)
        for i in 0..<n { started.tensor[i] = Float((i % 5) * (rank + 1)) }
        try comm.startAllreduceSum(into.tensor, from: started.tensor).wait()
        let wrongInto = (0..<n).filter { into.tensor[$0] != Float(($0 % 5) * size * (size + 1) / 2) }.count
        if wrongInto > 0 { failures.append("non-blocking allreduce into another buffer: \(wrongInto) of \(n) sums wrong") }
        if (0..<n).contains(where: { started.tensor[$0] != Float(($0 % 5) * (rank + 1)) }) {
            failures.append("non-blocking allreduce into another buffer changed its source")
        }

        // Shares (the sharded optimizer's exchange): rank r fills its share with r + i / n, NaN
        // elsewhere; afterwards every element holds its owner's value on every rank.
        let shared = OwnedTensor(.vector(n))
        let owner = (0..<n).map { i in (0..<size).first { WorkerPool.split(n, parts: size, index: $0).contains(i) }! }
        for i in 0..<n { shared.tensor[i] = owner[i] == rank ? Float(rank) + Float(i) / Float(n) : .nan }
        let gatherCallsBefore = comm.callCount
        try comm.allgatherShares(shared.tensor)
        let gatherCalls = comm.callCount - gatherCallsBefore
        let wrongShares = (0..<n).filter { shared.tensor[$0] != Float(owner[$0]) + Float($0) / Float(n) }.count
        if wrongShares > 0 { failures.append("allgatherShares: \(wrongShares) of \(n) elements wrong") }
        if rank == 0 { say("allgatherShares: \(n) floats in \(gatherCalls) MPI calls") }

        // Scalar and small-array reductions.
        let r = Double(rank)
        if try comm.allreduce(r, .sum) != Double(size * (size - 1) / 2) { failures.append("allreduce Double sum") }
        if try comm.allreduce(r, .max) != Double(size - 1) { failures.append("allreduce Double max") }
        if try comm.allreduce(r + 0.5, .min) != 0.5 { failures.append("allreduce Double min") }
        if try comm.allreduce([rank, -rank, 1], .sum) != [size * (size - 1) / 2, -size * (size - 1) / 2, size] {
            failures.append("allreduce [Int] sum")
        }
        if try comm.allreduce([rank, -rank], .max) != [size - 1, 0] { failures.append("allreduce [Int] max") }
        if try comm.allreduce([rank, -rank], .min) != [0, 1 - size] { failures.append("allreduce [Int] min") }
        if try comm.allreduce([r, 2 * r], .max) != [Double(size - 1), Double(2 * (size - 1))] {
            failures.append("allreduce [Double] max")
        }

        // Gather names of different lengths to rank 0.
        let name = MPISelfCheck.name(rank: rank, host: comm.hostname)
        if let names = try comm.gather(name) {
            for (r, got) in names.enumerated() {
                say("gathered from rank \(r): \(got.prefix(60))")
                // Hosts differ across nodes: check the parts rank 0 can predict.
                let tail = " " + String(repeating: "x", count: 3 * r)
                if !got.hasPrefix("rank \(r) on ") || !got.hasSuffix(tail) { failures.append("gather: rank \(r)'s name") }
            }
            if names.count != size { failures.append("gather: \(names.count) names for \(size) ranks") }
        }

        // checkSame: every rank throws if --mismatch-rank holds another value.
        try comm.checkSame(0x5e67_7261_696e + (rank == mismatchRank ? 1 : 0), what: "the mpi-check value")
        return failures
    }

    /// Rank r's name, longer for higher ranks so the gathered lengths differ.
    public static func name(rank: Int, host: String) -> String {
        "rank \(rank) on \(host) " + String(repeating: "x", count: 3 * rank)
    }
}
