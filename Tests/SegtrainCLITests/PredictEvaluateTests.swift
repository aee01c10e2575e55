import Foundation
import SegData
import SegTestSupport
import XCTest

/// `segtrain predict` and `segtrain evaluate` on tiny models trained here, run as a user would.
final class PredictEvaluateTests: SegtrainTestCase {
    /// Trained once for the whole class: a binary and a 3-class model on 32 px synthetic data.
    static var folder = ""
    static var trained = false

    var folder: String { PredictEvaluateTests.folder }

    override func setUpWithError() throws {
        try super.setUpWithError()
        if PredictEvaluateTests.trained { return }
        PredictEvaluateTests.folder = NSTemporaryDirectory() + "segtrain-predict-\(UUID().uuidString)"
        for (name, classes) in [("binary", 1), ("multi", 3)] {
            let data = folder + "/" + name
            var r = try segtrain(["synth", "--out", data, "--count", "20", "--size", "32", "--classes", "\(classes)"])
            XCTAssertEqual(r.status, 0, r.stderr)
            r = try segtrain(["train", "--data", data, "--out", folder + "/run-" + name, "--epochs", "2", "--image-size", "32",
                              "--base-channels", "4", "--depth", "2", "--batch-size", "4", "--threads", "1", "--classes", "\(classes)"]
                             + (classes > 1 ? ["--class-names", "bg,car,sky"] : []))
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        // A gray model (1 input channel) on the binary data.
        let g = try segtrain(["train", "--data", folder + "/binary", "--out", folder + "/run-gray", "--epochs", "1", "--image-size", "32",
                              "--base-channels", "4", "--depth", "2", "--batch-size", "4", "--threads", "1", "--in-channels", "1"])
        XCTAssertEqual(g.status, 0, g.stderr)
        PredictEvaluateTests.trained = true
    }

    override class func tearDown() {
        if !folder.isEmpty { try? FileManager.default.removeItem(atPath: folder) }
    }

    /// Inputs of several sizes and formats: JPEG 50x50, gray PNG 37x29, RGBA PNG 20x45.
    func makeInputs(_ name: String) throws -> String {
        try writeMixedInputs(to: folder + "/" + name)
    }

    func testEveryOutputKindForImagesOfSeveralSizesAndFormats() throws {
        let inputs = try makeInputs("inputs")
        let out = folder + "/out"
        let r = try segtrain(["predict", "--model", folder + "/run-binary", "--input", inputs, "--output", out,
                              "--mask", "--probabilities", "--overlay", "--cutout"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("predicted 4 of 4 image(s)"), r.stdout)
        var foregroundSeen = 0
        for (stem, width, height) in [("00000", 50, 50), ("00001", 50, 50), ("gray", 37, 29), ("rgba", 20, 45)] {
            let input = try ImageFile.read(inputs + "/" + stem + (stem.hasPrefix("0") ? ".jpg" : ".png"), as: .rgb)
            let mask = try ImageFile.readMask("\(out)/\(stem)_mask.png")
            let prob = try ImageFile.readMask("\(out)/\(stem)_prob.png")
            let overlay = try ImageFile.read("\(out)/\(stem)_overlay.png", as: .rgb)
            let cutout = try ImageFile.read("\(out)/\(stem)_cutout.png", as: .rgba)
            for image in [mask, prob, overlay, cutout] { XCTAssertEqual([image.width, image.height], [width, height], stem) }
            for p in 0..<(width * height) {
                let front = mask.pixels[p] == 255
                XCTAssertTrue(mask.pixels[p] == 0 || front, "\(stem): binary masks are 0/255")
                XCTAssertEqual(front, prob.pixels[p] >= 128, "\(stem) pixel \(p): mask and probability disagree")
                // The cut-out's alpha is the mask; its colours are the image's.
                XCTAssertEqual(cutout.pixels[4 * p + 3], mask.pixels[p], "\(stem) pixel \(p)")
                for c in 0..<3 { XCTAssertEqual(cutout.pixels[4 * p + c], input.pixels[3 * p + c]) }
                // The overlay leaves the background as it was.
                if !front { for c in 0..<3 { XCTAssertEqual(overlay.pixels[3 * p + c], input.pixels[3 * p + c]) } }
                if front { foregroundSeen += 1 }
            }
        }
        XCTAssertGreaterThan(foregroundSeen, 0, "the model predicts no foreground at all; the checks above saw only background")

        // A new background colour behind the object.
        let green = folder + "/green.png"
        let g = try segtrain(["predict", "--model", folder + "/run-binary", "--input", inputs + "/00000.jpg", "--output", green,
                              "--cutout", "--background", "#00ff00"])
        XCTAssertEqual(g.status, 0, g.stderr)
        let composite = try ImageFile.read(green, as: .rgb)
        let mask = try ImageFile.readMask("\(out)/00000_mask.png")
        let input = try ImageFile.read(inputs + "/00000.jpg", as: .rgb)
        for p in 0..<(50 * 50) {
            let expected = mask.pixels[p] == 255 ? Array(input.pixels[(3 * p)..<(3 * p + 3)]) : [0, 255, 0]
            XCTAssertEqual(Array(composite.pixels[(3 * p)..<(3 * p + 3)]), expected, "pixel \(p)")
        }
    }

    /// --tile: any size comes back at its size; an image of exactly the training size is one tile,
    /// which must equal the plain prediction.
    func testTiledPrediction() throws {
        let inputs = folder + "/tiles"
        var r = try segtrain(["synth", "--out", inputs, "--count", "1", "--size", "90", "--seed", "4"])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try segtrain(["synth", "--out", inputs + "/exact", "--count", "1", "--size", "32", "--seed", "5"])
        r = try segtrain(["predict", "--model", folder + "/run-binary", "--input", inputs + "/images/00000.png",
                          "--output", folder + "/tiled.png", "--tile", "--overlap", "8"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let tiled = try ImageFile.readMask(folder + "/tiled.png")
        XCTAssertEqual([tiled.width, tiled.height], [90, 90])
        let exact = inputs + "/exact/images/00000.png"
        for (extra, name) in [(["--tile"], "a.png"), ([], "b.png")] {
            r = try segtrain(["predict", "--model", folder + "/run-binary", "--input", exact, "--output", folder + "/" + name] + extra)
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        XCTAssertEqual(try ImageFile.readMask(folder + "/a.png"), try ImageFile.readMask(folder + "/b.png"))
    }

    func testMultiClassMasksAndProbabilities() throws {
        let inputs = try makeInputs("inputs3")
        let out = folder + "/out3"
        let r = try segtrain(["predict", "--model", folder + "/run-multi/checkpoints/last", "--input", inputs, "--output", out,
                              "--mask", "--probabilities"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let mask = try ImageFile.readMask(out + "/00001_mask.png")
        XCTAssertTrue(mask.pixels.allSatisfy { $0 < 3 })
        let planes = try (0..<3).map { try ImageFile.readMask(out + "/00001_prob_c\($0).png") }
        for p in 0..<(50 * 50) {
            let total = planes.reduce(0) { $0 + Int($1.pixels[p]) }
            XCTAssertLessThanOrEqual(abs(total - 255), 2, "pixel \(p): class probabilities sum to \(total)/255")
            let best = (0..<3).max { planes[$0].pixels[p] < planes[$1].pixels[p] }!
            XCTAssertTrue(planes[best].pixels[p] == planes[Int(mask.pixels[p])].pixels[p], "pixel \(p): mask is not the argmax")
        }
    }

    /// A gray model's overlay and cut-out show the image's colours, not its gray.
    func testGrayModelKeepsColoursInCutouts() throws {
        let inputs = try makeInputs("inputs-gray")
        let out = folder + "/out-gray"
        let r = try segtrain(["predict", "--model", folder + "/run-gray", "--input", inputs + "/00000.jpg", "--output", out,
                              "--mask", "--cutout"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let colour = try ImageFile.read(inputs + "/00000.jpg", as: .rgb)
        let cutout = try ImageFile.read(out + "/00000_cutout.png", as: .rgba)
        let mask = try ImageFile.readMask(out + "/00000_mask.png")
        for p in 0..<(50 * 50) {
            XCTAssertEqual(Array(cutout.pixels[(4 * p)..<(4 * p + 3)]), Array(colour.pixels[(3 * p)..<(3 * p + 3)]), "pixel \(p)")
            XCTAssertEqual(cutout.pixels[4 * p + 3], mask.pixels[p])
        }
        XCTAssertTrue((0..<(50 * 50)).contains { colour.pixels[3 * $0] != colour.pixels[3 * $0 + 1] }, "the input has colour")
    }

    func testPredictErrors() throws {
        let inputs = try makeInputs("inputs-bad")
        try Data("not an image".utf8).write(to: URL(fileURLWithPath: inputs + "/broken.png"))
        var r = try segtrain(["predict", "--model", folder + "/run-binary", "--input", inputs, "--output", folder + "/out-bad"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains(inputs + "/broken.png: "), r.stderr)
        XCTAssertTrue(r.stdout.contains("predicted 4 of 5"), r.stdout)
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/out-bad/gray_mask.png"), "the other images are still done")
        // Hand-edited state.json files whose model description cannot be fed: clean errors, not crashes.
        func edited(_ name: String, _ change: ([String: Any]) -> [String: Any]) throws -> String {
            let path = folder + "/" + name
            try? FileManager.default.removeItem(atPath: path)
            try FileManager.default.copyItem(atPath: folder + "/run-binary/checkpoints/last", toPath: path)
            var state = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path + "/state.json"))) as! [String: Any]
            state["model"] = change(state["model"] as! [String: Any])
            try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: path + "/state.json"))
            return path
        }
        let shortMean = try edited("short-mean") { var m = $0; m["mean"] = [0.5]; m["std"] = [1.0]; return m }
        let meanOnly = try edited("mean-only") { var m = $0; m["mean"] = [0.5, 0.5, 0.5]; return m }
        let upsampling = try edited("upsampling") { var m = $0; m["upsampling"] = "cubic"; return m }
        let cases: [([String], String)] = [
            (["--model", shortMean, "--input", inputs, "--output", folder + "/o"], shortMean + "/state.json: model: mean has 1 values for 3 channels"),
            (["--model", meanOnly, "--input", inputs, "--output", folder + "/o"], meanOnly + "/state.json: model: mean and std must be given together"),
            (["--model", upsampling, "--input", inputs, "--output", folder + "/o"], upsampling + "/state.json: unknown upsampling cubic"),
            (["--model", folder + "/nothing", "--input", inputs, "--output", folder + "/o"], folder + "/nothing: not a checkpoint"),
            (["--model", folder + "/run-binary", "--input", folder + "/none", "--output", folder + "/o"], "--input"),
            (["--model", folder + "/run-binary", "--input", inputs, "--output", folder + "/o.png"], "need an output folder"),
            (["--model", folder + "/run-binary", "--input", inputs, "--output", folder + "/o", "--cutout", "--background", "#12"], "--background"),
        ]
        for (arguments, expected) in cases {
            r = try segtrain(["predict"] + arguments)
            XCTAssertNotEqual(r.status, 0, "\(arguments)")
            XCTAssertTrue(r.stderr.contains(expected), "\(arguments): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        }
    }

    /// predict reads the next batch and writes the last one while it predicts: a file that cannot
    /// be read and an output that cannot be written are each reported in file order with the file's
    /// name, the other images are all done, and the counts stay true.
    func testPredictReportsReadAndWriteFailuresInFileOrder() throws {
        let inputs = folder + "/inputs-order", out = folder + "/out-order"
        try FileManager.default.createDirectory(atPath: inputs, withIntermediateDirectories: true)
        let image = try ImageFile.read(folder + "/binary/images/00000.png", as: .rgb)
        for name in ["a", "c", "d", "e", "g"] { try ImageFile.write(image, to: "\(inputs)/\(name).png") }
        for name in ["b", "f"] { try Data("not an image".utf8).write(to: URL(fileURLWithPath: "\(inputs)/\(name).png")) }
        // d's mask cannot be written: a folder is in its place.
        try FileManager.default.createDirectory(atPath: out + "/d_mask.png", withIntermediateDirectories: true)
        let r = try segtrain(["predict", "--model", folder + "/run-binary", "--input", inputs, "--output", out,
                              "--batch-size", "2", "--threads", "2"])
        XCTAssertEqual(r.status, 1, r.stderr)
        let lines = r.stderr.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 4, r.stderr)
        guard lines.count == 4 else { return }
        XCTAssertTrue(lines[0].contains(inputs + "/b.png: "), lines[0])
        XCTAssertTrue(lines[1].contains(out + "/d_mask.png"), lines[1])
        XCTAssertTrue(lines[2].contains(inputs + "/f.png: "), lines[2])
        XCTAssertTrue(lines[3].contains("3 image(s) failed (see above); 4 file(s) written"), lines[3])
        XCTAssertTrue(r.stdout.contains("predicted 4 of 7 image(s)") && r.stdout.contains("wrote 4 file(s)"), r.stdout)
        for name in ["a", "c", "e", "g"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(out)/\(name)_mask.png"), name)
        }
    }

    /// evaluate's per-image numbers are those of predict's masks against the truth, recomputed
    /// here from the files; mpirun -np 2 writes the same file.
    /// The multi-class model keeps its --class-names: evaluate names its per-class columns by them.
    func testEvaluateNamesTheModelsClasses() throws {
        let out = folder + "/multi-scores.csv"
        let r = try segtrain(["evaluate", "--model", folder + "/run-multi", "--data", folder + "/multi", "--out", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        let header = try String(contentsOfFile: out, encoding: .utf8).split(separator: "\n").first.map(String.init)
        XCTAssertEqual(header, "image,mask,accuracy," + ["bg", "car", "sky"].map { "precision_\($0),recall_\($0),f1_\($0),iou_\($0)" }
                       .joined(separator: ",") + ",mean_f1,mean_iou")
    }

    func testEvaluateScoresEachImage() throws {
        let data = folder + "/binary"
        let csvPath = folder + "/scores.csv"
        // One thread and one image per pass everywhere, so the same arithmetic gives the same labels.
        var r = try segtrain(["evaluate", "--model", folder + "/run-binary", "--data", data, "--out", csvPath, "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("iou"), r.stdout)
        r = try segtrain(["predict", "--model", folder + "/run-binary", "--input", data + "/images", "--output", folder + "/eval-masks",
                          "--threads", "1", "--batch-size", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = try String(contentsOfFile: csvPath, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.first, "image,mask,accuracy,precision,recall,f1,iou")
        XCTAssertEqual(lines.count, 1 + 20 + 1)
        var sums = [Double](repeating: 0, count: 5)
        for line in lines.dropFirst().dropLast() {
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            let stem = DatasetScanner.stem(fields[0])
            let predicted = try ImageFile.readMask(folder + "/eval-masks/\(stem)_mask.png").pixels
            let truth = try ImageFile.readClassMask(data + "/" + fields[1], classes: 1).pixels
            var tp = 0.0, fp = 0.0, fn = 0.0, tn = 0.0
            for (p, t) in zip(predicted, truth) {
                switch (p == 255, t == 1) {
                case (true, true): tp += 1
                case (true, false): fp += 1
                case (false, true): fn += 1
                case (false, false): tn += 1
                }
            }
            func ratio(_ a: Double, _ b: Double) -> Double { b == 0 ? 1 : a / b }
            let expected = [ratio(tp + tn, tp + tn + fp + fn), ratio(tp, tp + fp), ratio(tp, tp + fn),
                            ratio(2 * tp, 2 * tp + fp + fn), ratio(tp, tp + fp + fn)]
            let got = fields[2...].map { Double($0)! }
            for (a, b) in zip(got, expected) { XCTAssertEqual(a, b, accuracy: 1e-6, "\(line)") }
            for j in 0..<5 { sums[j] += got[j] }
        }
        let mean = lines.last!.split(separator: ",", omittingEmptySubsequences: false)
        XCTAssertEqual(mean[0], "mean")
        for j in 0..<5 { XCTAssertEqual(Double(mean[j + 2])!, sums[j] / 20, accuracy: 1e-5) }

        let r2 = try segtrain(["evaluate", "--model", folder + "/run-binary", "--data", data, "--out", folder + "/scores2.csv",
                               "--threads", "1"], ranks: 2)
        XCTAssertEqual(r2.status, 0, r2.stderr)
        XCTAssertEqual(try String(contentsOfFile: folder + "/scores2.csv", encoding: .utf8),
                       try String(contentsOfFile: csvPath, encoding: .utf8))
    }
}
