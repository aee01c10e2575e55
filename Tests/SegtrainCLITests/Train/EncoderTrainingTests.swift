// Encoder UNets (--encoder, issue #16) through every command, as a user runs them: train alone and
// on 2 ranks with a bitwise resume (with --ema, whose average every rank must hold alike), info's
// parameter counts (segmentation_models_pytorch's), predict, evaluate.

import Foundation
import XCTest

final class EncoderTrainingTests: TemporaryFolderTestCase {
    override class var folderTag: String { "encoder" }

    private let model = ["--encoder", "resnet18", "--image-size", "32", "--threads", "1"]

    private func train(ranks: Int, _ extra: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let arguments = ["train"] + model + ["--batch-size", "4", "--train-samples", "8", "--val-samples", "4",
                                             "--seed", "3", "--ema", "0.9"] + extra
        let result = try segtrain(arguments, ranks: ranks, timeout: 300, file: file, line: line)
        XCTAssertEqual(result.status, 0, "ranks \(ranks): \(result.stderr)", file: file, line: line)
    }

    func testTwoRanksResumeBitwiseWithTheWeightAverage() throws {
        try train(ranks: 2, ["--epochs", "2", "--out", "\(folder)/straight"])
        try train(ranks: 2, ["--epochs", "1", "--out", "\(folder)/stopped"])
        try train(ranks: 2, ["--epochs", "2", "--out", "\(folder)/stopped", "--resume", "auto"])
        for file in ["model.safetensors", "checkpoints/last/model.safetensors", "checkpoints/last/ema.safetensors",
                     "checkpoints/last/optimizer.safetensors"] {
            XCTAssertEqual(try loadSafetensors("\(folder)/stopped/\(file)"), try loadSafetensors("\(folder)/straight/\(file)"), file)
        }
        // The exported model is the average, with smp's tensor names and BatchNorm counters.
        let exported = try loadSafetensors("\(folder)/straight/model.safetensors")
        XCTAssertEqual(exported, try loadSafetensors("\(folder)/straight/checkpoints/last/ema.safetensors"))
        XCTAssertNotEqual(exported, try loadSafetensors("\(folder)/straight/checkpoints/last/model.safetensors"))
        XCTAssertNotNil(exported["encoder.layer4.1.bn2.num_batches_tracked"])
        XCTAssertNotNil(exported["segmentation_head.0.weight"])
        let metrics = try String(contentsOfFile: "\(folder)/stopped/metrics.csv", encoding: .utf8)
        let straight = try String(contentsOfFile: "\(folder)/straight/metrics.csv", encoding: .utf8)
        // The validation losses (on the average) agree: every rank validated on the same average.
        func losses(_ text: String) -> [Substring] { text.split(separator: "\n").dropFirst().map { $0.split(separator: ",")[2] } }
        XCTAssertEqual(losses(metrics), losses(straight))
    }

