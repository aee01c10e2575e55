// A command's life under MPI, written once for train and evaluate: start, run on every rank,
// finalize. A failure every rank raises together is printed once, by rank 0; any other failure may
// be one rank's alone, so it ends the whole job instead of leaving the others waiting.

import Foundation
import SegEngine
#if canImport(Glibc)
import Glibc
#endif

/// A failure rank 0 has already printed: exit non-zero without printing it again.
public struct AlreadyReported: Error {}

/// MPI could not start.
public struct StartError: Error, CustomStringConvertible {
    public let description: String
}

extension Communicator {
    /// Starts MPI, runs `body` on every rank and finalizes. An error that every rank throws alike
    /// (`RaisedOnEveryRank`: ranks out of sync, a shared data error) is printed by rank 0 before
    /// MPI_Finalize, which no rank leaves before all have entered, so no rank exits (and makes
    /// mpirun kill the job) before the message is out; then `AlreadyReported` is thrown. Any other
    /// error aborts every rank when there are others, else it is rethrown.
    public static func runJob(_ body: (Communicator) throws -> Void) throws {
        let communicator: Communicator
        do { communicator = try Communicator.start() } catch { throw StartError(description: "cannot start MPI: \(error)") }
        do {
            try body(communicator)
            try communicator.finalize()
        } catch {
            if error is RaisedOnEveryRank {
                if communicator.rank == 0 { fputs("segtrain: error: \(error)\n", stderr) }
                try? communicator.finalize()
                throw AlreadyReported()
            }
            if communicator.size > 1 { communicator.abort(code: 1, message: "\(error)") }
            throw error
        }
    }
}
