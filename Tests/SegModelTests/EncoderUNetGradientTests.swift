import XCTest
import Foundation
import SegEngine
import SegEngineTestSupport
@testable import SegModel

/// The encoder UNets against finite differences, in training mode (BatchNorm on the batch's
/// statistics) and evaluation mode (running statistics, batchNormEvalBackward). The wiring is what
/// is checked (every op is checked alone in SegEngineTests), so the models are narrowed: every
/// encoder width divided by 16 (resnet18: 4-8-16-32 channels, the stem and the downsample branches
/// as in the full model) and decoder channels 16-8-8-4-4; 32 x 32 images, batch 2. A few elements
/// of every parameter tensor are checked (the first, and three spread over the tensor).
///
/// Tolerance as UNetGradientTests (the float32 rounding model): the objective f = sum_i r_i y_i
/// carries rounding noise of about u sqrt(A) sum_i |r_i| max(|y_i|, 1), A the convolutions' fan-ins
/// added up, and a central difference over 2h divides it by h. The objective reads one logit in 64, so
/// that this noise stays well below the gradients (every logit still depends on every weight).
///
/// Why 64 x 64 in training mode: at 32 x 32 the deepest BatchNorms see 1 x 1 maps, two values per
/// channel in a batch of 2, and BatchNorm of two values is nearly a sign function (xhat = +-d /
/// sqrt(d^2 + eps) for their half-difference d): its curvature in a weight grows like 1 / |d|, so
/// when rounding leaves two values within ~1e-2, a central difference over +-1e-3 is no longer the
/// derivative. Which channels come that close depends on the BLAS kernels' rounding: resnet50 failed
/// so on an Intel Xeon (analytic -8.4, central difference -134), not on AMD Zen 4. At 64 x 64 the
/// deepest maps are 2 x 2: eight values per channel.
///
/// DeepLabV3+ (issue #17) likewise: encoder widths / 16, 8 decoder channels, a 1/4 projection to 4,
/// ASPP dropout 0.5 with a fixed draw (the mask is fixed, so the function is smooth), at 64 x 64
/// (output stride 16: 4 x 4 deepest maps, atrous rates 1, 2, 3 so that every branch reads more than
/// its centre tap; stride 8: 8 x 8, the default 12, 24, 36). Training runs a batch of 8: the
/// BatchNorm after ASPP's image pooling normalises one value per image and channel, at a batch of 2
/// the sign function above at any image size; at 4 so many ReLU(6)s switch within the step that 13 %
/// of mobilenet_v2's elements were left to check (37 % at 8).
final class EncoderUNetGradientTests: XCTestCase {
    private func checkWholeModel(_ encoder: EncoderKind, training: Bool, file: StaticString = #filePath, line: UInt = #line) {
        var config = EncoderUNetConfig(encoder: encoder, classes: 2)
        config.widthDivisor = 16
        config.decoderChannels = [16, 8, 8, 4, 4]
        config.seed = 7
        checkWholeModel(GraphModel(config, pool: WorkerPool(threads: 2)), "encoder UNet \(encoder.rawValue) / 16",
                        training: training, batch: 2, size: training ? 64 : 32, file: file, line: line)
    }

    private func checkDeepLab(_ encoder: EncoderKind, outputStride: Int, training: Bool,
                              file: StaticString = #filePath, line: UInt = #line) {
        var config = DeepLabV3PlusConfig(encoder: encoder, classes: 2)
        config.widthDivisor = 16
        config.decoderChannels = 8
        config.highResChannels = 4
        config.outputStride = outputStride
        if outputStride == 16 { config.atrousRates = [1, 2, 3] }
        config.seed = 7
        let model = GraphModel(config, pool: WorkerPool(threads: 2))
        model.dropoutDraw = DropoutDraw(seed: 5, step: 9, firstPosition: 0, positionStride: 1)
        checkWholeModel(model, "DeepLabV3+ \(encoder.rawValue) / 16, output stride \(outputStride)",
                        training: training, batch: training ? 8 : 2, size: 64, file: file, line: line)
    }

