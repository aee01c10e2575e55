import XCTest
import SegEngine
@testable import SegModel

/// The whole UNet against finite differences: every parameter of a small model, both upsampling
/// modes, batch norm on and off, even and odd image sizes.
final class UNetGradientTests: XCTestCase {
    private func checkWholeModel(batchNorm: Bool, upsampling: Upsampling, classes: Int,
                                 height: Int, width: Int, headKernel: Int = 3, threads: Int = 2,
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
        let report = GradientChecker(step: 1e-2, tolerance: 5e-3).check(
            inputs: [values], gradients: [gradients],
            objective: { projection.value(unet.forward(images.tensor, training: true)) },
            backward: {
                unet.forward(images.tensor, training: true)
                unet.zeroActivationGradients()
                projection.seed(unet.logitsGradient)
                unet.backward()
            })
        XCTAssertTrue(report.passed, "\(report)", file: file, line: line)
        // Kinks are rare: nearly every parameter is checked.
        XCTAssertGreaterThan(report.checked, values.count * 9 / 10, "\(report)", file: file, line: line)
    }

    func testBilinearNoBatchNorm() { checkWholeModel(batchNorm: false, upsampling: .bilinear, classes: 1, height: 8, width: 8) }
    func testTransposeNoBatchNorm() { checkWholeModel(batchNorm: false, upsampling: .transpose, classes: 2, height: 8, width: 8) }
    func testBilinearBatchNorm() { checkWholeModel(batchNorm: true, upsampling: .bilinear, classes: 2, height: 8, width: 8) }
    func testTransposeBatchNorm() { checkWholeModel(batchNorm: true, upsampling: .transpose, classes: 1, height: 8, width: 8) }
    /// Odd sizes: pooling floors, the decoder pads to the skip's size.
    func testOddSizesPadToSkip() {
        checkWholeModel(batchNorm: false, upsampling: .bilinear, classes: 1, height: 9, width: 11, headKernel: 1)
        checkWholeModel(batchNorm: true, upsampling: .transpose, classes: 3, height: 11, width: 9, threads: 3)
    }
}
