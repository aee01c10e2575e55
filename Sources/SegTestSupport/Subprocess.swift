// Running the built `segtrain` binary from tests, as a user would: output captured in temporary
// files (no pipe fills up or is held open by a grandchild such as an MPI rank), a time limit after
// which the process gets SIGTERM (mpirun forwards it to its ranks) and then SIGKILL.
// A library for test targets only; the segtrain executable does not link it.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct ProcessResult {
    public let status: Int32
    public let stdout: String
    public let stderr: String
    public let seconds: Double
    /// The process outlived its time limit and was killed.
    public let timedOut: Bool
    /// It ended by a signal (a trap is SIGILL or SIGTRAP, the OOM killer's SIGKILL), not by exit.
    public var signalled = false
}

public enum Segtrain {
    /// The binary under test: `SEGTRAIN_BIN`, else `segtrain` next to the test bundle
    /// (.build/<config>/segtrainPackageTests.xctest -> .build/<config>/segtrain).
    public static func binary(testBundleOf type: AnyClass) -> String {
        if let path = ProcessInfo.processInfo.environment["SEGTRAIN_BIN"] { return path }
        return Bundle(for: type).bundleURL.deletingLastPathComponent().appendingPathComponent("segtrain").path
    }

    /// `name` found on PATH, or nil.
    public static func onPath(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs `executable` like `run`, and once `condition` holds (polled every 20 ms) sends it
    /// `signal`: how tests play Slurm's pre-emption. `signalled` tells whether the signal was sent
    /// before the process ended on its own.
    public static func runAndSignal(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                                    signal: Int32, when condition: @escaping () -> Bool,
                                    timeout: Double = 120) throws -> (result: ProcessResult, signalled: Bool) {
        var signalled = false
        let result = try run(executable, arguments, environment: environment, timeout: timeout) { process in
            while process.isRunning {
                if condition() {
                    kill(process.processIdentifier, signal)
                    signalled = true
                    return
                }
                usleep(20_000)
            }
        }
        return (result, signalled)
    }

    /// Runs `executable` with `arguments` and extra `environment`; see the file comment.
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                           timeout: Double = 120, whileRunning: ((Process) -> Void)? = nil) throws -> ProcessResult {
        let start = Date()
        let running = try RunningProcess(executable, arguments, environment: environment)
        defer { running.removeFiles() }
        whileRunning?(running.process)
        let timedOut = !running.waitForExit(within: timeout)
        if timedOut { running.stop() }
        return ProcessResult(status: running.process.terminationStatus, stdout: running.stdout, stderr: running.stderr,
                             seconds: Date().timeIntervalSince(start), timedOut: timedOut,
                             signalled: running.process.terminationReason == .uncaughtSignal)
    }
}

/// A started process whose stdout and stderr go to files in a temporary folder of its own: what
/// `Segtrain.run` waits for, and what a test talks to while it runs (`segtrain serve`).
public final class RunningProcess: @unchecked Sendable {
    public let process = Process()
    private let directory: URL
    private let finished = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var exited = false

    /// Starts `executable` with `arguments`, this process's environment and `environment` over it.
    public init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("segtrain-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let outURL = directory.appendingPathComponent("stdout"), errURL = directory.appendingPathComponent("stderr")
        for url in [outURL, errURL] where !FileManager.default.createFile(atPath: url.path, contents: nil) {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: url.path])
        }
        let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        process.standardOutput = out
        process.standardError = err
        process.terminationHandler = { [finished] _ in finished.signal() }
        try process.run()
        // The child holds its own copies of the descriptors.
        try out.close()
        try err.close()
    }

    /// What the process wrote so far.
    public var stdout: String { read("stdout") }
    public var stderr: String { read("stderr") }

    private func read(_ name: String) -> String {
        (try? String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)) ?? ""
    }

    /// True once the process has ended, waiting at most `seconds` for it (nil: as long as it takes).
    @discardableResult
    public func waitForExit(within seconds: Double?) -> Bool {
        if lock.withLock({ exited }) { return true }
        if let seconds {
            if finished.wait(timeout: .now() + seconds) == .timedOut { return false }
        } else {
            finished.wait()
        }
        lock.withLock { exited = true }
        return true
    }

    /// Sends `signal`; the exit status once the process has ended, nil if it outlives `within` seconds.
    public func signal(_ signal: Int32, within seconds: Double) -> Int32? {
        if !waitForExit(within: 0) { kill(process.processIdentifier, signal) }
        return waitForExit(within: seconds) ? process.terminationStatus : nil
    }

    /// Ends the process if it still runs: SIGTERM (mpirun forwards it to its ranks), then SIGKILL
    /// after `grace` seconds; returns once it has ended.
    public func stop(grace: Double = 5) {
        if signal(SIGTERM, within: grace) == nil {
            kill(process.processIdentifier, SIGKILL)
            waitForExit(within: nil)
        }
    }

    /// Removes the output files (read `stdout` and `stderr` first).
    public func removeFiles() {
        try? FileManager.default.removeItem(at: directory)
    }
}
