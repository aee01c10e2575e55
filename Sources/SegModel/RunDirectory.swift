// A run folder (`segtrain train --out RUN`) and every file in it, written and read only here:
//
//   RUN/metrics.csv              one row per epoch (EpochRecord's columns), rewritten after each epoch
//   RUN/summary.json             the run at a glance (`RunSummary`), written when training ends
//   RUN/model.safetensors        the final weights under the model's tensor names
//   RUN/report.html              the training report
//   RUN/samples/epoch-NNN.png    a validation sample grid per epoch
//   RUN/confusion.csv            multi-class runs: the best epoch's validation confusion matrix
//   RUN/checkpoints/last         the latest checkpoint (see Checkpoint.swift), after every epoch
//   RUN/checkpoints/best         the checkpoint of the lowest validation loss
//   RUN/checkpoints/epoch-NNN    the last --keep epochs' checkpoints
//
// Every file is written atomically (a temporary name, fsync, rename).

import Foundation
import SegEngine

public struct RunDirectory: Sendable {
    /// The folder, without trailing slashes ("." for "").
    public let path: String

    public init(_ path: String) {
        var p = path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        self.path = p.isEmpty ? "." : p
    }

    public var metricsFile: String { path + "/metrics.csv" }
    public var summaryFile: String { path + "/summary.json" }
    public var modelFile: String { path + "/model.safetensors" }
    public var reportFile: String { path + "/report.html" }
    public var confusionFile: String { path + "/confusion.csv" }
    public var samplesFolder: String { path + "/samples" }
    public var checkpointsFolder: String { path + "/checkpoints" }
    public var lastCheckpoint: String { checkpointsFolder + "/last" }
    public var bestCheckpoint: String { checkpointsFolder + "/best" }
    public func epochCheckpoint(_ epoch: Int) -> String { checkpointsFolder + "/" + RunDirectory.epochName(epoch) }
    public func sampleGrid(epoch: Int) -> String { samplesFolder + "/" + RunDirectory.epochName(epoch) + ".png" }

    /// "epoch-007": zero-padded to three digits (more when needed), so names sort by epoch.
    public static func epochName(_ epoch: Int) -> String {
        let digits = String(epoch)
        return "epoch-" + String(repeating: "0", count: max(0, 3 - digits.count)) + digits
    }

    /// Creates the folder with checkpoints/ and samples/; returns the failure's reason, or nil.
    public func create() -> String? {
        makeDirectories(checkpointsFolder) ?? makeDirectories(samplesFolder)
    }

    /// The checkpoint folder `path` names: `path` itself when it holds state.json, else a run
    /// folder's checkpoints/best, else its checkpoints/last; nil when none exists.
    public static func checkpointFolder(named path: String) -> String? {
        let fm = FileManager.default
        if fm.fileExists(atPath: path + "/state.json") { return path }
        let run = RunDirectory(path)
        for folder in [run.bestCheckpoint, run.lastCheckpoint] where fm.fileExists(atPath: folder + "/state.json") {
            return folder
        }
        return nil
    }

    // MARK: metrics.csv

    /// Writes metrics.csv: the header and one line per epoch.
    public func writeMetrics(header: String, rows: [String]) throws {
        let text = ([header] + rows).joined(separator: "\n") + "\n"
        if let error = writeFileAtomically(metricsFile, text) { throw FileError(error) }
    }

    /// The data lines of metrics.csv whose epoch is at most `epoch` (a resumed run keeps those);
    /// none when the file does not exist.
    public func metricsRows(throughEpoch epoch: Int) throws -> [String] {
        guard FileManager.default.fileExists(atPath: metricsFile) else { return [] }
        let text: String
        do { text = try readTextFile(metricsFile) } catch {
            throw FileError("\(metricsFile): cannot read the metrics of the resumed run: \(error)")
        }
        return text.split(separator: "\n").dropFirst().compactMap { row in
            guard let e = Int(row.prefix { $0 != "," }), e <= epoch else { return nil }
            return String(row)
        }
    }

    /// metrics.csv parsed; errors name the file.
    public func readMetrics() throws -> MetricsTable {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else {
            throw FileError("\(metricsFile): cannot read: the folder \(path) does not exist")
        }
        guard isFolder.boolValue else { throw FileError("\(metricsFile): cannot read: \(path) is not a folder") }
        let text = try readTextFile(metricsFile)
        do { return try MetricsTable.parse(text) } catch let error as MetricsTable.FormatError {
            throw FileError("\(metricsFile): \(error.reason)")
        }
    }

