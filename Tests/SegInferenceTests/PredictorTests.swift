// SegInference's Predictor in process: a tiny UNet with batch norm (running statistics moved away
// from their start), written as a checkpoint with a normalisation, is loaded by Predictor; its
// probabilities for an image at the training size equal the model's own eval-mode forward on the
// same normalised input followed by an exact sigmoid or softmax, within the rounding of the float32
// sigmoid/softmax; its labels are their argmax (or >= 0.5); one tile gives the same as no tiling.

import XCTest
import Foundation
import SegData
import SegEngine
import SegEngineTestSupport
import SegInference
import SegModel

final class PredictorTests: XCTestCase {
    var folder = ""
    static let size = 16

    override func setUpWithError() throws {
        folder = NSTemporaryDirectory() + "segtrain-predictor-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: folder) }

    /// A checkpoint of a depth-2 UNet with `classes` outputs, batch norm whose running statistics
    /// went through three training-mode forwards, and a per-channel normalisation.
    func writeCheckpoint(classes: Int) throws -> (path: String, description: ModelDescription) {
        var config = UNetConfig()
        config.baseChannels = 4
        config.depth = 2
        config.classes = classes
        config.norm = .batch
        config.seed = 11
        let description = ModelDescription(.unet(config), imageSize: PredictorTests.size, mean: [0.4, 0.5, 0.6],
                                           std: [0.2, 0.25, 0.3])
        let unet = UNet(config, pool: WorkerPool(threads: 1))
        let s = PredictorTests.size
        unet.plan(batch: 2, height: s, width: s)
        let images = OwnedTensor(Shape(2, 3, s, s))
        var rng = SplitMix64(seed: 5)
        for _ in 0..<3 {
            for i in 0..<images.tensor.count { images.tensor[i] = rng.nextFloat(in: -2...2) }
            unet.forward(images.tensor, training: true)
        }
        var state = CheckpointState(epoch: 1, step: 1, seed: 11, ranks: 1, bestValidationLoss: nil, bestEpoch: nil,
                                    arguments: ["train"])
        state.model = description
        let path = folder + "/classes\(classes)"
        try Checkpoint.write(to: path, store: unet.store,
                             optimizer: Optimizer(OptimizerConfig(kind: .adam), parameterCount: unet.parameterCount), state: state)
        return (path, description)
    }

    /// An RGB image of random pixels.
    func randomImage(seed: UInt64) -> Image8 {
        var image = Image8(width: PredictorTests.size, height: PredictorTests.size, channels: 3)
        var rng = SplitMix64(seed: seed)
        for i in image.pixels.indices { image.pixels[i] = UInt8(truncatingIfNeeded: rng.next()) }
        return image
    }

    /// The logits of the checkpoint's model (built and loaded here, not by Predictor) for `image`
    /// normalised as in training, eval mode, plane-major.
    func referenceLogits(_ path: String, _ description: ModelDescription, _ image: Image8) throws -> [Float] {
        let model = description.architecture.build(pool: WorkerPool(threads: 1))
        try Checkpoint.readWeights(from: path, into: model.store)
        let s = description.imageSize
        model.plan(batch: 1, height: s, width: s)
        let input = OwnedTensor(Shape(1, description.inChannels, s, s))
        Preprocess.normalize(image, into: input.tensor.data, mean: description.mean, std: description.std)
        return model.forward(input.tensor, training: false).toArray()
    }

    func testProbabilitiesAndLabelsAreTheModelsOwnForwardWithSigmoidOrSoftmax() throws {
        for classes in [1, 3] {
            let (path, description) = try writeCheckpoint(classes: classes)
            let predictor = try Predictor(path: path, pool: WorkerPool(threads: 1))
            for seed: UInt64 in [1, 2] {
                let image = randomImage(seed: seed)
                let prediction = predictor.predict([image])[0]
                let logits = try referenceLogits(path, description, image)
                let plane = PredictorTests.size * PredictorTests.size
                XCTAssertEqual(prediction.probabilities.count, logits.count)
                XCTAssertEqual([prediction.width, prediction.height, prediction.classes],
                               [PredictorTests.size, PredictorTests.size, classes])
                let labels = prediction.labels.pixels
                var worst = 0.0, decided = 0, wrongLabels: [Int] = []
                for p in 0..<plane {
                    let z = (0..<max(classes, 1)).map { Double(logits[$0 * plane + p]) }
                    let (exact, bounds) = PredictorTests.probabilities(z)
                    for c in z.indices {
                        let actual = Double(prediction.probabilities[c * plane + p])
                        worst = max(worst, abs(actual - exact[c]) / bounds[c])
                    }
                    // The label wherever the exact probabilities decide it beyond the rounding.
                    if classes == 1 {
                        guard abs(exact[0] - 0.5) > bounds[0] else { continue }
                        if labels[p] != (exact[0] >= 0.5 ? 1 : 0) { wrongLabels.append(p) }
                    } else {
                        let order = exact.indices.sorted { exact[$0] > exact[$1] }
                        guard exact[order[0]] - exact[order[1]] > bounds[order[0]] + bounds[order[1]] else { continue }
                        if Int(labels[p]) != order[0] { wrongLabels.append(p) }
                    }
                    decided += 1
                }
                XCTAssertLessThanOrEqual(worst, 1, "classes \(classes): worst error / bound \(worst)")
                XCTAssertEqual(wrongLabels.count, 0, "classes \(classes): wrong labels at pixels \(wrongLabels.prefix(8))...")
                XCTAssertGreaterThan(decided, plane / 2, "most labels are checked")
                // One tile of the training size: the same probabilities, bitwise.
                XCTAssertEqual(predictor.predictTiled(image, overlap: 4).probabilities, prediction.probabilities)
            }
        }
    }

    /// The exact sigmoid (one logit) or softmax of `z`, and per value the float32 rounding bound of
    /// SegEngine's sigmoidForward / softmaxForward: relative gamma(k) with k = 4 for the sigmoid
    /// (expf within one ulp, an addition, a division, and the negation's argument is exact); for
    /// the softmax the argument z_c - max carries one rounding, which exp turns into |z_c - max| u
    /// relative (ceil(|z_c - max|) more roundings), then expf; the sum of the C terms carries the
    /// largest of their errors and C - 1 additions; then the division:
    /// k = ceil(|z_c - max|) + ceil(max_k |z_k - max|) + C + 3.
    static func probabilities(_ z: [Double]) -> (exact: [Double], bounds: [Double]) {
        if z.count == 1 {
            let p = 1 / (1 + exp(-z[0]))
            return ([p], [RoundingModel.gamma(4) * p])
        }
        let maximum = z.max()!
        let e = z.map { exp($0 - maximum) }, sum = e.reduce(0, +)
        let exact = e.map { $0 / sum }
        let spread = Int((maximum - z.min()!).rounded(.up))
        let bounds = z.indices.map { c in
            RoundingModel.gamma(Int((maximum - z[c]).rounded(.up)) + spread + z.count + 3) * exact[c]
        }
        return (exact, bounds)
    }
}
