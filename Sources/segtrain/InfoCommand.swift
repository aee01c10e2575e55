import ArgumentParser
import SegEngine
import SegModel

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info", abstract: "Print the UNet's layer table and totals (like Keras' model.summary()).")

    @OptionGroup var model: ModelOptions

    func run() throws {
        let pool = WorkerPool(threads: 1)
        let unet = UNet(model.unetConfig, pool: pool)
        unet.plan(batch: 1, height: model.imageSize, width: model.imageSize)
        print(pad("layer", 18) + pad("kind", 18) + pad("output (C, H, W)", 20) + lpad("params", 12) + lpad("GFLOP fwd", 12))
        print(String(repeating: "-", count: 80))
        for row in unet.layers {
            let s = row.outputShape
            print(pad(row.name, 18) + pad(row.kind, 18) + pad("(\(s.c), \(s.h), \(s.w))", 20)
                  + lpad(grouped(row.parameters), 12) + lpad(fixed(row.forwardFLOPs / 1e9, 3), 12))
        }
        print(String(repeating: "-", count: 80))
        let forward = unet.layers.reduce(0) { $0 + $1.forwardFLOPs }
        let training = unet.layers.reduce(0) { $0 + $1.trainingFLOPs }
        print("parameters:            \(grouped(unet.parameterCount))")
        print("forward GFLOP/image:   \(fixed(forward / 1e9, 2))   (\(model.imageSize)x\(model.imageSize), convolutions)")
        print("training GFLOP/image:  \(fixed(training / 1e9, 2))   (forward + weight and input gradients)")
        print("parameter memory:      \(fixed(Double(unet.parameterCount * 4) / 1_048_576, 1)) MiB (+ the same for gradients)")
    }
}

func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count) }
func lpad(_ s: String, _ width: Int) -> String { s.count >= width ? " " + s : String(repeating: " ", count: width - s.count) + s }

/// 3717121 -> "3,717,121"
func grouped(_ n: Int) -> String {
    let digits = String(n.magnitude)
    var out = ""
    for (i, ch) in digits.enumerated() {
        if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
        out.append(ch)
    }
    return (n < 0 ? "-" : "") + out
}

/// Fixed-point formatting without Foundation.
func fixed(_ x: Double, _ digits: Int) -> String {
    if !x.isFinite { return "\(x)" }
    if abs(x) >= 1e15 { return String(format: "%.\(digits)e", x) }  // beyond Int's range once scaled
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let rounded = (abs(x) * scale).rounded()
    let whole = Int(rounded / scale)
    var frac = String(Int(rounded - Double(whole) * scale))
    while frac.count < digits { frac = "0" + frac }
    return (x < 0 && rounded != 0 ? "-" : "") + String(whole) + (digits > 0 ? "." + frac : "")
}
