// `--ignore-index` end to end through the built binary: a dataset folder whose PNG masks mark a
// border of each image with 255 trains (BCE, CE) and evaluates, and under mpirun the first-step
// gradient with the ignore region equals the single process.

import XCTest
import Foundation
import SegData
import SegTestSupport

final class IgnoreIndexTests: TemporaryFolderTestCase {
    override class var folderTag: String { "ignore" }
    override class var timeLimit: Double { 180 }

    /// `count` samples of `size` x `size` in the pairs layout: vertical bands of the classes
    /// (binary: 0/1 masks, not 0/255), each class its own colour, and a border of 1 + (i % 3)
    /// pixels marked 255 in the mask (its image pixels a colour of no class).
    static func writeDataset(_ root: String, classes: Int, count: Int = 10, size: Int = 20) throws {
        for sub in ["images", "masks"] {
            try FileManager.default.createDirectory(atPath: root + "/" + sub, withIntermediateDirectories: true)
        }
        let labels = max(classes, 2)
        for i in 0..<count {
            var image = Image8(width: size, height: size, channels: 3)
            var mask = Image8(width: size, height: size, channels: 1)
            let border = 1 + i % 3
            for y in 0..<size {
                for x in 0..<size {
                    let label = ((x + i) * labels / size) % labels
                    let ignored = min(x, y, size - 1 - x, size - 1 - y) < border
                    mask[x, y, 0] = ignored ? 255 : UInt8(label)
                    let colour: [UInt8] = ignored ? [200, 200, 0] : [[20, 20, 200], [220, 30, 30], [30, 220, 30]][label]
                    for c in 0..<3 { image[x, y, c] = colour[c] }
                }
            }
            let name = String(format: "s%02d.png", i)
            try ImageFile.write(image, to: root + "/images/" + name)
            try ImageFile.write(mask, to: root + "/masks/" + name)
        }
    }

    static let tiny = ["--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1", "--seed", "3"]

    /// metrics.csv as rows of named numbers.
    func metrics(_ run: String) throws -> [[String: Double]] {
        let lines = try String(contentsOfFile: run + "/metrics.csv", encoding: .utf8).split(separator: "\n").map(String.init)
        let names = lines[0].split(separator: ",").map(String.init)
        return lines.dropFirst().map { line in
            Dictionary(uniqueKeysWithValues: zip(names, line.split(separator: ",", omittingEmptySubsequences: false)
                .map { Double($0) ?? .nan }))
        }
    }

    /// Trains 3 epochs with the ignore index and checks the run: exit 0, finite non-negative
    /// losses that fall, metrics in [0, 1], the ignore index kept in the checkpoint.
    func trainWithIgnore(classes: Int, loss: String, name: String) throws -> (data: String, run: String) {
        let data = folder + "/" + name, run = folder + "/run-" + name
        try IgnoreIndexTests.writeDataset(data, classes: classes)
        let r = try segtrain(["train"] + IgnoreIndexTests.tiny + ["--data", data, "--classes", "\(classes)", "--loss", loss,
                              "--ignore-index", "255", "--epochs", "3", "--batch-size", "4", "--val-split", "0.2",
                              "--lr", "0.01", "--out", run])
        XCTAssertEqual(r.status, 0, "\(loss): \(r.stderr)")
        let rows = try metrics(run)
        XCTAssertEqual(rows.count, 3, "\(loss)")
        for row in rows {
            for key in ["train_loss", "val_loss"] {
                XCTAssertTrue(row[key]!.isFinite && row[key]! >= 0 && row[key]! < 5, "\(loss): \(key) \(row[key]!)")
            }
            for key in ["val_accuracy", "val_precision", "val_recall", "val_dice", "val_iou"] {
                XCTAssertTrue((0...1).contains(row[key]!), "\(loss): \(key) \(row[key]!)")
            }
        }
        XCTAssertLessThan(rows[2]["train_loss"]!, rows[0]["train_loss"]!, "\(loss): the training loss does not fall")
        // The sample grid (image | truth | prediction, 16 px each, 2 px separators) shows the ignored border grey.
        let grid = try ImageFile.read(run + "/samples/epoch-003.png", as: .rgb)
        var grey = 0
        for y in 0..<grid.height {
            for x in 18..<34 where (0..<3).allSatisfy({ grid[x, y, $0] == 128 }) { grey += 1 }
        }
        XCTAssertGreaterThan(grey, 0, "\(loss): no grey (ignored) pixel in the truth column")
        let state = try String(contentsOfFile: run + "/checkpoints/last/state.json", encoding: .utf8)
        XCTAssertTrue(state.replacingOccurrences(of: " ", with: "").contains("\"ignoreIndex\":255"), state)
        return (data, run)
    }

    /// Per-image scores of `evaluate` (CSV rows without the header and the mean row).
    func evaluate(_ run: String, _ data: String, _ extra: [String], out: String) throws -> [String] {
        let r = try segtrain(["evaluate", "--model", run, "--data", data, "--out", out, "--threads", "1"] + extra)
        XCTAssertEqual(r.status, 0, r.stderr)
        return try String(contentsOfFile: out, encoding: .utf8).split(separator: "\n").map(String.init)
    }

