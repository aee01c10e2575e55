// `segtrain evaluate`'s scoring: every image of a listing predicted at its own size and compared
// with its mask; rank r scores images r, r + N, ...; the confusion counts are summed over ranks
// in one allreduce, and the per-image table (per class for multi-class models) and its mean row
// are made from them.

import Foundation
import SegData
import SegEngine

public enum Evaluation {
    /// The scores of every image: `csv` (image, mask, the score columns; a final `mean` row),
    /// the score columns' names and their means over images. Every rank gets the same result. A
    /// bad file on any rank ends every rank with its message (`SharedError`).
    /// Multi-class columns are named by the model's class names (`--class-names` at training), else
    /// by class index.
    public static func score(listing: DatasetListing, spec: SampleSpec, predictor: Predictor,
                             collectives: Collectives) throws -> (csv: String, columns: [String], means: [Double]) {
        let classes = spec.classes, ignoreIndex = spec.labels.ignoreIndex
        let dataset = FileDataset(listing: listing, spec: spec)
        let k = max(classes, 1), width = 4 * k + 1
        var table = [Double](repeating: 0, count: listing.count * width)
        var failure = ""
        for i in stride(from: collectives.rank, to: listing.count, by: collectives.size) {
            do {
                let image = try ImageFile.read(listing.imagePath(i), as: predictor.pixelFormat, limits: spec.limits)
                let truth = try dataset.decodeMask(listing.maskPath(i))
                guard truth.width == image.width && truth.height == image.height else {
                    throw ImageFileError(listing.maskPath(i), "mask is \(truth.width)x\(truth.height) but its image is \(image.width)x\(image.height)")
                }
                let labels = predictor.predict([image])[0].labels
                var counts = ConfusionCounts(classes: classes)
                counts.add(predicted: labels.pixels, truth: truth.pixels, ignoreIndex: ignoreIndex)
                table.replaceSubrange((i * width)..<((i + 1) * width), with: [1] + counts.flat)
            } catch {
                failure = "\(error)"
                break
            }
        }
        // A bad file on any rank stops every rank with the lowest such rank's message.
        var flags = [Double](repeating: 0, count: collectives.size)
        if !failure.isEmpty { flags[collectives.rank] = 1 }
        if let root = try collectives.allreduceSum(flags).firstIndex(where: { $0 > 0 }) {
            throw SharedError(description: try collectives.broadcast(failure, root: root))
        }
        let sums = try collectives.allreduceSum(table)

        let names = classes == 1 ? ["precision", "recall", "f1", "iou"]
            : (predictor.description.classNames ?? (0..<classes).map(String.init)).flatMap { c in
                ["precision_\(c)", "recall_\(c)", "f1_\(c)", "iou_\(c)"] } + ["mean_f1", "mean_iou"]
        var csv = "image,mask,accuracy," + names.joined(separator: ",") + "\n"
        var rows: [[Double]] = []
        for i in 0..<listing.count {
            let counts = ConfusionCounts(flat: sums[(i * width + 1)..<((i + 1) * width)], classes: classes)
            var row = [counts.accuracy]
            if classes == 1 {
                row += [counts.precision(0), counts.recall(0), counts.dice(0), counts.iou(0)]
            } else {
                for c in 0..<classes { row += [counts.precision(c), counts.recall(c), counts.dice(c), counts.iou(c)] }
                row += [counts.meanDice, counts.meanIoU]
            }
            rows.append(row)
            csv += csvField(listing.pairs[i].image) + "," + csvField(listing.pairs[i].mask) + ","
                + row.map { String(format: "%.6f", $0) }.joined(separator: ",") + "\n"
        }
        let means = (0..<rows[0].count).map { j in rows.map { $0[j] }.reduce(0, +) / Double(rows.count) }
        csv += "mean,," + means.map { String(format: "%.6f", $0) }.joined(separator: ",") + "\n"
        return (csv, ["accuracy"] + names, means)
    }

    /// A CSV field, quoted when it holds a comma, quote or newline.
    static func csvField(_ text: String) -> String {
        text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : text
    }
}
