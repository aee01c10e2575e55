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
    @Option(help: "Images per forward pass when predicting a folder.")
    var batchSize = 4
    @Option(help: "Worker threads (default: the CPUs available).")
    var threads: Int?

    enum Kind: String, CaseIterable { case mask, prob, overlay, cutout }

    var kinds: [Kind] {
        var list: [Kind] = []
        if mask { list.append(.mask) }
        if probabilities { list.append(.prob) }
        if overlay { list.append(.overlay) }
        if cutout { list.append(.cutout) }
        return list.isEmpty ? [.mask] : list
    }

    func validate() throws {
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1 (got \(batchSize))") }
        if let message = ThreadDefaults.problem(threads: threads) { throw ValidationError(message) }
        if let o = overlap, o < 0 { throw ValidationError("--overlap must be >= 0 (got \(o))") }
        if overlap != nil && !tile { throw ValidationError("--overlap needs --tile") }
        if background != nil && !cutout { throw ValidationError("--background needs --cutout") }
        if let b = background, b.hasPrefix("#"), PredictionImages.colour(b) == nil {
            throw ValidationError("--background \(b): not a colour #RRGGBB")
        }
    }

    func run() throws {
        let pool = WorkerPool(threads: threads ?? ThreadDefaults.threadsPerRank())
        let predictor: Predictor
        do { predictor = try Predictor(path: model, pool: pool) } catch { throw UserError("\(error)") }
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
        if singleFile && (isFolder.boolValue || kinds.count > 1) {
            throw UserError("--output \(output): \(isFolder.boolValue ? "a folder of images" : "\(kinds.count) output kinds") need an output folder")
        }
        if !singleFile, let error = makeDirectories(output) { throw UserError("--output \(output): cannot create folder: \(error)") }
        if singleFile && probabilities && d.classes > 1 {
            throw UserError("--output \(output): \(d.classes) probability files need an output folder")
        }
        // What goes behind a cut-out: transparency, an image, or a colour (checked in validate()).
        var behind = Behind.transparent
        if let b = background {
            if let colour = PredictionImages.colour(b) {
                behind = .colour(colour)
            } else {
                do { behind = .image(try ImageFile.read(b, as: .rgb)) } catch { throw UserError("--background \(error)") }
            }
        }

        var failures = 0, written = 0
        let start = monotonicSeconds()
        var k = 0
        while k < files.count {
            // Read a batch; a file that cannot be read is reported and skipped.
            var batch: [(path: String, stem: String, image: Image8)] = []
            while k < files.count && batch.count < (tile ? 1 : batchSize) {
                let path = files[k], stem = stems[k]
                k += 1
                do {
                    batch.append((path, stem, try ImageFile.read(path, as: predictor.pixelFormat)))
                } catch {
                    fputs("segtrain: error: \(error)\n", stderr)
                    failures += 1
                }
            }
            if batch.isEmpty { continue }
            let predictions = tile
                ? [predictor.predictTiled(batch[0].image, overlap: overlap ?? d.imageSize / 4)]
                : predictor.predict(batch.map(\.image))
            for ((path, stem, image), prediction) in zip(batch, predictions) {
                do {
                    // `written` counts every file in place, also those before a failed one.
                    try write(prediction, image: image, path: path, stem: stem, singleFile: singleFile, behind: behind,
                              written: &written)
                } catch {
                    fputs("segtrain: error: \(error)\n", stderr)
                    failures += 1
                }
            }
        }
        print("predicted \(files.count - failures) of \(files.count) image(s) with \(predictor.source) in "
              + "\(fixed(monotonicSeconds() - start, 2)) s; wrote \(written) file(s) to \(output)")
        if failures > 0 { throw UserError("\(failures) image(s) failed (see above); \(written) file(s) written") }
    }

    /// What goes behind the object in a cut-out.
    enum Behind {
        case transparent
        case image(Image8)
        case colour((UInt8, UInt8, UInt8))
    }

    /// Writes the asked-for outputs of one image (named from `stem`), adding 1 to `written` for
    /// each file in place.
    func write(_ prediction: Prediction, image: Image8, path: String, stem: String, singleFile: Bool, behind: Behind,
               written count: inout Int) throws {
        // Overlays and cut-outs show the image's colours, also for a gray model (as serve does).
        let display = image.channels >= 3 || !(overlay || cutout) ? image : ((try? ImageFile.read(path, as: .rgb)) ?? image)
        func target(_ suffix: String) -> String { singleFile ? output : output + "/" + stem + suffix + ".png" }
        let labels = prediction.labels
        let classes = prediction.classes
        let plane = image.width * image.height
        for kind in kinds {
            switch kind {
            case .mask:
                try ImageFile.write(PredictionImages.mask(labels, classes: classes), to: target("_mask"))
                count += 1
            case .prob:
                let planes = classes == 1 ? 1 : classes
                for c in 0..<planes {
                    var p = Image8(width: image.width, height: image.height, channels: 1)
                    for i in 0..<plane {
                        p.pixels[i] = UInt8(max(0, min(255, (prediction.probabilities[c * plane + i] * 255).rounded())))
                    }
                    try ImageFile.write(p, to: target(planes == 1 ? "_prob" : "_prob_c\(c)"))
                    count += 1
                }
            case .overlay:
                let rgb = display.channels >= 3 ? display : PredictionImages.rgb(display)
                var o = Image8(width: image.width, height: image.height, channels: 3)
                for i in 0..<plane {
                    let label = Int(labels.pixels[i])
                    let tint: (UInt8, UInt8, UInt8)? = label == 0 ? nil : (classes == 1 ? (255, 40, 40) : SampleGrid.colour(label, classes: classes))
                    for ch in 0..<3 {
                        let v = Int(rgb.pixels[i * rgb.channels + ch])
                        guard let tint else { o.pixels[i * 3 + ch] = UInt8(v); continue }
                        let t = Int([tint.0, tint.1, tint.2][ch])
                        o.pixels[i * 3 + ch] = UInt8((v + t) / 2)
                    }
                }
                try ImageFile.write(o, to: target("_overlay"))
                count += 1
            case .cutout:
                switch behind {
                case .transparent:
                    try ImageFile.write(PredictionImages.cutout(display, labels: labels), to: target("_cutout"))
                case .image(let picture):
                    let sized = picture.width == image.width && picture.height == image.height
                        ? picture : Preprocess.resizeImage(picture, width: image.width, height: image.height)
                    try ImageFile.write(PredictionImages.composite(display, labels: labels, behind: sized), to: target("_cutout"))
                case .colour(let colour):
                    let solid = PredictionImages.solid(colour, width: image.width, height: image.height)
                    try ImageFile.write(PredictionImages.composite(display, labels: labels, behind: solid), to: target("_cutout"))
                }
                count += 1
            }
        }
    }
}
