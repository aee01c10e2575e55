import ArgumentParser
import SegEngine
import SegModel

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info", abstract: "Print the model's layer table and totals (like Keras' model.summary()).")

    @OptionGroup var model: ModelOptions

    func run() throws {
        let pool = WorkerPool(threads: 1)
        let net = model.architecture.build(pool: pool)
        net.plan(batch: 1, height: model.imageSize, width: model.imageSize)
        let width = max(18, (net.layers.map(\.name.count).max() ?? 0) + 2)
        print(pad("layer", width) + pad("kind", 18) + pad("output (C, H, W)", 20) + lpad("params", 12) + lpad("GFLOP fwd", 12))
        print(String(repeating: "-", count: width + 62))
        for row in net.layers {
            let s = row.outputShape
            print(pad(row.name, width) + pad(row.kind, 18) + pad("(\(s.c), \(s.h), \(s.w))", 20)
                  + lpad(grouped(row.parameters), 12) + lpad(fixed(row.forwardFLOPs / 1e9, 3), 12))
        }
        print(String(repeating: "-", count: width + 62))
        let forward = net.layers.reduce(0) { $0 + $1.forwardFLOPs }
        let training = net.layers.reduce(0) { $0 + $1.trainingFLOPs }
        print("parameters:            \(grouped(net.parameterCount))")
        if let encoder = net.store.parameterRange(prefix: "encoder.") {
            print("  of which encoder:    \(grouped(encoder.count))   (train --freeze-encoder trains the other "
                  + "\(grouped(net.parameterCount - encoder.count)))")
        }
        print("forward GFLOP/image:   \(fixed(forward / 1e9, 2))   (\(model.imageSize)x\(model.imageSize), convolutions)")
        print("training GFLOP/image:  \(fixed(training / 1e9, 2))   (forward + weight and input gradients)")
        print("parameter memory:      \(fixed(Double(net.parameterCount * 4) / 1_048_576, 1)) MiB (+ the same for gradients)")
        print("BLAS kernels:          \(BLASKernels.description)")
        print("GEMM:                  \(Gemm.description)")
    }
}
