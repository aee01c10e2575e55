// Checkpoints: a folder with model.safetensors (weights and BN running statistics, the model's
// tensor names), optimizer.safetensors (the optimizer's state per tensor, e.g.
// "down.0.conv1.weight.exp_avg") and state.json (epoch, optimizer step, best metric, the command
// line). A checkpoint is written into a temporary folder — every file fsynced — and then swapped
// with the old one in one atomic rename (renameat2 RENAME_EXCHANGE), so a crash at any moment leaves
// either the old or the new checkpoint whole, never a mixture.

import CSupport
import Foundation
import SegEngine
import SegModel

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

    /// Writes a checkpoint to `folder` atomically (see the file comment).
    public static func write(to folder: String, store: ParameterStore, optimizer: Optimizer,
                             state: CheckpointState) throws {
        let temporary = try temporaryFolder(for: folder)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let stateBytes = [UInt8]((try? encoder.encode(state)) ?? Data())
        let files: [(String, [UInt8])] = [
            ("model.safetensors", Safetensors.encode(Safetensors.items(of: store, gradients: false),
                                                     metadata: ["format": "pt"])),
            ("optimizer.safetensors", Safetensors.encode(optimizerItems(optimizer, store: store),
                                                         metadata: ["optimizer": optimizer.config.kind.rawValue,
                                                                    "step": "\(optimizer.step)"])),
            ("state.json", stateBytes + Array("\n".utf8)),
        ]
        for (name, bytes) in files {
            if let error = writeFileAtomically("\(temporary)/\(name)", bytes: bytes) { throw CheckpointError(error) }
        }
        try install(temporary, as: folder)
    }

    /// Copies the checkpoint in `source` to `folder`, with the same atomic swap.
    public static func copy(_ source: String, to folder: String) throws {
        let fm = FileManager.default
        let temporary = try temporaryFolder(for: folder)
        do {
            for name in ["model.safetensors", "optimizer.safetensors", "state.json"] {
                guard let data = fm.contents(atPath: "\(source)/\(name)") else {
                    throw CheckpointError("\(source)/\(name): cannot be read")
                }
                if let error = writeFileAtomically("\(temporary)/\(name)", bytes: [UInt8](data)) { throw CheckpointError(error) }
            }
        } catch let error as CheckpointError { throw error } catch {
            throw CheckpointError("\(temporary): \(error.localizedDescription)")
        }
        try install(temporary, as: folder)
    }

    /// A fresh, empty folder beside `folder` where its next version is built.
    static func temporaryFolder(for folder: String) throws -> String {
        let parent = (folder as NSString).deletingLastPathComponent
        let temporary = "\(parent)/.tmp-\((folder as NSString).lastPathComponent)-\(getpid())"
        try? FileManager.default.removeItem(atPath: temporary)
        do {
            try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError("\(temporary): cannot create checkpoint folder: \(error.localizedDescription)")
        }
        return temporary
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
            try? fm.removeItem(atPath: temporary)  // now the old checkpoint
        } else {
            guard rename(temporary, folder) == 0 else {
                throw CheckpointError("\(folder): cannot move the checkpoint into place: \(String(cString: strerror(errno)))")
            }
        }
        _ = segtrain_fsync_directory((folder as NSString).deletingLastPathComponent)
    }

    /// Reads a checkpoint into `store` and `optimizer` (names and shapes checked, headers
    /// bounds-checked) and returns its state.
    public static func read(from folder: String, store: ParameterStore, optimizer: Optimizer) throws -> CheckpointState {
        let statePath = "\(folder)/state.json"
        guard let data = FileManager.default.contents(atPath: statePath) else {
            throw CheckpointError("\(statePath): no such file (not a checkpoint folder?)")
        }
        let state: CheckpointState
        do { state = try JSONDecoder().decode(CheckpointState.self, from: data) } catch {
            throw CheckpointError("\(statePath): not a segtrain checkpoint state (\(error))")
        }
        guard state.format == 1 else { throw CheckpointError("\(statePath): unknown format \(state.format)") }
        guard state.epoch >= 0 && state.step >= 0 && (state.batchesDone ?? 0) >= 0 else {
            throw CheckpointError("\(statePath): negative epoch, step or batch count (epoch \(state.epoch), step \(state.step))")
        }
        try SafetensorsFile(path: "\(folder)/model.safetensors").read(into: Safetensors.items(of: store, gradients: false))
        let optimizerFile = try SafetensorsFile(path: "\(folder)/optimizer.safetensors")
        if let kind = optimizerFile.metadata["optimizer"], kind != optimizer.config.kind.rawValue {
            throw CheckpointError("\(folder)/optimizer.safetensors: state of \(kind), but training uses \(optimizer.config.kind.rawValue)")
        }
        try optimizerFile.read(into: optimizerItems(optimizer, store: store))
        guard let step = optimizerFile.metadata["step"].flatMap(Int.init), step == state.step else {
            throw CheckpointError("\(folder)/optimizer.safetensors: step does not match state.json")
        }
        optimizer.restore(step: step)
        return state
    }
}
