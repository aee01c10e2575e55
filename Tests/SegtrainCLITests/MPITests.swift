import XCTest
import Foundation
import SegTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Runs the built `segtrain mpi-check` alone (a singleton MPI job) and under `mpirun`, as a
/// subprocess with a time limit: a hang is killed and fails the test.
final class MPITests: SegtrainTestCase {
    typealias Result = ProcessResult
    override class var timeLimit: Double { 60 }

    /// `mpirun -np N --oversubscribe segtrain mpi-check extra...`; skips without mpirun.
    func mpiCheck(ranks: Int, _ extra: [String] = [], timeout: Double = 60) throws -> Result {
        try segtrain(["mpi-check"] + extra, ranks: ranks, timeout: timeout)
    }

    /// Every rank reports itself, the checks pass, rank 0 alone prints `mpi-check ok`.
    func assertPasses(_ r: Result, ranks: Int, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 0, "stdout:\n\(r.stdout)\nstderr:\n\(r.stderr)", file: file, line: line)
        for rank in 0..<ranks {
            // One node: the local rank and size equal the world ones.
            XCTAssertTrue(r.stdout.contains("rank \(rank) of \(ranks), local \(rank) of \(ranks), host "),
                          "rank \(rank) missing:\n\(r.stdout)", file: file, line: line)
            XCTAssertTrue(r.stdout.contains("gathered from rank \(rank): rank \(rank) on "), r.stdout, file: file, line: line)
        }
        XCTAssertFalse(r.stdout.contains("rank \(ranks) of"), r.stdout, file: file, line: line)
        XCTAssertEqual(r.stdout.components(separatedBy: "mpi-check ok").count - 1, 1, r.stdout, file: file, line: line)
        XCTAssertFalse(r.stderr.contains("segtrain: error"), r.stderr, file: file, line: line)
    }

    func testSingletonWithoutMpirun() throws {
        let r = try segtrain(["mpi-check", "--elements", "333"])
        assertPasses(r, ranks: 1)
        XCTAssertTrue(r.stdout.contains("allreduce: 333 floats in 1 MPI calls"), r.stdout)
    }

    func testSingletonRejectsARankItDoesNotHave() throws {
        let r = try segtrain(["mpi-check", "--mismatch-rank", "1"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--mismatch-rank 1 but the job has 1 ranks"), r.stderr)
    }

    func testOneTwoAndThreeRanks() throws {
        for ranks in [1, 2, 3] {
            let r = try mpiCheck(ranks: ranks, ["--elements", "\(1000 + ranks)"])
            assertPasses(r, ranks: ranks)
            XCTAssertTrue(r.stdout.contains("allreduce: \(1000 + ranks) floats in 1 MPI calls"), r.stdout)
        }
    }

    /// A chunk of 7 elements: the allreduce takes ceil(1000 / 7) = 143 calls (blocking and
    /// non-blocking, checked against the known sums), the broadcasts and gather run in chunks too.
    func testChunkedPathGivesTheSameResults() throws {
        let r = try mpiCheck(ranks: 3, ["--elements", "1000", "--chunk-elements", "7"])
        assertPasses(r, ranks: 3)
        XCTAssertTrue(r.stdout.contains("allreduce: 1000 floats in 143 MPI calls of at most 7 elements"), r.stdout)
        // Shares of 334, 333, 333 elements, 7 per rank per call: 48 rounds.
        XCTAssertTrue(r.stdout.contains("allgatherShares: 1000 floats in 48 MPI calls"), r.stdout)
        // One element per call, two ranks: every gather round moves one byte per rank.
        let one = try mpiCheck(ranks: 2, ["--elements", "10", "--chunk-elements", "1"])
        assertPasses(one, ranks: 2)
        XCTAssertTrue(one.stdout.contains("allreduce: 10 floats in 10 MPI calls of at most 1 elements"), one.stdout)
        XCTAssertTrue(one.stdout.contains("allgatherShares: 10 floats in 5 MPI calls"), one.stdout)
    }

    /// One rank holds another value: every rank prints the one-line error naming it and the job
    /// exits non-zero, quickly.
    func testMismatchFailsOnEveryRankWithoutHanging() throws {
        let r = try mpiCheck(ranks: 3, ["--mismatch-rank", "1"], timeout: 60)
        XCTAssertNotEqual(r.status, 0, r.stdout)
        for rank in 0..<3 {
            XCTAssertTrue(r.stderr.contains("segtrain: error: rank \(rank): ranks disagree on the mpi-check value"),
                          "rank \(rank):\n\(r.stderr)")
        }
        XCTAssertTrue(r.stderr.contains("(this rank: 0x5e677261696f)"), r.stderr)
        XCTAssertFalse(r.stdout.contains("mpi-check ok"), r.stdout)
        XCTAssertLessThan(r.seconds, 30)
    }

    /// An MPI call fails on one rank only (invalid root): MPI_ERRORS_RETURN gives the code back, the
    /// rank names the call and MPI's error string, and MPI_Abort ends the ranks waiting for it.
    func testAnMPIErrorOnOneRankAbortsTheJob() throws {
        let r = try mpiCheck(ranks: 3, ["--fail-rank", "2"], timeout: 60)
        XCTAssertNotEqual(r.status, 0, r.stdout)
        XCTAssertTrue(r.stderr.contains("segtrain: error: rank 2: MPI_Bcast failed: MPI_ERR_ROOT"), r.stderr)
        XCTAssertFalse(r.stdout.contains("mpi-check ok"), r.stdout)
        XCTAssertLessThan(r.seconds, 30)
    }
}
