import XCTest
import Foundation
import SegData
import SegTestSupport

/// `segtrain train --tensorboard DIR` (issue #20): the event files are read back with TensorBoard's
/// own reader (scripts/read-tensorboard.py: the strict record reader checks both masked CRC-32Cs of
/// every record, then EventFileLoader, the loader of TensorBoard's backend, gives the values) and
/// every tag at every step is checked against what the run says elsewhere:
/// - per step (`step/...`, one event per optimizer step 1...N, N = epochs x batches): the loss
///   against the run's per-step progress lines (`--progress lines --log-every 1e-9` prints every
///   step's loss with 4 decimals) and, per epoch, the mean of the steps' losses against metrics.csv's
///   train_loss; the learning rate exactly (float32) as the warm-up makes it, step by step; img/s,
///   data wait and communication ms are timings, so only their consistency: positive / non-negative,
///   the steps' times add up to at most the epoch's (metrics.csv's images_per_second is a lower
///   bound of the steps' harmonic mean, --verbose's per-epoch data and communication seconds upper
///   bounds of their sums);
/// - per epoch (`epoch/COLUMN`, at the optimizer step of the epoch's end): every metrics.csv column,
///   as float32 of its text exactly;
/// - `samples`: the epoch's grid, pixel for pixel the run's samples/epoch-NNN.png.
/// No other tag and no other step. A missing tensorboard package fails (the script exits 1).
final class TensorBoardTests: TemporaryFolderTestCase {
    override class var folderTag: String { "tb" }

    static let batchesPerEpoch = 3  // 10 samples in global batches of 4: 4, 4, 2
    static let baseRate = 0.01, warmupEpochs = 3.0
    static let model = ["--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1", "--seed", "3"]
    static let training = ["--batch-size", "4", "--train-samples", "10", "--val-samples", "4", "--lr", "\(baseRate)",
                           "--warmup-epochs", "\(warmupEpochs)", "--progress", "lines", "--log-every", "1e-9", "--verbose"]

    private var out: String { folder + "/run" }
    private var logs: String { folder + "/tb" }

    private func train(epochs: Int, ranks: Int = 0, _ extra: [String] = [],
                       file: StaticString = #filePath, line: UInt = #line) throws -> ProcessResult {
        let arguments = ["train"] + Self.model + Self.training
            + ["--epochs", "\(epochs)", "--out", out, "--tensorboard", logs] + extra
        let result = try segtrain(arguments, ranks: ranks, file: file, line: line)
        XCTAssertEqual(result.status, 0, "\(result.stdout)\n\(result.stderr)", file: file, line: line)
        return result
    }

    func testEveryTagAndValueOfATwoEpochRun() throws {
        let run = try train(epochs: 2)
        let dump = try readEvents()
        XCTAssertEqual(dump.files.count, 1, "\(dump.files)")
        try checkEvents(dump, epochs: 2, stdout: run.stdout)
    }

    /// A resumed run adds a second event file to the folder; its steps continue (4...6), so the two
    /// files together say what one uninterrupted run's file says.
    func testAResumedRunAddsAFileWhoseStepsContinue() throws {
        let first = try train(epochs: 1)
        let second = try train(epochs: 2, ["--resume", "auto"])
        let dump = try readEvents()
        XCTAssertEqual(dump.files.count, 2, "\(dump.files)")
        let stepsPerFile = dump.files.map { name in dump.events.filter { $0.file == name && $0.fileVersion == nil }.map(\.step) }
        XCTAssertEqual(stepsPerFile.map { Set($0).sorted() }, [[1, 2, 3], [4, 5, 6]])
        try checkEvents(dump, epochs: 2, stdout: first.stdout + second.stdout)
    }

    /// Two ranks: rank 0 alone writes, one file; its figures are the whole job's.
    func testTwoRanksWriteOneFile() throws {
        let run = try train(epochs: 2, ranks: 2)
        let dump = try readEvents()
        XCTAssertEqual(dump.files.count, 1, "\(dump.files)")
        try checkEvents(dump, epochs: 2, stdout: run.stdout)
    }

