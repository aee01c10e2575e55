// DeepLabV3+ (--arch deeplabv3plus, issue #17) through every command, as a user runs them: info's
// parameter counts (segmentation_models_pytorch's) and the flags' one-line errors; the first-step
// gradient on 2 and 3 ranks with ASPP dropout on equals the single process's (the masks follow the
// image's place in the global batch, not the rank); a 2-rank run resumes bitwise; a per-rank batch
// of one image is refused in one line naming the flags (the image-pooling BatchNorm sees one value
// per channel and image); bench, predict (--tile, --cutout with a background), evaluate, report and
// serve take the model.
//
// The model is DeepLabV3+ on mobilenet_v2 (4.4M parameters) at 32 px: the smallest of the family.

import Foundation
import SegData
import XCTest

final class DeepLabTrainingTests: TemporaryFolderTestCase {
    override class var folderTag: String { "deeplab" }

    private let model = ["--arch", "deeplabv3plus", "--encoder", "mobilenet_v2", "--image-size", "32", "--threads", "1"]

    private func train(ranks: Int, _ extra: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let arguments = ["train"] + model + ["--batch-size", "4", "--train-samples", "8", "--val-samples", "4",
                                             "--seed", "3"] + extra
        let result = try segtrain(arguments, ranks: ranks, timeout: 300, file: file, line: line)
        XCTAssertEqual(result.status, 0, "ranks \(ranks): \(result.stderr)", file: file, line: line)
    }

    func testInfoCountsAreSMPsAndBadFlagsGetOneLine() throws {
        // smp.DeepLabV3Plus(encoder, encoder_weights=None, classes=1), counted by smp 0.6.
        for (flags, count) in [(["--encoder", "resnet50"], "26,677,585"), (["--encoder", "mobilenet_v2"], "4,378,513"),
                               (["--encoder", "resnet50", "--output-stride", "8"], "26,677,585"), ([], "22,437,457")] {
            let info = try segtrain(["info", "--arch", "deeplabv3plus", "--image-size", "64"] + flags)
            XCTAssertEqual(info.status, 0, info.stderr)
            XCTAssertTrue(info.stdout.contains("parameters:            \(count)"), "\(flags): \(info.stdout)")
        }
        let os8 = try segtrain(["info", "--arch", "deeplabv3plus", "--encoder", "resnet50", "--output-stride", "8", "--image-size", "64"])
        XCTAssertTrue(os8.stdout.contains("encoder.layer3.0.conv2         conv3x3 d2"), os8.stdout)
        XCTAssertTrue(os8.stdout.contains("decoder.aspp.0.convs.3.0.0     depthwise3x3 d36  (2048, 8, 8)"), os8.stdout)
        let bad: [([String], String)] = [
            (["--output-stride", "32"], "--output-stride must be 16 or 8 (got 32)"),
            (["--atrous-rates", "6,12"], "--atrous-rates needs three dilations of 1 to 256 (got 6,12)"),
            (["--atrous-rates", "6,x,12"], "--atrous-rates 6,x,12: not three whole numbers separated by commas"),
            (["--aspp-dropout", "1"], "--aspp-dropout must be in [0, 1) (got 1.0)"),
            (["--image-size", "40"], "--image-size 40 does not suit --arch deeplabv3plus --output-stride 16: it must be a multiple of 16"),
            (["--encoder", "none"], "--arch deeplabv3plus needs an encoder: --encoder resnet18, resnet34, resnet50, mobilenet_v2 (default resnet34)"),
            (["--encoder", "vgg16"], "--encoder vgg16: not resnet18, resnet34, resnet50, mobilenet_v2"),
        ]
        for (flags, message) in bad {
            let r = try segtrain(["info", "--arch", "deeplabv3plus", "--image-size", "64"] + flags)
            XCTAssertNotEqual(r.status, 0, "\(flags)")
            XCTAssertEqual(r.stderr, "segtrain: error: \(message)\n", "\(flags)")
        }
        let arch = try segtrain(["info", "--arch", "pspnet"])
        XCTAssertEqual(arch.stderr, "segtrain: error: --arch pspnet: not unet or deeplabv3plus\n")
    }

