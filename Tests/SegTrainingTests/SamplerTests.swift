import XCTest
import SegEngine
import SegModel
import SegData
@testable import SegTraining

final class SamplerTests: XCTestCase {
    /// Over 1...5 ranks and odd dataset sizes, every sample is trained exactly once per epoch
    /// (all of them without dropLast, all but count % G with it), each global batch holds the
    /// positions it should, and rank r's samples in a batch are positions r, r + N, ... of it.
    func testEverySampleOncePerEpochForAnyRankCount() {
        for ranks in 1...5 {
            for count in [ranks, 7, 13, 31, 64, 101] where count >= 1 {
                for globalBatch in Set([ranks, ranks + 1, 2 * ranks + 1, 8]) where globalBatch >= ranks {
                    for dropLast in [false, true] {
                        let samplers = (0..<ranks).map {
                            DistributedSampler(count: count, globalBatch: globalBatch, ranks: ranks, rank: $0,
                                               dropLast: dropLast, seed: 3)
                        }
                        let order = samplers[0].order(epoch: 2)
                        XCTAssertEqual(order.sorted(), Array(0..<count))
                        var seen = [Int](repeating: 0, count: count)
                        let batches = samplers[0].batchesPerEpoch
                        for b in 0..<batches {
                            var union: [Int] = []
                            for (r, sampler) in samplers.enumerated() {
                                XCTAssertEqual(sampler.order(epoch: 2), order, "one order on every rank")
                                let mine = sampler.indices(order, batch: b)
                                for (k, index) in mine.enumerated() {
                                    XCTAssertEqual(index, order[b * globalBatch + r + k * ranks])
                                }
                                union += mine
                            }
                            XCTAssertEqual(union.count, samplers[0].globalBatchSize(b))
                            XCTAssertEqual(Set(union), Set(order[(b * globalBatch)..<(b * globalBatch + union.count)]))
                            for index in union { seen[index] += 1 }
                        }
                        let trained = seen.filter { $0 == 1 }.count
                        XCTAssertTrue(seen.allSatisfy { $0 <= 1 }, "a sample twice: ranks \(ranks) count \(count)")
                        XCTAssertEqual(trained, dropLast ? count - count % globalBatch : count,
                                       "ranks \(ranks) count \(count) batch \(globalBatch) dropLast \(dropLast)")
                    }
                }
            }
        }
    }

    func testOrderDependsOnSeedAndEpochOnly() {
        let a = DistributedSampler(count: 50, globalBatch: 4, ranks: 2, rank: 0, dropLast: false, seed: 9)
        let b = DistributedSampler(count: 50, globalBatch: 6, ranks: 3, rank: 2, dropLast: true, seed: 9)
        XCTAssertEqual(a.order(epoch: 4), b.order(epoch: 4))
        XCTAssertNotEqual(a.order(epoch: 4), a.order(epoch: 5))
    }

    /// The trainer trains the last, smaller batch (count 43, batch 8: 5 x 8 + 3) and every sample once;
    /// with dropLast the 3 are left out.
    func testTrainerTrainsTheLastSmallBatch() throws {
        for dropLast in [false, true] {
            let source = RecordingSource(count: 43, size: 16)
            let trainer = tinyTrainer(train: source, validation: nil, dropLast: dropLast)
            let step = trainer.step.local
            XCTAssertEqual(trainer.batchesPerEpoch, dropLast ? 5 : 6)
            for epoch in 1...2 {
                source.filled = []
                let record = try trainer.runEpoch(epoch).record!
                XCTAssertTrue(record.trainLoss.isFinite)
                XCTAssertEqual(source.filled.map(\.count), dropLast ? [8, 8, 8, 8, 8] : [8, 8, 8, 8, 8, 3])
                XCTAssertEqual(Set(source.filled.joined()).count, dropLast ? 40 : 43)
                XCTAssertEqual(source.epochs, Set([epoch]))
                source.epochs = []
            }
            XCTAssertEqual(step.optimizer.step, dropLast ? 10 : 12)
        }
    }
}

/// A stop requested during an epoch's last batch completes the epoch (validation included) and
/// says so; earlier, it stops after that batch.
final class StopTests: XCTestCase {
    func testAStopAtTheLastBatchCompletesTheEpoch() throws {
        for stopAt in [2, 5] {  // 5 batches of 8 in 40 samples: batch index 4 is the last
            let source = RecordingSource(count: 40, size: 16)
            let trainer = tinyTrainer(train: source, validation: RecordingSource(count: 4, size: 16))
            trainer.stopRequested = { source.filled.count >= stopAt }
            let outcome = try trainer.runEpoch(1)
            if stopAt == 5 {
                XCTAssertNotNil(outcome.record, "the epoch is completed")
                XCTAssertNotNil(outcome.record?.validationLoss)
                XCTAssertTrue(trainer.stopAfterEpoch)
                XCTAssertEqual(outcome.record?.batchesTrained, 5)
            } else {
                guard case .stopped(let batch) = outcome else { return XCTFail("expected a stop") }
                XCTAssertEqual(batch, 1)
                XCTAssertFalse(trainer.stopAfterEpoch)
            }
        }
    }
}

final class BucketPlanTests: XCTestCase {
    /// Buckets are contiguous, run from the end of the buffer down, close only where the
    /// frontier allows, and hold at least a bucket's worth (the first a quarter of one).
    func testBucketsFollowTheFrontiers() {
        let frontiers = [990, 990, 900, 700, 650, 300, 120, 0]
        let plan = DataParallelStep.bucketPlan(frontiers: frontiers, parameterCount: 1000, bucketFloats: 200)
        XCTAssertEqual(plan, [Bucket(afterOp: 2, offset: 900, count: 100), Bucket(afterOp: 3, offset: 700, count: 200),
                              Bucket(afterOp: 5, offset: 300, count: 400), Bucket(afterOp: 7, offset: 0, count: 300)])
        for b in plan { XCTAssertEqual(b.offset, frontiers[b.afterOp]) }
        XCTAssertEqual(DataParallelStep.bucketPlan(frontiers: frontiers, parameterCount: 1000, bucketFloats: 5000), [])
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