    // MARK: summary.json

    public func writeSummary(_ summary: RunSummary) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data: Data
        do { data = try encoder.encode(summary) } catch {
            throw FileError("\(summaryFile): not written: cannot encode the summary (\(error))")
        }
        if let error = writeFileAtomically(summaryFile, bytes: [UInt8](data) + Array("\n".utf8)) { throw FileError(error) }
    }

    /// summary.json, or nil when there is none; a file that is not a summary throws.
    public func readSummary() throws -> RunSummary? {
        guard let data = FileManager.default.contents(atPath: summaryFile) else { return nil }
        do { return try JSONDecoder().decode(RunSummary.self, from: data) } catch {
            throw FileError("summary.json is not a segtrain run summary")
        }
    }

    // MARK: confusion.csv

    /// Writes confusion.csv: a header `truth\predicted,NAME...`, then per true class its name and
    /// the pixels predicted as each class (validation of `epoch`, in the header's first cell).
    public func writeConfusion(_ counts: ConfusionCounts, classNames: [String], epoch: Int) throws {
        let k = counts.classes
        precondition(counts.matrix.count == k * k && classNames.count == k, "a confusion matrix of \(k) named classes")
        var lines = ["epoch \(epoch): truth\\predicted," + classNames.joined(separator: ",")]
        for t in 0..<k {
            lines.append(classNames[t] + "," + (0..<k).map { String(Int(counts.confusion(truth: t, predicted: $0))) }.joined(separator: ","))
        }
        if let error = writeFileAtomically(confusionFile, lines.joined(separator: "\n") + "\n") { throw FileError(error) }
    }

    /// confusion.csv, or nil when there is none: the epoch, class names and matrix (row = truth).
    public func readConfusion() throws -> (epoch: Int, classNames: [String], matrix: [[Double]])? {
        guard FileManager.default.fileExists(atPath: confusionFile) else { return nil }
        let rows = try readTextFile(confusionFile).split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        func bad(_ why: String) -> FileError { FileError("\(confusionFile): \(why)") }
        guard let header = rows.first, header.count >= 3, header[0].hasPrefix("epoch "),
              let epoch = Int(header[0].dropFirst(6).prefix { $0 != ":" }) else { throw bad("not a confusion matrix") }
        let names = header.dropFirst().map(String.init)
        guard rows.count == names.count + 1 else { throw bad("\(rows.count - 1) rows for \(names.count) classes") }
        let matrix = try rows.dropFirst().map { row -> [Double] in
            let values = row.dropFirst().compactMap { Double($0) }
            guard values.count == names.count else { throw bad("a row of \(row.count - 1) counts for \(names.count) classes") }
            return values
        }
        return (epoch, names, matrix)
    }

    // MARK: samples

    /// The sample grids samples/epoch-NNN.png, oldest first (file names relative to samples/).
    public func sampleGrids() -> [(epoch: Int, file: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: samplesFolder)) ?? []
        return names.compactMap { name -> (Int, String)? in
            guard name.hasPrefix("epoch-"), name.hasSuffix(".png") else { return nil }
            guard let epoch = Int(name.dropFirst(6).dropLast(4)) else { return nil }
            return (epoch, name)
        }.sorted { $0.0 < $1.0 }.map { (epoch: $0.0, file: $0.1) }
    }
}

/// RUN/summary.json: this invocation of `train` at a glance (metrics.csv has every epoch).
public struct RunSummary: Codable, Equatable, Sendable {
    public var epochsTrained: Int
    public var lastEpoch: Int?
    public var bestEpoch: Int?
    public var bestValidationLoss: Double?
    public var lastValidationDice: Double?
    public var lastValidationIoU: Double?
    public var lastTrainLoss: Double?
    public var meanImagesPerSecond: Double?
    public var seconds: Double
    public var ranks: Int
    public var threadsPerRank: Int
    public var parameters: Int
    /// Parameters that trained in the last epoch: all, less a frozen encoder's (Keras' trainable params).
    public var trainableParameters: Int?
    /// --freeze-encoder: true, with the epoch the encoder trains from (--unfreeze-at-epoch) if any;
    /// both absent without the flag.
    public var freezeEncoder: Bool?
    public var unfreezeAtEpoch: Int?
    public var arguments: [String]