    private func firstGradient(ranks: Int, _ extra: [String], tag: String,
                               file: StaticString = #filePath, line: UInt = #line) throws -> [String: [Float]] {
        let path = "\(folder)/\(tag)-\(ranks).safetensors"
        let model = ["--arch", "deeplabv3plus", "--encoder", "resnet18", "--image-size", "64", "--threads", "1", "--conv", "gemm"]
        let result = try segtrain(["train"] + model + ["--batch-size", "8", "--train-samples", "8", "--val-samples", "2",
                                  "--epochs", "1", "--seed", "4", "--optimizer", "sgd", "--dump-gradients", path,
                                  "--out", "\(folder)/\(tag)-\(ranks)"] + extra,
                                  ranks: ranks, timeout: 300, file: file, line: line)
        XCTAssertEqual(result.status, 0, "\(tag), \(ranks) ranks: \(result.stderr)", file: file, line: line)
        return try loadSafetensors(path)
    }

    /// ASPP dropout 0.5 draws its masks from (seed, step, the image's position in the global batch):
    /// with --sync-bn, 2 and 3 ranks (shares 4+4, 3+3+2) give the single process's first-step
    /// gradient within 1e-5 of each tensor's largest element (the tolerance of SyncBatchNormTests:
    /// only the grouping of sums changes). The control: without dropout the
    /// gradient is another, so a mask drawn wrong on a rank shows.
    /// The model: DeepLabV3+ on resnet18 at 64 px, batch 8, seed 4, with --conv gemm, under which
    /// each image's forward is the same bits on a rank as in the single process (SyncBatchNormTests'
    /// header). Under --conv auto the Winograd chunks and strided bands follow each rank's batch, and
    /// the rounding differences they make cross ReLU, ReLU6 and max-pool kinks: 1e-3 to 8e-2 of a
    /// tensor's largest value on some seeds and CPUs (seed 3 flipped one ReLU on 3 and 4 ranks, 3.6e-3,
    /// on an Intel Xeon), which had made this test pass or fail by the seed. AMD EPYC Zen 3, 2 and 3
    /// ranks: 8.3e-6 and 9.3e-6 by default (seed 4, just inside the bound); with --conv gemm 2.5e-7
    /// (seed 4) and 2.8e-7 to 3.8e-7 (seeds 3 and 5).
    func testRanksDrawTheSingleProcessDropoutMasks() throws {
        let single = try firstGradient(ranks: 0, [], tag: "single")
        for ranks in [2, 3] {
            let synced = try firstGradient(ranks: ranks, ["--sync-bn"], tag: "sync")
            let worst = worstScaledDifference(synced, single)
            print("DeepLabV3+ first-step gradient with dropout, \(ranks) ranks: worst scaled difference \(worst)")
            XCTAssertLessThanOrEqual(worst, 1e-5, "\(ranks) ranks differ by \(worst)")
        }
        let noDropout = try firstGradient(ranks: 0, ["--aspp-dropout", "0"], tag: "nodropout")
        XCTAssertGreaterThan(worstScaledDifference(noDropout, single), 1e-3, "dropout changes the gradient")
    }

    func testTwoRanksResumeBitwise() throws {
        try train(ranks: 2, ["--epochs", "2", "--out", "\(folder)/straight"])
        try train(ranks: 2, ["--epochs", "1", "--out", "\(folder)/stopped"])
        try train(ranks: 2, ["--epochs", "2", "--out", "\(folder)/stopped", "--resume", "auto"])
        for file in ["model.safetensors", "checkpoints/last/model.safetensors", "checkpoints/last/optimizer.safetensors"] {
            XCTAssertEqual(try loadSafetensors("\(folder)/stopped/\(file)"), try loadSafetensors("\(folder)/straight/\(file)"), file)
        }
        let exported = try loadSafetensors("\(folder)/straight/model.safetensors")
        XCTAssertNotNil(exported["decoder.aspp.0.convs.4.2.num_batches_tracked"])
        XCTAssertNotNil(exported["decoder.block2.0.1.weight"])
        let state = try String(contentsOfFile: "\(folder)/straight/checkpoints/last/state.json", encoding: .utf8)
        XCTAssertTrue(state.contains("\"architecture\":\"deeplabv3plus\"") || state.contains("\"architecture\" : \"deeplabv3plus\""), state)
        // A resume must give the same model flags.
        let other = try segtrain(["train"] + model + ["--aspp-dropout", "0.1", "--seed", "3", "--batch-size", "4", "--train-samples", "8",
                                                      "--val-samples", "4", "--epochs", "3", "--out", "\(folder)/stopped",
                                                      "--resume", "auto"])
        XCTAssertNotEqual(other.status, 0)
        XCTAssertTrue(other.stderr.contains("--aspp-dropout"), other.stderr)
    }

