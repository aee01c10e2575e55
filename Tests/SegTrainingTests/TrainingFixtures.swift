// Fixtures shared by SegTraining's tests: sample sources (a learnable toy task, the same with an
// ignored border, one that records what it filled) and a tiny one-process trainer.

import XCTest
import SegEngine
import SegModel
import SegData
import SegTraining

/// A learnable toy source: the mask is where channel 0 is brighter than channel 1.
struct ToySource: SampleSource {
    let count: Int
    let size: Int
    let seed: UInt64
    func fill(images: Tensor, masks: Tensor, indices: [Int], epoch: Int?) {
        for (n, index) in indices.enumerated() {
            var rng = SplitMix64(seed: seed, stream: UInt64(index))
            for c in 0..<3 { for p in 0..<(size * size) { images.plane(n, c)[p] = rng.nextUnitFloat() } }
            for p in 0..<(size * size) { masks.sample(n)[p] = images.plane(n, 0)[p] > images.plane(n, 1)[p] ? 1 : 0 }
        }
    }
}

/// `ToySource` with a border of `border` pixels marked `ignore` in every mask.
struct BorderedSource: SampleSource {
    let toy: ToySource
    let border: Int
    let ignore: Float
    var count: Int { toy.count }
    func fill(images: Tensor, masks: Tensor, indices: [Int], epoch: Int?) {
        toy.fill(images: images, masks: masks, indices: indices, epoch: epoch)
        let s = toy.size
        for n in 0..<indices.count {
            for y in 0..<s {
                for x in 0..<s where min(x, y, s - 1 - x, s - 1 - y) < border { masks.sample(n)[y * s + x] = ignore }
            }
        }
    }
}

/// A depth-2, 4-channel binary UNet trainer on 16 px samples, global batch 8, one process.
func tinyTrainer(train: SampleSource, validation: SampleSource?, dropLast: Bool = false) -> Trainer {
    var config = UNetConfig()
    config.baseChannels = 4
    config.depth = 2
    let unet = UNet(config, pool: WorkerPool(threads: 1))
    let step = LocalStep(model: unet, loss: LossFunction(LossConfig(kind: .bce), classes: 1),
                         optimizer: Optimizer(OptimizerConfig(kind: .adam), parameterCount: unet.parameterCount))
    return Trainer(step: step, train: train, validation: validation, imageSize: 16, batchSize: 8, seed: 1,
                   learningRate: 1e-3, dropLast: dropLast)
}

/// Records what it was asked to fill.
final class RecordingSource: SampleSource {
    let count: Int
    let size: Int
    var filled: [[Int]] = []
    var epochs: Set<Int?> = []
    init(count: Int, size: Int) { self.count = count; self.size = size }
    func fill(images: Tensor, masks: Tensor, indices: [Int], epoch: Int?) {
        XCTAssertEqual(images.shape.n, indices.count)
        filled.append(indices)
        epochs.insert(epoch)
        for (n, index) in indices.enumerated() {
            var rng = SplitMix64(seed: 4, stream: UInt64(index))
            for c in 0..<3 { for p in 0..<(size * size) { images.plane(n, c)[p] = rng.nextUnitFloat() } }
            for p in 0..<(size * size) { masks.sample(n)[p] = images.plane(n, 0)[p] > 0.5 ? 1 : 0 }
        }
    }
}
