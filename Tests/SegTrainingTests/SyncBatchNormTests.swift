// SyncBatchNorm's op (SegEngine/SyncBatchNorm.swift) on ranks played by threads (ThreadRanks, in
// DataParallelStepTests.swift): a batch of 5 split 3 + 2 and 2 + 2 + 1. Each rank's forward output,
// saved statistics and running statistics, and its backward's input gradient, equal the
// single-process BatchNorm's on the whole batch (its rows of them); the ranks' dgamma and dbeta add
// up to the whole batch's. Without the exchange a rank's output is another one (the control).
//
// Error model for the tolerances: the per-channel Double sums are regrouped by rank (m = 80 values
// per channel and rank count: relative change < m * 2^-53 ~ 1e-14), so the float32 statistics
// (mean, 1/std, mean(dy), mean(dy * xhat)) are equal or one float ulp (2^-23 relative) apart; an
// output y = (x - mean) * scale + shift or dx = k * (dy - mean(dy) - xhat * mean(dy * xhat)) then
// moves by at most a few ulps of its largest term: 2^-20 of the tensor's largest term.
// dgamma/dbeta: the float sum over 2-3 ranks of Double-accurate parts: a few ulps, same bound.

import XCTest
import Foundation
import SegEngine

final class SyncBatchNormTests: XCTestCase {
    static let shape = Shape(5, 3, 4, 4)

    private func random(_ shape: Shape, seed: UInt64, scale: Float = 1, offset: Float = 0) -> OwnedTensor {
        let t = OwnedTensor(shape)
        var rng = SplitMix64(seed: seed, stream: 1)
        for i in 0..<t.tensor.count { t.tensor[i] = offset + scale * (2 * rng.nextUnitFloat() - 1) }
        return t
    }

    /// Images `range` of `whole` as a tensor of their own.
    private func rows(_ whole: Tensor, _ range: Range<Int>) -> OwnedTensor {
        let s = whole.shape, t = OwnedTensor(Shape(range.count, s.c, s.h, s.w))
        let per = s.c * s.h * s.w
        for i in 0..<(range.count * per) { t.tensor[i] = whole[range.lowerBound * per + i] }
        return t
    }

