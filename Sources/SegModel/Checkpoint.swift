// Checkpoints: a folder with model.safetensors (weights and BN running statistics, the model's
// tensor names), optimizer.safetensors (the optimizer's state per tensor, e.g.
// "down.0.conv1.weight.exp_avg"; metadata: the optimizer, its step, and "frozen_steps", the updates a
// frozen encoder sat out) and state.json (epoch, optimizer step, best metric, the command
// line), and with --ema ema.safetensors (the weight average, same names; what inference loads when
// it is there). A checkpoint is written into a temporary folder — every file fsynced — and then swapped
// with the old one in one atomic rename (renameat2 RENAME_EXCHANGE), so a crash at any moment leaves
// either the old or the new checkpoint whole, never a mixture. A checkpoint is never written with
// weights, running statistics or optimizer state that are not finite, nor with a state that cannot
// be encoded: the write throws and the previous checkpoint stays as it was. Temporary folders
// (`.tmp-NAME-PID`) whose process is gone are removed before each write. A checkpoint read for
// resuming is checked field by field (ranges, and against the resuming run: see `ResumeRun`).

import CSupport
import Foundation
import SegEngine

public struct CheckpointState: Codable, Equatable, Sendable {
    public var format = 1
    /// Epochs completed; training resumes at epoch + 1.
    public var epoch: Int
    /// Global batches of epoch + 1 already trained (a checkpoint taken mid-epoch, on SIGTERM or
    /// SIGUSR1); nil at an epoch's end.
    public var batchesDone: Int?
    /// Optimizer updates applied.
    public var step: Int
    public var seed: UInt64
    public var ranks: Int
    public var bestValidationLoss: Double?
    public var bestEpoch: Int?
    /// The command line that trained it.
    public var arguments: [String]
    /// ReduceLROnPlateau's decisions so far (nil for other schedules).
    public var plateau: PlateauState?
    /// FNV-1a hash (hex) of the training list (--data), to notice a dataset that changed on resume.
    public var trainListHash: String?
    /// The model and its input normalisation, so that `segtrain predict` needs no flags.
    public var model: ModelDescription?
    /// The global batch (images per step over all ranks) and the training set's size: a mid-epoch
    /// checkpoint's `batchesDone` counts batches of this size in a permutation of this many samples
    /// (nil in checkpoints written before they were recorded).
    public var globalBatch: Int?
    public var trainSamples: Int?
    /// --ema's decay when the checkpoint holds a weight average (ema.safetensors); nil: none.
    public var ema: Double?

    public init(epoch: Int, step: Int, seed: UInt64, ranks: Int, bestValidationLoss: Double?, bestEpoch: Int?,
                arguments: [String]) {
        self.epoch = epoch
        self.step = step
        self.seed = seed
        self.ranks = ranks
        self.bestValidationLoss = bestValidationLoss
        self.bestEpoch = bestEpoch
        self.arguments = arguments
    }
}

public struct CheckpointError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum Checkpoint {
    /// The optimizer's state as safetensors items: one per (state buffer, parameter tensor).
    static func optimizerItems(_ optimizer: Optimizer, store: ParameterStore) -> [Safetensors.Item] {
        optimizer.stateBuffers.flatMap { state in
            store.entries.filter { $0.kind == .parameter }.map { e in
                Safetensors.Item(name: "\(e.name).\(state.name)", shape: Safetensors.torchShape(e.shape),
                                 values: state.buffer.view(e.shape, offset: e.offset))
            }
        }
    }