    /// BCE on 0/1 masks with a 255 border: trains (the border was trained as a target of 255
    /// before), and `evaluate` scores only the other pixels — checked against `predict`'s masks —
    /// by default (the model's ignore index) as with the flag.
    func testBinaryTrainingAndEvaluationSkipTheIgnoredBorder() throws {
        let (data, run) = try trainWithIgnore(classes: 1, loss: "bce", name: "binary")
        let lines = try evaluate(run, data, [], out: folder + "/scores.csv")
        XCTAssertEqual(try evaluate(run, data, ["--ignore-index", "255"], out: folder + "/scores-flag.csv"), lines)
        let p = try segtrain(["predict", "--model", run, "--input", data + "/images", "--output", folder + "/masks",
                              "--threads", "1", "--batch-size", "1"])
        XCTAssertEqual(p.status, 0, p.stderr)
        XCTAssertEqual(lines.count, 1 + 10 + 1)
        for line in lines.dropFirst().dropLast() {
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            let stem = DatasetScanner.stem(fields[0])
            let predicted = try ImageFile.readMask(folder + "/masks/\(stem)_mask.png").pixels
            let truth = try ImageFile.readMask(data + "/" + fields[1]).pixels
            var correct = 0.0, counted = 0.0
            for (p, t) in zip(predicted, truth) where t != 255 {
                counted += 1
                if (p == 255) == (t == 1) { correct += 1 }
            }
            XCTAssertEqual(Double(fields[2])!, correct / counted, accuracy: 1e-6, line)
        }
    }

    /// CE with 3 classes and a 255 border: trains and evaluates (the loss stopped with a
    /// backtrace on the first 255 before); evaluate's default is the model's ignore index.
    func testMultiClassTrainingAndEvaluationSkipTheIgnoredBorder() throws {
        let (data, run) = try trainWithIgnore(classes: 3, loss: "ce", name: "multi")
        let lines = try evaluate(run, data, [], out: folder + "/scores.csv")
        XCTAssertEqual(lines.first?.hasPrefix("image,mask,accuracy,precision_0"), true, lines.first ?? "")
        XCTAssertEqual(try evaluate(run, data, ["--ignore-index", "255"], out: folder + "/scores-flag.csv"), lines)
        // Sharded over 2 ranks: the same file (every rank reads the model's ignore index).
        let sharded = try segtrain(["evaluate", "--model", run, "--data", data, "--out", folder + "/scores-2.csv", "--threads", "1"],
                                   ranks: 2)
        XCTAssertEqual(sharded.status, 0, sharded.stderr)
        XCTAssertEqual(try String(contentsOfFile: folder + "/scores-2.csv", encoding: .utf8).split(separator: "\n").map(String.init), lines)
        for line in lines.dropFirst() {
            let values = line.split(separator: ",", omittingEmptySubsequences: false).dropFirst(2).map { Double($0)! }
            XCTAssertTrue(values.allSatisfy { (0...1).contains($0) }, line)
        }
        // bench --data reads the same masks: its loss skips the border too (it stopped with a trap).
        let b = try segtrain(["bench"] + IgnoreIndexTests.tiny + ["--data", data, "--classes", "3", "--loss", "ce",
                              "--ignore-index", "255", "--batch-size", "2", "--steps", "2"])
        XCTAssertEqual(b.status, 0, b.stderr)
        // An ignore index that is a class is refused with one line naming the flag.
        let bad = try segtrain(["evaluate", "--model", run, "--data", data, "--ignore-index", "2", "--out", folder + "/x.csv"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--ignore-index 2 is a class"), bad.stderr)
    }

    /// Under mpirun -np 2 (shares of 3 and 2 images with borders of different widths, so the
    /// ranks count different numbers of pixels) the first step's summed gradient equals the
    /// single process's, for CE (3 classes) and bce+dice (binary), augmentation on.
    func testFirstStepGradientWithAnIgnoreRegionIsTheSameOnTwoRanks() throws {
        for (classes, loss) in [(3, "ce"), (1, "bce+dice")] {
            let data = folder + "/set\(classes)"
            try IgnoreIndexTests.writeDataset(data, classes: classes)
            var dumps: [[String: [Float]]] = []
            for ranks in [0, 2] {
                let dump = folder + "/grad-\(loss)-\(ranks).safetensors"
                let r = try segtrain(["train"] + IgnoreIndexTests.tiny + ["--data", data, "--classes", "\(classes)", "--loss", loss,
                                      "--ignore-index", "255", "--epochs", "1", "--batch-size", "5", "--val-split", "0",
                                      "--out", folder + "/r-\(loss)-\(ranks)", "--dump-gradients", dump], ranks: ranks)
                XCTAssertEqual(r.status, 0, "\(loss) ranks \(ranks): \(r.stderr)")
                dumps.append(try loadSafetensors(dump))
            }
            XCTAssertTrue(dumps[0].values.contains { $0.contains { $0 != 0 } }, loss)
            let worst = worstScaledDifference(dumps[1], dumps[0])
            print("first-step gradient with an ignore region, \(loss), 2 ranks: worst scaled difference \(worst)")
            XCTAssertLessThanOrEqual(worst, 1e-5, "\(loss): 2 ranks differ by \(worst)")
        }
    }
}