    private func assertClose(_ a: [Float], _ b: [Float], scale: Float, _ what: String, file: StaticString = #filePath,
                             line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst, scale * 0x1p-20, "\(what): worst difference \(worst)", file: file, line: line)
    }

    private struct Layer {
        let gamma: OwnedTensor, beta: OwnedTensor, runningMean: OwnedTensor, runningVar: OwnedTensor
        let saveMean = OwnedTensor(Shape(3, 1, 1, 1)), saveInvStd = OwnedTensor(Shape(3, 1, 1, 1))
        let dgamma = OwnedTensor(Shape(3, 1, 1, 1)), dbeta = OwnedTensor(Shape(3, 1, 1, 1))
        init() {
            gamma = OwnedTensor(Shape(3, 1, 1, 1)); beta = OwnedTensor(Shape(3, 1, 1, 1))
            runningMean = OwnedTensor(Shape(3, 1, 1, 1)); runningVar = OwnedTensor(Shape(3, 1, 1, 1))
            for c in 0..<3 {
                gamma.tensor[c] = 1 + 0.25 * Float(c); beta.tensor[c] = 0.5 - 0.3 * Float(c)
                runningMean.tensor[c] = 0.1 * Float(c); runningVar.tensor[c] = 1 + 0.2 * Float(c)
            }
        }
        func forward(_ y: Tensor, _ x: Tensor, _ sum: BatchStatisticsSum?, _ pool: WorkerPool) {
            batchNormForward(y, x, gamma: gamma.tensor, beta: beta.tensor, runningMean: runningMean.tensor,
                             runningVar: runningVar.tensor, saveMean: saveMean.tensor, saveInvStd: saveInvStd.tensor,
                             training: true, synchronized: sum, pool: pool)
        }
        func backward(_ dx: Tensor, _ dy: Tensor, _ x: Tensor, _ sum: BatchStatisticsSum?, _ pool: WorkerPool) {
            batchNormBackward(dx: dx, dgamma: dgamma.tensor, dbeta: dbeta.tensor, dy: dy, x: x, gamma: gamma.tensor,
                              saveMean: saveMean.tensor, saveInvStd: saveInvStd.tensor, synchronized: sum, pool: pool)
        }
    }

    private struct RankResult { var y: [Float] = [], dx: [Float] = [], mean: [Float] = [], invStd: [Float] = []
                                var runningMean: [Float] = [], runningVar: [Float] = [], dgamma: [Float] = [], dbeta: [Float] = []
                                var sums = 0 }

    /// Every rank's results for `shares` of the batch (with the exchange, or each alone).
    private func ranks(_ shares: [Range<Int>], x: Tensor, dy: Tensor, synchronized: Bool) -> [RankResult] {
        let world = ThreadRanks(size: shares.count)
        final class Box: @unchecked Sendable { let lock = NSLock(); var results: [Int: RankResult] = [:] }
        let box = Box(), done = DispatchGroup()
        for (rank, share) in shares.enumerated() {
            done.enter()
            Thread {
                defer { done.leave() }
                let pool = WorkerPool(threads: rank == 0 ? 2 : 1)  // thread counts may differ between ranks
                let layer = Layer(), xs = self.rows(x, share), dys = self.rows(dy, share)
                let y = OwnedTensor(xs.tensor.shape), dx = OwnedTensor(xs.tensor.shape)
                let sum = synchronized ? BatchStatisticsSum(collectives: world.rank(rank), channels: 3) : nil
                layer.forward(y.tensor, xs.tensor, sum, pool)
                layer.backward(dx.tensor, dys.tensor, xs.tensor, sum, pool)
                let result = RankResult(y: y.tensor.toArray(), dx: dx.tensor.toArray(), mean: layer.saveMean.tensor.toArray(),
                                        invStd: layer.saveInvStd.tensor.toArray(), runningMean: layer.runningMean.tensor.toArray(),
                                        runningVar: layer.runningVar.tensor.toArray(), dgamma: layer.dgamma.tensor.toArray(),
                                        dbeta: layer.dbeta.tensor.toArray(), sums: sum?.sums ?? 0)
                box.lock.withLock { box.results[rank] = result }
            }.start()
        }
        done.wait()
        return (0..<shares.count).map { box.results[$0]! }
    }

    /// SyncBatchNorm's forward applies a following ReLU as it writes (`relu: true`), with the bits of
    /// its forward followed by reluForward (one rank, so the exchange runs and returns its own sums).
    func testSynchronizedForwardWithReluGivesTheBitsOfTheSeparatePass() {
        let x = random(SyncBatchNormTests.shape, seed: 5, scale: 2, offset: 0.1)
        let pool = WorkerPool(threads: 2), world = ThreadRanks(size: 1)
        let separate = Layer(), fused = Layer()
        let y = OwnedTensor(x.tensor.shape), yFused = OwnedTensor(x.tensor.shape)
        let sum = BatchStatisticsSum(collectives: world.rank(0), channels: 3)
        separate.forward(y.tensor, x.tensor, sum, pool)
        reluForward(y.tensor, y.tensor, pool: pool)
        batchNormForward(yFused.tensor, x.tensor, gamma: fused.gamma.tensor, beta: fused.beta.tensor,
                         runningMean: fused.runningMean.tensor, runningVar: fused.runningVar.tensor,
                         saveMean: fused.saveMean.tensor, saveInvStd: fused.saveInvStd.tensor, training: true,
                         synchronized: sum, relu: true, pool: pool)
        XCTAssertEqual(sum.sums, 4, "both forwards exchanged their two sums")
        XCTAssertEqual(yFused.tensor.toArray().map(\.bitPattern), y.tensor.toArray().map(\.bitPattern))
        XCTAssertTrue(y.tensor.toArray().contains(0) && y.tensor.toArray().contains { $0 > 0 })
    }

    func testRanksTogetherEqualTheWholeBatch() {
        let x = random(SyncBatchNormTests.shape, seed: 1, scale: 2, offset: 0.7), dy = random(SyncBatchNormTests.shape, seed: 2)
        let pool = WorkerPool(threads: 1), layer = Layer()
        let y = OwnedTensor(x.tensor.shape), dx = OwnedTensor(x.tensor.shape)
        layer.forward(y.tensor, x.tensor, nil, pool)
        layer.backward(dx.tensor, dy.tensor, x.tensor, nil, pool)
        let yScale = y.tensor.toArray().map(abs).max()! + 2  // + |mean * scale| (means ~0.7, scale ~1)
        var dxScale: Float = 0
        for c in 0..<3 {
            let k = layer.gamma.tensor[c] * layer.saveInvStd.tensor[c]
            dxScale = max(dxScale, 3 * k * dy.tensor.toArray().map(abs).max()!)
        }
        let per = 3 * 16
        for shares in [[0..<3, 3..<5], [0..<2, 2..<4, 4..<5]] {
            let results = ranks(shares, x: x.tensor, dy: dy.tensor, synchronized: true)
            for (rank, share) in shares.enumerated() {
                let r = results[rank], what = "\(shares.count) ranks, rank \(rank)"
                assertClose(r.y, Array(y.tensor.toArray()[(share.lowerBound * per)..<(share.upperBound * per)]), scale: yScale, "\(what): y")
                assertClose(r.dx, Array(dx.tensor.toArray()[(share.lowerBound * per)..<(share.upperBound * per)]), scale: dxScale, "\(what): dx")
                assertClose(r.mean, layer.saveMean.tensor.toArray(), scale: 2, "\(what): mean")
                assertClose(r.invStd, layer.saveInvStd.tensor.toArray(), scale: 2, "\(what): 1/std")
                assertClose(r.runningMean, layer.runningMean.tensor.toArray(), scale: 2, "\(what): running mean")
                assertClose(r.runningVar, layer.runningVar.tensor.toArray(), scale: 2, "\(what): running variance")
                XCTAssertEqual(r.sums, 3, "two sums in the forward, one in the backward")
            }
            let dgamma = (0..<3).map { c in results.reduce(Float(0)) { $0 + $1.dgamma[c] } }
            let dbeta = (0..<3).map { c in results.reduce(Float(0)) { $0 + $1.dbeta[c] } }
            // The float sum of the ranks' parts: a few ulps of the parts' magnitudes.
            func partsScale(_ part: (RankResult) -> [Float]) -> Float {
                (0..<3).map { c in results.reduce(Float(0)) { $0 + abs(part($1)[c]) } }.max()!
            }
            assertClose(dgamma, layer.dgamma.tensor.toArray(), scale: partsScale(\.dgamma), "\(shares.count) ranks: dgamma")
            assertClose(dbeta, layer.dbeta.tensor.toArray(), scale: partsScale(\.dbeta), "\(shares.count) ranks: dbeta")
        }
        // The control: alone, rank 0 of 2 normalises its 3 images with their own statistics.
        let alone = ranks([0..<3, 3..<5], x: x.tensor, dy: dy.tensor, synchronized: false)[0]
        let worst = zip(alone.y, y.tensor.toArray()).map { abs($0 - $1) }.max()!
        XCTAssertGreaterThan(worst, 1e-3, "without the exchange the statistics are rank 0's")
    }
}
