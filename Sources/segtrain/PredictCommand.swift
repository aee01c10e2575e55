import ArgumentParser
import Foundation
import SegData
import SegEngine
import SegInference
import SegTraining

/// `segtrain predict`: masks, probabilities, overlays and cut-outs for images of any size.
struct PredictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Apply a trained model to an image or a folder of images (PNG/JPEG, any size).",
        discussion: """
            The model's configuration (classes, training size, normalisation) comes from the \
            checkpoint's state.json. Each image is resized to the training size and the prediction \
            resized back, or, with --tile, predicted in overlapping tiles of the training size. \
            Outputs for IMAGE.ext in --output DIR: IMAGE_mask.png (0/255 binary, class indices \
            otherwise), IMAGE_prob.png (8-bit foreground probability; IMAGE_prob_cK.png per class), \
            IMAGE_overlay.png, IMAGE_cutout.png (RGBA, background transparent; RGB on --background). \
            Images that share a stem (a.png and a.jpg) are named with their extension (a_png_mask.png, \
            a_jpg_mask.png) so that no output overwrites another. With one image and one output kind, \
            --output may name the file. A failed write is reported; the count of files written stays \
            true and the exit code is 1.
            """)

    @Option(help: "A run folder (its checkpoints/best, else last) or a checkpoint folder.")
    var model: String
    @Option(help: "An image file or a folder of images.")
    var input: String
    @Option(help: "Output folder (created), or a .png file for one image and one output kind.")
    var output: String
    @Flag(help: "Write the label mask (the default when no output kind is given).")
    var mask = false
    @Flag(help: "Write the probabilities as 8-bit PNG.")
    var probabilities = false
    @Flag(help: "Write the network's raw output (before sigmoid/softmax) at the training size as IMAGE_logits.npy (float32, classes x size x size); not with --tile or --tta flip.")
    var logits = false
    @Flag(help: "Write the image with the mask tinted over it.")
    var overlay = false
    @Flag(help: "Write the image with the background removed (RGBA PNG).")
    var cutout = false
    @Option(help: "With --cutout: put this behind the object instead of transparency: an image file or #RRGGBB.")
    var background: String?
    @Flag(help: "Sliding-window prediction in tiles of the training size (for images much larger than it).")
    var tile = false
    @Option(help: "With --tile: pixels shared by neighbouring tiles (default: a quarter of the training size).")
    var overlap: Int?
    @Option(help: "Test-time augmentation: none, or flip (the mean over the image and its left-right and top-bottom mirror images; 3x the time).")
    var tta = TestTimeAugmentation.none
    @Option(help: "Images per forward pass when predicting a folder.")
    var batchSize = 4
    @Option(help: "Worker threads (default: the CPUs available).")
    var threads: Int?

    var kinds: [PredictionWriter.Kind] {
        let chosen: [(Bool, PredictionWriter.Kind)] = [(mask, .mask), (probabilities, .prob), (overlay, .overlay), (cutout, .cutout),
                                                       (logits, .logits)]
        let list = chosen.filter(\.0).map(\.1)
        return list.isEmpty ? [.mask] : list
    }

    func validate() throws {
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1 (got \(batchSize))") }
        if let message = ThreadDefaults.problem(threads: threads) { throw ValidationError(message) }
        if let o = overlap, o < 0 { throw ValidationError("--overlap must be >= 0 (got \(o))") }
        if overlap != nil && !tile { throw ValidationError("--overlap needs --tile") }
        if logits && tile { throw ValidationError("--logits is for whole images at the training size, not with --tile") }
        if logits && tta != .none { throw ValidationError("--logits gives one forward's output, not with --tta \(tta.rawValue)") }
        if background != nil && !cutout { throw ValidationError("--background needs --cutout") }
        if let b = background, b.hasPrefix("#"), PredictionImages.colour(b) == nil {
            throw ValidationError("--background \(b): not a colour #RRGGBB")
        }
    }

    func run() throws {
        let pool = WorkerPool(threads: threads ?? ThreadDefaults.threadsPerRank())
        let predictor: Predictor
        do { predictor = try Predictor(path: model, pool: pool) } catch { throw UserError("\(error)") }
        predictor.tta = tta
        predictor.keepsLogits = logits
        let d = predictor.description
        if let o = overlap, o >= d.imageSize { throw UserError("--overlap \(o) must be smaller than the training size \(d.imageSize)") }

        // The images: one file, or every image of a folder (sorted).
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: input, isDirectory: &isFolder) else {
            throw UserError("--input \(input): no such file or folder")
        }
        let files: [String]
        if isFolder.boolValue {
            do {
                files = try DatasetScanner.imageFiles(in: input, folder: ".", notes: nil).map { input + "/" + $0 }
            } catch { throw UserError("--input \(error)") }
            if files.isEmpty { throw UserError("--input \(input): no images (.png, .jpg, .jpeg) in the folder") }
        } else {
            files = [input]
        }
        // Output names, distinct before anything is written.
        let stems: [String]
        do { stems = try OutputNames.stems(for: files) } catch { throw UserError("--input \(error)") }
        let singleFile = output.lowercased().hasSuffix(".png")
        if singleFile && logits { throw UserError("--output \(output): --logits needs an output folder") }
        if singleFile && (isFolder.boolValue || kinds.count > 1) {
            throw UserError("--output \(output): \(isFolder.boolValue ? "a folder of images" : "\(kinds.count) output kinds") need an output folder")
        }
        if !singleFile, let error = makeDirectories(output) { throw UserError("--output \(output): cannot create folder: \(error)") }
        if singleFile && probabilities && d.classes > 1 {
            throw UserError("--output \(output): \(d.classes) probability files need an output folder")
        }
        var writer = PredictionWriter(kinds: kinds, output: output, singleFile: singleFile)
        // What goes behind a cut-out: transparency, an image, or a colour (checked in validate()).
        if let b = background {
            if let colour = PredictionImages.colour(b) {
                writer.backdrop = .colour(colour)
            } else {
                do { writer.backdrop = .image(try ImageFile.read(b, as: .rgb)) } catch { throw UserError("--background \(error)") }
            }
        }
        let start = monotonicSeconds()
        let (written, failures) = writer.predictAll(files, stems: stems, predictor: predictor, batchSize: batchSize,
                                                    tileOverlap: tile ? overlap ?? d.imageSize / 4 : nil,
                                                    report: { fputs("segtrain: error: \($0)\n", stderr) })
        print("predicted \(files.count - failures) of \(files.count) image(s) with \(predictor.source) in "
              + "\(fixed(monotonicSeconds() - start, 2)) s; wrote \(written) file(s) to \(output)")
        if failures > 0 { throw UserError("\(failures) image(s) failed (see above); \(written) file(s) written") }
    }
}