    /// One image per rank: the image-pooling BatchNorm would normalise a single value per channel
    /// (PyTorch: "Expected more than 1 value per channel when training"): refused in one line that
    /// names the flags; with --sync-bn the global batch of 2 trains.
    func testOneImagePerRankIsRefusedInOneLine() throws {
        let common = ["train"] + model + ["--batch-size", "2", "--train-samples", "4", "--val-samples", "0", "--epochs", "1"]
        let refused = try segtrain(common + ["--out", "\(folder)/refused"], ranks: 2, timeout: 120)
        XCTAssertEqual(refused.status, 1, refused.stderr)
        // One line from segtrain (mpirun adds its own after it).
        let lines = refused.stderr.split(separator: "\n").filter { $0.hasPrefix("segtrain:") }
        XCTAssertEqual(lines.count, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.hasPrefix("segtrain: error: the model's image-pooling BatchNorm (ASPP) normalises one value per "
                                               + "channel and image, so every rank needs at least 2 images in every step")
                      && lines[0].contains("--batch-size") && lines[0].contains("--sync-bn"), refused.stderr)
        let synchronized = try segtrain(common + ["--sync-bn", "--out", "\(folder)/synced"], ranks: 2, timeout: 120)
        XCTAssertEqual(synchronized.status, 0, synchronized.stderr)
        let bench = try segtrain(["bench"] + model + ["--batch-size", "1", "--steps", "1"])
        XCTAssertEqual(bench.status, 1, bench.stderr)
        XCTAssertTrue(bench.stderr.contains("image-pooling BatchNorm") && bench.stderr.contains("gives a rank 1"), bench.stderr)
    }

    func testBenchPredictEvaluateReportAndServeTakeTheModel() throws {
        let bench = try segtrain(["bench"] + model + ["--batch-size", "2", "--steps", "1", "--warmup", "0"])
        XCTAssertEqual(bench.status, 0, bench.stderr)
        try train(ranks: 0, ["--epochs", "2", "--out", "\(folder)/run"])
        let data = "\(folder)/data"
        XCTAssertEqual(try segtrain(["synth", "--out", data, "--count", "3", "--size", "40"]).status, 0)
        let predicted = try segtrain(["predict", "--model", "\(folder)/run", "--input", "\(data)/images", "--output",
                                      "\(folder)/out", "--mask", "--cutout", "--background", "#00ff00"])
        XCTAssertEqual(predicted.status, 0, predicted.stderr)
        XCTAssertTrue(predicted.stdout.contains("predicted 3 of 3 image(s)"), predicted.stdout)
        let outputs = try FileManager.default.contentsOfDirectory(atPath: "\(folder)/out")
        XCTAssertEqual(outputs.count, 6, "\(outputs)")
        let tiled = try segtrain(["predict", "--model", "\(folder)/run", "--input", "\(data)/images", "--output",
                                  "\(folder)/tiled", "--tile"])
        XCTAssertEqual(tiled.status, 0, tiled.stderr)
        let evaluated = try segtrain(["evaluate", "--model", "\(folder)/run", "--data", data, "--out", "\(folder)/scores.csv"])
        XCTAssertEqual(evaluated.status, 0, evaluated.stderr)
        let rows = try String(contentsOfFile: "\(folder)/scores.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(rows.filter { $0.hasPrefix("images/") }.count, 3, "\(rows)")
        let report = try segtrain(["report", "\(folder)/run"])
        XCTAssertEqual(report.status, 0, report.stderr)

        // serve answers a request with predict's mask.
        let server = try Server(binary: Self.binary, arguments: ["serve", "--model", "\(folder)/run", "--port", "0", "--threads", "1"])
        addTeardownBlock { server.kill() }
        let image = try FileManager.default.contentsOfDirectory(atPath: "\(data)/images").sorted()[0]
        let r = try segtrain(["predict", "--model", "\(folder)/run", "--input", "\(data)/images/\(image)", "--output",
                              "\(folder)/expected.png", "--mask"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let body = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(data)/images/\(image)")))
        let reply = try HTTP.request(server.port, "POST", "/v1/segment", contentType: image.hasSuffix(".png") ? "image/png" : "image/jpeg",
                                     body: body)
        XCTAssertEqual(reply.status, 200, reply.text)
        XCTAssertEqual(try ImageFile.decodeMask(reply.body, name: "response"), try ImageFile.readMask("\(folder)/expected.png"))
    }
}
