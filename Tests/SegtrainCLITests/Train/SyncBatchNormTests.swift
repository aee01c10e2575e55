// --sync-bn (issue #18): with BatchNorm's statistics summed over the ranks, a BatchNorm model's
// first-step gradient on 2 and 3 ranks (one global batch of 5: shares 3+2 and 2+2+1) is the
// single process's within float rounding, for the plain UNet with --batchnorm and for a ResNet
// encoder UNet. Without the flag each rank normalises with its own 1-3 images and the gradient is
// another one: the control shows that the comparison can fail. And the refusals: --sync-bn on a
// model without BatchNorm, and a step that would leave a rank without an image.
//
// Tolerance: 1e-5 of each tensor's largest element, as for the models without BatchNorm
// (DataParallelTests). The rank count changes only the grouping of sums: the gradient's float32
// sum over ranks (measured 2e-7 to 2.2e-6 there) and BatchNorm's per-channel Double sums, whose
// regrouping moves them by ~1e-16 relative, below the float32 rounding of the statistics.
// That holds when each image's forward is the same bits on a rank as in the single process. The
// encoder UNet runs with --deterministic for that (Winograd chunks and strided bands cut by image;
// DeepLabTrainingTests covers --conv gemm): by default the Winograd chunks and the strided
// kernel's bands follow each rank's batch size, its logits differ by float rounding (2.6e-6), and
// at 64 px the first-step gradient of a randomly initialised ResNet turns such differences into
// 1e-4 to 8e-2 (ReLU and max-pool kinks whose unit is 1/20 of a 2x2 layer's sum; --threads 1
// against --threads 2 in one process differs as much). Measured on an AMD EPYC Zen 3, 2 and 3
// ranks: seeds 1-5 9e-6 to 7.7e-2 by default; seeds 1, 3, 5 3.0e-7 to 6.2e-7 with --deterministic,
// and 2.2e-7 to 3.4e-7 with --conv gemm (seeds 1-5).

import Foundation
import XCTest

final class SyncBatchNormTests: TemporaryFolderTestCase {
    override class var folderTag: String { "syncbn" }

    private func firstGradient(ranks: Int, _ model: [String], _ extra: [String], tag: String,
                               file: StaticString = #filePath, line: UInt = #line) throws -> [String: [Float]] {
        let path = "\(folder)/\(tag)-\(ranks).safetensors"
        let result = try segtrain(["train"] + model + ["--threads", "1", "--batch-size", "5", "--train-samples", "5",
                                  "--val-samples", "2", "--epochs", "1", "--seed", "3", "--optimizer", "sgd",
                                  "--dump-gradients", path, "--out", "\(folder)/\(tag)-\(ranks)"] + extra,
                                  ranks: ranks, timeout: 300, file: file, line: line)
        XCTAssertEqual(result.status, 0, "\(tag), \(ranks) ranks: \(result.stderr)", file: file, line: line)
        return try loadSafetensors(path)
    }

    /// The gradients on 2 and 3 ranks with --sync-bn against the single process's; returns the
    /// worst difference without the flag on 3 ranks (the control).
    private func checkRanks(_ model: [String], tag: String, file: StaticString = #filePath, line: UInt = #line) throws -> Double {
        let single = try firstGradient(ranks: 0, model, [], tag: tag, file: file, line: line)
        XCTAssertTrue(single.keys.contains { $0.contains("bn") || $0.contains(".1.weight") }, "a BatchNorm model", file: file, line: line)
        for ranks in [2, 3] {
            let synced = try firstGradient(ranks: ranks, model, ["--sync-bn"], tag: tag + "-sync", file: file, line: line)
            let worst = worstScaledDifference(synced, single)
            print("first-step gradient with --sync-bn, \(model.joined(separator: " ")), \(ranks) ranks: worst scaled difference \(worst)")
            XCTAssertLessThanOrEqual(worst, 1e-5, "\(tag): \(ranks) ranks with --sync-bn differ by \(worst)", file: file, line: line)
        }
        return worstScaledDifference(try firstGradient(ranks: 3, model, [], tag: tag + "-local", file: file, line: line), single)
    }

    func testPlainUNetWithBatchNormGivesTheSingleProcessGradient() throws {
        let control = try checkRanks(["--image-size", "16", "--base-channels", "4", "--depth", "2", "--norm", "batch"], tag: "unet")
        XCTAssertGreaterThan(control, 1e-3, "without --sync-bn, 3 ranks normalise with their own images")
    }

