// Issue 14's training, checkpoint and data probes, run as a user would with the built binary
// (alone and under mpirun): a diverged run never leaves an empty or exploded checkpoint, a tampered
// or mismatched state.json is refused with one line naming the field or flag, a finished run
// resumed trains nothing and succeeds, stale temporary checkpoint folders go, impossible sizes are
// refused in seconds with the estimate, --threads has one bound everywhere, a file name with a
// newline survives the rank-0 list, and predict neither overwrites its outputs nor miscounts them.
// docs/RELIABILITY.md lists each probe with its test.

import XCTest
import Foundation
import SegTestSupport
#if canImport(Glibc)
import Glibc
#endif

final class ReliabilityTests: TemporaryFolderTestCase {
    override class var folderTag: String { "reliability" }

    /// The reproduction: 32 px, 4 base channels, depth 2, one step per epoch.
    static let tiny = ["--image-size", "32", "--base-channels", "4", "--depth", "2", "--threads", "1",
                       "--train-samples", "4", "--batch-size", "4", "--val-samples", "8"]

    /// segtrain's own error lines on stderr (mpirun adds its banner around them).
    func errorLines(_ r: ProcessResult) -> [Substring] {
        r.stderr.split(separator: "\n").filter { $0.hasPrefix("segtrain: error:") }
    }

