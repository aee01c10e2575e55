// The base of every suite in this target: each runs the built segtrain binary (SEGTRAIN_BIN, else
// the package's build folder) as a user would, alone or under mpirun, through SegTestSupport's one
// subprocess helper (`Segtrain.run`: output in files, a time limit, then SIGTERM and SIGKILL).
// `TemporaryFolderTestCase` adds a fresh folder per test, removed after it.

import XCTest
import Foundation
import SegTestSupport

class SegtrainTestCase: XCTestCase {
    static var binary: String { Segtrain.binary(testBundleOf: SegtrainTestCase.self) }
    /// Open MPI refuses root without these (tests run as root in CI containers).
    static let mpiEnvironment = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]
    /// Seconds a run may take before it is killed (and fails the test), unless a call says otherwise.
    class var timeLimit: Double { 120 }

    /// A missing binary fails the test (once) and skips the rest of it; it never passes silently.
    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
            XCTFail("segtrain not built at \(Self.binary); run swift build or set SEGTRAIN_BIN")
            throw XCTSkip("no binary")
        }
    }

    /// `mpirun` on PATH; skips the test without it.
    func mpirun() throws -> String {
        guard let path = Segtrain.onPath("mpirun") else {
            throw XCTSkip("mpirun is not on PATH; install openmpi-bin (scripts/install-deps.sh)")
        }
        return path
    }

    /// The command line that runs segtrain: alone (`ranks` 0) or under `mpirun -np ranks
    /// --oversubscribe` (Open MPI counts slots by cores, and the machine may have fewer).
    func command(ranks: Int) throws -> (executable: String, prefix: [String]) {
        ranks == 0 ? (Self.binary, []) : (try mpirun(), ["-np", "\(ranks)", "--oversubscribe", Self.binary])
    }

    /// Runs `executable` (with Open MPI's root variables and `environment`). A run that outlives
    /// `timeout` seconds (default `timeLimit`) is killed and fails the test, and so does a Swift
    /// trap ("Fatal error" or "Swift runtime failure" on stderr: bad input must give one line, never a trap). `whileRunning`
    /// is called once the process has started (to signal or kill it).
    func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], timeout: Double? = nil,
             file: StaticString = #filePath, line: UInt = #line,
             whileRunning: ((Process) -> Void)? = nil) throws -> ProcessResult {
        let limit = timeout ?? Self.timeLimit
        let result = try Segtrain.run(executable, arguments,
                                      environment: Self.mpiEnvironment.merging(environment) { _, new in new },
                                      timeout: limit, whileRunning: whileRunning)
        let commandLine = ([executable] + arguments).joined(separator: " ")
        XCTAssertFalse(result.timedOut, "\(commandLine): still running after \(limit) s, killed\nstdout:\n\(result.stdout)\n"
                       + "stderr:\n\(result.stderr)", file: file, line: line)
        // A debug build's trap prints "Fatal error", a release build's "Swift runtime failure".
        XCTAssertFalse(result.stderr.contains("Fatal error") || result.stderr.contains("Swift runtime failure"),
                       "\(commandLine): a trap\n\(result.stderr)", file: file, line: line)
        return result
    }

    /// `segtrain arguments`, alone or on `ranks` ranks under mpirun (see `run`).
    func segtrain(_ arguments: [String], ranks: Int = 0, environment: [String: String] = [:], timeout: Double? = nil,
                  file: StaticString = #filePath, line: UInt = #line,
                  whileRunning: ((Process) -> Void)? = nil) throws -> ProcessResult {
        let (executable, prefix) = try command(ranks: ranks)
        return try run(executable, prefix + arguments, environment: environment, timeout: timeout, file: file, line: line,
                       whileRunning: whileRunning)
    }
}

class TemporaryFolderTestCase: SegtrainTestCase {
    /// A word in the temporary folder's name (which suite made it).
    class var folderTag: String { "run" }
    /// This test's temporary folder.
    var folder = ""

    override func setUpWithError() throws {
        try super.setUpWithError()
        folder = NSTemporaryDirectory() + "segtrain-\(Self.folderTag)-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if !folder.isEmpty, FileManager.default.fileExists(atPath: folder) {
            try FileManager.default.removeItem(atPath: folder)
        }
    }
}
