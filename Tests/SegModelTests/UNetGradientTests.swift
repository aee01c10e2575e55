import XCTest
import SegEngine
@testable import SegModel

/// The whole UNet against finite differences: every parameter of a small model, both upsampling
/// modes, batch norm on and off, even and odd image sizes.
///
/// Tolerance: the forward runs in float32, so the objective carries rounding noise of about
/// 1e-7 * |f| * sqrt(accumulations); divided by the step (1e-3) that is ~1e-2 of a gradient here
/// (measured: max scaled errors 0.6-1.2e-2 across the configurations below). The per-op tests hold
/// 2e-3 or tighter; this test proves the wiring (skips, concat order, padding, BN, heads), where a
/// mistake moves whole tensors by O(1) — shown by breaking the wiring on purpose, see the commit.
final class UNetGradientTests: XCTestCase {
    private func checkWholeModel(batchNorm: Bool, upsampling: Upsampling, classes: Int,
                                 height: Int, width: Int, headKernel: Int = 3, threads: Int = 2,
                                 minimumCheckedFraction: Double = 0.9,
                                 file: StaticString = #filePath, line: UInt = #line) {
        var config = UNetConfig()
        config.inChannels = 2
        config.classes = classes
        config.baseChannels = 3
        config.depth = 2
        config.batchNorm = batchNorm
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
        let report = GradientChecker(step: 1e-3, tolerance: 2e-2).check(
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
        print("UNet gradient check (bn \(batchNorm), \(upsampling), \(classes) classes, \(height)x\(width)): \(report)")
    }

    func testBilinearNoBatchNorm() { checkWholeModel(batchNorm: false, upsampling: .bilinear, classes: 1, height: 8, width: 8) }
    func testTransposeNoBatchNorm() { checkWholeModel(batchNorm: false, upsampling: .transpose, classes: 2, height: 8, width: 8) }
    func testBilinearBatchNorm() { checkWholeModel(batchNorm: true, upsampling: .bilinear, classes: 2, height: 8, width: 8) }
    func testTransposeBatchNorm() { checkWholeModel(batchNorm: true, upsampling: .transpose, classes: 1, height: 8, width: 8) }
    /// Odd sizes: pooling floors, the decoder pads to the skip's size.
    func testOddSizesPadToSkip() {
        checkWholeModel(batchNorm: false, upsampling: .bilinear, classes: 1, height: 9, width: 11, headKernel: 1)
        // BN after every conv moves every pre-activation when any weight moves: with odd sizes,
        // transposed upsampling and BN a ReLU or max-pool switches every ~1e-4 along a weight (found
        // by scanning the objective), so about half the points are skipped as kinks.
        checkWholeModel(batchNorm: true, upsampling: .transpose, classes: 3, height: 11, width: 9, threads: 3,
                        minimumCheckedFraction: 0.4)
    }
}
