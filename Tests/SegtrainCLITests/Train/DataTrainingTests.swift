import XCTest
import Foundation
import SegTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `segtrain train --data DIR`, alone and under mpirun: a dataset written by `segtrain synth`,
/// and every kind of bad input giving one line naming the file and the reason.
final class DataTrainingTests: TemporaryFolderTestCase {
    override class var folderTag: String { "data" }

    static let tiny = ["--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1", "--batch-size", "4",
                       "--epochs", "1", "--seed", "3"]

    func synth(_ out: String, count: Int, size: Int = 20, classes: Int = 1) throws {
        let r = try segtrain(["synth", "--out", out, "--count", "\(count)", "--size", "\(size)", "--classes", "\(classes)"])
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    func train(_ arguments: [String], ranks: Int = 0, timeout: Double = 120) throws -> ProcessResult {
        try segtrain(["train"] + arguments, ranks: ranks, timeout: timeout)
    }

    func testTrainsOnAFolderAndHoldsOutTenPercent() throws {
        let data = folder + "/set"
        try synth(data, count: 23)
        let r = try train(DataTrainingTests.tiny + ["--data", data, "--out", folder + "/run"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("21 train / 2 val samples"), r.stdout)
        let metrics = try String(contentsOfFile: folder + "/run/metrics.csv", encoding: .utf8)
        XCTAssertEqual(metrics.split(separator: "\n").count, 2, metrics)
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/run/checkpoints/best/model.safetensors"))
    }

    /// JPEG images (`synth --format jpg`), augmentation settings from --augment, and its errors.
    func testJPEGDatasetAndAugmentSettings() throws {
        let data = folder + "/jpeg"
        let r0 = try segtrain(["synth", "--out", data, "--count", "9", "--size", "24", "--format", "jpg"])
        XCTAssertEqual(r0.status, 0, r0.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: data + "/images/00008.jpg"))
        let r = try train(DataTrainingTests.tiny + ["--data", data, "--out", folder + "/run",
                                                    "--augment", #"{"vflipProbability": 0.5, "rotateDegrees": 30}"#])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("8 train / 1 val samples"), r.stdout)
        for (augment, expected) in [(#"{"vflipProbabilty": 0.5}"#, "unknown key vflipProbabilty"),
                                    (#"{"rotateProbability": 2}"#, "rotateProbability"),
                                    (folder + "/none.json", "neither JSON")] {
            let bad = try train(DataTrainingTests.tiny + ["--data", data, "--out", folder + "/run", "--augment", augment])
            XCTAssertEqual(bad.status, 64, bad.stderr)
            XCTAssertTrue(bad.stderr.contains("--augment") && bad.stderr.contains(expected), bad.stderr)
        }
    }

    /// Every bad input ends the run before the first step with exit 1 and one line on stderr that
    /// names the file and the reason.
    func testBadInputsGiveOneLineNamingTheFile() throws {
        let good = folder + "/good"
        try synth(good, count: 6)
        let other = folder + "/other"
        try synth(other, count: 1, size: 24)
        try synth(folder + "/multi", count: 6, classes: 5)

        func variant(_ name: String, _ change: (String) throws -> Void) throws -> String {
            let path = folder + "/" + name
            try FileManager.default.copyItem(atPath: good, toPath: path)
            try change(path)
            return path
        }
        let fm = FileManager.default
        var cases: [(data: String, extra: [String], expected: [String])] = []
        let empty = folder + "/empty"
        try fm.createDirectory(atPath: empty + "/images", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: empty + "/masks", withIntermediateDirectories: true)
        cases.append((empty, [], [empty + "/images", "no images"]))
        cases.append((folder + "/absent", [], ["--data", folder + "/absent", "No such file or directory"]))
        cases.append((try variant("nomask") { try fm.removeItem(atPath: $0 + "/masks/00003.png") },
                      [], [folder + "/nomask/images/00003.png", "no mask"]))
        cases.append((try variant("size") { try fm.removeItem(atPath: $0 + "/masks/00002.png")
                                            try fm.copyItem(atPath: other + "/masks/00000.png", toPath: $0 + "/masks/00002.png") },
                      [], [folder + "/size/masks/00002.png", "mask is 24x24 but its image", "is 20x20"]))
        cases.append((folder + "/multi", ["--classes", "3"], [folder + "/multi/masks/", "mask value", "is not a class index below 3"]))
        cases.append((try variant("truncated") { path in
                          let bytes = try Data(contentsOf: URL(fileURLWithPath: path + "/images/00001.png"))
                          try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: path + "/images/00001.png")) },
                      [], [folder + "/truncated/images/00001.png", "PNG"]))
        cases.append((try variant("zero") { fm.createFile(atPath: $0 + "/images/00004.png", contents: Data()) },
                      ["--scan", "header"], [folder + "/zero/images/00004.png", "empty file"]))
        cases.append((try variant("huge") { try pngHeaderOnly(width: 70_000, height: 70_000).write(to: URL(fileURLWithPath: $0 + "/images/00000.png")) },
                      ["--scan", "header"], [folder + "/huge/images/00000.png", "70000x70000", "over the limit"]))
        cases.append((try variant("text") { try Data("hello".utf8).write(to: URL(fileURLWithPath: $0 + "/masks/00005.png")) },
                      [], [folder + "/text/masks/00005.png"]))
        for (data, extra, expected) in cases {
            let r = try train(DataTrainingTests.tiny + ["--data", data, "--out", folder + "/runs"] + extra)
            XCTAssertEqual(r.status, 1, "\(data): \(r.stdout) \(r.stderr)")
            let lines = r.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "\(data): not one line: \(r.stderr)")
            for part in expected { XCTAssertTrue(r.stderr.contains(part), "\(data): expected '\(part)' in: \(r.stderr)") }
            XCTAssertFalse(r.stdout.contains("epoch 1/"), "\(data): trained anyway")
        }
    }

    /// --skip-invalid: a warning per bad file, a count, and training on the rest (under mpirun too:
    /// the ranks agree on what is left out).
    func testSkipInvalidLeavesOutBadFilesOnEveryRank() throws {
        let data = folder + "/set"
        try synth(data, count: 12)
        try Data("junk".utf8).write(to: URL(fileURLWithPath: data + "/images/00002.png"))
        try Data().write(to: URL(fileURLWithPath: data + "/masks/00007.png"))
        for ranks in [0, 2] {
            let r = try train(DataTrainingTests.tiny + ["--data", data, "--out", folder + "/run\(ranks)", "--skip-invalid",
                                                        "--val-split", "0.25"], ranks: ranks)
            XCTAssertEqual(r.status, 0, r.stderr)
            let warnings = r.stderr.split(separator: "\n").filter { $0.hasPrefix("segtrain: warning: skipped: ") }
            XCTAssertEqual(warnings.count, 2, r.stderr)
            XCTAssertTrue(warnings[0].contains(data + "/images/00002.png"), r.stderr)
            XCTAssertTrue(warnings[1].contains(data + "/masks/00007.png"), r.stderr)
            XCTAssertTrue(r.stdout.contains("left out 2 of 12 samples"), r.stdout)
            XCTAssertTrue(r.stdout.contains("7 train / 3 val samples"), r.stdout)
        }
        // Without the flag, under mpirun: one message, exit non-zero, no hang.
        let r = try train(DataTrainingTests.tiny + ["--data", data, "--out", folder + "/run-fail"], ranks: 2)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertEqual(r.stderr.components(separatedBy: "segtrain: error: ").count - 1, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("(and 1 more invalid sample(s); --skip-invalid trains without them)"), r.stderr)
    }

    /// Augmented file data: the first step's summed gradient is the same on 1, 2 and 3 ranks (the
    /// augmentation of a sample depends on (seed, epoch, index) only), with a last batch smaller
    /// than the others.
    func testAugmentedGradientIsTheSameOnAnyRankCount() throws {
        let data = folder + "/set"
        try synth(data, count: 14, size: 24)
        var dumps: [[String: [Float]]] = []
        // 3 ranks with tiny gradient buckets: many sums started during backward, and in the last
        // batch (1 image) two ranks without a sample start the same sums.
        for (ranks, extra) in [(0, []), (2, []), (3, ["--bucket-mb", "0.0005"]), (0, ["--no-augment"])] {
            let dump = folder + "/grad\(ranks)\(extra.count).safetensors"
            let r = try train(["--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1", "--batch-size", "5",
                               "--epochs", "1", "--seed", "3", "--data", data, "--val-split", "0.2", "--out", folder + "/r\(ranks)-\(extra.count)",
                               "--dump-gradients", dump] + extra, ranks: ranks)
            XCTAssertEqual(r.status, 0, r.stderr)
            dumps.append(try loadSafetensors(dump))
        }
        for other in dumps[1...2] {
            XCTAssertLessThan(worstScaledDifference(other, dumps[0]), 1e-5)
        }
        // After the whole epoch (3 Adam steps, the last with a 1-image batch) the weights still agree.
        let single = try loadSafetensors(folder + "/r0-0/model.safetensors")
        for run in ["r2-0", "r3-2"] {
            assertAdamWeightsAgree(try loadSafetensors(folder + "/\(run)/model.safetensors"), single, steps: 3, lr: 1e-3,
                                   "augmented data, weights after an epoch, \(run)")
        }
        // The augmentation is on (the gradient without it differs).
        XCTAssertGreaterThan(worstScaledDifference(dumps[3], dumps[0]), 1e-3)
    }
}

/// A PNG whose IHDR claims `width` x `height` (correct CRC), with no pixel data.
func pngHeaderOnly(width: UInt32, height: UInt32) -> Data {
    func be(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
    func crc(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c ^= UInt32(b); for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0xEDB8_8320 : c >> 1 } }
        return ~c
    }
    func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let body = Array(type.utf8) + data
        return be(UInt32(data.count)) + body + be(crc(body))
    }
    let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
    return Data(signature + chunk("IHDR", be(width) + be(height) + [8, 2, 0, 0, 0]) + chunk("IEND", []))
}