    /// A folder that cannot be made: one line naming it, exit 1, no event file, no trap.
    func testAFolderThatCannotBeMadeIsNamed() throws {
        FileManager.default.createFile(atPath: folder + "/file", contents: Data([1]))
        let result = try segtrain(["train"] + Self.model + ["--epochs", "1", "--train-samples", "4", "--batch-size", "4",
                                  "--val-samples", "0", "--out", out, "--tensorboard", folder + "/file/tb"])
        XCTAssertEqual(result.status, 1, result.stdout)
        let lines = result.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, result.stderr)
        XCTAssert(result.stderr.contains("--tensorboard \(folder)/file/tb: cannot create the folder"), result.stderr)
    }

    // MARK: reading

    struct Dump: Decodable {
        let files: [String]
        let events: [Event]
    }

    struct Event: Decodable {
        let file: String
        let step: Int
        let fileVersion: String?
        let values: [Value]
        enum CodingKeys: String, CodingKey { case file, step, fileVersion = "file_version", values }
    }

    struct Value: Decodable {
        let tag: String
        let plugin: String
        let value: Double?
        let width: Int?, height: Int?
        let pngBase64: String?
        enum CodingKeys: String, CodingKey { case tag, plugin, value, width, height, pngBase64 = "png_base64" }
    }

    /// The events of every file in the folder, through scripts/read-tensorboard.py.
    private func readEvents(file: StaticString = #filePath, line: UInt = #line) throws -> Dump {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let script = root.appendingPathComponent("scripts/read-tensorboard.py").path
        guard let python = Segtrain.onPath("python3") else {
            XCTFail("python3 is not on PATH: the event file cannot be checked", file: file, line: line)
            throw XCTSkip("no python3")
        }
        let result = try run(python, [script, logs], timeout: 120, file: file, line: line)
        guard result.status == 0 else {
            XCTFail("read-tensorboard.py failed (scripts/install-test-python.sh installs tensorboard): \(result.stderr)",
                    file: file, line: line)
            throw XCTSkip("no events")
        }
        return try JSONDecoder().decode(Dump.self, from: Data(result.stdout.utf8))
    }

    /// metrics.csv: the header's names and each row's fields (text).
    private func metrics() throws -> (names: [String], rows: [[String]]) {
        let lines = try String(contentsOfFile: out + "/metrics.csv", encoding: .utf8).split(separator: "\n")
        let split = { (line: Substring) in line.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        return (split(lines[0]), lines.dropFirst().map(split))
    }

    /// The per-step losses the progress lines printed, by optimizer step (`epoch e/E step s/B  loss X`).
    private func printedLosses(_ stdout: String) -> [Int: Double] {
        var losses: [Int: Double] = [:]
        for line in stdout.split(separator: "\n") where line.hasPrefix("epoch ") && line.contains(" step ") {
            let words = line.split(separator: " ")
            guard let epoch = Int(words[1].split(separator: "/")[0]), let step = Int(words[3].split(separator: "/")[0]),
                  let lossAt = words.firstIndex(of: "loss"), let loss = Double(words[lossAt + 1]) else { continue }
            losses[(epoch - 1) * Self.batchesPerEpoch + step] = loss
        }
        return losses
    }

    /// --verbose: rank 0's data wait and communication seconds of each epoch (3 decimals).
    private func verboseTimes(_ stdout: String) -> [Int: (data: Double, communication: Double)] {
        var times: [Int: (Double, Double)] = [:]
        for line in stdout.split(separator: "\n") where line.hasPrefix("rank 0/") {
            let words = line.split(separator: " ")
            guard let e = words.firstIndex(of: "epoch"), let epoch = Int(words[e + 1].dropLast()),
                  let d = words.firstIndex(of: "data"), let data = Double(words[d + 1]),
                  let c = words.firstIndex(of: "communication"), let communication = Double(words[c + 1]) else { continue }
            times[epoch] = (data, communication)
        }
        return times
    }

    // MARK: checking

    private func checkEvents(_ dump: Dump, epochs: Int, stdout: String,
                             file: StaticString = #filePath, line: UInt = #line) throws {
        let batches = Self.batchesPerEpoch, steps = epochs * batches
        // Each file opens with its version record.
        for name in dump.files {
            XCTAssertEqual(dump.events.first { $0.file == name }?.fileVersion, "brain.Event:2", name, file: file, line: line)
        }
        // tag -> step -> value, every (tag, step) once.
        var scalars: [String: [Int: Double]] = [:]
        var images: [Int: Value] = [:]
        for event in dump.events where event.fileVersion == nil {
            for v in event.values {
                if v.plugin == "images" {
                    XCTAssertEqual(v.tag, "samples", file: file, line: line)
                    XCTAssertNil(images[event.step], "two images at step \(event.step)", file: file, line: line)
                    images[event.step] = v
                } else {
                    XCTAssertNil(scalars[v.tag]?[event.step], "\(v.tag) twice at step \(event.step)", file: file, line: line)
                    scalars[v.tag, default: [:]][event.step] = v.value
                }
            }
        }
        let (names, rows) = try metrics()
        XCTAssertEqual(rows.count, epochs, file: file, line: line)
        let stepTags = ["step/loss", "step/lr", "step/images_per_second", "step/data_wait_ms", "step/communication_ms"]
        let epochTags = names.map { "epoch/" + $0 }
        XCTAssertEqual(Set(scalars.keys), Set(stepTags + epochTags), file: file, line: line)
        let epochEnds = (1...epochs).map { $0 * batches }
        for tag in stepTags { XCTAssertEqual(scalars[tag].map { Set($0.keys) }, Set(1...steps), tag, file: file, line: line) }
        for tag in epochTags { XCTAssertEqual(scalars[tag].map { Set($0.keys) }, Set(epochEnds), tag, file: file, line: line) }
        XCTAssertEqual(Set(images.keys), Set(epochEnds), "samples", file: file, line: line)

        // Per epoch: metrics.csv's values, as float32, exactly: the field read as a Double (the very
        // value the CSV printed), then rounded to float32, as the writer does. Not Float(field): a
        // time difference such as `seconds` can be a double exactly halfway between two floats
        // (rounded to even), whose shortest decimal text lies a little above or below the halfway
        // point, so rounding the text straight to float32 can pick the other neighbour.
        for (e, row) in rows.enumerated() {
            for (name, field) in zip(names, row) {
                let logged = scalars["epoch/" + name]?[epochEnds[e]]
                XCTAssertEqual(logged.map { Float($0) }, Double(field).map { Float($0) }, "epoch/\(name) of epoch \(e + 1)",
                               file: file, line: line)
            }
        }
        let column = { (name: String, epoch: Int) in Double(rows[epoch - 1][names.firstIndex(of: name)!])! }

        // Per step. The loss: printed with 4 decimals (half a unit: 5e-5), logged as float32
        // (relative 2^-24); the epoch's mean of float32 values against metrics.csv's mean of the
        // doubles: each term off by at most 2^-24 of itself, the mean of 3 in double adds ~1e-16.
        let printed = printedLosses(stdout)
        XCTAssertEqual(Set(printed.keys), Set(1...steps), "per-step progress lines", file: file, line: line)
        for k in 1...steps {
            guard let logged = scalars["step/loss"]?[k], let shown = printed[k] else { continue }
            XCTAssertEqual(logged, shown, accuracy: 5e-5 + abs(shown) * 1e-6, "step/loss at step \(k)", file: file, line: line)
        }
        for e in 1...epochs {
            let losses = ((e - 1) * batches + 1...e * batches).compactMap { scalars["step/loss"]?[$0] }
            let mean = losses.reduce(0, +) / Double(losses.count), trainLoss = column("train_loss", e)
            XCTAssertEqual(mean, trainLoss, accuracy: abs(trainLoss) * 1e-7, "epoch \(e): mean step loss", file: file, line: line)
        }
        // The learning rate of step k (batch b of epoch e, k = (e - 1) B + b + 1) under the linear
        // warm-up: base x t / W at t = e - 1 + b / B (Schedule.rate; --lr is read as a float32),
        // logged as float32. Should the double arithmetic differ from the trainer's in its last
        // bits, the float32 rounding moves by at most one unit (2^-23 relative). The epoch's last
        // step's rate is metrics.csv's lr.
        let base = Double(Float(Self.baseRate))
        for k in 1...steps {
            let (e, b) = ((k - 1) / batches + 1, (k - 1) % batches)
            let t = Double(e - 1) + Double(b) / Double(batches)
            let expected = Double(Float(base * (t / Self.warmupEpochs)))
            guard let logged = scalars["step/lr"]?[k] else { continue }
            XCTAssertEqual(logged, expected, accuracy: expected * 0x1p-23, "step/lr at step \(k)", file: file, line: line)
        }
        for e in 1...epochs {
            XCTAssertEqual(scalars["step/lr"]?[e * batches].map { Float($0) }, Float(column("lr", e)), "lr, epoch \(e)",
                           file: file, line: line)
        }
        // Timings: consistent, not measured. Step k's img/s is its images (4, 4, 2) over its
        // seconds, so images / img/s adds up to the epoch's time until its last step, which is at
        // most the time metrics.csv's images_per_second divides by (float32: 2^-24 per term).
        let verbose = verboseTimes(stdout)
        XCTAssertEqual(Set(verbose.keys), Set(1...epochs), "--verbose lines", file: file, line: line)
        for e in 1...epochs {
            let ks = Array((e - 1) * batches + 1...e * batches)
            let images = ks.map { [4, 4, 2][($0 - 1) % batches] }
            let speeds = ks.compactMap { scalars["step/images_per_second"]?[$0] }
            XCTAssert(speeds.count == batches && speeds.allSatisfy { $0 > 0 && $0.isFinite }, "img/s \(speeds)", file: file, line: line)
            let seconds = zip(images, speeds).map { Double($0) / $1 }.reduce(0, +)
            XCTAssertLessThanOrEqual(column("images_per_second", e), 10 / seconds * (1 + 1e-6),
                                     "epoch \(e): the steps' img/s are slower than the epoch's", file: file, line: line)
            // Data wait and communication: each step's share of the epoch's (--verbose, rank 0, 3
            // decimals: up to 5e-4 s off; the logged ms are float32).
            for (tag, total) in [("step/data_wait_ms", verbose[e]?.data), ("step/communication_ms", verbose[e]?.communication)] {
                let ms = ks.compactMap { scalars[tag]?[$0] }
                XCTAssert(ms.count == batches && ms.allSatisfy { $0 >= 0 && $0.isFinite }, "\(tag) \(ms)", file: file, line: line)
                if let total {
                    XCTAssertLessThanOrEqual(ms.reduce(0, +) / 1000, total + 5e-4 + 1e-6, "\(tag), epoch \(e)", file: file, line: line)
                }
            }
        }

        // The sample grids, pixel for pixel.
        for (e, step) in epochEnds.enumerated() {
            guard let value = images[step], let base64 = value.pngBase64, let png = Data(base64Encoded: base64) else {
                XCTFail("no sample grid at step \(step)", file: file, line: line)
                continue
            }
            let logged = try ImageFile.decode([UInt8](png), name: "samples at step \(step)", as: .rgb)
            let written = try ImageFile.read(out + "/samples/epoch-" + String(format: "%03d", e + 1) + ".png", as: .rgb)
            XCTAssertEqual([logged.width, logged.height], [written.width, written.height], file: file, line: line)
            XCTAssertEqual([value.width, value.height], [written.width, written.height], file: file, line: line)
            XCTAssert(logged.pixels == written.pixels, "samples at step \(step) differ from the grid file", file: file, line: line)
        }
    }
}