    private func checkWholeModel(_ model: GraphModel, _ name: String, training: Bool, batch: Int, size: Int,
                                 file: StaticString, line: UInt) {
        model.plan(batch: batch, height: size, width: size)
        // Running statistics other than 0 and 1, so evaluation mode is not the identity.
        for (index, entry) in model.store.entries.enumerated() where entry.name.hasSuffix("running_mean") || entry.name.hasSuffix("running_var") {
            let t = model.store.value(index), v = SMPGolden.rule(entry.name, count: t.count)
            for i in 0..<t.count { t[i] = entry.name.hasSuffix("running_var") ? 0.75 + 0.25 * v[i] : 0.1 * v[i] }
        }
        let images = OwnedTensor(Shape(batch, 3, size, size))
        SMPGolden.fill(images.tensor, rule: "input")
        // The objective reads one logit in 64: its rounding noise, which the central
        // difference divides by the step, grows with the logits it sums (see the tolerance).
        let projection = Projection(shape: model.logits.shape, seed: 3)
        for i in 0..<projection.weights.tensor.count where i % 64 != 0 { projection.weights.tensor[i] = 0 }

        var inputs: [Tensor] = [], gradients: [Tensor] = []
        var accumulations = 0
        for (index, entry) in model.store.entries.enumerated() where entry.kind == .parameter {
            let value = model.store.value(index), gradient = model.store.gradient(index)
            let picks = Set([0, value.count / 4, value.count / 2, value.count - 1])
            for i in picks.sorted() {
                inputs.append(Tensor(value.data + i, .vector(1)))
                gradients.append(Tensor(gradient.data + i, .vector(1)))
            }
            if entry.shape.c > 1 || entry.shape.h > 1 { accumulations += entry.shape.c * entry.shape.h * entry.shape.w }
        }
        let step: Float = 1e-3
        let logits = model.forward(images.tensor, training: training)
        var size1 = 0.0
        for i in 0..<logits.count { size1 += abs(Double(projection.weights.tensor[i])) * max(abs(Double(logits[i])), 1) }
        let tolerance = RoundingModel.unit * Double(accumulations).squareRoot() * size1 / Double(step)

        let report = GradientChecker(step: step, tolerance: tolerance).check(
            inputs: inputs, gradients: gradients,
            objective: { projection.value(model.forward(images.tensor, training: training)) },
            backward: {
                model.store.zeroGradients()
                model.forward(images.tensor, training: training)
                model.zeroActivationGradients()
                projection.seed(model.logitsGradient)
                model.backward()
            })
        XCTAssertTrue(report.passed, "\(report)", file: file, line: line)
        // Training-mode BatchNorm moves every pre-activation of a layer when one weight moves, so a
        // ReLU or max-pool switches within +-step for many elements (skipped as kinks): 30-44 % of
        // them are checked (64 x 64, under the Sandybridge, Haswell, SkylakeX and Cooperlake
        // kernels); in evaluation mode 83-91 %.
        XCTAssertGreaterThan(Double(report.checked), (training ? 0.2 : 0.7) * Double(inputs.count), "\(report)",
                             file: file, line: line)
        print("gradient check (\(name), training \(training)): \(inputs.count) elements of "
              + "\(model.parameterCount), tolerance \(tolerance), \(report)")
    }

    func testResNet18Training() { checkWholeModel(.resnet18, training: true) }
    func testResNet18Evaluation() { checkWholeModel(.resnet18, training: false) }
    func testResNet50Training() { checkWholeModel(.resnet50, training: true) }
    func testMobileNetV2Training() { checkWholeModel(.mobilenetV2, training: true) }
    func testMobileNetV2Evaluation() { checkWholeModel(.mobilenetV2, training: false) }
    func testDeepLabV3PlusResNet50Training() { checkDeepLab(.resnet50, outputStride: 16, training: true) }
    func testDeepLabV3PlusResNet18OutputStride8Training() { checkDeepLab(.resnet18, outputStride: 8, training: true) }
    func testDeepLabV3PlusMobileNetV2Training() { checkDeepLab(.mobilenetV2, outputStride: 16, training: true) }
    func testDeepLabV3PlusMobileNetV2OutputStride8Evaluation() { checkDeepLab(.mobilenetV2, outputStride: 8, training: false) }
}
