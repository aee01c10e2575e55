// Rank 0's TensorBoard log (--tensorboard DIR): one new event file per run in DIR (a resumed run
// adds another; TensorBoard merges the files of a folder, and the steps continue: the x axis is
// the optimizer step, which checkpoints keep).
//
// Tags:
//   step/loss, step/lr, step/images_per_second, step/data_wait_ms, step/communication_ms
//       after every optimizer step at that step: the global batch's mean loss (left out for a
//       step skipped by --skip-nonfinite), the learning rate, images of all ranks over the step's
//       wall time, and rank 0's time waiting for the loader and in MPI during the step.
//   epoch/COLUMN   every column of the epoch's metrics.csv row (its text, so the very values;
//       empty fields, e.g. without validation, left out), at the optimizer step of the epoch's end.
//   samples        the epoch's sample grid (samples/epoch-NNN.png) as a PNG image, at that step.

import SegData
import SegEngine
import SegTensorBoard

public final class TensorBoardLog {
    public let writer: EventFileWriter
    /// The step's start: seconds since the epoch's start and rank 0's profile totals then.
    private var last = (seconds: 0.0, data: 0.0, communication: 0.0)

    public static let stepTags = ["step/loss", "step/lr", "step/images_per_second", "step/data_wait_ms",
                                  "step/communication_ms"]

    /// A new event file in `directory` (created if needed).
    public init(directory: String) throws {
        if let reason = makeDirectories(directory) {
            throw TrainingRunError("--tensorboard \(directory): cannot create the folder: \(reason)")
        }
        do { writer = try EventFileWriter(directory: directory) } catch {
            throw TrainingRunError("--tensorboard \(error)")
        }
    }

    public var path: String { writer.path }

    /// Call when an epoch starts (the per-step figures are differences from here on).
    func startEpoch(profile: Profile) {
        last = (0, profile[.data], profile[.communication])
    }

    /// After every optimizer step (rank 0).
    func step(_ info: Trainer.StepInfo, profile: Profile) throws {
        let now = (info.seconds, profile[.data], profile[.communication])
        defer { last = now }
        var values: [(tag: String, value: Double)] = []
        values.reserveCapacity(5)
        if let loss = info.loss { values.append((TensorBoardLog.stepTags[0], loss)) }
        values.append((TensorBoardLog.stepTags[1], info.learningRate))
        values.append((TensorBoardLog.stepTags[2], Double(info.images) / max(now.0 - last.seconds, 1e-9)))
        values.append((TensorBoardLog.stepTags[3], (now.1 - last.data) * 1000))
        values.append((TensorBoardLog.stepTags[4], (now.2 - last.communication) * 1000))
        try writer.addScalars(values, step: info.optimizerStep)
    }

    /// An epoch's metrics.csv row under its header, each non-empty field as `epoch/COLUMN`.
    func epoch(header: String, row: String, step: Int) throws {
        let names = header.split(separator: ",", omittingEmptySubsequences: false)
        let fields = row.split(separator: ",", omittingEmptySubsequences: false)
        var values: [(tag: String, value: Double)] = []
        for (name, field) in zip(names, fields) where !field.isEmpty {
            guard let value = Double(field) else {
                throw TrainingRunError("--tensorboard: metrics.csv field \(name) is not a number: \(field)")
            }
            values.append(("epoch/" + name, value))
        }
        try writer.addScalars(values, step: step)
    }

    /// The epoch's sample grid.
    func samples(_ grid: Image8, step: Int) throws {
        let png: [UInt8]
        do { png = try ImageFile.encode(grid) } catch {
            throw TrainingRunError("--tensorboard \(writer.path): the sample grid: \(error)")
        }
        try writer.addImage(tag: "samples", encoded: png, width: grid.width, height: grid.height, channels: grid.channels,
                            step: step)
    }

    /// Writes what is pending to the file (fsync).
    public func flush() throws { try writer.flush() }

    /// Flushes and closes the file.
    public func finish() throws { try writer.finish() }
}
