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
    /// images that failed.
    public func predictAll(_ files: [String], stems: [String], predictor: Predictor, batchSize: Int, tileOverlap: Int?,
                           report: (String) -> Void) -> (written: Int, failures: Int) {
        var failures = 0, written = 0, k = 0
        while k < files.count {
            // Read a batch; a file that cannot be read is reported and skipped.
            var batch: [(path: String, stem: String, image: Image8)] = []
            while k < files.count && batch.count < (tileOverlap != nil ? 1 : batchSize) {
                let path = files[k], stem = stems[k]
                k += 1
                do { batch.append((path, stem, try ImageFile.read(path, as: predictor.pixelFormat))) } catch {
                    report("\(error)")
                    failures += 1
                }
            }
            if batch.isEmpty { continue }
            let predictions = tileOverlap.map { [predictor.predictTiled(batch[0].image, overlap: $0)] }
                ?? predictor.predict(batch.map(\.image))
            for ((path, stem, image), prediction) in zip(batch, predictions) {
                // `written` counts every file in place, also those before a failed one.
                do { try write(prediction, image: image, path: path, stem: stem, written: &written) } catch {
                    report("\(error)")
                    failures += 1
                }
            }
        }
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
