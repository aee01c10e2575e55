import ArgumentParser
import SegDistributed
import SegEngine
#if canImport(Glibc)
import Glibc
#endif

struct Segtrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "segtrain",
        abstract: "Data-parallel UNet segmentation training on CPU clusters.",
        subcommands: [TrainCommand.self, InfoCommand.self, BenchCommand.self, SynthCommand.self, MPICheckCommand.self,
                      ReportCommand.self, PredictCommand.self, EvaluateCommand.self, ServeCommand.self, ExportCommand.self])
}

/// A failure the user can act on: printed as one line, exit code 1.
struct UserError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

// OpenBLAS's generic kernels on a CPU it does not know run at half speed: start again with better ones.
BLASKernels.restartWithBetterKernelsIfNeeded()

// Bad input gets one line naming the flag or file and the reason, never a usage dump or a trace.
if let problem = Gemm.problem {
    fputs("segtrain: error: \(problem)\n", stderr)
    exit(1)
}
do {
    var command = try Segtrain.parseAsRoot()
    try command.run()
} catch is AlreadyReported {
    exit(1)
} catch let error as UserError {
    fputs("segtrain: error: \(error.description)\n", stderr)
    exit(1)
} catch {
    let code = Segtrain.exitCode(for: error)
    if code == .success { Segtrain.exit(withError: error) }  // --help, --version
    let message = Segtrain.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
    fputs("segtrain: error: \(message)\n", stderr)
    exit(code.rawValue == 0 ? 2 : code.rawValue)
}
