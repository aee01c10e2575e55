// Checkpoint writing and reading in process (issue 14): what is written (weights, running
// statistics, optimizer state and step, state.json) is what is read; a diverged model, a state JSON
// cannot hold or a write that fails halfway is refused and the previous checkpoint stays byte for byte; stale temporary folders of dead
// processes are removed, live ones kept; every state.json field is range-checked and checked
// against the resuming run, naming the field or the flag.

import XCTest
import Foundation
import SegEngine
import SegModel
#if canImport(Glibc)
import Glibc
#endif

final class CheckpointTests: XCTestCase {
    var folder = ""

    override func setUpWithError() throws {
        folder = NSTemporaryDirectory() + "segtrain-checkpoint-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: folder) }

    private func tinyModel(batchNorm: Bool = false, seed: UInt64 = 0) -> (UNet, Optimizer) {
        var config = UNetConfig()
        config.baseChannels = 4
        config.depth = 2
        config.norm = batchNorm ? .batch : .none
        config.seed = seed
        let unet = UNet(config, pool: WorkerPool(threads: 1))
        return (unet, Optimizer(OptimizerConfig(kind: .adam), parameterCount: unet.parameterCount))
    }

    private func state(epoch: Int = 1) -> CheckpointState {
        CheckpointState(epoch: epoch, step: 0, seed: 3, ranks: 1, bestValidationLoss: 0.5, bestEpoch: 1, arguments: ["train"])
    }

    private func files(_ checkpoint: String) -> [Data?] {
        ["model.safetensors", "optimizer.safetensors", "state.json"].map { FileManager.default.contents(atPath: checkpoint + "/" + $0) }
    }

    /// Every weight and running statistic, every optimizer state buffer and its step, and every
    /// field of state.json come back bitwise into a model and optimizer that held other values.
    func testWriteThenReadRestoresStoreOptimizerAndState() throws {
        let (unet, optimizer) = tinyModel(batchNorm: true, seed: 1)
        var rng = SplitMix64(seed: 12)
        for i in 0..<unet.store.buffers.count { unet.store.buffers.pointer[i] = rng.nextFloat(in: 0.5...2) }
        let gradients = OwnedTensor(.vector(unet.parameterCount))
        for _ in 0..<3 {
            for i in 0..<gradients.tensor.count { gradients.tensor[i] = rng.nextFloat(in: -1...1) }
            _ = optimizer.apply(values: unet.store.values.tensor, gradients: gradients.tensor, learningRate: 1e-2, pool: unet.pool)
        }
        var written = state(epoch: 4)
        written.step = 3
        written.batchesDone = 2
        written.plateau = PlateauState(rate: 0.05, best: 0.25, badEpochs: 1, cooldownLeft: 2)
        written.trainListHash = "00c0ffee"
        written.globalBatch = 8
        written.trainSamples = 100
        var described = unet.config
        described.seed = 0  // the seed is state.json's own field, not the model description's
        written.model = ModelDescription(.unet(described), imageSize: 32, mean: [0.5, 0.4, 0.3], std: [0.2, 0.2, 0.25])
        let path = folder + "/last"
        try Checkpoint.write(to: path, store: unet.store, optimizer: optimizer, state: written)

        let (other, otherOptimizer) = tinyModel(batchNorm: true, seed: 2)
        XCTAssertNotEqual(other.store.values.tensor.toArray(), unet.store.values.tensor.toArray(), "another start")
        let read = try Checkpoint.read(from: path, store: other.store, optimizer: otherOptimizer)
        XCTAssertEqual(read, written)
        XCTAssertEqual(other.store.values.tensor.toArray(), unet.store.values.tensor.toArray())
        XCTAssertEqual(other.store.buffers.tensor.toArray(), unet.store.buffers.tensor.toArray())
        XCTAssertEqual(otherOptimizer.step, 3)
        XCTAssertEqual(otherOptimizer.stateBuffers.map(\.name), optimizer.stateBuffers.map(\.name))
        for (a, b) in zip(otherOptimizer.stateBuffers, optimizer.stateBuffers) {
            XCTAssertEqual(a.buffer.tensor.toArray(), b.buffer.tensor.toArray(), a.name)
            XCTAssertTrue(b.buffer.tensor.toArray().contains { $0 != 0 }, "\(b.name) holds something")
        }
        XCTAssertEqual(try Checkpoint.readModelDescription(from: path), written.model)
    }

    /// A write stopped halfway (the file-size limit ends model.safetensors at 4 KiB, as a full disk
    /// would) throws naming the file, and leaves the previous checkpoint byte for byte and no
    /// temporary folder.
    func testAWriteThatFailsHalfwayLeavesThePreviousCheckpointWhole() throws {
        let (unet, optimizer) = tinyModel()
        let last = folder + "/last"
        try Checkpoint.write(to: last, store: unet.store, optimizer: optimizer, state: state())
        let before = files(last)
        XCTAssertGreaterThan(before[0]?.count ?? 0, 4096, "the model file is larger than the limit below")
        unet.store.values.tensor[0] += 1
        let resource = __rlimit_resource_t(RLIMIT_FSIZE.rawValue)
        var saved = rlimit()
        XCTAssertEqual(getrlimit(resource, &saved), 0)
        let previousHandler = signal(SIGXFSZ, SIG_IGN)  // a write past the limit then fails with EFBIG
        var limited = saved
        limited.rlim_cur = 4096
        XCTAssertEqual(setrlimit(resource, &limited), 0)
        let outcome = Result { try Checkpoint.write(to: last, store: unet.store, optimizer: optimizer, state: state(epoch: 2)) }
        XCTAssertEqual(setrlimit(resource, &saved), 0)
        signal(SIGXFSZ, previousHandler)
        XCTAssertThrowsError(try outcome.get()) {
            XCTAssertTrue("\($0)".contains("model.safetensors: write failed"), "\($0)")
        }
        XCTAssertEqual(files(last), before)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), ["last"], "no temporary folder is left behind")
        // Without the limit the same write succeeds.
        try Checkpoint.write(to: last, store: unet.store, optimizer: optimizer, state: state(epoch: 2))
        XCTAssertNotEqual(files(last), before)
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
