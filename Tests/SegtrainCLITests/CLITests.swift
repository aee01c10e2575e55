import XCTest
import Foundation
import SegTestSupport

/// Runs the built `segtrain` binary as a user would.
final class CLITests: SegtrainTestCase {
    func testInfoPrintsTheDefaultModel() throws {
        let r = try segtrain(["info"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("3,717,121"), r.stdout)
        XCTAssertTrue(r.stdout.contains("forward GFLOP/image:   6.23"), r.stdout)
        XCTAssertTrue(r.stdout.contains("training GFLOP/image:  18.66"), r.stdout)
        XCTAssertTrue(r.stdout.contains("up.0.conv1"), r.stdout)
        XCTAssertTrue(r.stdout.contains("(512, 16, 16)"), "the deepest concatenation: \(r.stdout)")
    }

    /// The binary is built for AVX2 + FMA (Package.swift): on a CPU without them it stops with one
    /// line and exit code 1 before running any of that code (not with SIGILL); on one with them it
    /// runs. Emulated CPUs through qemu-user (scripts/test.sh installs it).
    func testOlderCPUGetsOneLineInsteadOfACrash() throws {
        let qemu = "/usr/bin/qemu-x86_64"
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: qemu), "qemu-user not installed")
        let old = try run(qemu, ["-cpu", "Nehalem", CLITests.binary, "info"])
        XCTAssertEqual(old.status, 1, old.stderr)
        XCTAssertEqual(old.stderr, "segtrain: error: this CPU lacks AVX2/FMA, which this build of segtrain needs; "
                           + "rebuild with SEGTRAIN_TARGET_CPU=x86-64 swift build -c release\n")
        XCTAssertEqual(old.stdout, "")
        let capable = try run(qemu, ["-cpu", "Haswell", CLITests.binary, "info", "--image-size", "16",
                                     "--base-channels", "4", "--depth", "2"])
        XCTAssertEqual(capable.status, 0, capable.stderr)
        XCTAssertTrue(capable.stdout.contains("parameters:"), capable.stdout)
    }

    func testBadFlagsGiveOneLineNamingTheFlag() throws {
        let cases: [([String], String)] = [
            (["info", "--depth", "0"], "--depth"),
            (["info", "--classes", "0"], "--classes"),
            (["info", "--image-size", "8"], "--image-size"),
            // Asked for gigabytes of parameters and died by the OOM killer before.
            (["info", "--classes", "99999999"], "--classes"),
            (["info", "--in-channels", "99999999"], "--in-channels"),
            (["info", "--encoder", "resnet18", "--classes", "257"], "--classes"),
            (["info", "--head-kernel", "5"], "--head-kernel"),
            (["info", "--upsample", "cubic"], "--upsample"),
            (["bench", "--loss", "hinge"], "--loss"),
            (["bench", "--optimizer", "lion"], "--optimizer"),
            (["bench", "--threads", "0"], "--threads"),
            (["bench", "--batch-size", "0"], "--batch-size"),
            (["bench", "--lr", "-1"], "--lr"),
            (["bench", "--loss", "ce", "--classes", "1"], "--classes"),
            (["bench", "--winograd-chunk-floats", "0"], "--winograd-chunk-floats"),
            (["bench", "--jpeg-decode", "16"], "--jpeg-decode"),
            (["bench", "--augment-speed", "128,0"], "--augment-speed"),
            (["bench", "--conv-layers", "--synthetic"], "--conv-layers"),
            (["evaluate", "--model", "run", "--data", "set", "--threads", "0"], "--threads"),  // trapped before
        ]
        for (arguments, flag) in cases {
            let r = try segtrain(arguments)
            XCTAssertNotEqual(r.status, 0, "\(arguments)")
            let lines = r.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "\(arguments): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(flag), "\(arguments): \(r.stderr)")
        }
    }

    func testBenchJSONReportsThroughputAndSplit() throws {
        let r = try segtrain(["bench", "--image-size", "16", "--batch-size", "2", "--base-channels", "4", "--depth", "2",
                              "--steps", "2", "--threads", "2", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        let ips = object?["images_per_second"] as? Double
        XCTAssertNotNil(ips)
        XCTAssertGreaterThan(ips ?? 0, 0)
        let split = object?["seconds_per_step_by_kind"] as? [String: Double]
        for key in ["conv_forward", "conv_input_gradient", "conv_weight_gradient", "pool", "upsample", "loss", "optimizer"] {
            XCTAssertNotNil(split?[key], "missing \(key) in \(r.stdout)")
        }
        XCTAssertEqual(object?["threads"] as? Int, 2)
        // The plan's memory: values and gradients share one buffer, so together they take less
        // than their sum (values no backward op reads share memory too, so possibly less than
        // the values alone), and at least the gradients.
        let planned = object?["planned_activation_mib"] as? [String: Double]
        let values = planned?["values"] ?? 0, gradients = planned?["gradients"] ?? 0
        let together = planned?["values_and_gradients"] ?? 0
        XCTAssertGreaterThan(gradients, 0, r.stdout)
        XCTAssertGreaterThanOrEqual(together, gradients, r.stdout)
        XCTAssertLessThan(together, values + gradients, r.stdout)
    }

    /// bench --inference times the predictor's forward path (no loss, no optimizer), also of an
    /// encoder model; --gemm-peak measures sgemm; each refuses another part timing with one line.
    func testBenchInferenceAndGemmPeak() throws {
        let model = ["--image-size", "16", "--base-channels", "4", "--depth", "2", "--batch-size", "3", "--threads", "2"]
        let r = try segtrain(["bench", "--inference", "--steps", "2", "--json"] + model)
        XCTAssertEqual(r.status, 0, r.stderr)
        let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(object?["mode"] as? String, "inference")
        XCTAssertEqual(object?["batch_size"] as? Int, 3)
        XCTAssertEqual(object?["passes"] as? Int, 2)
        XCTAssertGreaterThan(object?["images_per_second"] as? Double ?? 0, 0)
        let split = object?["seconds_per_pass_by_kind"] as? [String: Double]
        XCTAssertNotNil(split?["conv_forward"], r.stdout)
        XCTAssertNil(split?["conv_input_gradient"], "no backward: \(r.stdout)")
        XCTAssertNil(split?["optimizer"], "no optimizer: \(r.stdout)")
        let table = try segtrain(["bench", "--inference", "--steps", "1"] + model)
        XCTAssertTrue(table.stdout.contains("GFLOP per image per forward pass") && table.stdout.contains("conv forward"), table.stdout)
        let encoder = try segtrain(["bench", "--inference", "--encoder", "mobilenet_v2", "--image-size", "32", "--batch-size", "1",
                                    "--steps", "1", "--warmup", "0", "--threads", "2"])
        XCTAssertEqual(encoder.status, 0, encoder.stderr)
        // --deterministic reaches the policy (and --conv gemm implies it), in the JSON and the table.
        for (flags, expected) in [([String](), false), (["--deterministic"], true), (["--conv", "gemm"], true)] {
            let timed = try segtrain(["bench", "--inference", "--encoder", "mobilenet_v2", "--image-size", "32", "--batch-size", "2",
                                      "--steps", "1", "--warmup", "0", "--threads", "1", "--json"] + flags)
            let fields = try JSONSerialization.jsonObject(with: Data(timed.stdout.utf8)) as? [String: Any]
            XCTAssertEqual(fields?["deterministic"] as? Bool, expected, "\(flags): \(timed.stdout) \(timed.stderr)")
        }
        let deterministic = try segtrain(["bench", "--inference", "--encoder", "mobilenet_v2", "--image-size", "32",
                                          "--batch-size", "1", "--steps", "1", "--warmup", "0", "--deterministic"])
        XCTAssertTrue(deterministic.stdout.contains("conv auto, deterministic"), deterministic.stdout)
        let peak = try segtrain(["bench", "--gemm-peak", "--threads", "1", "--json"])
        XCTAssertEqual(peak.status, 0, peak.stderr)
        let gflops = (try JSONSerialization.jsonObject(with: Data(peak.stdout.utf8)) as? [String: Any])?["gflops_per_second"] as? Double
        XCTAssertGreaterThan(gflops ?? 0, 0.1, peak.stdout)
        for other in ["--conv-layers", "--gemm-peak", "--synthetic"] {
            let both = try segtrain(["bench", "--inference", other])
            XCTAssertNotEqual(both.status, 0)
            XCTAssertEqual(both.stderr.split(separator: "\n").count, 1, both.stderr)
            XCTAssertTrue(both.stderr.contains("one at a time"), both.stderr)
        }
    }

    /// The part timings (once skipped XCTests) print their tables: one row per distinct 3x3 layer
    /// with `*` on what the policy runs, the kernel lines, decode, augmentation and synthetic lines.
    func testBenchPartTimingsPrintTheirTables() throws {
        let model = ["--image-size", "16", "--base-channels", "8", "--depth", "1", "--batch-size", "1", "--threads", "1"]
        let layers = try segtrain(["bench", "--conv-layers"] + model)
        XCTAssertEqual(layers.status, 0, layers.stderr)
        let rows = layers.stdout.split(separator: "\n").filter { $0.contains(" at  16:") }
        XCTAssertEqual(rows.count, 3, "3 -> 8, 8 -> 8, 16 -> 8: \(layers.stdout)")
        XCTAssertTrue(rows[0].hasPrefix("   3 ->    8 at  16:") && rows[0].contains("*gemm"), "\(rows)")
        XCTAssertTrue(rows[1].hasPrefix("   8 ->    8 at  16:") && rows[1].contains("*winograd "), "\(rows)")
        XCTAssertTrue(layers.stdout.contains("sum over the layers: gemm "), layers.stdout)
        let forced = try segtrain(["bench", "--conv-layers", "--conv", "winograd4"] + model)
        XCTAssertEqual(forced.stdout.split(separator: "\n").filter { $0.contains("*winograd4") }.count, 3, forced.stdout)

        let kernels = try segtrain(["bench", "--conv-kernels"] + model)
        XCTAssertEqual(kernels.status, 0, kernels.stderr)
        for prefix in ["conv2d k=3 N=1 C=8 16x16", "conv2d k=1 N=1 C=8 16x16", "convTranspose2x2 N=1 C=8 8x8->16x16"] {
            XCTAssertTrue(kernels.stdout.contains(prefix), "\(prefix): \(kernels.stdout)")
        }
        let decode = try segtrain(["bench", "--jpeg-decode", "32x24"])
        XCTAssertEqual(decode.status, 0, decode.stderr)
        XCTAssertEqual(decode.stdout.split(separator: "\n").filter { $0.hasPrefix("decode 32x24 ") }.count, 3, decode.stdout)
        let augment = try segtrain(["bench", "--augment-speed", "32"])
        XCTAssertEqual(augment.status, 0, augment.stderr)
        XCTAssertTrue(augment.stdout.contains("augment every op, p = 1 32x32"), augment.stdout)
        let synthetic = try segtrain(["bench", "--synthetic", "--image-size", "32", "--classes", "3"])
        XCTAssertEqual(synthetic.status, 0, synthetic.stderr)
        XCTAssertTrue(synthetic.stdout.hasPrefix("synthetic 32x32 sample, 3 classes: "), synthetic.stdout)
    }
}

extension CLITests {
    func testTrainWritesMetricsForEveryEpoch() throws {
        let out = NSTemporaryDirectory() + "segtrain-train-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let r = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--epochs", "3",
                              "--train-samples", "16", "--val-samples", "5", "--batch-size", "4", "--threads", "2", "--out", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout.split(separator: "\n").filter { $0.hasPrefix("epoch ") }.count, 3, r.stdout)
        let csv = try String(contentsOfFile: out + "/metrics.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(csv.count, 4, "header + 3 epochs: \(csv)")
        XCTAssertEqual(csv.first, "epoch,train_loss,val_loss,val_accuracy,val_precision,val_recall,val_dice,val_iou,lr,images_per_second,seconds")
        XCTAssertTrue(csv[3].hasPrefix("3,"))

        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/summary.json")))
            as? [String: Any]
        XCTAssertEqual(summary?["epochs_trained"] as? Int, 3)
        XCTAssertEqual(summary?["parameters"] as? Int, 3_505)
        XCTAssertNotNil(summary?["best_val_loss"] as? Double)

        // samples/epoch-003.png: 4 of the 5 validation images, rows of image | truth | prediction,
        // under an 11-pixel label band, 2-pixel separators.
        let png = try Data(contentsOf: URL(fileURLWithPath: out + "/samples/epoch-003.png"))
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        let bigEndian = { (o: Int) in png[o..<(o + 4)].reduce(0) { $0 << 8 | Int($1) } }
        XCTAssertEqual(bigEndian(16), 3 * 16 + 2 * 2, "width")
        XCTAssertEqual(bigEndian(20), 11 + 4 * 16 + 3 * 2, "height")
    }

    /// Every loss trains end to end, with the weight map weighted-ce needs (it once crashed).
    func testEveryLossTrains() throws {
        for (loss, classes) in [("bce", 1), ("dice", 1), ("bce+dice", 1), ("weighted-ce", 1),
                                ("ce", 3), ("dice", 3), ("weighted-ce", 3)] {
            let out = NSTemporaryDirectory() + "segtrain-loss-\(getpid())"
            defer { try? FileManager.default.removeItem(atPath: out) }
            let r = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--epochs", "1",
                                  "--train-samples", "8", "--val-samples", "3", "--batch-size", "4", "--threads", "1",
                                  "--loss", loss, "--classes", "\(classes)", "--out", out])
            XCTAssertEqual(r.status, 0, "\(loss), \(classes) classes: \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("epoch 1/1  train_loss"), "\(loss): \(r.stdout)")
        }
    }

    /// A model too large for the machine's memory ends with one line, not a trap and a backtrace
    /// (it stopped in a precondition before). Needs the kernel's heuristic overcommit (mode 0 or
    /// 2), which refuses a single 2 TB allocation at once.
    func testOutOfMemoryGivesOneLine() throws {
        let mode = (try? String(contentsOfFile: "/proc/sys/vm/overcommit_memory", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        guard mode == "0" || mode == "2" else { throw XCTSkip("overcommit mode \(mode ?? "unknown"): a huge allocation may succeed") }
        let out = NSTemporaryDirectory() + "segtrain-oom-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let r = try segtrain(["train", "--image-size", "16384", "--batch-size", "64", "--train-samples", "64", "--val-samples", "0",
                              "--epochs", "1", "--threads", "1", "--out", out])
        XCTAssertNotEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        // Refused up front by the memory estimate (MemAvailable or ulimit -v), or, past it, by the
        // allocation itself ("out of memory").
        XCTAssertTrue(["MemAvailable", "ulimit -v", "memory"].contains { r.stderr.contains($0) }, r.stderr)
    }

    func testTrainBadFlags() throws {
        for (arguments, flag) in [(["train", "--epochs", "0"], "--epochs"),
                                  (["train", "--train-samples", "4", "--batch-size", "8"], "--train-samples"),
                                  (["train", "--out", "/proc/forbidden/x", "--image-size", "16", "--depth", "2",
                                    "--epochs", "1", "--train-samples", "8"], "--out"),
                                  // These stopped with a trap and a backtrace before.
                                  (["train", "--image-size", "4", "--depth", "2"], "--image-size"),
                                  (["train", "--train-samples", "0", "--batch-per-rank", "1"], "--train-samples"),
                                  // An ignore value that is a class, also without --data.
                                  (["train", "--ignore-index", "1"], "--ignore-index"),
                                  (["train", "--classes", "3", "--ignore-index", "2"], "--ignore-index"),
                                  (["train", "--ignore-index", "256"], "--ignore-index"),
                                  (["train", "--synthetic-set", "plain", "--data", "/nonexistent"], "--synthetic-set"),
                                  (["train", "--synthetic-set", "easy"], "--synthetic-set")] {
            // Tiny, so that a regression (the flags accepted) fails in seconds, not by timing out.
            let tiny = ["--image-size", "16", "--depth", "2", "--base-channels", "4", "--threads", "1", "--val-samples", "0"]
            let r = try segtrain(arguments + (arguments.contains("--epochs") || arguments.contains("--image-size") ? [] : tiny))
            XCTAssertNotEqual(r.status, 0, "\(arguments)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(arguments): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(flag), "\(arguments): \(r.stderr)")
        }
    }
}
