import XCTest
import Foundation
import SegEngine
import SegEngineTestSupport
@testable import SegModel

/// The whole UNet against finite differences: every parameter of a small model, both upsampling
/// modes, no norm, batch norm and group norm, even and odd image sizes.
///
/// Tolerance, from the float32 rounding model (SegEngineTestSupport/RoundingModel.swift): the forward
/// runs in float32, so the objective f = sum_i r_i y_i carries rounding noise of about
/// u sqrt(A) sum_i |r_i| max(|y_i|, 1), with u = 2^-24 and A the accumulations along the model's
/// path (the fan-ins of its convolutions added up: each adds its rounding to what reaches the
/// logits). A central difference over 2h takes the difference of two such evaluations, so its error
/// is about noise / h; `noiseTolerance` computes it for each configuration (0.05-0.25 here; the
/// largest scaled error measured under each OpenBLAS core type, 0.015, is in docs/ENGINE.md). The per-op tests hold
/// 2e-3 or tighter; this test proves the wiring (skips, concat order, padding, BN, heads), where a
/// mistake moves whole tensors by O(1) — shown by breaking the wiring on purpose, see the commit.
final class UNetGradientTests: XCTestCase {
    private func checkWholeModel(norm: NormLayer, upsampling: Upsampling, classes: Int,
                                 height: Int, width: Int, headKernel: Int = 3, threads: Int = 2,
                                 minimumCheckedFraction: Double = 0.9,
                                 file: StaticString = #filePath, line: UInt = #line) {
        var config = UNetConfig()
        config.inChannels = 2
        config.classes = classes
        config.baseChannels = 3
        config.depth = 2
        config.norm = norm
        config.upsampling = upsampling
        config.headKernel = headKernel
        config.seed = 11
        let unet = UNet(config, pool: WorkerPool(threads: threads))
        let batch = 2
        unet.plan(batch: batch, height: height, width: width)
        let images = OwnedTensor(Shape(batch, 2, height, width))
        var rng = SplitMix64(seed: 5)
        for i in 0..<images.tensor.count { images.tensor[i] = rng.nextFloat(in: -1...1) }
        let projection = Projection(shape: unet.logits.shape, seed: 3)

        let values = unet.store.values.tensor
        let gradients = unet.store.gradients.tensor
        let step: Float = 1e-3
        let tolerance = noiseTolerance(unet, images: images.tensor, projection: projection, step: step)
        let report = GradientChecker(step: step, tolerance: tolerance).check(
            inputs: [values], gradients: [gradients],
            objective: { projection.value(unet.forward(images.tensor, training: true)) },
            backward: {
                unet.forward(images.tensor, training: true)
                unet.zeroActivationGradients()
                projection.seed(unet.logitsGradient)
                unet.backward()
            })
        XCTAssertTrue(report.passed, "\(report)", file: file, line: line)
        // Kinks (a ReLU or max-pool switching inside +-step) are skipped; most parameters are checked.
        XCTAssertGreaterThan(Double(report.checked), minimumCheckedFraction * Double(values.count), "\(report)",
                             file: file, line: line)
        print("UNet gradient check (norm \(norm), \(upsampling), \(classes) classes, \(height)x\(width)):"
              + " tolerance \(tolerance), \(report)")
        if ProcessInfo.processInfo.environment["SEGTRAIN_ROUNDING_REPORT"] != nil {
            print("rounding: UNet finite differences (norm \(norm), \(upsampling), \(classes) classes, \(height)x\(width)):"
                  + " worst error/bound \(report.maxError / tolerance), max scaled error \(report.maxError), tolerance \(tolerance)")
        }
    }

    /// noise / h with noise = u sqrt(A) sum_i |r_i| max(|y_i|, 1) (the header's model): A is the sum
    /// of the fan-ins of every convolution (Cin k^2; Cin for the 2x2 transposed ones), y the logits at
    /// the starting point and r the projection's weights. A logit's magnitude is floored at 1: the
    /// activations that round on the way are O(1) (inputs in [-1, 1], He initialisation, BN), and a
    /// logit that cancels to near 0 still carries their rounding.
    private func noiseTolerance(_ unet: UNet, images: Tensor, projection: Projection, step: Float) -> Double {
        var accumulations = 0
        for entry in unet.store.entries where entry.kind == .parameter && (entry.shape.c > 1 || entry.shape.h > 1) {
            // Convolution weights (Cout, Cin, k, k) and transposed ones (Cin, Cout, 2, 2); not biases or BN vectors.
            let s = entry.shape
            accumulations += s.h == 2 && s.w == 2 ? s.n : s.c * s.h * s.w
        }
        let logits = unet.forward(images, training: true)
        var size = 0.0
        for i in 0..<logits.count { size += abs(Double(projection.weights.tensor[i])) * max(abs(Double(logits[i])), 1) }
        return RoundingModel.unit * Double(accumulations).squareRoot() * size / Double(step)
    }

    func testBilinearNoBatchNorm() { checkWholeModel(norm: .none, upsampling: .bilinear, classes: 1, height: 8, width: 8) }
    func testTransposeNoBatchNorm() { checkWholeModel(norm: .none, upsampling: .transpose, classes: 2, height: 8, width: 8) }
    func testBilinearBatchNorm() { checkWholeModel(norm: .batch, upsampling: .bilinear, classes: 2, height: 8, width: 8) }
    func testTransposeBatchNorm() { checkWholeModel(norm: .batch, upsampling: .transpose, classes: 1, height: 8, width: 8) }
    /// GroupNorm (issue #18). At these widths (3 and 6 channels) the rule gives one channel per group;
    /// GroupNormTests covers wider groups, this the wiring (the saved statistics per sample and group,
    /// the tape order, the conv without bias). As with BN, a weight moves every pre-activation of its
    /// channel (each is normalised over its whole map), so ReLU and max-pool switches within the step
    /// are frequent: 69-82 % of the parameters were checked on the first run, hence 0.6.
    func testBilinearGroupNorm() {
        checkWholeModel(norm: .group, upsampling: .bilinear, classes: 2, height: 8, width: 8, minimumCheckedFraction: 0.6)
    }
    func testTransposeGroupNorm() {
        checkWholeModel(norm: .group, upsampling: .transpose, classes: 1, height: 8, width: 8, minimumCheckedFraction: 0.6)
    }
    /// Odd sizes: pooling floors, the decoder pads to the skip's size.
    func testOddSizesPadToSkip() {
        checkWholeModel(norm: .none, upsampling: .bilinear, classes: 1, height: 9, width: 11, headKernel: 1)
        // BN after every conv moves every pre-activation when any weight moves: with odd sizes,
        // transposed upsampling and BN a ReLU or max-pool switches every ~1e-4 along a weight (found
        // by scanning the objective), so about half the points are skipped as kinks.
        checkWholeModel(norm: .batch, upsampling: .transpose, classes: 3, height: 11, width: 9, threads: 3,
                        minimumCheckedFraction: 0.4)
        checkWholeModel(norm: .group, upsampling: .bilinear, classes: 3, height: 9, width: 11, threads: 3,
                        minimumCheckedFraction: 0.4)
    }
}
