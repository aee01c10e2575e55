import Foundation
import SegTestSupport
import XCTest

/// `segtrain export --format onnx` (issue #20): tiny models of every architecture segtrain trains
/// are trained here, exported, and run by onnxruntime (PyPI; scripts/install-test-python.sh) in
/// scripts/onnx-check.py, which compares the logits and masks with `segtrain predict --mask
/// --logits` on the same PNG files, in batches of 1 and 3, at the training size and a second size.
/// No onnxruntime, or no python3, fails the test: it never skips.
final class ExportTests: TemporaryFolderTestCase {
    override class var folderTag: String { "export" }
    /// The encoder UNets at full smp width (14 M parameters for resnet18) write big checkpoints.
    override class var timeLimit: Double { 300 }

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
    static let checkScript = repository + "/scripts/onnx-check.py"

    struct Case {
        let name: String
        let classes: Int
        let size: Int
        /// A second image side, run by predict from a copy of the checkpoint whose state.json says
        /// that size (the network is convolutional: same weights, another plan).
        let secondSize: Int
        let flags: [String]
    }

    func testPlainUNetBatchNormBinaryWithMeanAndStd() throws {
        // Bilinear upsampling, 3x3 head, BatchNorm; normalisation in the metadata; an odd second size (pads).
        try check(Case(name: "unet-bn", classes: 1, size: 32, secondSize: 45,
                       flags: ["--norm", "batch", "--base-channels", "4", "--depth", "3",
                               "--mean", "0.5,0.4,0.3", "--std", "0.25,0.2,0.3"]))
    }

    func testPlainUNetGroupNormMultiClassTransposedConv() throws {
        // GroupNorm of 16, 32 and 64 channels (16, 32 and 32 groups: two channels a group at 64),
        // transposed conv, 1x1 head, softmax; an odd second size (44 -> 22 -> 11 -> 5: pads).
        try check(Case(name: "unet-gn", classes: 3, size: 32, secondSize: 44,
                       flags: ["--norm", "group", "--base-channels", "16", "--depth", "3", "--upsample", "transpose",
                               "--head-kernel", "1"]))
    }

    func testPlainUNetWithoutNormTwoClasses() throws {
        try check(Case(name: "unet-none", classes: 2, size: 32, secondSize: 48,
                       flags: ["--base-channels", "4", "--depth", "2"]))
    }

    func testResNet18EncoderBinary() throws {
        try check(Case(name: "resnet18", classes: 1, size: 32, secondSize: 64, flags: ["--encoder", "resnet18"]))
    }

    func testMobileNetV2EncoderMultiClass() throws {
        try check(Case(name: "mobilenet_v2", classes: 3, size: 32, secondSize: 64, flags: ["--encoder", "mobilenet_v2"]))
    }

    /// DeepLabV3+ (issue #17): dilated depthwise convolutions, global average pooling and its
    /// broadcast back (Resize to another tensor's size), a five-way Concat, Resize with align_corners.
    func testDeepLabV3PlusMobileNetV2MultiClass() throws {
        try check(Case(name: "deeplabv3plus-mobilenet_v2", classes: 2, size: 32, secondSize: 48,
                       flags: ["--arch", "deeplabv3plus", "--encoder", "mobilenet_v2"]))
    }

    func testDeepLabV3PlusResNet18OutputStride8Binary() throws {
        try check(Case(name: "deeplabv3plus-resnet18-os8", classes: 1, size: 32, secondSize: 40,
                       flags: ["--arch", "deeplabv3plus", "--encoder", "resnet18", "--output-stride", "8"]))
    }

    /// Trains `c` for one epoch on synthetic PNGs, exports it twice (logits; sigmoid or softmax),
    /// predicts the training images and images of the second size, and runs the check on both.
    func check(_ c: Case, file: StaticString = #filePath, line: UInt = #line) throws {
        let python = try XCTUnwrap(Segtrain.onPath("python3"), "python3 is not on PATH (scripts/install-test-python.sh)",
                                   file: file, line: line)
        let data = folder + "/data", second = folder + "/second", runFolder = folder + "/run"
        for (out, size, count) in [(data, c.size, 6), (second, c.secondSize, 3)] {
            let r = try segtrain(["synth", "--out", out, "--count", "\(count)", "--size", "\(size)", "--classes", "\(c.classes)"])
            XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        }
        var r = try segtrain(["train", "--data", data, "--out", runFolder, "--epochs", "2", "--image-size", "\(c.size)",
                              "--batch-size", "2", "--threads", "1", "--classes", "\(c.classes)", "--val-split", "0.34"]
                             + c.flags)
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)

