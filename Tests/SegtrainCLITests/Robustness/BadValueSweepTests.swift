// Issue 18's audit of the traps reachable from flags, kept as a test: every option of every
// command (read from its --help, so a new option is swept too) gets the values a slip of the
// keyboard gives, -1 and 0, on top of a tiny valid command line. The run either works or ends with
// one line on stderr that names the option or the file; never a trap, a signal (the OOM killer's SIGKILL
// included), a hang or several lines.

import Foundation
import SegTestSupport
import XCTest

final class BadValueSweepTests: TemporaryFolderTestCase {
    override class var folderTag: String { "sweep" }

    /// The options of `segtrain command` that take a value, from its --help.
    func valueOptions(_ command: String) throws -> [String] {
        let help = try segtrain([command, "--help"]).stdout
        let pattern = try NSRegularExpression(pattern: "^\\s+(--[a-z0-9-]+) <", options: [.anchorsMatchLines])
        return pattern.matches(in: help, range: NSRange(help.startIndex..., in: help)).compactMap {
            Range($0.range(at: 1), in: help).map { String(help[$0]) }
        }
    }

    func testEveryOptionTakesMinusOneAndZeroWithoutATrap() throws {
        // A trained binary model, a 3-class one, and data sets for them (train writes `OUT` anew each run).
        let tiny = ["--image-size", "16", "--depth", "2", "--base-channels", "4", "--threads", "1"]
        let binary = folder + "/binary", three = folder + "/three", data = folder + "/data", out = folder + "/out"
        for (run, classes) in [(binary, "1"), (three, "3")] {
            let r = try segtrain(["train", "--epochs", "1", "--train-samples", "4", "--batch-size", "2", "--val-samples", "2", "--classes", classes,
                                  "--out", run] + tiny)
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        XCTAssertEqual(try segtrain(["synth", "--out", data, "--count", "3", "--size", "20", "--classes", "3"]).status, 0)
        let commands: [(String, [String])] = [
            ("train", tiny + ["--epochs", "1", "--train-samples", "4", "--batch-size", "2", "--val-samples", "2", "--out", out]),
            ("info", tiny),
            ("bench", tiny + ["--steps", "1", "--warmup", "0", "--batch-size", "2"]),
            ("synth", ["--out", out, "--count", "2", "--size", "16"]),
            ("report", ["--run", binary]),
            ("predict", ["--model", binary, "--input", data + "/images", "--output", out, "--threads", "1"]),
            ("evaluate", ["--model", three, "--data", data, "--out", out + ".csv", "--threads", "1"]),
            ("serve", ["--model", binary, "--port", "0", "--threads", "1"]),
            ("export", ["--model", three, "--format", "onnx", "--out", out + ".onnx"]),
        ]
        var swept = 0
        for (command, base) in commands {
            let options = try valueOptions(command)
            XCTAssertGreaterThanOrEqual(options.count, 1, "\(command) --help lists no options with values")
            for option in options {
                for value in ["-1", "0"] {
                    var arguments = base
                    if let i = arguments.firstIndex(of: option) { arguments.removeSubrange(i...(i + 1)) }
                    arguments = [command] + arguments + ["\(option)=\(value)"]  // "--x -1" would read -1 as a flag
                    try? FileManager.default.removeItem(atPath: out)
                    // serve with a value it accepts keeps serving: killed after a while, that is a pass.
                    // In the test's folder: a path made of the value (--out=0) lands there, not in the package.
                    let r = try Segtrain.run("/bin/sh", ["-c", "cd \"$1\" && shift && exec \"$@\"", "sh", folder, Self.binary] + arguments,
                                             environment: Self.mpiEnvironment, timeout: command == "serve" ? 8 : 60)
                    let line = arguments.joined(separator: " ")
                    swept += 1
                    if r.timedOut {
                        XCTAssertEqual(command, "serve", "\(line): still running after 60 s")
                        continue
                    }
                    XCTAssertFalse(r.signalled, "\(line): killed by signal \(r.status)\n\(r.stderr)")
                    XCTAssertFalse(r.stderr.contains("Fatal error") || r.stderr.contains("crashed"), "\(line): a trap\n\(r.stderr)")
                    guard r.status != 0 else { continue }
                    let lines = r.stderr.split(separator: "\n")
                    XCTAssertEqual(lines.count, 1, "\(line): \(r.stderr)")
                    // It names the option, or the file or folder it made of the value (--images-dir 0: ".../data/0", --data -1: "-1/images").
                    XCTAssertTrue(r.stderr.contains(option) || r.stderr.contains(folder) || r.stderr.contains("\(value)/"),
                                  "\(line): the error names neither \(option) nor a file: \(r.stderr)")
                }
            }
        }
        XCTAssertGreaterThan(swept, 200)
    }
}
