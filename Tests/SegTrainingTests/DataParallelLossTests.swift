// The data-parallel step hands the loss the normalizers it sums over ranks (`LossTerms.values`,
// with class-weighted ce's per-class pixel counts): on one process its gradient is bitwise the
// local step's, whose loss counts its own batch (issue #18's losses and class weights).

import XCTest
import SegEngine
import SegModel
import SegTraining

final class DataParallelLossTests: XCTestCase {
    func makeStep(_ loss: LossConfig, classes: Int) -> LocalStep {
        var config = UNetConfig()
        config.inChannels = 3
        config.classes = classes
        config.baseChannels = 4
        config.depth = 2
        config.seed = 5
        let unet = UNet(config, pool: WorkerPool(threads: 2))
        let step = LocalStep(model: unet, loss: LossFunction(loss, classes: classes),
                             optimizer: Optimizer(OptimizerConfig(kind: .sgd), parameterCount: unet.parameterCount))
        step.plan(batch: 3, height: 16, width: 16)
        return step
    }

    func testDataParallelStepGivesTheLocalGradientForEveryNewLoss() throws {
        let configs: [(String, Int, [Double])] = [
            ("ce:1,focal:0.5,lovasz:0.5,tversky:0.3", 3, [0.3, 2, 1.2]),
            ("bce:1,focal-tversky:0.5,lovasz:0.4", 1, [2.5]),
        ]
        for (text, classes, weights) in configs {
            var loss = LossConfig(components: try LossConfig.parseComponents(text).get(), ignoreIndex: 255)
            loss.classWeights = weights
            let images = OwnedTensor(Shape(3, 3, 16, 16)), target = OwnedTensor(Shape(3, 1, 16, 16))
            var rng = SplitMix64(seed: 17)
            for i in 0..<images.tensor.count { images.tensor[i] = rng.nextUnitFloat() }
            for i in 0..<target.tensor.count {
                target.tensor[i] = rng.nextUnitFloat() < 0.1 ? 255 : Float(rng.next() % UInt64(max(classes, 2)))
            }
            let local = makeStep(loss, classes: classes)
            local.model.store.zeroGradients()
            let localLoss = local.accumulateGradients(images: images.tensor, target: target.tensor, weights: nil, normalizers: nil)
            let expected = local.model.store.gradients.tensor.toArray()

            let parallel = DataParallelStep(local: makeStep(loss, classes: classes), collectives: SingleProcess())
            parallel.overlap = false
            var captured: [Float] = []
            parallel.firstGradientHook = { captured = $0.gradients.tensor.toArray() }
            let parallelLoss = try parallel.step(images: images.tensor, target: target.tensor, learningRate: 1e-3)
            XCTAssertEqual(parallelLoss, localLoss, text)
            XCTAssertTrue(expected.contains { $0 != 0 }, text)
            XCTAssertTrue(captured == expected, "\(text): the data-parallel gradient differs from the local one")
        }
    }
}
