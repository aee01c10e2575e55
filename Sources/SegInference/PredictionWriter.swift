// `segtrain predict`'s outputs: for each input image, the label mask, probabilities, overlay and
// cut-out files, named from the image's stem (OutputNames) in an output folder, or one file. Images
// are read and predicted in batches (one at a time when tiled); a file that cannot be read or
// written is reported and counted, and the rest go on.

import Foundation
import SegData
import SegEngine

public struct PredictionWriter {
    public enum Kind: String, CaseIterable, Sendable { case mask, prob, overlay, cutout, logits }

    /// What goes behind the object in a cut-out.
    public enum Backdrop {
        case transparent
        case image(Image8)
        case colour((UInt8, UInt8, UInt8))
    }

    public var kinds: [Kind]
    /// The output folder, or the one file when `singleFile`.
    public var output: String
    public var singleFile: Bool
    public var backdrop = Backdrop.transparent

    public init(kinds: [Kind], output: String, singleFile: Bool) {
        self.kinds = kinds
        self.output = output
        self.singleFile = singleFile
    }

    /// Predicts `files` (output names from `stems`) in batches of `batchSize`, or tiled with
    /// `overlap`; `report` gets one line per failed file. Returns the files written and the
    /// images that failed. While batch b is predicted, batch b+1 is read and decoded on one thread
    /// and batch b-1's outputs encoded and written on another; lines are reported in file order.
    public func predictAll(_ files: [String], stems: [String], predictor: Predictor, batchSize: Int, tileOverlap: Int?,
                           report: (String) -> Void) -> (written: Int, failures: Int) {
        let perBatch = tileOverlap != nil ? 1 : batchSize
        let batches = stride(from: 0, to: files.count, by: perBatch).map { $0..<min($0 + perBatch, files.count) }
        let pixelFormat = predictor.pixelFormat
        // A file that cannot be read is reported and skipped.
        func read(_ range: Range<Int>) -> (images: [(path: String, stem: String, image: Image8)], errors: [String]) {
            var images: [(path: String, stem: String, image: Image8)] = [], errors: [String] = []
            for k in range {
                do { images.append((files[k], stems[k], try ImageFile.read(files[k], as: pixelFormat))) } catch { errors.append("\(error)") }
            }
            return (images, errors)
        }
        // `written` counts every file in place, also those before a failed one.
        func write(_ images: [(path: String, stem: String, image: Image8)], _ predictions: [Prediction]) -> (written: Int, errors: [String]) {
            var written = 0, errors: [String] = []
            for ((path, stem, image), prediction) in zip(images, predictions) {
                do { try self.write(prediction, image: image, path: path, stem: stem, written: &written) } catch { errors.append("\(error)") }
            }
            return (written, errors)
        }
        let readQueue = DispatchQueue(label: "segtrain.predict.read"), writeQueue = DispatchQueue(label: "segtrain.predict.write")
        var failures = 0, written = 0
        var nextRead = batches.first.map { range in Pending(on: readQueue) { read(range) } }
        var lastWrite: Pending<(written: Int, errors: [String])>? = nil
        func finishWrite() {
            guard let done = lastWrite?.wait() else { return }
            written += done.written
            failures += done.errors.count
            done.errors.forEach(report)
            lastWrite = nil
        }
        for b in batches.indices {
            let batch = nextRead!.wait()
            nextRead = b + 1 < batches.count ? Pending(on: readQueue) { [range = batches[b + 1]] in read(range) } : nil
            if batch.images.isEmpty {
                finishWrite()
            } else {
                let predictions = tileOverlap.map { [predictor.predictTiled(batch.images[0].image, overlap: $0)] }
                    ?? predictor.predict(batch.images.map(\.image))
                finishWrite()
                lastWrite = Pending(on: writeQueue) { write(batch.images, predictions) }
            }
            // Lines in file order: this batch's unreadable files after the batch before's writes.
            failures += batch.errors.count
            batch.errors.forEach(report)
        }
        finishWrite()
        return (written, failures)
    }

    /// Writes the asked-for outputs of one image (named from `stem`), adding 1 to `written` for
    /// each file in place.
    public func write(_ prediction: Prediction, image: Image8, path: String, stem: String, written count: inout Int) throws {
        // Overlays and cut-outs show the image's colours, also for a gray model (as serve does).
        let wantsColour = kinds.contains(.overlay) || kinds.contains(.cutout)
        let display = image.channels >= 3 || !wantsColour ? image : ((try? ImageFile.read(path, as: .rgb)) ?? image)
        func target(_ suffix: String) -> String { singleFile ? output : output + "/" + stem + suffix + ".png" }
        let labels = prediction.labels, classes = prediction.classes
        for kind in kinds {
            let files: [(Image8, String)]
            switch kind {
            case .logits:
                guard let logits = prediction.logits else { continue }
                let path = output + "/" + stem + "_logits.npy"
                let side = Int((Double(logits.count / max(classes, 1))).squareRoot().rounded())
                if let problem = writeFileAtomically(path, bytes: PredictionImages.npy(logits, shape: [max(classes, 1), side, side])) {
                    throw FileError(problem)
                }
                count += 1
                continue
            case .mask: files = [(PredictionImages.mask(labels, classes: classes), "_mask")]
            case .prob:
                let planes = classes == 1 ? 1 : classes
                files = (0..<planes).map { c in
                    (PredictionImages.probability(prediction, plane: c), planes == 1 ? "_prob" : "_prob_c\(c)")
                }
            case .overlay: files = [(PredictionImages.overlay(display, labels: labels, classes: classes), "_overlay")]
            case .cutout: files = [(cutout(display, labels: labels), "_cutout")]
            }
            for (picture, suffix) in files {
                try ImageFile.write(picture, to: target(suffix))
                count += 1
            }
        }
    }

    private func cutout(_ image: Image8, labels: Image8) -> Image8 {
        switch backdrop {
        case .transparent:
            return PredictionImages.cutout(image, labels: labels)
        case .image(let picture):
            let sized = picture.width == image.width && picture.height == image.height
                ? picture : Preprocess.resizeImage(picture, width: image.width, height: image.height)
            return PredictionImages.composite(image, labels: labels, behind: sized)
        case .colour(let colour):
            return PredictionImages.composite(image, labels: labels,
                                              behind: PredictionImages.solid(colour, width: image.width, height: image.height))
        }
    }
}

/// The result of `work`, run on `queue` from now on; `wait()` blocks until it is there.
private final class Pending<T> {
    private var value: T?
    private let group = DispatchGroup()

    init(on queue: DispatchQueue, _ work: @escaping () -> T) {
        group.enter()
        queue.async {
            self.value = work()
            self.group.leave()
        }
    }

    func wait() -> T {
        group.wait()
        return value!
    }
}