    func testEncoderUNetGivesTheSingleProcessGradient() throws {
        // At 32 px the deepest BatchNorms see 1 x 1 maps: the rank with one image could not train
        // alone (it is refused without --sync-bn), but the global batch of 5 can.
        // 64 px: at 32 px the deepest BatchNorms normalise 5 values per channel, nearly a sign function
        // that turns the ranks' float rounding into differences of 2e-2 (seen on an Intel Xeon).
        // --deterministic: every image's forward is the same bits on a rank as in the single process
        // (the header's error model); the default policy's batch-dependent Winograd chunks are not.
        let model = ["--encoder", "resnet18", "--image-size", "64", "--deterministic"]
        let single = try firstGradient(ranks: 0, model, [], tag: "resnet")
        for ranks in [2, 3] {
            let synced = try firstGradient(ranks: ranks, model, ["--sync-bn"], tag: "resnet-sync")
            let worst = worstScaledDifference(synced, single)
            print("first-step gradient with --sync-bn, resnet18, \(ranks) ranks: worst scaled difference \(worst)")
            XCTAssertLessThanOrEqual(worst, 1e-5, "\(ranks) ranks with --sync-bn differ by \(worst)")
        }
        let refused = try segtrain(["train", "--encoder", "resnet18", "--image-size", "32", "--threads", "1", "--batch-size", "5", "--train-samples", "5",
                                   "--val-samples", "0", "--epochs", "1", "--out", "\(folder)/refused"], ranks: 3, timeout: 120)
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("every rank needs at least 2 images in every step"), refused.stderr)
    }

    func testRefusals() throws {
        let plain = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--sync-bn", "--norm", "group",
                                  "--out", "\(folder)/plain"])
        XCTAssertEqual(plain.stderr,
                       "segtrain: error: --sync-bn synchronises BatchNorm, but this model has none: add --norm batch or use --encoder\n")
        XCTAssertNotEqual(plain.status, 0)
        // 7 samples in batches of 5 on 3 ranks: the last batch (2 images) leaves rank 2 without one.
        let empty = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--batchnorm",
                                  "--sync-bn", "--threads", "1", "--batch-size", "5", "--train-samples", "7",
                                  "--val-samples", "0", "--epochs", "1", "--out", "\(folder)/empty"], ranks: 3, timeout: 120)
        XCTAssertNotEqual(empty.status, 0)
        XCTAssertTrue(empty.stderr.contains("--sync-bn needs an image on every rank in every step, but global batch 2 of 2 "
                                            + "(2 of 7 samples on 3 rank(s)) gives rank 2 none: add --drop-last or change --batch-size"),
                      empty.stderr)
        XCTAssertEqual(empty.stderr.components(separatedBy: "--sync-bn needs").count, 2, "printed once: \(empty.stderr)")
        let dropped = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--batchnorm",
                                    "--sync-bn", "--threads", "1", "--batch-size", "5", "--train-samples", "7", "--drop-last",
                                    "--val-samples", "2", "--epochs", "1", "--out", "\(folder)/dropped"], ranks: 3, timeout: 120)
        XCTAssertEqual(dropped.status, 0, dropped.stderr)
        // bench takes the flag too, and refuses it alike.
        let bench = try segtrain(["bench", "--sync-bn", "--image-size", "16", "--base-channels", "4", "--depth", "2"])
        XCTAssertTrue(bench.stderr.contains("--sync-bn synchronises BatchNorm, but this model has none"), bench.stderr)
        XCTAssertNotEqual(bench.status, 0)
    }

    /// `segtrain bench --sync-bn` under mpirun times steps with the statistics summed over the ranks
    /// (its JSON says whether the model's BatchNorm layers got the sum); alone there is nothing to sum.
    func testBenchTimesSynchronizedSteps() throws {
        let flags = ["bench", "--norm", "batch", "--sync-bn", "--image-size", "16", "--base-channels", "4", "--depth", "2",
                     "--threads", "1", "--batch-size", "4", "--steps", "2", "--json"]
        let two = try segtrain(flags, ranks: 2, timeout: 120)
        XCTAssertEqual(two.status, 0, two.stderr)
        XCTAssertTrue(two.stdout.contains("\"ranks\": 2") && two.stdout.contains("\"sync_bn\": true"), two.stdout)
        let one = try segtrain(flags)
        XCTAssertEqual(one.status, 0, one.stderr)
        XCTAssertTrue(one.stdout.contains("\"sync_bn\": false"), one.stdout)
    }
}