    func testInfoPredictAndEvaluateTakeTheEncoderModel() throws {
        for (encoder, count) in [("resnet18", "14,328,209"), ("resnet34", "24,436,369"), ("resnet50", "32,521,105"),
                                 ("mobilenet_v2", "6,628,945")] {
            let info = try segtrain(["info", "--encoder", encoder, "--image-size", "64"])
            XCTAssertEqual(info.status, 0, info.stderr)
            XCTAssertTrue(info.stdout.contains("parameters:            \(count)"), "\(encoder): \(info.stdout)")
        }
        let resnet18 = try segtrain(["info", "--encoder", "resnet18", "--image-size", "64"])
        XCTAssertTrue(resnet18.stdout.contains("  of which encoder:    11,176,512   (train --freeze-encoder trains the other 3,151,697)"),
                      resnet18.stdout)
        let bad = try segtrain(["info", "--encoder", "resnet18", "--image-size", "48"])
        XCTAssertEqual(bad.stderr, "segtrain: error: --image-size 48 does not suit --encoder resnet18: it must be a multiple of 32\n")
        XCTAssertNotEqual(bad.status, 0)

        try train(ranks: 0, ["--epochs", "1", "--out", "\(folder)/run"])
        let data = "\(folder)/data"
        XCTAssertEqual(try segtrain(["synth", "--out", data, "--count", "3", "--size", "40"]).status, 0)
        let predicted = try segtrain(["predict", "--model", "\(folder)/run", "--input", "\(data)/images", "--output",
                                      "\(folder)/out", "--tta", "flip"])
        XCTAssertEqual(predicted.status, 0, predicted.stderr)
        XCTAssertTrue(predicted.stdout.contains("predicted 3 of 3 image(s)"), predicted.stdout)
        let evaluated = try segtrain(["evaluate", "--model", "\(folder)/run", "--data", data, "--out", "\(folder)/scores.csv"])
        XCTAssertEqual(evaluated.status, 0, evaluated.stderr)
        let rows = try String(contentsOfFile: "\(folder)/scores.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(rows.filter { $0.hasPrefix("images/") }.count, 3, "\(rows)")
    }

    /// At 32 x 32 the encoder's deepest BatchNorm sees one value per channel and image: a step that
    /// gives a rank one image is refused before training, in one line naming the flags (PyTorch
    /// raises "Expected more than 1 value per channel"); --drop-last makes the run fit.
    func testAOneImageStepAtTheSmallestSizeIsRefusedNotATrap() throws {
        let data = "\(folder)/data"
        XCTAssertEqual(try segtrain(["synth", "--out", data, "--count", "8", "--size", "32"]).status, 0)
        let common = ["train", "--encoder", "resnet18", "--image-size", "32", "--threads", "1", "--data", data,
                      "--val-split", "0.125", "--epochs", "1", "--batch-size", "2", "--out", "\(folder)/run"]
        let refused = try segtrain(common)  // 7 training samples: the last step has 1 image
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.hasPrefix("segtrain: error: at --image-size 32 the model's smallest BatchNorm map is 1 x 1")
                      && refused.stderr.contains("--drop-last") && refused.stderr.split(separator: "\n").count == 1, refused.stderr)
        let fitting = try segtrain(common + ["--drop-last"])
        XCTAssertEqual(fitting.status, 0, fitting.stderr)
        let bench = try segtrain(["bench", "--encoder", "resnet18", "--image-size", "32", "--batch-size", "1", "--steps", "1"])
        XCTAssertEqual(bench.status, 1, bench.stderr)
        XCTAssertTrue(bench.stderr.contains("gives a rank 1"), bench.stderr)
    }

