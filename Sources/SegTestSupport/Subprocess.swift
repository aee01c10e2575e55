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
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("segtrain-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let outURL = directory.appendingPathComponent("stdout"), errURL = directory.appendingPathComponent("stderr")
        for url in [outURL, errURL] where !FileManager.default.createFile(atPath: url.path, contents: nil) {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: url.path])
        }
        let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        process.standardOutput = out
        process.standardError = err
        let finished = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in finished.signal() }
        let start = Date()
        try process.run()
        whileRunning?(process)
        var timedOut = false
        if finished.wait(timeout: .now() + timeout) == .timedOut {
            timedOut = true
            process.terminate()
            if finished.wait(timeout: .now() + 5) == .timedOut {
                kill(process.processIdentifier, SIGKILL)
                finished.wait()
            }
        }
        let seconds = Date().timeIntervalSince(start)
        try out.close()
        try err.close()
        return ProcessResult(status: process.terminationStatus,
                             stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
                             stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "",
                             seconds: seconds, timedOut: timedOut)
    }
}