    /// Writes a checkpoint to `folder` atomically (see the file comment). Throws, leaving `folder`
    /// as it was, when a weight, running statistic or optimizer state is not finite (a diverged
    /// run: the previous checkpoint is worth more) or the state cannot be encoded.
    public static func write(to folder: String, store: ParameterStore, optimizer: Optimizer,
                             state: CheckpointState, average: WeightAverage? = nil) throws {
        var state = state
        state.ema = average?.decay
        let stateBytes = try encode(state, for: folder)
        let averaged = average.map { [("weight average", $0.values), ("averaged running statistics", $0.buffers)] } ?? []
        for (what, buffer) in [("weights", store.values), ("running statistics", store.buffers)] + averaged
            + optimizer.stateBuffers.map({ ("optimizer state \($0.name)", $0.buffer) }) {
            if let index = firstNonFinite(buffer) {
                let name = tensorName(at: index, kind: what.hasSuffix("running statistics") ? .buffer : .parameter, store: store)
                throw CheckpointError("\(folder): not written: the \(what) are not finite (\(name) holds \(buffer.pointer[index])); "
                                      + "the run diverged (try a lower --lr); the previous checkpoint is kept")
            }
        }
        let temporary = try temporaryFolder(for: folder)
        let files: [(String, [UInt8])] = [
            ("model.safetensors", Safetensors.encode(Safetensors.items(of: store, gradients: false),
                                                     metadata: ["format": "pt"])),
            ("optimizer.safetensors", Safetensors.encode(optimizerItems(optimizer, store: store),
                                                         metadata: ["optimizer": optimizer.config.kind.rawValue,
                                                                    "step": "\(optimizer.step)",
                                                                    "frozen_steps": "\(optimizer.frozenSteps)"])),
            ("state.json", stateBytes),
        ] + (average.map { a in
            [("ema.safetensors", Safetensors.encode(a.items(for: store), metadata: ["format": "pt", "ema": "\(a.decay)"]))]
        } ?? [])
        do {
            for (name, bytes) in files {
                if let error = writeFileAtomically("\(temporary)/\(name)", bytes: bytes) { throw CheckpointError(error) }
            }
            try install(temporary, as: folder)
        } catch {
            discard(temporary)
            throw error
        }
    }

    /// Removes the temporary folder of a write that failed (a full disk); when even that fails,
    /// says so, and the next write or run removes it (`removeStaleTemporaries`).
    static func discard(_ temporary: String) {
        guard FileManager.default.fileExists(atPath: temporary) else { return }
        do { try FileManager.default.removeItem(atPath: temporary) } catch {
            fputs("segtrain: warning: \(temporary): cannot remove a failed checkpoint's folder: \(error.localizedDescription)\n", stderr)
        }
    }

    /// state.json's bytes (pretty, sorted keys, a final newline); throws for a state JSON cannot
    /// hold (a non-finite number) or one that would be refused on reading.
    static func encode(_ state: CheckpointState, for folder: String) throws -> [UInt8] {
        if let problem = state.rangeProblem { throw CheckpointError("\(folder)/state.json: not written: \(problem)") }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        do {
            return [UInt8](try encoder.encode(state)) + Array("\n".utf8)
        } catch {
            throw CheckpointError("\(folder)/state.json: not written: the state cannot be encoded (\(error))")
        }
    }

    /// The index of the first NaN or infinity in `buffer`, or nil.
    static func firstNonFinite(_ buffer: FloatBuffer) -> Int? {
        for i in 0..<buffer.count where !buffer.pointer[i].isFinite { return i }
        return nil
    }

    /// The checkpoint name of the tensor holding element `index` of the store's flat buffer.
    static func tensorName(at index: Int, kind: ParameterEntry.Kind, store: ParameterStore) -> String {
        store.entries.first { $0.kind == kind && ($0.offset..<($0.offset + $0.shape.count)).contains(index) }?.name
            ?? "element \(index)"
    }

    /// Copies the checkpoint in `source` to `folder`, with the same atomic swap.
    public static func copy(_ source: String, to folder: String) throws {
        let fm = FileManager.default
        let temporary = try temporaryFolder(for: folder)
        do {
            let optional = fm.fileExists(atPath: "\(source)/ema.safetensors") ? ["ema.safetensors"] : []
            for name in ["model.safetensors", "optimizer.safetensors", "state.json"] + optional {
                guard let data = fm.contents(atPath: "\(source)/\(name)") else {
                    throw CheckpointError("\(source)/\(name): cannot be read")
                }
                if let error = writeFileAtomically("\(temporary)/\(name)", bytes: [UInt8](data)) { throw CheckpointError(error) }
            }
            try install(temporary, as: folder)
        } catch let error as CheckpointError {
            discard(temporary)
            throw error
        } catch {
            discard(temporary)
            throw CheckpointError("\(temporary): \(error.localizedDescription)")
        }
    }

    /// A fresh, empty folder beside `folder` where its next version is built; stale temporary
    /// folders of processes that are gone are removed first.
    static func temporaryFolder(for folder: String) throws -> String {
        let parent = (folder as NSString).deletingLastPathComponent
        try removeStaleTemporaries(in: parent.isEmpty ? "." : parent)
        let temporary = "\(parent)/.tmp-\((folder as NSString).lastPathComponent)-\(getpid())"
        let fm = FileManager.default
        do {
            if fm.fileExists(atPath: temporary) { try fm.removeItem(atPath: temporary) }
            try fm.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError("\(temporary): cannot create checkpoint folder: \(error.localizedDescription)")
        }
        return temporary
    }