/// Tensors of a safetensors file written by segtrain (F32 only).
func loadSafetensors(_ path: String) throws -> [String: [Float]] {
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    let length = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian })
    let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + length))) as! [String: Any]
    var tensors: [String: [Float]] = [:]
    for (name, value) in header where name != "__metadata__" {
        let entry = value as! [String: Any], offsets = entry["data_offsets"] as! [Int]
        let bytes = data.subdata(in: (8 + length + offsets[0])..<(8 + length + offsets[1]))
        tensors[name] = bytes.withUnsafeBytes { raw in
            (0..<(raw.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        }
    }
    return tensors
}

/// max |a - b| over every element of every tensor, over the largest |b| of all: how weights after
/// SGD steps are compared across rank counts. Not per tensor: a rank count changes only the
/// summation order, so an SGD step moves each weight by lr x its gradient's rounding (about
/// gamma(n) x the sum of its terms' sizes, SegEngineTestSupport's model). For the biases, which
/// start at 0 and whose gradients (sums over every pixel) nearly cancel, that is a large part of
/// their own small size, but it stays far below the model's largest weight: measured 8e-9 to 2e-7
/// of it after 4 SGD steps on 4 and 5 ranks. After Adam steps see `assertAdamWeightsAgree`.
func worstDifferenceOfLargest(_ a: [String: [Float]], _ b: [String: [Float]]) -> Double {
    XCTAssertEqual(Set(a.keys), Set(b.keys))
    let largest = Double(b.values.joined().map { abs($0) }.max() ?? 0)
    let worst = b.map { name, reference in
        Double(zip(a[name] ?? [], reference).map { x, y -> Float in
            let d = abs(x - y)
            return d.isNaN ? .infinity : d  // a NaN counts as an infinite difference
        }.max() ?? .infinity)
    }.max() ?? .infinity
    return largest > 0 ? worst / largest : worst
}

/// Weights after `steps` Adam steps (betas 0.9, 0.999) on two rank counts agree as far as rounding
/// allows. Adam's step for an element is lr m/(sqrt(v) + eps): it follows the gradient's sign and
/// relative size, not its magnitude. Most elements move by about lr x their gradient's relative
/// rounding, which is gamma(n) ~ 1e-5 of their terms' size (SegEngineTestSupport's model). That
/// is ~1e-8 absolute after a few steps at lr 1e-3. But an element whose gradient nearly cancels (a
/// sum over pixels whose terms cancel to a part in 1e3 or less) takes a step whose size the summation
/// order changes by up to O(lr).
///
/// So two checks:
/// - 90 % of the elements agree within 1e-6 of the largest weight. Measured 0 to 1.8e-9 under the
///   Cooperlake and Sandybridge kernels. A learning rate 1 % off gives 1e-4; one training sample
///   fewer gives 3e-3.
/// - Every element is within the bound on two Adam trajectories' difference, 2 x steps x
///   lr (1 - beta1) / sqrt(1 - beta2) = 6.3 steps x lr (Kingma & Ba 2015, section 2.1). A NaN
///   fails. The largest difference measured is 1.8e-5 of the largest weight.
func assertAdamWeightsAgree(_ a: [String: [Float]], _ b: [String: [Float]], steps: Int, lr: Double,
                            _ message: String, file: StaticString = #filePath, line: UInt = #line) {
    let bulk = differenceQuantileOfLargest(a, b, 0.9)
    let largest = Double(b.values.joined().map { abs($0) }.max() ?? 0)
    let worst = worstDifferenceOfLargest(a, b) * largest
    let stepBound = 2 * Double(steps) * lr * (1 - 0.9) / (1 - 0.999).squareRoot()
    print("\(message): 90 % of the weights within \(bulk) of the largest, every weight within \(worst) (bound \(stepBound))")
    XCTAssertLessThanOrEqual(bulk, 1e-6, "\(message): 90 % of the weights differ by up to \(bulk) of the largest", file: file, line: line)
    XCTAssertLessThanOrEqual(worst, stepBound, "\(message): a weight differs by \(worst), over Adam's bound \(stepBound)",
                             file: file, line: line)
}

/// The q-quantile (0...1) of |a - b| over every element of every tensor, over the largest |b|.
func differenceQuantileOfLargest(_ a: [String: [Float]], _ b: [String: [Float]], _ q: Double) -> Double {
    let largest = Double(b.values.joined().map { abs($0) }.max() ?? 0)
    var differences: [Double] = []
    for (name, reference) in b {
        for (x, y) in zip(a[name] ?? [], reference) {
            let d = Double(abs(x - y))
            differences.append(d.isNaN ? .infinity : d)
        }
    }
    guard !differences.isEmpty else { return .infinity }
    differences.sort()
    let value = differences[min(differences.count - 1, Int(q * Double(differences.count - 1)))]
    return largest > 0 ? value / largest : value
}

/// Largest |a - b| / max|b| over every tensor (scaled per tensor).
func worstScaledDifference(_ a: [String: [Float]], _ b: [String: [Float]]) -> Double {
    XCTAssertEqual(Set(a.keys), Set(b.keys))
    var worst = 0.0
    for (name, reference) in b {
        let scale = Double(reference.map { abs($0) }.max() ?? 0)
        // A NaN on either side counts as an infinite difference (max() would drop it).
        let diff = zip(a[name]!, reference).map { x, y -> Double in
            let d = Double(abs(x - y))
            return d.isNaN ? .infinity : d
        }.max() ?? 0
        worst = max(worst, scale > 0 ? diff / scale : diff)
    }
    return worst
}
