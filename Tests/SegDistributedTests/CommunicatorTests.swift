// SegDistributed's Communicator in process: this test process starts MPI once as a 1-rank world
// (an isolated singleton: no orted daemon) with 7 elements per MPI call, so every collective runs
// its chunked path, and checks what each call returns, how many MPI calls it made, and that MPI's
// errors come back as thrown `MPIError`s naming the call. Several ranks: SegtrainCLITests/MPITests
// (`segtrain mpi-check` under mpirun).
//
// MPI can start only once per process and its start adds OMPI_*/PMIX_* variables to the
// environment; they are removed again, so that the binaries other suites run in this process do
// not take themselves for ranks of this job.

import XCTest
import Foundation
import SegEngine
@testable import SegDistributed

final class CommunicatorTests: XCTestCase {
    /// Elements per MPI call in these tests (`Communicator.start(chunkElements:)`).
    static let chunk = 7

    /// The process's one communicator, or why it could not start.
    static let started: Result<Communicator, Error> = {
        let before = ProcessInfo.processInfo.environment
        setenv("OMPI_MCA_ess_singleton_isolated", "1", 1)
        let result = Result { try Communicator.start(chunkElements: chunk) }
        for (name, _) in ProcessInfo.processInfo.environment where before[name] == nil { unsetenv(name) }
        for (name, value) in before { setenv(name, value, 1) }
        return result
    }()

    var comm: Communicator { get throws { try CommunicatorTests.started.get() } }

    override class func tearDown() {
        if case .success(let comm) = started { try? comm.finalize() }
        super.tearDown()
    }

    /// Runs `body` and returns how many MPI calls it made.
    func calls(_ body: () throws -> Void) throws -> Int {
        let before = try comm.callCount
        try body()
        return try comm.callCount - before
    }

    func testAOneRankWorldLeavesTheEnvironmentAsItWas() throws {
        let comm = try self.comm
        XCTAssertEqual([comm.rank, comm.size, comm.localRank, comm.localSize], [0, 1, 0, 1])
        XCTAssertFalse(comm.hostname.isEmpty)
        XCTAssertEqual(comm.chunkElements, CommunicatorTests.chunk)
        let leaked = ProcessInfo.processInfo.environment.keys.filter { $0.hasPrefix("PMIX_") || $0 == "OMPI_MCA_ess" }
        XCTAssertEqual(leaked, [], "MPI's variables would reach the processes other tests start")
    }

    func testBroadcastsReturnRootsValuesInChunks() throws {
        let comm = try self.comm
        XCTAssertEqual(try comm.broadcast(-123_456_789_012, root: 0), -123_456_789_012)
        XCTAssertEqual(try comm.broadcast("rank zero's text, longer than a chunk: ü", root: 0),
                       "rank zero's text, longer than a chunk: ü")
        var bytes = (0..<20).map { UInt8($0 * 13 & 0xff) }
        let expected = bytes
        // 1 call for the length, ceil(20 / 7) = 3 for the bytes.
        XCTAssertEqual(try calls { try comm.broadcast(&bytes, root: 0) }, 1 + 3)
        XCTAssertEqual(bytes, expected)
        let tensor = OwnedTensor(.vector(15), (0..<15).map { Float($0) - 7.5 })
        // checkSame of the count, then ceil(15 / 7) = 3 calls.
        XCTAssertEqual(try calls { try comm.broadcast(tensor.tensor, root: 0) }, 1 + 3)
        XCTAssertEqual(tensor.tensor.toArray(), (0..<15).map { Float($0) - 7.5 })
    }

