// Checkpoint writing and reading in process (issue 14): a diverged model or a state JSON cannot
// hold is refused and the previous checkpoint stays byte for byte; stale temporary folders of dead
// processes are removed, live ones kept; every state.json field is range-checked and checked
// against the resuming run, naming the field or the flag.

import XCTest
import Foundation
import SegEngine
import SegModel
import SegTraining
import SegData

final class CheckpointTests: XCTestCase {
    var folder = ""

    override func setUpWithError() throws {
        folder = NSTemporaryDirectory() + "segtrain-checkpoint-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: folder) }

    private func tinyModel() -> (UNet, Optimizer) {
        var config = UNetConfig()
        config.baseChannels = 4
        config.depth = 2
        let unet = UNet(config, pool: WorkerPool(threads: 1))
        return (unet, Optimizer(OptimizerConfig(kind: .adam), parameterCount: unet.parameterCount))
    }

    private func state(epoch: Int = 1) -> CheckpointState {
        CheckpointState(epoch: epoch, step: 0, seed: 3, ranks: 1, bestValidationLoss: 0.5, bestEpoch: 1, arguments: ["train"])
    }

    private func files(_ checkpoint: String) -> [Data?] {
        ["model.safetensors", "optimizer.safetensors", "state.json"].map { FileManager.default.contents(atPath: checkpoint + "/" + $0) }
    }

    func testNonFiniteWeightsOrStateAreRefusedAndThePreviousCheckpointStays() throws {
        let (unet, optimizer) = tinyModel()
        let last = folder + "/last"
        try Checkpoint.write(to: last, store: unet.store, optimizer: optimizer, state: state())
        let before = files(last)
        XCTAssertTrue(before.allSatisfy { $0 != nil && !$0!.isEmpty })

        // A NaN validation loss as "best": JSON cannot hold it.
        var bad = state(epoch: 2)
        bad.bestValidationLoss = .nan
        XCTAssertThrowsError(try Checkpoint.write(to: last, store: unet.store, optimizer: optimizer, state: bad)) {
            XCTAssertTrue("\($0)".contains("bestValidationLoss"), "\($0)")
        }
        XCTAssertEqual(files(last), before)

        // Exploded weights.
        unet.store.values.tensor[5] = .infinity
        XCTAssertThrowsError(try Checkpoint.write(to: last, store: unet.store, optimizer: optimizer, state: state(epoch: 2))) {
            XCTAssertTrue("\($0)".contains("weights are not finite") && "\($0)".contains("previous checkpoint is kept"), "\($0)")
        }
        XCTAssertEqual(files(last), before)
        unet.store.values.tensor[5] = 0
        optimizer.stateBuffers[0].buffer.pointer[0] = .nan
        XCTAssertThrowsError(try Checkpoint.write(to: last, store: unet.store, optimizer: optimizer, state: state(epoch: 2)))
        XCTAssertEqual(files(last), before)
        let left = try FileManager.default.contentsOfDirectory(atPath: folder)
        XCTAssertEqual(left, ["last"], "no temporary folder is left behind")
    }

    func testStaleTemporaryFoldersOfDeadProcessesAreRemoved() throws {
        let fm = FileManager.default
        // A pid that does not exist (above any pid_max), one that does (init), and a file.
        let dead = folder + "/.tmp-last-2147483000", live = folder + "/.tmp-best-1", file = folder + "/.tmp-last-2147483001"
        try fm.createDirectory(atPath: dead, withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: dead + "/state.json"))
        try fm.createDirectory(atPath: live, withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: file))
        let (unet, optimizer) = tinyModel()
        try Checkpoint.write(to: folder + "/last", store: unet.store, optimizer: optimizer, state: state())
        XCTAssertFalse(fm.fileExists(atPath: dead), "a dead process's temporary checkpoint is removed")
        XCTAssertTrue(fm.fileExists(atPath: live), "a live process's temporary folder is left alone")
        XCTAssertTrue(fm.fileExists(atPath: file), "only folders are removed")
        XCTAssertEqual(Checkpoint.temporaryOwner(".tmp-last-123"), 123)
        XCTAssertEqual(Checkpoint.temporaryOwner(".tmp-epoch-001-77"), 77)
        XCTAssertNil(Checkpoint.temporaryOwner(".tmp-last"))
        XCTAssertNil(Checkpoint.temporaryOwner("last-123"))
    }

    /// Every out-of-range field is refused with its name, before any tensor is read.
    func testEveryStateFieldIsRangeChecked() throws {
        let (unet, optimizer) = tinyModel()
        let good = folder + "/good"
        try Checkpoint.write(to: good, store: unet.store, optimizer: optimizer, state: state())
        let text = try String(contentsOfFile: good + "/state.json", encoding: .utf8)
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
        let cases: [(String, Any, String)] = [
            ("epoch", -1, "epoch -1"), ("epoch", 1_000_000_000_000_000_000, "epoch"), ("batchesDone", -3, "batchesDone -3"),
            ("batchesDone", 0, "batchesDone 0"), ("step", -2, "step -2"), ("ranks", 0, "ranks 0"),
            ("bestEpoch", 7, "bestEpoch 7"), ("format", 2, "format 2"), ("trainListHash", "zz", "trainListHash"),
            ("plateau", ["rate": -1.0, "badEpochs": 0, "cooldownLeft": 0], "plateau.rate"),
            ("plateau", ["rate": 0.1, "badEpochs": Int.max, "cooldownLeft": 0], "plateau.badEpochs"),
            ("globalBatch", 0, "globalBatch 0"),
        ]
        for (key, value, expected) in cases {
            var edited = object
            edited[key] = value
            let path = folder + "/\(key)"
            try? FileManager.default.removeItem(atPath: path)
            try FileManager.default.copyItem(atPath: good, toPath: path)
            try JSONSerialization.data(withJSONObject: edited).write(to: URL(fileURLWithPath: path + "/state.json"))
            XCTAssertThrowsError(try Checkpoint.read(from: path, store: unet.store, optimizer: optimizer), key) {
                XCTAssertTrue("\($0)".contains(expected) && "\($0)".contains("state.json"), "\(key): \($0)")
            }
        }
        XCTAssertNoThrow(try Checkpoint.read(from: good, store: unet.store, optimizer: optimizer))
    }

    /// The resuming run must match the checkpoint's seed and model; a mid-epoch checkpoint also
    /// its global batch, training set and a batch position inside the epoch.
    func testResumeProblemsNameTheFlag() {
        var config = UNetConfig()
        config.baseChannels = 4
        config.depth = 2
        let model = ModelDescription(.unet(config), imageSize: 32)
        var s = state()
        s.model = model
        s.globalBatch = 4
        s.trainSamples = 16
        let run = ResumeRun(seed: 3, model: model, globalBatch: 4, trainSamples: 16, batchesPerEpoch: 4, trainListHash: nil)
        XCTAssertNil(s.resumeProblem(run))
        var r = run
        r.seed = 4
        XCTAssertTrue(s.resumeProblem(r)?.contains("--seed") == true)
        r = run
        r.model.imageSize = 64
        XCTAssertTrue(s.resumeProblem(r)?.contains("--image-size 32") == true, s.resumeProblem(r) ?? "")
        r = run
        r.globalBatch = 8
        XCTAssertNil(s.resumeProblem(r), "another batch size at an epoch's end is fine")
        s.batchesDone = 2
        XCTAssertNil(s.resumeProblem(run))
        XCTAssertTrue(s.resumeProblem(r)?.contains("--batch-size 8") == true, s.resumeProblem(r) ?? "")
        r = run
        r.trainSamples = 20
        XCTAssertTrue(s.resumeProblem(r)?.contains("--train-samples") == true)
        s.batchesDone = 4
        XCTAssertTrue(s.resumeProblem(run)?.contains("batchesDone 4") == true)
        // An older checkpoint without globalBatch: the command line says it.
        s.batchesDone = 2
        s.globalBatch = nil
        s.arguments = ["train", "--batch-size", "8"]
        XCTAssertTrue(s.resumeProblem(run)?.contains("global batch of 8") == true, s.resumeProblem(run) ?? "")
    }
}