    /// The process id in a temporary checkpoint folder's name `.tmp-NAME-PID`, or nil for any
    /// other name.
    public static func temporaryOwner(_ name: String) -> pid_t? {
        guard name.hasPrefix(".tmp-"), let dash = name.lastIndex(of: "-"), dash > name.index(name.startIndex, offsetBy: 4),
              let pid = pid_t(name[name.index(after: dash)...]), pid > 0 else { return nil }
        return pid
    }

    /// Removes the temporary checkpoint folders (`.tmp-NAME-PID`, folders only) in `parent` left by
    /// a failed or killed write: those of this process and of processes that no longer exist
    /// (a live process's folder, e.g. another run writing here, is left alone). Returns their names.
    @discardableResult
    public static func removeStaleTemporaries(in parent: String) throws -> [String] {
        let fm = FileManager.default
        let names: [String]
        do { names = try fm.contentsOfDirectory(atPath: parent) } catch {
            return []  // no folder yet: nothing stale (creating the checkpoint reports a real problem)
        }
        var removed: [String] = []
        for name in names.sorted() {
            guard let pid = temporaryOwner(name) else { continue }
            var isFolder: ObjCBool = false
            guard fm.fileExists(atPath: parent + "/" + name, isDirectory: &isFolder), isFolder.boolValue else { continue }
            let gone = pid == getpid() || (kill(pid, 0) != 0 && errno == ESRCH)
            guard gone else { continue }
            do { try fm.removeItem(atPath: parent + "/" + name) } catch {
                throw CheckpointError("\(parent)/\(name): cannot remove a stale temporary checkpoint folder: \(error.localizedDescription)")
            }
            removed.append(name)
        }
        return removed
    }

    /// Moves the complete temporary folder into place: an atomic exchange when `folder` exists.
    static func install(_ temporary: String, as folder: String) throws {
        let fm = FileManager.default
        guard segtrain_fsync_directory(temporary) == 0 else {
            throw CheckpointError("\(temporary): fsync failed: \(String(cString: strerror(errno)))")
        }
        if fm.fileExists(atPath: folder) {
            guard segtrain_exchange_paths(temporary, folder) == 0 else {
                throw CheckpointError("\(folder): cannot swap in the new checkpoint: \(String(cString: strerror(errno)))")
            }
            // `temporary` now holds the old checkpoint. The new one is in place whatever happens
            // here; a folder that cannot be removed now is removed by the next write.
            do { try fm.removeItem(atPath: temporary) } catch {
                fputs("segtrain: warning: \(temporary): cannot remove the previous checkpoint: \(error.localizedDescription)\n", stderr)
            }
        } else {
            guard rename(temporary, folder) == 0 else {
                throw CheckpointError("\(folder): cannot move the checkpoint into place: \(String(cString: strerror(errno)))")
            }
        }
        _ = segtrain_fsync_directory((folder as NSString).deletingLastPathComponent)
    }

    /// Reads a checkpoint into `store` and `optimizer` (names and shapes checked, headers
    /// bounds-checked) and returns its state. Every field of state.json is range-checked, and
    /// against `run` when given (the run that resumes it), before any tensor is read: one line
    /// naming the field or the flag.
    public static func read(from folder: String, store: ParameterStore, optimizer: Optimizer,
                            resuming run: ResumeRun? = nil, average: WeightAverage? = nil) throws -> CheckpointState {
        let state = try readState(from: folder)
        if let run, let problem = state.resumeProblem(run) { throw CheckpointError("\(folder)/state.json: \(problem)") }
        try SafetensorsFile(path: "\(folder)/model.safetensors").read(into: Safetensors.items(of: store, gradients: false))
        if let average {
            guard state.ema != nil else {
                throw CheckpointError("\(folder): no weight average (trained without --ema); resume without --ema, or start anew")
            }
            try SafetensorsFile(path: "\(folder)/ema.safetensors").read(into: average.items(for: store))
        }
        let optimizerFile = try SafetensorsFile(path: "\(folder)/optimizer.safetensors")
        if let kind = optimizerFile.metadata["optimizer"], kind != optimizer.config.kind.rawValue {
            throw CheckpointError("\(folder)/optimizer.safetensors: state of \(kind), but training uses \(optimizer.config.kind.rawValue)")
        }
        try optimizerFile.read(into: optimizerItems(optimizer, store: store))
        guard let step = optimizerFile.metadata["step"].flatMap(Int.init), step == state.step else {
            throw CheckpointError("\(folder)/optimizer.safetensors: step does not match state.json")
        }
        // Updates the frozen encoder sat out (--freeze-encoder): its own update count is step minus
        // these. Absent in checkpoints from before freezing existed: none.
        var frozenSteps = 0
        if let text = optimizerFile.metadata["frozen_steps"] {
            guard let n = Int(text), (0...step).contains(n) else {
                throw CheckpointError("\(folder)/optimizer.safetensors: frozen_steps \(text) is not a count in 0...\(step) (the step)")
            }
            frozenSteps = n
        }
        optimizer.restore(step: step, frozenSteps: frozenSteps)
        return state
    }

