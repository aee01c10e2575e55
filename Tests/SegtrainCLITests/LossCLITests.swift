// The loss flags of `segtrain train` end to end (issue #18): weighted sums with class weights, focal,
// Tversky and Lovász train an epoch on synthetic data and write a finite loss to metrics.csv; bad
// values stop with one line naming the flag.

import Foundation
import SegTestSupport
import XCTest

final class LossCLITests: SegtrainTestCase {
    /// A tiny model and data set, one epoch.
    static let tiny = ["--image-size", "16", "--base-channels", "4", "--depth", "2", "--epochs", "1",
                       "--train-samples", "8", "--val-samples", "3", "--batch-size", "4", "--threads", "1"]

    func testWeightedSumsClassWeightsAndFocalTrain() throws {
        let runs: [(flags: [String], name: String)] = [
            (["--classes", "3", "--loss", "ce:1,dice:0.5", "--class-weights", "0.5,2,1"], "ce:1,dice:0.5"),
            (["--classes", "1", "--loss", "bce:1,lovasz:0.5", "--class-weights", "3"], "bce:1,lovasz:0.5"),
            (["--classes", "1", "--loss", "focal", "--focal-alpha", "0.25", "--focal-gamma", "2"], "focal"),
            (["--classes", "3", "--loss", "focal", "--class-weights", "1,2,3"], "focal"),
            (["--classes", "3", "--loss", "focal-tversky:1,lovasz:0.5", "--tversky-alpha", "0.4",
              "--tversky-beta", "0.6", "--tversky-gamma", "1.5"], "focal-tversky:1,lovasz:0.5"),
        ]
        for (flags, name) in runs {
            let out = NSTemporaryDirectory() + "segtrain-losscli-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: out) }
            let r = try segtrain(["train"] + LossCLITests.tiny + flags + ["--out", out])
            let label = flags.joined(separator: " ")
            XCTAssertEqual(r.status, 0, "\(label): \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("loss \(name)\n") || r.stdout.contains("loss \(name)\r"), "\(label): \(r.stdout)")
            guard let csv = try? String(contentsOfFile: out + "/metrics.csv", encoding: .utf8) else {
                XCTFail("\(label): no metrics.csv"); continue
            }
            let rows = csv.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
            XCTAssertEqual(rows.count, 2, "\(label): header + 1 epoch: \(csv)")
            guard rows.count == 2 else { continue }
            for column in ["train_loss", "val_loss"] {
                guard let index = rows[0].firstIndex(of: column), index < rows[1].count, let value = Double(rows[1][index]) else {
                    XCTFail("\(label): no \(column) in \(csv)"); continue
                }
                XCTAssertTrue(value.isFinite && value >= 0, "\(label): \(column) \(value)")
            }
        }
    }

    func testBadLossFlagsGiveOneLineNamingTheFlag() throws {
        let cases: [([String], String)] = [
            (["--loss", "ce:x", "--classes", "3"], "--loss"),
            (["--loss", "dice,dice"], "--loss"),
            (["--loss", "softmax"], "--loss"),
            (["--loss", "bce:1,dice:1", "--classes", "3"], "--loss"),
            (["--classes", "3", "--class-weights", "1,2"], "--class-weights"),
            (["--class-weights", "a"], "--class-weights"),
            (["--loss", "dice", "--class-weights", "2"], "--class-weights"),
            (["--loss", "focal", "--focal-gamma", "-1"], "--focal-gamma"),
            (["--classes", "3", "--loss", "focal", "--focal-alpha", "0.3"], "--focal-alpha"),
            (["--loss", "tversky", "--tversky-beta", "nan"], "--tversky-beta"),
            (["--loss", "focal-tversky", "--tversky-gamma", "0"], "--tversky-gamma"),
        ]
        for (flags, flag) in cases {
            let r = try segtrain(["train"] + LossCLITests.tiny + flags + ["--out", NSTemporaryDirectory() + "segtrain-losscli-bad"])
            XCTAssertNotEqual(r.status, 0, "\(flags)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(flags): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(flag), "\(flags): \(r.stderr)")
        }
    }
}
