import ArgumentParser
import SegInference
import SegModel

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write a training run's report.html: curves, best epoch, configuration, throughput, sample grids.",
        discussion: """
            Reads RUN_DIR/metrics.csv (required), summary.json, checkpoints/last/state.json and \
            samples/epoch-NNN.png, and writes one self-contained HTML page (inline CSS and SVG, no \
            JavaScript, no external URLs) that opens in a browser from the filesystem. segtrain train \
            writes the same page at the end of training. It can also be run during training.
            """)

    @Argument(help: "The run's folder (the --out of segtrain train).")
    var runDir: String
    @Option(help: "Where to write the page (default RUN_DIR/report.html).")
    var out: String?

    func run() throws {
        let path = try writeReport(RunDirectory(runDir), to: out)
        print("report: \(path)")
    }
}
