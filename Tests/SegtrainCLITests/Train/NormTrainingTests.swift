// --norm none|batch|group (issue #18) through the commands, as a user runs them: info's layer rows,
// the flag's refusals (a contradicting --batchnorm, an encoder with another norm), a GroupNorm model
// trained alone and on 2 ranks, loaded by predict and evaluate, and resumed only with the same --norm.
// (The first-step gradient on 1, 2 and 3 ranks: DataParallelTests.)

import Foundation
import XCTest

final class NormTrainingTests: TemporaryFolderTestCase {
    override class var folderTag: String { "norm" }

    private let model = ["--image-size", "16", "--base-channels", "8", "--depth", "2", "--threads", "1"]

    func testInfoShowsTheNormOfEveryConvolution() throws {
        let group = try segtrain(["info", "--norm", "group"] + model)
        XCTAssertEqual(group.status, 0, group.stderr)
        XCTAssertTrue(group.stdout.contains("down.0.conv1") && group.stdout.contains("conv3x3+gn8+relu"), group.stdout)
        XCTAssertTrue(group.stdout.contains("conv3x3+gn16+relu"), group.stdout)
        XCTAssertFalse(group.stdout.contains("+bn+"), group.stdout)
        // --batchnorm is the old spelling of --norm batch: the same model.
        let batch = try segtrain(["info", "--norm", "batch"] + model)
        let old = try segtrain(["info", "--batchnorm"] + model)
        XCTAssertEqual(batch.status, 0, batch.stderr)
        XCTAssertTrue(batch.stdout.contains("conv3x3+bn+relu"), batch.stdout)
        XCTAssertEqual(old.stdout, batch.stdout)
        XCTAssertEqual(try segtrain(["info", "--batchnorm", "--norm", "batch"] + model).stdout, batch.stdout)
        let none = try segtrain(["info"] + model)
        XCTAssertTrue(none.stdout.contains("conv3x3+relu") && !none.stdout.contains("+bn+") && !none.stdout.contains("+gn"),
                      none.stdout)
        // An encoder with --norm batch is what it is anyway.
        XCTAssertEqual(try segtrain(["info", "--encoder", "resnet18", "--image-size", "32", "--norm", "batch"]).status, 0)
    }

    func testBadNormFlagsGiveOneLine() throws {
        let cases: [([String], String)] = [
            (["info", "--norm", "layer"], "--norm"),
            (["info", "--batchnorm", "--norm", "group"],
             "--batchnorm (the old spelling of --norm batch) contradicts --norm group: give --norm alone"),
            (["info", "--batchnorm", "--norm", "none"], "contradicts --norm none"),
            (["info", "--encoder", "resnet18", "--image-size", "32", "--norm", "group"],
             "--norm group does not apply with --encoder resnet18: its pretrained layers are BatchNorm"),
            (["train", "--encoder", "mobilenet_v2", "--image-size", "32", "--norm", "none"],
             "--norm none does not apply with --encoder mobilenet_v2"),
        ]
        for (arguments, message) in cases {
            let r = try segtrain(arguments)
            XCTAssertNotEqual(r.status, 0, "\(arguments)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(arguments): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(message), "\(arguments): \(r.stderr)")
        }
    }

    /// A GroupNorm model trains on 2 ranks (and resumes only with --norm group), predict and
    /// evaluate rebuild it from its checkpoint.
    func testGroupNormTrainsOnTwoRanksAndPredictAndEvaluateLoadIt() throws {
        let data = "\(folder)/data"
        XCTAssertEqual(try segtrain(["synth", "--out", data, "--count", "8", "--size", "16"]).status, 0)
        let common = ["train", "--data", data, "--norm", "group"] + model + ["--batch-size", "4", "--seed", "3"]
        let run = "\(folder)/run"
        let trained = try segtrain(common + ["--epochs", "1", "--out", run], ranks: 2, timeout: 120)
        XCTAssertEqual(trained.status, 0, trained.stderr)
        let weights = try loadSafetensors("\(run)/model.safetensors")
        XCTAssertNotNil(weights["down.0.gn1.weight"])
        XCTAssertNil(weights["down.0.conv1.bias"])
        XCTAssertFalse(weights.keys.contains { $0.contains("running") }, "GroupNorm keeps no running statistics")
        let state = try String(contentsOfFile: "\(run)/checkpoints/last/state.json", encoding: .utf8)
        XCTAssertTrue(state.contains("\"norm\":\"group\"") || state.contains("\"norm\" : \"group\""), state)

        let other = try segtrain(["train", "--data", data, "--norm", "batch"] + model
                                 + ["--batch-size", "4", "--seed", "3", "--epochs", "2", "--out", run, "--resume", "auto"])
        XCTAssertNotEqual(other.status, 0)
        XCTAssertTrue(other.stderr.contains("--norm group, but this run has --norm batch"), other.stderr)
        let resumed = try segtrain(common + ["--epochs", "2", "--out", run, "--resume", "auto"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)

        let predicted = try segtrain(["predict", "--model", run, "--input", "\(data)/images", "--output", "\(folder)/out"])
        XCTAssertEqual(predicted.status, 0, predicted.stderr)
        XCTAssertTrue(predicted.stdout.contains("predicted 8 of 8 image(s)"), predicted.stdout)
        let evaluated = try segtrain(["evaluate", "--model", run, "--data", data, "--out", "\(folder)/scores.csv"])
        XCTAssertEqual(evaluated.status, 0, evaluated.stderr)
        XCTAssertTrue(evaluated.stdout.contains("iou"), evaluated.stdout)
    }
}