    /// state.json of a checkpoint folder, decoded and range-checked (`CheckpointState.rangeProblem`).
    public static func readState(from folder: String) throws -> CheckpointState {
        let statePath = "\(folder)/state.json"
        guard let data = FileManager.default.contents(atPath: statePath) else {
            throw CheckpointError("\(statePath): no such file (not a checkpoint folder?)")
        }
        let state: CheckpointState
        do { state = try JSONDecoder().decode(CheckpointState.self, from: data) } catch let error as ModelDescriptionError {
            throw CheckpointError("\(statePath): \(error)")
        } catch {
            throw CheckpointError("\(statePath): not a segtrain checkpoint state (\(error))")
        }
        if let problem = state.rangeProblem { throw CheckpointError("\(statePath): \(problem)") }
        return state
    }

    /// The model a checkpoint holds (state.json's "model"), for building it before its weights are read.
    public static func readModelDescription(from folder: String) throws -> ModelDescription {
        guard let description = try readState(from: folder).model else {
            throw CheckpointError("\(folder)/state.json: no model description (a checkpoint from before segtrain predict); "
                                  + "retrain or resume once to write one")
        }
        return description
    }

    /// The checkpoint's weights and buffers for inference into `store` (names and shapes
    /// checked): the weight average when the run kept one (--ema), else the weights.
    public static func readWeights(from folder: String, into store: ParameterStore) throws {
        let file = FileManager.default.fileExists(atPath: "\(folder)/ema.safetensors") ? "ema.safetensors" : "model.safetensors"
        try SafetensorsFile(path: "\(folder)/\(file)").read(into: Safetensors.items(of: store, gradients: false))
    }
}

/// What the run that resumes a checkpoint trains: a checkpoint's state is checked against it.
public struct ResumeRun: Sendable {
    public var seed: UInt64
    public var model: ModelDescription
    /// Images per optimizer step over all ranks (`--batch-size`, or --batch-per-rank x ranks).
    public var globalBatch: Int
    /// Training samples and the global batches of an epoch, as this run's sampler makes them.
    public var trainSamples: Int
    public var batchesPerEpoch: Int
    /// FNV-1a (hex) of the training list (--data); nil for the synthetic set.
    public var trainListHash: String?

    public init(seed: UInt64, model: ModelDescription, globalBatch: Int, trainSamples: Int, batchesPerEpoch: Int,
                trainListHash: String?) {
        self.seed = seed; self.model = model; self.globalBatch = globalBatch; self.trainSamples = trainSamples
        self.batchesPerEpoch = batchesPerEpoch; self.trainListHash = trainListHash
    }
}

extension CheckpointState {
    /// The largest epoch count a checkpoint (and --epochs) may hold.
    public static let maximumEpochs = 1_000_000
    /// The largest optimizer step (2^53: exact as a Double, which the schedule computes with).
    public static let maximumStep = 1 << 53

