import ArgumentParser
import Foundation
import SegData

/// `segtrain synth`: writes a synthetic dataset as PNG files (docs/DATA.md).
struct SynthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "synth",
        abstract: "Write a synthetic segmentation dataset: DIR/images/NNNNN.png (RGB) and DIR/masks/NNNNN.png (gray).",
        discussion: "Masks hold class indices (0 = background); binary masks (--classes 1) are written as 0/255 "
            + "so they are viewable, and read back as {0, 1}.")

    @Option(help: "Output folder (created if missing).")
    var out: String
    @Option(help: "Number of samples.")
    var count: Int
    @Option(help: "Image side in pixels (8...4096).")
    var size = 128
    @Option(help: "Classes: 1 = binary, >= 2 = background plus classes - 1 object classes (at most 255).")
    var classes = 1
    @Option(help: "Seed; sample i depends only on (seed, i).")
    var seed: UInt64 = 0
    @Option(help: "Image file format: png or jpg (JPEG quality 95; masks are always PNG).")
    var format = "png"

    func validate() throws {
        if count < 1 { throw ValidationError("--count must be at least 1 (got \(count))") }
        if size < 8 || size > 4096 { throw ValidationError("--size must be 8...4096 (got \(size))") }
        if classes < 1 || classes > 255 { throw ValidationError("--classes must be 1...255 (got \(classes))") }
        if format != "png" && format != "jpg" { throw ValidationError("--format must be png or jpg (got \(format))") }
        if let problem = SynthCommand.unwritable(out) { throw ValidationError("--out \(out): \(problem)") }
    }

    /// Why `path` cannot become a writable folder, or nil: its deepest existing ancestor must be a
    /// writable directory.
    static func unwritable(_ path: String) -> String? {
        if path.isEmpty { return "empty path" }
        var url = URL(fileURLWithPath: path)
        let files = FileManager.default
        while true {
            var isDirectory: ObjCBool = false
            if files.fileExists(atPath: url.path, isDirectory: &isDirectory) {
                if !isDirectory.boolValue { return "\(url.path) is not a directory" }
                return files.isWritableFile(atPath: url.path) ? nil : "\(url.path) is not writable"
            }
            let parent = url.deletingLastPathComponent()
            if parent.path == url.path { return "no existing parent folder" }
            url = parent
        }
    }

    func run() throws {
        let start = Date()
        let images = (out as NSString).appendingPathComponent("images")
        let masks = (out as NSString).appendingPathComponent("masks")
        for folder in [images, masks] {
            do {
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            } catch {
                throw UserError("--out \(out): cannot create \(folder): \(error.localizedDescription)")
            }
        }
        let generator = SyntheticGenerator(size: size, classes: classes, seed: seed)
        for index in 0..<count {
            var (image, mask) = generator.sample(index)
            if classes == 1 { mask.pixels = mask.pixels.map { $0 == 0 ? 0 : 255 } }
            let name = String(format: "%05d", index)
            do {
                let imagePath = (images as NSString).appendingPathComponent(name + "." + format)
                if format == "jpg" {
                    try ImageFile.writeJPEG(image, to: imagePath, quality: 95)
                } else {
                    try ImageFile.write(image, to: imagePath)
                }
                try ImageFile.write(mask, to: (masks as NSString).appendingPathComponent(name + ".png"))
            } catch let error as ImageFileError {
                throw UserError(error.description)
            }
        }
        let seconds = Date().timeIntervalSince(start)
        print("wrote \(count) samples (\(size)x\(size), \(classes) class\(classes == 1 ? "" : "es"), seed \(seed)) to \(out) "
              + "in \(String(format: "%.2f", seconds)) s")
    }
}