    /// Every state.json under `run`/checkpoints decodes as JSON with an epoch (none is empty).
    func assertCheckpointsUsable(_ run: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let checkpoints = run + "/checkpoints"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: checkpoints)) ?? [] {
            let path = checkpoints + "/" + name + "/state.json"
            guard let data = FileManager.default.contents(atPath: path) else { continue }
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            XCTAssertNotNil(object?["epoch"], "\(path) is not a usable state: \(String(decoding: data, as: UTF8.self))",
                            file: file, line: line)
        }
    }

    // MARK: 1. Non-finite losses

    func testDivergedRunStopsWithOneLineAndNeverWritesAnEmptyState() throws {
        for (extra, ranks) in [([String](), 0), ([], 2), (["--skip-nonfinite"], 0)] {
            let run = folder + "/diverged-\(ranks)-\(extra.count)"
            let r = try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "2", "--lr", "1e9", "--out", run] + extra, ranks: ranks)
            XCTAssertEqual(r.status, 1, "\(extra) ranks \(ranks): \(r.stdout) \(r.stderr)")
            let lines = errorLines(r)
            XCTAssertEqual(lines.count, 1, r.stderr)
            XCTAssertTrue(lines.first?.contains("validation loss is not finite") == true, r.stderr)
            XCTAssertFalse(r.stdout.contains("(best)"), r.stdout)
            try assertCheckpointsUsable(run)
        }
    }

    func testResumingAGoodRunWithAnExplodingRateKeepsItsCheckpoint() throws {
        let run = folder + "/good"
        let good = try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "2", "--out", run])
        XCTAssertEqual(good.status, 0, good.stderr)
        let files = ["last/state.json", "last/model.safetensors", "best/state.json", "best/model.safetensors"]
        let before = files.map { FileManager.default.contents(atPath: run + "/checkpoints/" + $0) }
        let exploded = try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "4", "--lr", "1e9", "--out", run, "--resume", "auto"])
        XCTAssertEqual(exploded.status, 1, exploded.stdout)
        XCTAssertTrue(errorLines(exploded).first?.contains("checkpoints/last keeps the previous checkpoint") == true, exploded.stderr)
        XCTAssertEqual(files.map { FileManager.default.contents(atPath: run + "/checkpoints/" + $0) }, before)
        // The kept checkpoint still trains.
        let again = try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "3", "--out", run, "--resume", "auto"])
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertTrue(again.stdout.contains("epoch 3/3"), again.stdout)
    }

    /// Mid-epoch checkpoints (--checkpoint-every, signals) have no validation loss: after one step
    /// at --lr 1e9 the weights are finite but exploded, and the last batch's outputs are not.
    func testMidEpochCheckpointOfExplodedWeightsIsRefused() throws {
        let run = folder + "/good"
        let args = ["--image-size", "32", "--base-channels", "4", "--depth", "2", "--threads", "1", "--train-samples", "8",
                    "--batch-size", "4", "--val-samples", "4"]
        XCTAssertEqual(try segtrain(["train"] + args + ["--epochs", "1", "--out", run]).status, 0)
        let last = ["state.json", "model.safetensors", "optimizer.safetensors"].map {
            FileManager.default.contents(atPath: run + "/checkpoints/last/" + $0)
        }
        let r = try segtrain(["train"] + args + ["--epochs", "2", "--lr", "1e9", "--checkpoint-every", "1", "--out", run,
                                                 "--resume", "auto"])
        XCTAssertEqual(r.status, 1, r.stdout)
        XCTAssertEqual(errorLines(r).count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("outputs on the last batch are not finite") && r.stderr.contains("keeps the previous checkpoint"),
                      r.stderr)
        XCTAssertEqual(["state.json", "model.safetensors", "optimizer.safetensors"].map {
            FileManager.default.contents(atPath: run + "/checkpoints/last/" + $0)
        }, last)
    }

    // MARK: 2. state.json checked on resume

    /// A copy of `source` whose state.json has `changes` applied.
    func editedCheckpoint(_ source: String, _ name: String, _ changes: [String: Any?]) throws -> String {
        let path = folder + "/" + name
        try FileManager.default.copyItem(atPath: source, toPath: path)
        let data = FileManager.default.contents(atPath: path + "/state.json")!
        var object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        for (key, value) in changes { object[key] = value }
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path + "/state.json"))
        return path
    }

    func testTamperedOrMismatchedResumeStateIsRefusedNamingTheFieldOrFlag() throws {
        let run = folder + "/run"
        let args = ["--image-size", "32", "--base-channels", "4", "--depth", "2", "--threads", "1", "--train-samples", "16",
                    "--batch-size", "4", "--val-samples", "4", "--seed", "5"]
        let r0 = try segtrain(["train"] + args + ["--epochs", "1", "--out", run])
        XCTAssertEqual(r0.status, 0, r0.stderr)
        let last = run + "/checkpoints/last"
        let cases: [(String, [String: Any?], [String], String)] = [
            ("negative", ["batchesDone": -3], [], "batchesDone -3"),
            ("huge", ["batchesDone": 1_000_000_000], [], "batchesDone 1000000000 is not below the epoch's 4 batches"),
            ("epoch", ["epoch": -1], [], "epoch -1"),
            ("epochs", ["epoch": 1_000_000_000_000_000_000], [], "epoch 1000000000000000000 is out of range"),
            ("step", ["step": -1], [], "step -1"),
            ("batch", ["batchesDone": 2], ["--batch-size", "8"], "--batch-size 8"),
            ("samples", ["batchesDone": 2], ["--train-samples", "20"], "--train-samples"),
            ("size", [:], ["--image-size", "64"], "--image-size 32, but this run has --image-size 64"),
            ("seed", [:], ["--seed", "6"], "--seed 6"),
            ("base", [:], ["--base-channels", "8"], "--base-channels 4"),
        ]
        for (name, changes, flags, expected) in cases {
            let checkpoint = try editedCheckpoint(last, name, changes)
            // Later flags win: the argument parser takes the last value of an option.
            let r = try segtrain(["train"] + args + flags + ["--epochs", "2", "--out", folder + "/out-\(name)", "--resume", checkpoint])
            XCTAssertEqual(r.status, 1, "\(name): \(r.stdout) \(r.stderr)")
            let lines = errorLines(r)
            XCTAssertEqual(lines.count, 1, "\(name): \(r.stderr)")
            XCTAssertTrue(lines.first?.contains(expected) == true && lines.first?.contains("state.json") == true,
                          "\(name): \(r.stderr)")
        }
        // A mid-epoch checkpoint with the same flags resumes and finishes its epoch.
        let mid = try editedCheckpoint(last, "mid", ["batchesDone": 2])
        let r = try segtrain(["train"] + args + ["--epochs", "2", "--out", folder + "/out-mid", "--resume", mid])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("epoch 2/2"), r.stdout)
    }

    /// Keras' fit(initial_epoch=E, epochs=E) / Lightning at max_epochs: nothing to do is success;
    /// a larger --epochs trains on into the new folder.
    func testFinishedCheckpointResumedIntoANewFolder() throws {
        let run = folder + "/run"
        XCTAssertEqual(try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "2", "--out", run]).status, 0)
        let summary = FileManager.default.contents(atPath: run + "/summary.json")
        let done = try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "2", "--out", folder + "/new",
                                                                     "--resume", run + "/checkpoints/last"])
        XCTAssertEqual(done.status, 0, done.stderr)
        XCTAssertTrue(done.stdout.contains("nothing to train: the checkpoint has 2 of 2 epochs"), done.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/new/metrics.csv"))
        // In place too: the run's files are not rewritten.
        let inPlace = try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "2", "--out", run, "--resume", "auto"])
        XCTAssertEqual(inPlace.status, 0, inPlace.stderr)
        XCTAssertEqual(FileManager.default.contents(atPath: run + "/summary.json"), summary)

        let more = try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "3", "--out", folder + "/more",
                                                                     "--resume", run + "/checkpoints/last"])
        XCTAssertEqual(more.status, 0, more.stderr)
        let metrics = try String(contentsOfFile: folder + "/more/metrics.csv", encoding: .utf8)
        XCTAssertTrue(metrics.split(separator: "\n").last?.hasPrefix("3,") == true, metrics)
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/more/report.html"))
    }

    // MARK: 7. Stale temporary checkpoint folders

    func testStaleTemporaryCheckpointFolderIsRemovedOnTheNextRun() throws {
        let run = folder + "/run"
        XCTAssertEqual(try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "1", "--out", run]).status, 0)
        // What a write killed half-way (or failed) leaves: its pid no longer exists.
        let stale = run + "/checkpoints/.tmp-last-2147483000"
        try FileManager.default.createDirectory(atPath: stale, withIntermediateDirectories: true)
        try Data("partial".utf8).write(to: URL(fileURLWithPath: stale + "/model.safetensors"))
        let r = try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "2", "--out", run, "--resume", "auto"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("removed 1 stale temporary checkpoint folder(s): .tmp-last-2147483000"), r.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale))
        let left = try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints").filter { $0.hasPrefix(".tmp-") }
        XCTAssertEqual(left, [])
    }

    /// A checkpoint write that fails (a full 40 KiB tmpfs: metrics.csv and the preview fit, the
    /// checkpoint does not) stops the run with one line and leaves no temporary folder behind.
    /// Needs mount (root); skipped where it is not allowed.
    func testFailedCheckpointWriteLeavesNoTemporaryFolder() throws {
        let disk = folder + "/disk"
        try FileManager.default.createDirectory(atPath: disk, withIntermediateDirectories: true)
        let mount = try run("/bin/mount", ["-t", "tmpfs", "-o", "size=40k", "tmpfs", disk], timeout: 10)
        guard mount.status == 0 else { throw XCTSkip("cannot mount a tmpfs here: \(mount.stderr)") }
        defer { _ = try? run("/bin/umount", [disk], timeout: 10) }
        let r = try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "1", "--out", disk + "/run"])
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        XCTAssertEqual(errorLines(r).count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("No space left on device"), r.stderr)
        let left = try FileManager.default.contentsOfDirectory(atPath: disk + "/run/checkpoints").filter { $0.hasPrefix(".tmp-") }
        XCTAssertEqual(left, [], "a failed write leaves its temporary folder")
    }

    // MARK: 4. Resource limits

    func testImpossibleSizesAreRefusedInSecondsWithTheEstimate() throws {
        // Under a 16 GB address-space limit, so that a machine with more memory than the 40 GB the
        // second case needs refuses it too instead of starting it.
        let capped = "ulimit -v 16000000 && exec \"$0\" \"$@\""
        for flags in [["--image-size", "16384"], ["--train-samples", "1000000000"], ["--val-samples", "100000000000"]] {
            let r = try run("/bin/sh", ["-c", capped, ReliabilityTests.binary, "train", "--threads", "1",
                                        "--out", folder + "/big"] + flags, timeout: 30)
            XCTAssertFalse(r.timedOut, "\(flags)")
            XCTAssertEqual(r.status, 1, "\(flags): \(r.stderr)")
            let lines = r.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, r.stderr)
            XCTAssertTrue(lines.first?.contains("the run needs about") == true
                          && (lines.first?.contains("(MemAvailable)") == true || lines.first?.contains("(ulimit -v)") == true), r.stderr)
            XCTAssertLessThan(r.seconds, 10, "\(flags)")
        }
        // Under a lowered address-space limit: refused with the limit, not a trap.
        let shell = "ulimit -v 1000000 && exec \"$0\" \"$@\""
        let r = try run("/bin/sh", ["-c", shell, ReliabilityTests.binary, "train", "--threads", "1", "--image-size", "512",
                                    "--batch-size", "16", "--train-samples", "16", "--out", folder + "/limited"], timeout: 30)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("(ulimit -v)") && r.stderr.contains("1.0 GB"), r.stderr)
        // Under mpirun every rank stops with the one line.
        let two = try segtrain(["train", "--threads", "1", "--out", folder + "/big2", "--image-size", "16384"], ranks: 2, timeout: 30)
        XCTAssertEqual(two.status, 1, two.stderr)
        XCTAssertEqual(errorLines(two).count, 1, two.stderr)
    }

    /// Lovász keeps a Double plane per image and class (softmax, then its gradient): at 1024 px, 64
    /// classes and 4 images that is 2.1 GB beside 2.4 GB of activations. The estimate counts it, so
    /// under a 4 GB address-space limit the run is refused up front (the same run with ce, 3.0 GB,
    /// would start).
    func testLovaszWorkspaceIsInTheEstimate() throws {
        let shell = "ulimit -v 4000000 && exec \"$0\" \"$@\""
        let r = try run("/bin/sh", ["-c", shell, ReliabilityTests.binary, "train", "--threads", "1", "--image-size", "1024",
                                    "--classes", "64", "--loss", "lovasz", "--base-channels", "2", "--depth", "1",
                                    "--batch-size", "4", "--train-samples", "4", "--val-samples", "0", "--epochs", "1",
                                    "--out", folder + "/lovasz"], timeout: 30)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("loss workspace") && r.stderr.contains("(ulimit -v)"), r.stderr)
    }

    /// --cache keeps every decoded sample: counted once the files are listed (500 files at
    /// 2048 px: 8.4 GB), refused under a 3 GB address-space limit that the model alone fits.
    func testCacheOfAListedDatasetIsCountedToo() throws {
        let data = folder + "/set"
        XCTAssertEqual(try segtrain(["synth", "--out", data, "--count", "500", "--size", "16"]).status, 0)
        let shell = "ulimit -v 3000000 && exec \"$0\" \"$@\""
        let flags = ["train", "--threads", "1", "--image-size", "2048", "--base-channels", "4", "--depth", "2",
                     "--batch-size", "1", "--epochs", "1", "--data", data, "--out", folder + "/run"]
        let r = try run("/bin/sh", ["-c", shell, ReliabilityTests.binary] + flags + ["--cache"], timeout: 60)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("data loader") && r.stderr.contains("(ulimit -v)"), r.stderr)
    }

    // MARK: 5. One --threads bound

    func testThreadsIsBoundedTheSameInEveryCommand() throws {
        for value in ["0", "-1", "5000"] {
            for command in [["evaluate", "--model", folder, "--data", folder], ["train"], ["predict", "--model", folder,
                                                                                          "--input", folder, "--output", folder],
                            ["info"]] {
                let r = try segtrain(command + ["--threads=\(value)"])
                XCTAssertEqual(r.status, 64, "\(command[0]) --threads \(value): \(r.stderr)")
                XCTAssertTrue(r.stderr.contains("--threads must be 1...1024"), "\(command[0]): \(r.stderr)")
            }
        }
        // The environment's default is held to the same bound.
        let r = try segtrain(["info"], environment: ["SEGTRAIN_THREADS": "5000"])
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertTrue(r.stderr.contains("SEGTRAIN_THREADS must be 1...1024 (got 5000)"), r.stderr)
    }

    // MARK: 6. File names with a newline

    func testFileNameWithANewlineSurvivesTheRankZeroList() throws {
        let data = folder + "/set"
        let s = try segtrain(["synth", "--out", data, "--count", "10", "--size", "20"])
        XCTAssertEqual(s.status, 0, s.stderr)
        for sub in ["images", "masks"] {
            try FileManager.default.moveItem(atPath: "\(data)/\(sub)/00003.png", toPath: "\(data)/\(sub)/line\nbreak.png")
        }
        let r = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                              "--batch-size", "4", "--epochs", "1", "--data", data, "--out", folder + "/run"], ranks: 2)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("9 train / 1 val samples"), r.stdout)
    }

    // MARK: 3. predict's outputs

    func trainedModel() throws -> String {
        let run = folder + "/model"
        let r = try segtrain(["train"] + ReliabilityTests.tiny + ["--epochs", "1", "--out", run])
        XCTAssertEqual(r.status, 0, r.stderr)
        return run
    }

    /// Images named as in the issue: a.png + a.jpg, b.jpeg + b.PNG, and c.png alone.
    func inputs(_ names: [String]) throws -> String {
        let png = folder + "/png", jpg = folder + "/jpg", input = folder + "/in-\(UUID().uuidString)"
        if !FileManager.default.fileExists(atPath: png) {
            XCTAssertEqual(try segtrain(["synth", "--out", png, "--count", "1", "--size", "24"]).status, 0)
            XCTAssertEqual(try segtrain(["synth", "--out", jpg, "--count", "1", "--size", "24", "--format", "jpg"]).status, 0)
        }
        try FileManager.default.createDirectory(atPath: input, withIntermediateDirectories: true)
        for name in names {
            let jpeg = name.lowercased().hasSuffix("jpg") || name.lowercased().hasSuffix("jpeg")
            try FileManager.default.copyItem(atPath: jpeg ? jpg + "/images/00000.jpg" : png + "/images/00000.png",
                                             toPath: input + "/" + name)
        }
        return input
    }

    func testPredictNeverOverwritesItsOwnOutputsAndCountsTruly() throws {
        let model = try trainedModel()
        let input = try inputs(["a.png", "a.jpg", "b.jpeg", "b.PNG", "c.png"])
        let out = folder + "/out"
        let r = try segtrain(["predict", "--model", model, "--input", input, "--output", out, "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("wrote 5 file(s)"), r.stdout)
        let written = try FileManager.default.contentsOfDirectory(atPath: out).sorted()
        XCTAssertEqual(written, ["a_jpg_mask.png", "a_png_mask.png", "b_PNG_mask.png", "b_jpeg_mask.png", "c_mask.png"])

        // Names that would still collide (on a case-insensitive file system too): refused up front.
        let clash = try inputs(["d.png", "d.PNG"])
        let refused = try segtrain(["predict", "--model", model, "--input", clash, "--output", folder + "/clash", "--threads", "1"])
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertEqual(refused.stderr.split(separator: "\n").count, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("d.PNG") && refused.stderr.contains("d.png"), refused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/clash/d_png_mask.png"))
    }

    /// A state.json claiming a model no machine holds (16384 px) is refused before it is built.
    func testPredictRefusesAModelTooLargeForTheMachine() throws {
        let model = try trainedModel()
        let state = model + "/checkpoints/best/state.json"
        var object = try JSONSerialization.jsonObject(with: FileManager.default.contents(atPath: state)!) as! [String: Any]
        var description = object["model"] as! [String: Any]
        description["imageSize"] = 16384
        object["model"] = description
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: state))
        let input = try inputs(["a.png"])
        // Under a 16 GB address-space limit: a machine with more memory than the model's 96 GB refuses too.
        let capped = "ulimit -v 16000000 && exec \"$0\" \"$@\""
        let r = try run("/bin/sh", ["-c", capped, ReliabilityTests.binary, "predict", "--model", model, "--input", input,
                                    "--output", folder + "/big", "--threads", "1"], timeout: 30)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("state.json: the model needs about")
                      && (r.stderr.contains("(MemAvailable)") || r.stderr.contains("(ulimit -v)")), r.stderr)
    }

    /// A full disk (a 4 KiB tmpfs: room for one small PNG): the error is reported, the count is
    /// the files really there, exit 1. Needs mount (root); skipped where it is not allowed.
    func testPredictOnAFullDiskReportsTheFilesWritten() throws {
        let model = try trainedModel()
        let input = try inputs(["a.png", "b.png"])
        let disk = folder + "/disk"
        try FileManager.default.createDirectory(atPath: disk, withIntermediateDirectories: true)
        let mount = try run("/bin/mount", ["-t", "tmpfs", "-o", "size=4k", "tmpfs", disk], timeout: 10)
        guard mount.status == 0 else { throw XCTSkip("cannot mount a tmpfs here: \(mount.stderr)") }
        defer { _ = try? run("/bin/umount", [disk], timeout: 10) }
        let r = try segtrain(["predict", "--model", model, "--input", input, "--output", disk, "--threads", "1", "--mask", "--overlay"])
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        let there = try FileManager.default.contentsOfDirectory(atPath: disk).filter { $0.hasSuffix(".png") }
        XCTAssertGreaterThan(there.count, 0, "the disk holds no file: the test does not probe a partial write")
        XCTAssertLessThan(there.count, 4)
        XCTAssertTrue(r.stdout.contains("wrote \(there.count) file(s)"), "\(there): \(r.stdout)")
        XCTAssertTrue(r.stderr.contains("No space left on device") || r.stderr.contains("cannot write"), r.stderr)
        XCTAssertTrue(r.stderr.contains("\(there.count) file(s) written"), r.stderr)
    }
}