    /// --freeze-encoder --unfreeze-at-epoch 2 (fine-tuning as with PyTorch's encoder.eval() and
    /// requires_grad_(False)): after epoch 1 every encoder.* tensor (weights, running statistics,
    /// counters) is bitwise the one it started from while the decoder trained; from epoch 2 on the
    /// encoder trains. On 2 ranks, a resume from epoch 1 (across the unfreezing) and from epoch 2
    /// (the encoder's own Adam step count, frozen_steps, read back) ends bitwise as the straight run.
    func testFreezeEncoderUntilEpochTwoThenResumeBitwiseOnTwoRanks() throws {
        try train(ranks: 0, ["--epochs", "1", "--out", "\(folder)/start"])
        let initial = "\(folder)/start/model.safetensors"
        let freeze = ["--freeze-encoder", "--unfreeze-at-epoch", "2", "--epochs", "3", "--keep", "3", "--init-weights", initial]
        let arguments = ["train"] + model + ["--batch-size", "4", "--train-samples", "8", "--val-samples", "4", "--seed", "3"]
        let straight = try segtrain(arguments + freeze + ["--out", "\(folder)/straight"], ranks: 2, timeout: 300)
        XCTAssertEqual(straight.status, 0, straight.stderr)
        XCTAssertTrue(straight.stdout.contains("14,328,209 parameters (3,151,697 trainable: encoder frozen until epoch 2)"),
                      straight.stdout)
        XCTAssertTrue(straight.stdout.contains("epoch 2: the encoder is unfrozen"), straight.stdout)
        // summary.json: the flags, and what trained in the last epoch (all of it, unfrozen).
        let summary = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(folder)/straight/summary.json")))
                                    as? [String: Any])
        XCTAssertEqual(summary["freeze_encoder"] as? Bool, true)
        XCTAssertEqual(summary["unfreeze_at_epoch"] as? Int, 2)
        XCTAssertEqual(summary["trainable_parameters"] as? Int, 14_328_209)
        let frozenOnly = try segtrain(arguments + ["--freeze-encoder", "--epochs", "1", "--out", "\(folder)/frozen"], ranks: 0)
        XCTAssertEqual(frozenOnly.status, 0, frozenOnly.stderr)
        let frozenSummary = try XCTUnwrap(JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: "\(folder)/frozen/summary.json"))) as? [String: Any])
        XCTAssertEqual(frozenSummary["freeze_encoder"] as? Bool, true)
        XCTAssertNil(frozenSummary["unfreeze_at_epoch"])
        XCTAssertEqual(frozenSummary["trainable_parameters"] as? Int, 3_151_697)
        let start = try loadSafetensors(initial)
        let epochs = try (1...3).map { try loadSafetensors("\(folder)/straight/checkpoints/epoch-00\($0)/model.safetensors") }
        let encoderNames = start.keys.filter { $0.hasPrefix("encoder.") }, decoderNames = start.keys.filter { !$0.hasPrefix("encoder.") }
        XCTAssertEqual(encoderNames.count, 120)  // 20 convolutions; 20 BatchNorms of 5 tensors each
        for name in encoderNames {
            XCTAssertEqual(epochs[0][name]?.map(\.bitPattern), start[name]?.map(\.bitPattern), "epoch 1: \(name)")
        }
        for name in decoderNames { XCTAssertNotEqual(epochs[0][name], start[name], "epoch 1 trains the decoder: \(name)") }
        for name in ["encoder.conv1.weight", "encoder.layer4.1.conv2.weight", "encoder.bn1.running_mean", "encoder.layer1.0.bn1.weight"] {
            XCTAssertNotEqual(epochs[1][name], epochs[0][name], "epoch 2 trains the encoder: \(name)")
            XCTAssertNotEqual(epochs[2][name], epochs[1][name], "epoch 3 trains the encoder: \(name)")
        }
        for epoch in [1, 2] {
            let out = "\(folder)/from-\(epoch)"
            let resumed = try segtrain(arguments + freeze + ["--out", out, "--resume", "\(folder)/straight/checkpoints/epoch-00\(epoch)"],
                                       ranks: 2, timeout: 300)
            XCTAssertEqual(resumed.status, 0, resumed.stderr)
            for file in ["model.safetensors", "checkpoints/last/model.safetensors", "checkpoints/last/optimizer.safetensors"] {
                XCTAssertEqual(try loadSafetensors("\(out)/\(file)"), try loadSafetensors("\(folder)/straight/\(file)"),
                               "resumed from epoch \(epoch): \(file)")
            }
        }
    }

    /// The fine-tuning flags are refused in one line without what they need.
    func testFreezeFlagsAreRefusedWithoutAnEncoderOrInRange() throws {
        let cases: [([String], String)] = [
            (["--freeze-encoder"], "segtrain: error: --freeze-encoder needs --encoder\n"),
            (["--encoder", "resnet18", "--unfreeze-at-epoch", "2"], "segtrain: error: --unfreeze-at-epoch needs --freeze-encoder\n"),
            (["--encoder", "resnet18", "--freeze-encoder", "--unfreeze-at-epoch", "1", "--epochs", "3"],
             "segtrain: error: --unfreeze-at-epoch must be 2...3 (--epochs; epoch 1 is the first) (got 1)\n"),
            (["--encoder", "resnet18", "--freeze-encoder", "--unfreeze-at-epoch", "4", "--epochs", "3"],
             "segtrain: error: --unfreeze-at-epoch must be 2...3 (--epochs; epoch 1 is the first) (got 4)\n"),
        ]
        for (flags, message) in cases {
            let result = try segtrain(["train", "--image-size", "32", "--out", "\(folder)/refused"] + flags)
            XCTAssertNotEqual(result.status, 0, "\(flags)")
            XCTAssertEqual(result.stderr, message, "\(flags)")
        }
        for (flags, message) in [(["--freeze-encoder"], "segtrain: error: --freeze-encoder needs --encoder\n"),
                                 (["--encoder", "resnet18", "--freeze-encoder", "--encoder-ops"],
                                  "segtrain: error: --freeze-encoder times training steps; it does not go with --conv-layers, --encoder-ops, ...\n")] {
            let result = try segtrain(["bench"] + flags)
            XCTAssertNotEqual(result.status, 0, "\(flags)")
            XCTAssertEqual(result.stderr, message, "\(flags)")
        }
    }
}
