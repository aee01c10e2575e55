import ArgumentParser
import Foundation
import SegData
import SegEngine

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
    @Option(help: "Which set: standard (with distractors in the objects' colours) or plain (the objects on a textured background alone).")
    var set = SyntheticSet.standard
    @Option(help: "Image file format: png or jpg (JPEG quality 95; masks are always PNG).")
    var format = "png"

    func validate() throws {
        if count < 1 { throw ValidationError("--count must be at least 1 (got \(count))") }
        if size < 8 || size > 4096 { throw ValidationError("--size must be 8...4096 (got \(size))") }
        if classes < 1 || classes > 255 { throw ValidationError("--classes must be 1...255 (got \(classes))") }
        if format != "png" && format != "jpg" { throw ValidationError("--format must be png or jpg (got \(format))") }
        if let problem = unwritableFolderProblem(out) { throw ValidationError("--out \(out): \(problem)") }
    }

    func run() throws {
        let start = monotonicSeconds()
        let generator = SyntheticGenerator(size: size, classes: classes, seed: seed, set: set)
        do { try generator.writeDataset(to: out, count: count, jpeg: format == "jpg") } catch let error as DatasetError {
            throw UserError("--out \(error)")
        } catch { throw UserError("\(error)") }
        print("wrote \(count) samples (\(size)x\(size), \(classes) class\(classes == 1 ? "" : "es"), seed \(seed)) to \(out) "
              + "in \(fixed(monotonicSeconds() - start, 2)) s")
    }
}
