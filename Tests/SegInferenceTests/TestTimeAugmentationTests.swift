// predict/evaluate/serve's --tta flip: the Predictor's probabilities are the mean of its
// predictions on the image and on its two mirror images, each mirrored back.

import Foundation
import SegData
import SegEngine
import SegInference
import SegModel
import XCTest

final class TestTimeAugmentationTests: XCTestCase {
    /// A checkpoint folder of a tiny 3-class UNet with random weights (training size 16).
    private func checkpoint() throws -> String {
        var config = UNetConfig()
        config.baseChannels = 4
        config.depth = 2
        config.classes = 3
        config.seed = 9
        let unet = UNet(config, pool: WorkerPool(threads: 1))
        var state = CheckpointState(epoch: 1, step: 1, seed: 9, ranks: 1, bestValidationLoss: nil, bestEpoch: nil, arguments: [])
        state.model = ModelDescription(.unet(config), imageSize: 16)
        let folder = NSTemporaryDirectory() + "segtrain-tta-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: folder) }
        try Checkpoint.write(to: folder, store: unet.store,
                             optimizer: Optimizer(OptimizerConfig(kind: .sgd), parameterCount: unet.parameterCount), state: state)
        return folder
    }

    private func mirrored(_ image: Image8, horizontal: Bool) -> Image8 {
        var out = image
        for y in 0..<image.height {
            for x in 0..<image.width {
                let (sx, sy) = horizontal ? (image.width - 1 - x, y) : (x, image.height - 1 - y)
                for c in 0..<image.channels {
                    out.pixels[(y * image.width + x) * image.channels + c] = image.pixels[(sy * image.width + sx) * image.channels + c]
                }
            }
        }
        return out
    }

    /// Probabilities (C, H, W) mirrored back.
    private func mirrored(_ p: Prediction, horizontal: Bool) -> [Float] {
        var out = p.probabilities
        let w = p.width, h = p.height
        for k in 0..<max(p.classes, 1) {
            for y in 0..<h {
                for x in 0..<w {
                    let (sx, sy) = horizontal ? (w - 1 - x, y) : (x, h - 1 - y)
                    out[(k * h + y) * w + x] = p.probabilities[(k * h + sy) * w + sx]
                }
            }
        }
        return out
    }

    func testFlipIsTheMeanOfThePredictionsOfTheMirrorImages() throws {
        let folder = try checkpoint()
        let predictor = try Predictor(path: folder, pool: WorkerPool(threads: 2))
        // At the training size (no resize) and at another size (resized to it and back).
        for (width, height) in [(16, 16), (23, 17)] {
            var image = Image8(width: width, height: height, channels: 3)
            var rng = SplitMix64(seed: 5, stream: UInt64(width))
            for i in image.pixels.indices { image.pixels[i] = UInt8(rng.nextUnitFloat() * 255) }
            predictor.tta = .none
            let plain = predictor.predict([image])[0].probabilities
            let left = mirrored(predictor.predict([mirrored(image, horizontal: true)])[0], horizontal: true)
            let top = mirrored(predictor.predict([mirrored(image, horizontal: false)])[0], horizontal: false)
            predictor.tta = .flip
            let averaged = predictor.predict([image])[0].probabilities
            // The mean of three probabilities in [0, 1] (float rounding of a sum of 3 and a division).
            var worst: Float = 0
            for i in averaged.indices { worst = max(worst, abs(averaged[i] - (plain[i] + left[i] + top[i]) / 3)) }
            XCTAssertLessThanOrEqual(worst, 4 * Float.ulpOfOne, "\(width)x\(height)")
            // The mirror images do change this random model's output: the test can tell.
            XCTAssertGreaterThan(zip(plain, averaged).map { abs($0 - $1) }.max()!, 1e-4)
        }
    }
}