    /// Why this state cannot be a real checkpoint's (a field out of its range), naming the field;
    /// nil when every field is in range.
    public var rangeProblem: String? {
        let maxEpochs = CheckpointState.maximumEpochs
        if format != 1 { return "format \(format) is not 1 (unknown format)" }
        if !(0...maxEpochs).contains(epoch) { return "epoch \(epoch) is out of range 0...\(maxEpochs)" }
        if let b = batchesDone, !(1...(1 << 40)).contains(b) { return "batchesDone \(b) is out of range (at least 1, or absent)" }
        if !(0...CheckpointState.maximumStep).contains(step) { return "step \(step) is out of range 0...2^53" }
        if !(1...(1 << 20)).contains(ranks) { return "ranks \(ranks) is out of range 1...\(1 << 20)" }
        if let loss = bestValidationLoss, !loss.isFinite { return "bestValidationLoss \(loss) is not finite" }
        if let e = bestEpoch, !(1...max(1, epoch)).contains(e) || e > epoch {
            return "bestEpoch \(e) is out of range 1...epoch (\(epoch))"
        }
        if (bestEpoch == nil) != (bestValidationLoss == nil) { return "bestEpoch and bestValidationLoss must be given together" }
        if let p = plateau {
            if !(p.rate > 0 && p.rate.isFinite) { return "plateau.rate \(p.rate) is not a positive number" }
            if let b = p.best, !b.isFinite { return "plateau.best \(b) is not finite" }
            if !(0...maxEpochs).contains(p.badEpochs) { return "plateau.badEpochs \(p.badEpochs) is out of range 0...\(maxEpochs)" }
            if !(0...maxEpochs).contains(p.cooldownLeft) { return "plateau.cooldownLeft \(p.cooldownLeft) is out of range 0...\(maxEpochs)" }
        }
        if let h = trainListHash, h.isEmpty || h.count > 16 || UInt64(h, radix: 16) == nil {
            return "trainListHash \(h) is not a 64-bit hex hash"
        }
        if let g = globalBatch, !(1...(1 << 30)).contains(g) { return "globalBatch \(g) is out of range 1...2^30" }
        if let n = trainSamples, !(1...(1 << 40)).contains(n) { return "trainSamples \(n) is out of range 1...2^40" }
        if let d = ema, !(d > 0 && d < 1) { return "ema \(d) is not a decay in (0, 1)" }
        if let m = model, let problem = m.problem { return "model: \(problem)" }
        return nil
    }

    /// Why `run` cannot resume this checkpoint, naming the flag that differs; nil when it can.
    /// Seed and model (image size included) must match; a mid-epoch checkpoint also needs the same
    /// global batch and training set (its `batchesDone` counts batches of that permutation), and
    /// `batchesDone` below the epoch's batch count.
    public func resumeProblem(_ run: ResumeRun) -> String? {
        if seed != run.seed { return "seed \(seed), but this run has --seed \(run.seed) (resume with --seed \(seed))" }
        if let m = model {
            let now = Dictionary(run.model.flagValues, uniquingKeysWith: { a, _ in a })
            for (flag, saved) in m.flagValues where now[flag] != saved {
                return "the checkpoint was trained with \(flag) \(saved), but this run has \(flag) \(now[flag] ?? "unset")"
            }
        }
        guard let done = batchesDone else { return nil }
        let at = "a mid-epoch checkpoint (epoch \(epoch + 1), \(done) batch(es) done)"
        if let g = globalBatch ?? argumentsGlobalBatch, g != run.globalBatch {
            return "\(at) was trained with a global batch of \(g), but this run has --batch-size \(run.globalBatch) "
                + "(--batch-per-rank x ranks): resume with --batch-size \(g) (or from an epoch's end)"
        }
        if let n = trainSamples, n != run.trainSamples {
            return "\(at) was trained on \(n) samples, this run has \(run.trainSamples) (--train-samples / --data): "
                + "its batch positions mean other samples"
        }
        if let saved = trainListHash, let now = run.trainListHash, saved != now {
            return "\(at) was trained on another training list (hash \(saved), now \(now)): the dataset changed (--data)"
        }
        if done >= run.batchesPerEpoch {
            return "batchesDone \(done) is not below the epoch's \(run.batchesPerEpoch) batches"
        }
        return nil
    }

    /// The global batch named by the command line in `arguments` (checkpoints older than
    /// `globalBatch`): --batch-size N, or --batch-per-rank N x ranks; nil when neither is there.
    var argumentsGlobalBatch: Int? {
        func value(_ flag: String) -> Int? {
            for (i, a) in arguments.enumerated() {
                if a == flag, i + 1 < arguments.count { return Int(arguments[i + 1]) }
                if a.hasPrefix(flag + "=") { return Int(a.dropFirst(flag.count + 1)) }
            }
            return nil
        }
        if let perRank = value("--batch-per-rank") {
            let (global, overflow) = perRank.multipliedReportingOverflow(by: ranks)
            return overflow ? nil : global
        }
        return value("--batch-size") ?? (arguments.first == "train" ? 8 : nil)
    }
}
