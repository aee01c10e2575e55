// Rank 0's progress display during training: a bar redrawn on a terminal, a line every few
// seconds in a log (Slurm, pipes).

import SegEngine
#if canImport(Glibc)
import Glibc
#endif

public enum ProgressStyle: String, CaseIterable, Sendable {
    /// The bar on a terminal outside a launcher, lines otherwise.
    case auto, bar, lines
}

/// Rank 0's progress during an epoch: on a terminal a bar redrawn in place after every step; else
/// (Slurm logs, pipes) a plain line every `logEvery` seconds.
public final class Progress {
    let epochs: Int
    let globalBatch: Int
    let logEvery: Double
    let terminal: Bool

    /// A terminal, and not under mpirun or Slurm: their launchers give each rank a pseudo-terminal
    /// even when the job's output goes to a file, where a redrawn bar would be garbage.
    static var onTerminal: Bool {
        let names = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_JOB_ID"]
        let launched = names.contains { name in getenv(name) != nil }
        return isatty(STDOUT_FILENO) != 0 && !launched
    }
    private var lastLine = monotonicSeconds()
    private var drawn = false

    public init(epochs: Int, globalBatch: Int, logEvery: Double, style: ProgressStyle) {
        self.epochs = epochs
        self.globalBatch = globalBatch
        self.logEvery = logEvery
        terminal = style == .bar || (style == .auto && Progress.onTerminal)
    }

    public func step(_ info: Trainer.StepInfo) {
        let done = info.batch + 1
        let perStep = info.seconds / Double(max(done, 1))
        let eta = Int((Double(info.batches - done) * perStep).rounded())
        let loss = info.loss.map { fixed($0, 4) } ?? "skipped"
        let speed = fixed(Double(globalBatch) / max(perStep, 1e-9), 1)
        let time = "\(eta / 60):" + (eta % 60 < 10 ? "0" : "") + "\(eta % 60)"
        if terminal {
            let width = 24, filled = width * done / max(info.batches, 1)
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            print("\repoch \(info.epoch)/\(epochs) [\(bar)] \(done)/\(info.batches)  loss \(loss)  \(speed) img/s  ETA \(time)  ",
                  terminator: "")
            drawn = true
            fflush(stdout)
        } else if monotonicSeconds() - lastLine >= logEvery {
            print("epoch \(info.epoch)/\(epochs) step \(done)/\(info.batches)  loss \(loss)  \(speed) img/s  ETA \(time)")
            fflush(stdout)
            lastLine = monotonicSeconds()
        }
    }

    /// Clears the bar before the epoch's summary line.
    public func endEpoch() {
        if drawn { print("\r" + String(repeating: " ", count: 100) + "\r", terminator: "") }
        drawn = false
        lastLine = monotonicSeconds()
    }
}
