import ArgumentParser
import SegExport

/// `segtrain export`: a trained model as a file other runtimes run (ONNX).
struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a trained model as an ONNX file (opset 17) for onnxruntime and other runtimes.",
        discussion: """
            Input "image": float32 (batch, C, height, width), the normalised image as segtrain's \
            network sees it (pixel / 255, then (x - mean) / std per channel when the model was trained \
            with --mean/--std; the values are in the file's metadata_props). Batch, height and width \
            are dynamic (the plain UNet takes any side >= 2^depth, encoder UNets multiples of 32). \
            Output "logits" (batch, K, height, width), or "probabilities" with --activation sigmoid \
            (one class) or softmax (two or more). The file is written atomically.
            """)

    @Option(help: "A run folder (its checkpoints/best, else last) or a checkpoint folder.")
    var model: String
    @Option(help: "The file format: onnx.")
    var format = "onnx"
    @Option(help: "The file to write (e.g. model.onnx).")
    var out: String
    @Option(help: "The output: none (logits), sigmoid (one-class models) or softmax (two or more classes).")
    var activation = "none"

    func validate() throws {
        if format != "onnx" { throw ValidationError("--format \(format): unknown format (this segtrain writes: onnx)") }
        if ExportActivation(rawValue: activation) == nil {
            throw ValidationError("--activation \(activation): unknown (none, sigmoid or softmax)")
        }
        if out.isEmpty { throw ValidationError("--out: empty path") }
    }

    func run() throws {
        do {
            print(try ONNXExport.export(modelPath: model, to: out, activation: ExportActivation(rawValue: activation)!))
        } catch let error as ExportError { throw UserError(error.description) }
    }
}
