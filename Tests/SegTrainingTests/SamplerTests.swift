// The distributed sampler in process: every sample once per epoch for any rank count, the order a
// function of seed and epoch, and the trainer training the last, smaller batch.

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