    public init(epochsTrained: Int, seconds: Double, ranks: Int, threadsPerRank: Int, parameters: Int, arguments: [String]) {
        self.epochsTrained = epochsTrained
        self.seconds = seconds
        self.ranks = ranks
        self.threadsPerRank = threadsPerRank
        self.parameters = parameters
        self.arguments = arguments
    }

    private enum CodingKeys: String, CodingKey {
        case epochsTrained = "epochs_trained", lastEpoch = "last_epoch", bestEpoch = "best_epoch"
        case bestValidationLoss = "best_val_loss", lastValidationDice = "last_val_dice", lastValidationIoU = "last_val_iou"
        case lastTrainLoss = "last_train_loss", meanImagesPerSecond = "mean_images_per_second", seconds, ranks
        case threadsPerRank = "threads_per_rank", parameters, trainableParameters = "trainable_parameters"
        case freezeEncoder = "freeze_encoder", unfreezeAtEpoch = "unfreeze_at_epoch", arguments
    }
}

/// metrics.csv, by column: one entry per row; nil for an empty field.
public struct MetricsTable: Sendable {
    public var epochs: [Int] = []
    public var columns: [String: [Double?]] = [:]
    /// The columns in the file's order (without "epoch").
    public var columnNames: [String] = []

    /// Why the text is not a metrics file (the caller adds the file name).
    public struct FormatError: Error {
        public let reason: String
        init(_ reason: String) { self.reason = reason }
    }

    /// The column's values (all nil when the file has no such column).
    public func values(_ name: String) -> [Double?] { columns[name] ?? epochs.map { _ in nil } }

    /// Parses metrics.csv text.
    public static func parse(_ text: String) throws -> MetricsTable {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map {
            $0.hasSuffix("\r") ? $0.dropLast() : $0
        }
        while let last = lines.last, last.trimmingCharacters(in: .whitespaces).isEmpty { lines.removeLast() }
        guard let headerLine = lines.first else { throw FormatError("the file is empty") }
        let header = headerLine.split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        guard header.first == "epoch", header.contains("train_loss") else {
            throw FormatError("not a segtrain metrics file: the header is '\(shortened(String(headerLine)))', "
                              + "expected it to start with 'epoch,train_loss'")
        }
        if let duplicate = header.first(where: { name in header.filter { $0 == name }.count > 1 }) {
            throw FormatError("the header names column '\(shortened(duplicate))' twice")
        }
        var table = MetricsTable()
        table.columnNames = Array(header.dropFirst())
        for name in header.dropFirst() { table.columns[name] = [] }
        for (index, line) in lines.enumerated().dropFirst() {
            let number = index + 1
            let fields = line.split(separator: ",", omittingEmptySubsequences: false)
                .map { $0.trimmingCharacters(in: .whitespaces) }
            guard fields.count == header.count else {
                throw FormatError("line \(number): \(fields.count) field(s), the header has \(header.count)")
            }
            guard let epoch = Int(fields[0]), (1...1_000_000_000).contains(epoch) else {
                throw FormatError("line \(number): the epoch '\(shortened(fields[0]))' is not a whole number in 1...1000000000")
            }
            if let previous = table.epochs.last, epoch <= previous {
                throw FormatError("line \(number): epoch \(epoch) comes after epoch \(previous)")
            }
            table.epochs.append(epoch)
            for (name, field) in zip(header, fields).dropFirst() {
                if field.isEmpty {
                    table.columns[name]!.append(nil)
                } else if let value = Double(field) {
                    table.columns[name]!.append(value)
                } else {
                    throw FormatError("line \(number): \(name) '\(shortened(field))' is not a number")
                }
            }
        }
        if table.epochs.isEmpty { throw FormatError("no epochs (only the header)") }
        if table.values("train_loss").contains(where: { $0 == nil }) {
            throw FormatError("line \(table.values("train_loss").firstIndex { $0 == nil }! + 2): train_loss is empty")
        }
        return table
    }

    private static func shortened(_ text: String) -> String {
        text.count > 40 ? String(text.prefix(40)) + "..." : text
    }
}
