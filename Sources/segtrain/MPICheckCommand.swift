import ArgumentParser
import SegDistributed
import SegEngine
#if canImport(Glibc)
import Glibc
#endif

/// `segtrain mpi-check`: `MPISelfCheck` (every Communicator operation with known answers), run
/// alone (a singleton job) or under mpirun by the tests. Hidden from --help.
struct MPICheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mpi-check",
        abstract: "Check the MPI layer: broadcast, allreduce, gather, checkSame (for tests).",
        shouldDisplay: false)

    @Option(help: "Floats in the broadcast and allreduce arrays.")
    var elements = 1000
    @Option(help: "This rank holds a different value in the checkSame step: every rank must fail.")
    var mismatchRank: Int?
    @Option(help: "This rank broadcasts from an invalid root: its MPI error must abort the whole job.")
    var failRank: Int?
    @Option(help: "Elements per MPI call (default Int32.max); small values force the chunked path.")
    var chunkElements: Int?

    func validate() throws {
        if elements < 1 { throw ValidationError("--elements must be at least 1 (got \(elements))") }
        if let c = chunkElements, c < 1 { throw ValidationError("--chunk-elements must be at least 1 (got \(c))") }
        if let r = mismatchRank, r < 0 { throw ValidationError("--mismatch-rank must be >= 0 (got \(r))") }
        if let r = failRank, r < 0 { throw ValidationError("--fail-rank must be >= 0 (got \(r))") }
    }

    func run() throws {
        let comm = try Communicator.start(chunkElements: chunkElements)
        do {
            let failures = try MPISelfCheck(elements: elements, mismatchRank: mismatchRank, failRank: failRank).run(comm, say: say)
            // Every rank learns whether any rank failed, so all stop together.
            let failedRanks = try comm.allreduce(failures.isEmpty ? 0 : 1, .sum)
            if failedRanks > 0 {
                for failure in failures { fputs("segtrain: error: rank \(comm.rank): \(failure)\n", stderr) }
                try comm.finalize()
                Glibc.exit(1)
            }
            try comm.barrier()
            if comm.rank == 0 { say("mpi-check ok") }
            try comm.finalize()
        } catch let error as RankMismatchError {
            // Thrown on every rank alike: each prints its line, then all finalize together.
            fputs("segtrain: error: rank \(comm.rank): \(error)\n", stderr)
            do { try comm.finalize() } catch { comm.abort(message: "\(error)") }
            Glibc.exit(1)
        } catch {
            // Local to this rank: the others may be waiting in a collective, so abort them all.
            comm.abort(message: "\(error)")
        }
    }

    private func say(_ line: String) {
        print(line)
        fflush(stdout)
    }
}