    func testSumsOfOneRankAreTheValuesInChunks() throws {
        let comm = try self.comm
        let values = (0..<333).map { Float($0) * 0.25 - 3 }
        let tensor = OwnedTensor(.vector(333), values)
        XCTAssertEqual(try calls { try comm.allreduceSum(tensor.tensor) }, 48, "ceil(333 / 7) calls")
        XCTAssertEqual(tensor.tensor.toArray(), values)
        XCTAssertEqual(try comm.allreduce([1.5, -2, 1e300], .sum), [1.5, -2, 1e300])
        XCTAssertEqual(try comm.allreduce([3, -4], .max), [3, -4])
        XCTAssertEqual(try comm.allreduce(-9, .min), -9)
        XCTAssertEqual(try comm.allreduce(2.5, .max), 2.5)
        // Through the protocol the trainer uses: a sum from one buffer into another, left to finish.
        let collectives: Collectives = comm
        XCTAssertEqual(try collectives.allreduceSum([0.5, 7]), [0.5, 7])
        let result = OwnedTensor(.vector(333))
        let pending = try collectives.startAllreduceSum(result.tensor, from: tensor.tensor)
        try collectives.waitAll([pending])
        XCTAssertTrue(try pending.test())
        XCTAssertEqual(result.tensor.toArray(), values)
        try collectives.allgatherShares(result.tensor)
        XCTAssertEqual(result.tensor.toArray(), values)
    }

    /// checkSame compares the maximum of the value with the maximum of its complement: every value
    /// of one rank, the extremes included, is "the same".
    func testCheckSamePassesForEveryValueOfOneRank() throws {
        let comm = try self.comm
        for value: UInt64 in [0, 1, 0x8000_0000_0000_0000, .max, 0xdead_beef_cafe_f00d] {
            XCTAssertNoThrow(try comm.checkSame(value, what: "a hash"), "\(value)")
            XCTAssertTrue(try comm.allEqual(value), "\(value)")
        }
        let mismatch = RankMismatchError(what: "the configuration hash", minimum: 0x1f, maximum: 0xab, local: 0x1f)
        XCTAssertEqual(mismatch.description, "ranks disagree on the configuration hash: values range from 0x1f to 0xab "
                       + "(this rank: 0x1f)")
    }

    func testGatherReturnsEveryRanksBytesInRounds() throws {
        let comm = try self.comm
        let bytes = (0..<20).map { UInt8(255 - $0) }
        var gathered: [[UInt8]]?
        // The length (MPI_Gather), the longest (MPI_Allreduce), ceil(20 / 7) = 3 rounds (MPI_Gatherv).
        XCTAssertEqual(try calls { gathered = try comm.gather(bytes, root: 0) }, 1 + 1 + 3)
        XCTAssertEqual(gathered, [bytes])
        XCTAssertEqual(try comm.gather([], root: 0), [[]])
        XCTAssertEqual(try comm.gather("rank 0 on this node", root: 0), ["rank 0 on this node"])
    }

    /// MPI's errors return (MPI_ERRORS_RETURN) and are thrown naming the call; misuse is refused.
    func testErrorsAreThrownNamingTheCall() throws {
        let comm = try self.comm
        XCTAssertThrowsError(try comm.broadcast(5, root: 1)) { error in
            let mpi = error as? MPIError
            XCTAssertEqual(mpi?.call, "MPI_Bcast", "\(error)")
            XCTAssertTrue("\(error)".hasPrefix("MPI_Bcast failed: ") && "\(error)".contains("MPI error code"), "\(error)")
        }
        XCTAssertThrowsError(try comm.gather([1, 2, 3], root: 2)) { error in
            XCTAssertEqual((error as? MPIError)?.call, "MPI_Gather", "\(error)")
        }
        XCTAssertThrowsError(try Communicator.start()) { error in
            XCTAssertTrue("\(error)".contains("MPI is already started"), "\(error)")
        }
        XCTAssertThrowsError(try Communicator.start(chunkElements: 0)) { error in
            XCTAssertTrue("\(error)".contains("chunk size 0 outside 1..."), "\(error)")
        }
        // The communicator still works after the errors.
        XCTAssertEqual(try comm.broadcast(42, root: 0), 42)
    }

    /// mpi-check's sequence in process: every check passes on one rank (the mismatch and failure
    /// paths need several ranks: MPITests runs them under mpirun).
    func testSelfCheckPassesOnOneRank() throws {
        let comm = try self.comm
        var lines: [String] = []
        XCTAssertEqual(try MPISelfCheck(elements: 100).run(comm, say: { lines.append($0) }), [])
        XCTAssertTrue(lines.contains { $0.hasPrefix("allreduce: 100 floats in 15 MPI calls") }, "\(lines)")
        XCTAssertEqual(try MPISelfCheck(elements: 5, failRank: 3).run(comm, say: { _ in }),
                       ["--fail-rank 3 but the job has 1 ranks"])
    }
}