        let logitsModel = folder + "/logits.onnx", probabilitiesModel = folder + "/probabilities.onnx"
        for (out, activation) in [(logitsModel, "none"), (probabilitiesModel, c.classes == 1 ? "sigmoid" : "softmax")] {
            r = try segtrain(["export", "--model", runFolder, "--format", "onnx", "--out", out, "--activation", activation])
            XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
            XCTAssertTrue(r.stdout.hasPrefix("wrote \(out): ONNX opset 17"), r.stdout, file: file, line: line)
        }

        // The second size: a checkpoint that says so, the same weights (linked).
        let checkpoint = runFolder + "/checkpoints/" + (FileManager.default.fileExists(atPath: runFolder + "/checkpoints/best") ? "best" : "last")
        let resized = folder + "/checkpoint-\(c.secondSize)"
        try FileManager.default.createDirectory(atPath: resized, withIntermediateDirectories: true)
        for name in ["model.safetensors", "ema.safetensors"] where FileManager.default.fileExists(atPath: checkpoint + "/" + name) {
            try FileManager.default.createSymbolicLink(atPath: resized + "/" + name, withDestinationPath: checkpoint + "/" + name)
        }
        var state = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: checkpoint + "/state.json")))
                                  as? [String: Any])
        var model = try XCTUnwrap(state["model"] as? [String: Any])
        model["imageSize"] = c.secondSize
        state["model"] = model
        try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: resized + "/state.json"))

        for (checkpointPath, images, predicted) in [(runFolder, data + "/images", folder + "/predicted"),
                                                     (resized, second + "/images", folder + "/predicted-second")] {
            r = try segtrain(["predict", "--model", checkpointPath, "--input", images, "--output", predicted,
                              "--mask", "--logits", "--threads", "1"])
            XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
            let check = try run(python, [ExportTests.checkScript, "--logits-model", logitsModel,
                                         "--probabilities-model", probabilitiesModel, "--images", images,
                                         "--predicted", predicted, "--batches", "1,3"])
            XCTAssertEqual(check.status, 0, "\(c.name) at \(images): \(check.stderr)", file: file, line: line)
            print("\(c.name) \(images.hasPrefix(second) ? c.secondSize : c.size) px: \(check.stdout)")
        }
    }

    /// Bad input: one line naming the flag or file, exit code 1 or 2, nothing written.
    func testRefusesBadInput() throws {
        let data = folder + "/data", run = folder + "/run"
        var r = try segtrain(["synth", "--out", data, "--count", "4", "--size", "16", "--classes", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try segtrain(["train", "--data", data, "--out", run, "--epochs", "1", "--image-size", "16", "--base-channels", "2",
                          "--depth", "2", "--batch-size", "2", "--threads", "1", "--val-split", "0.5"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let cases: [([String], String)] = [
            (["--model", run, "--format", "tflite", "--out", folder + "/m.onnx"], "--format tflite: unknown format"),
            (["--model", folder + "/nothing", "--out", folder + "/m.onnx"], "--model \(folder)/nothing: not a checkpoint"),
            (["--model", run, "--out", folder + "/no/such/folder/m.onnx"], "--out \(folder)/no/such/folder/m.onnx: cannot write"),
            (["--model", run, "--out", folder + "/m.onnx", "--activation", "softmax"], "--activation softmax is for models of two"),
            (["--model", run, "--out", folder + "/m.onnx", "--activation", "tanh"], "--activation tanh: unknown"),
        ]
        for (arguments, message) in cases {
            r = try segtrain(["export"] + arguments)
            XCTAssertNotEqual(r.status, 0, arguments.joined(separator: " "))
            let lines = r.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, r.stderr)
            XCTAssertTrue(r.stderr.hasPrefix("segtrain: error: ") && r.stderr.contains(message), "\(arguments): \(r.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/m.onnx"))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.contains(".tmp") }
        XCTAssertEqual(leftovers, [], "temporary files left behind")
        // A state.json claiming a model no ONNX file (nor this machine) holds: refused before it is built.
        let huge = folder + "/huge"
        try FileManager.default.createDirectory(atPath: huge, withIntermediateDirectories: true)
        let last = run + "/checkpoints/last"
        var state = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: last + "/state.json")))
                                  as? [String: Any])
        var model = try XCTUnwrap(state["model"] as? [String: Any])
        model["baseChannels"] = 512
        model["depth"] = 8
        model["imageSize"] = 256
        state["model"] = model
        try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: huge + "/state.json"))
        r = try segtrain(["export", "--model", huge, "--out", folder + "/m.onnx"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("\(huge)/state.json: the model's weights take") && r.stderr.contains("external data is not supported"),
                      r.stderr)
        // An unwritable folder (as root, permissions do not stop writes: a path through a file does).
        try Data().write(to: URL(fileURLWithPath: folder + "/plain-file"))
        r = try segtrain(["export", "--model", run, "--out", folder + "/plain-file/m.onnx"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("--out \(folder)/plain-file/m.onnx: cannot write"), r.stderr)
    }
}
