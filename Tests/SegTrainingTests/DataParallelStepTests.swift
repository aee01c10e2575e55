// DataParallelStep in process. With SingleProcess collectives its steps equal LocalStep's bitwise.
// With three ranks played by threads of this process (ThreadRanks below: every sum in rank order,
// so each rank holds the same bits), the gradient each rank holds after the bucketed sums is
// exactly the sum of the three shares' gradients, each computed alone with the loss divided by the
// global batch's terms, and every rank's weights after the sharded update and the allgather equal
// one optimizer's update with that gradient. The bucket plan follows the model's frontiers.

import XCTest
import Foundation
import SegEngine
@testable import SegModel
@testable import SegTraining
#if canImport(Glibc)
import Glibc
#endif

final class DataParallelStepTests: XCTestCase {
    static let size = 16

    /// A depth-2, 4-channel binary UNet (seed 7) with BCE and Adam, on one thread.
    func makeStep(batch: Int) -> LocalStep {
        var config = UNetConfig()
        config.baseChannels = 4
        config.depth = 2
        config.seed = 7
        let unet = UNet(config, pool: WorkerPool(threads: 1))
        let step = LocalStep(model: unet, loss: LossFunction(LossConfig(kind: .bce), classes: 1),
                             optimizer: Optimizer(OptimizerConfig(kind: .adam), parameterCount: unet.parameterCount))
        step.plan(batch: batch, height: DataParallelStepTests.size, width: DataParallelStepTests.size)
        return step
    }

    /// Images `range` of a seeded toy batch (the mask: channel 0 brighter than channel 1).
    func batch(_ range: Range<Int>, seed: UInt64, size: Int = DataParallelStepTests.size) -> (images: OwnedTensor, target: OwnedTensor) {
        let s = size
        let images = OwnedTensor(Shape(range.count, 3, s, s)), target = OwnedTensor(Shape(range.count, 1, s, s))
        for (n, index) in range.enumerated() {
            var rng = SplitMix64(seed: seed, stream: UInt64(index))
            for c in 0..<3 { for p in 0..<(s * s) { images.tensor.plane(n, c)[p] = rng.nextUnitFloat() } }
            for p in 0..<(s * s) { target.tensor.sample(n)[p] = images.tensor.plane(n, 0)[p] > images.tensor.plane(n, 1)[p] ? 1 : 0 }
        }
        return (images, target)
    }

    func testSingleProcessStepsEqualLocalSteps() throws {
        let local = makeStep(batch: 4), reference = makeStep(batch: 4)
        let parallel = DataParallelStep(local: local, collectives: SingleProcess())
        for k in 0..<3 {
            let (images, target) = batch(0..<4, seed: UInt64(k))
            let loss = try parallel.step(images: images.tensor, target: target.tensor, learningRate: 1e-2)
            let expected = reference.step(images: images.tensor, target: target.tensor, learningRate: 1e-2)
            XCTAssertEqual(loss, expected, "step \(k)")
        }
        XCTAssertEqual(local.model.store.values.tensor.toArray(), reference.model.store.values.tensor.toArray())
        XCTAssertEqual(local.optimizer.step, 3)
    }

    /// A global batch of 5 on 3 ranks (shares 2 + 2 + 1), the gradient summed while backward runs in
    /// buckets of 64 floats (the last bucket ends at 0), of 1,000 (a rest is summed after backward)
    /// and of 2^18 (no bucket closes: all of it after backward).
    func testThreeRanksHoldTheSumOfTheSharesGradients() throws {
        for bucketFloats in [64, 1000, 1 << 18] { try checkThreeRanks(bucketFloats: bucketFloats) }
    }

    func checkThreeRanks(bucketFloats: Int) throws {
        let ranks = 3, global = 5, rate: Float = 1e-2
        let shares = (0..<ranks).map { shareOf(global, ranks: ranks, rank: $0) }
        let world = ThreadRanks(size: ranks)
        let steps = shares.map { makeStep(batch: $0.count) }
        let model = steps[0].model
        let plan = DataParallelStep.bucketPlan(frontiers: model.gradientFrontiers, parameterCount: model.store.parameterCount,
                                               bucketFloats: bucketFloats)
        let rest = plan.last?.offset ?? model.store.parameterCount
        XCTAssertEqual([plan.count > 1, rest > 0], bucketFloats == 64 ? [true, false] : bucketFloats == 1000 ? [true, true] : [false, true],
                       "buckets of \(bucketFloats): \(plan.count) buckets, \(rest) floats after backward")
        let reports = RankReports()
        let errors = runRanks(ranks) { rank in
            let parallel = DataParallelStep(local: steps[rank], collectives: world.rank(rank))
            parallel.bucketFloats = bucketFloats
            parallel.firstGradientHook = { store in reports.record(rank, summed: store) }
            let (images, target) = self.batch(shares[rank], seed: 9)
            let loss = try parallel.step(images: images.tensor, target: target.tensor, learningRate: rate)
            reports.lock.withLock { reports.losses[rank] = loss }
        }
        XCTAssertEqual(errors, [])

        // Each share alone, its loss divided by the global batch's pixels and images.
        let pixels = Double(global * DataParallelStepTests.size * DataParallelStepTests.size)
        var expectedGradient: [Float] = [], expectedLoss = 0.0
        for share in shares {
            let alone = makeStep(batch: share.count)
            alone.model.store.zeroGradients()
            let (images, target) = batch(share, seed: 9)
            expectedLoss += alone.accumulateGradients(images: images.tensor, target: target.tensor, weights: nil,
                                                      normalizers: LossTerms(pixels: pixels, images: Double(global)))
            let g = alone.model.store.gradients.tensor.toArray()
            expectedGradient = expectedGradient.isEmpty ? g : zip(expectedGradient, g).map { $0 + $1 }
        }
        let reference = makeStep(batch: 1)
        let gradient = OwnedTensor(.vector(expectedGradient.count), expectedGradient)
        reference.update(learningRate: rate, gradients: gradient.tensor,
                         gradientNorm: reference.optimizer.gradientNorm(gradient.tensor, pool: reference.model.pool))
        let expectedWeights = reference.model.store.values.tensor.toArray()
        XCTAssertNotEqual(expectedWeights, makeStep(batch: 1).model.store.values.tensor.toArray(), "the step moved the weights")
        for rank in 0..<ranks {
            let at = "buckets of \(bucketFloats), rank \(rank)"
            XCTAssertEqual(reports.summed[rank], expectedGradient, "\(at): the summed gradient")
            XCTAssertEqual(reports.losses[rank], expectedLoss, "\(at): the loss")
            XCTAssertEqual(steps[rank].model.store.values.tensor.toArray(), expectedWeights, "\(at): the weights")
        }
    }

    /// A frozen encoder's gradients are zero on every rank, so the sums leave its range out (it
    /// starts the buffer): in buckets of 64 floats, in one sum after backward, and without overlap.
    /// The summed gradient is still exactly the sum of the ranks' gradients (zero in the encoder),
    /// and both ranks end with the same weights.
    func testAFrozenEncoderIsLeftOutOfTheSums() throws {
        for (overlap, bucketFloats) in [(true, 64), (true, 1 << 18), (false, 1 << 18)] {
            let ranks = 2, global = 4, size = 32
            let shares = (0..<ranks).map { shareOf(global, ranks: ranks, rank: $0) }
            let world = ThreadRanks(size: ranks)
            let steps = try shares.map { share -> LocalStep in
                let step = makeEncoderStep(batch: share.count, size: size)
                try step.freezeEncoder(true)
                return step
            }
            let store = steps[0].model.store
            let encoder = try XCTUnwrap(store.parameterRange(prefix: "encoder."))
            XCTAssertEqual(encoder.lowerBound, 0)
            XCTAssertEqual(DataParallelStep.frozenPrefix(steps[0].optimizer), encoder.count)
            let reports = RankReports()
            let errors = runRanks(ranks) { rank in
                let parallel = DataParallelStep(local: steps[rank], collectives: world.rank(rank))
                parallel.overlap = overlap
                parallel.bucketFloats = bucketFloats
                parallel.firstGradientHook = { store in reports.record(rank, summed: store) }
                let (images, target) = self.batch(shares[rank], seed: 5, size: size)
                _ = try parallel.step(images: images.tensor, target: target.tensor, learningRate: 1e-2)
            }
            XCTAssertEqual(errors, [], "overlap \(overlap), buckets of \(bucketFloats)")
            let at = "overlap \(overlap), buckets of \(bucketFloats)"
            // Floats each rank summed in the step: all but the encoder's.
            XCTAssertEqual(world.floatsSummed, ranks * (store.parameterCount - encoder.count), at)

            let pixels = Double(global * size * size)
            var expected: [Float] = []
            for share in shares {
                let alone = makeEncoderStep(batch: share.count, size: size)
                try alone.freezeEncoder(true)
                alone.model.store.zeroGradients()
                let (images, target) = batch(share, seed: 5, size: size)
                _ = alone.accumulateGradients(images: images.tensor, target: target.tensor, weights: nil,
                                              normalizers: LossTerms(pixels: pixels, images: Double(global)))
                let g = alone.model.store.gradients.tensor.toArray()
                expected = expected.isEmpty ? g : zip(expected, g).map { $0 + $1 }
            }
            XCTAssertTrue(expected[encoder].allSatisfy { $0 == 0 }, at)
            XCTAssertTrue(expected[encoder.upperBound...].contains { $0 != 0 }, at)
            for rank in 0..<ranks {
                XCTAssertEqual(reports.summed[rank].map { $0.map(\.bitPattern) }, expected.map(\.bitPattern), "\(at), rank \(rank)")
            }
            XCTAssertEqual(steps[0].model.store.values.tensor.toArray(), steps[1].model.store.values.tensor.toArray(), at)
        }
    }

    /// After an unfrozen step has summed the encoder's gradients into the bucket buffer, a frozen
    /// step (which leaves that range out of the sums) still hands the optimizer zeros there.
    func testAFrozenStepAfterAnUnfrozenOneSeesZeroEncoderGradients() throws {
        let ranks = 2, size = 32
        let world = ThreadRanks(size: ranks)
        let steps = (0..<ranks).map { _ in makeEncoderStep(batch: 2, size: size) }
        let encoder = try XCTUnwrap(steps[0].model.store.parameterRange(prefix: "encoder."))
        let reports = RankReports()
        let errors = runRanks(ranks) { rank in
            let parallel = DataParallelStep(local: steps[rank], collectives: world.rank(rank))
            parallel.bucketFloats = 64
            let (images, target) = self.batch(2 * rank..<2 * rank + 2, seed: 6, size: size)
            _ = try parallel.step(images: images.tensor, target: target.tensor, learningRate: 1e-2)
            try steps[rank].freezeEncoder(true)
            parallel.firstGradientHook = { store in reports.record(rank, summed: store) }
            _ = try parallel.step(images: images.tensor, target: target.tensor, learningRate: 1e-2)
        }
        XCTAssertEqual(errors, [])
        for rank in 0..<ranks {
            let summed = try XCTUnwrap(reports.summed[rank])
            XCTAssertTrue(summed[encoder].allSatisfy { $0 == 0 }, "rank \(rank): nonzero encoder gradient while frozen")
            XCTAssertTrue(summed[encoder.upperBound...].contains { $0 != 0 }, "rank \(rank)")
        }
    }

    /// What the ranks' threads report.
    final class RankReports: @unchecked Sendable {
        let lock = NSLock()
        var summed: [Int: [Float]] = [:], losses: [Int: Double?] = [:]
        /// The summed gradient (the first-gradient hook's store).
        func record(_ rank: Int, summed store: ParameterStore) {
            let g = store.gradients.tensor.toArray()
            lock.withLock { summed[rank] = g }
        }
    }

    /// Runs `body(rank)` for every rank at once, each on a thread of its own (the ranks of a
    /// ThreadRanks world meet in its collectives); returns what they threw, or a timeout.
    func runRanks(_ ranks: Int, _ body: @escaping (Int) throws -> Void) -> [String] {
        final class Errors: @unchecked Sendable { let lock = NSLock(); var list: [String] = [] }
        let errors = Errors()
        let done = DispatchGroup()
        for rank in 0..<ranks {
            done.enter()
            Thread {
                defer { done.leave() }
                do { try body(rank) } catch { errors.lock.withLock { errors.list.append("rank \(rank): \(error)") } }
            }.start()
        }
        guard done.wait(timeout: .now() + 120) == .success else { return ["the ranks did not finish within 120 s"] }
        return errors.lock.withLock { errors.list }
    }

    /// resnet18 with every width / 16, decoder 16-8-8-4-4 (as the encoder gradient tests), one class,
    /// BCE and Adam, on one thread.
    func makeEncoderStep(batch: Int, size: Int) -> LocalStep {
        var config = EncoderUNetConfig(encoder: .resnet18, classes: 1)
        config.widthDivisor = 16
        config.decoderChannels = [16, 8, 8, 4, 4]
        config.seed = 7
        let model = GraphModel(config, pool: WorkerPool(threads: 1))
        let step = LocalStep(model: model, loss: LossFunction(LossConfig(kind: .bce), classes: 1),
                             optimizer: Optimizer(OptimizerConfig(kind: .adam), parameterCount: model.parameterCount))
        step.plan(batch: batch, height: size, width: size)
        return step
    }

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

/// N ranks played by N threads of one process. Every collective is a rendezvous: each rank puts
/// its buffer in its slot, all meet at a barrier, each reads every slot in rank order (so sums are
/// bitwise the same on every rank), and all meet again before anyone changes a buffer.
final class ThreadRanks: @unchecked Sendable {
    let size: Int
    private let barrier = UnsafeMutablePointer<pthread_barrier_t>.allocate(capacity: 1)
    fileprivate let floats: UnsafeMutablePointer<UnsafeMutablePointer<Float>?>
    fileprivate let doubles: UnsafeMutablePointer<[Double]>
    fileprivate let bytes: UnsafeMutablePointer<[UInt8]>

    init(size: Int) {
        self.size = size
        pthread_barrier_init(barrier, nil, UInt32(size))
        floats = .allocate(capacity: size)
        floats.initialize(repeating: nil, count: size)
        doubles = .allocate(capacity: size)
        doubles.initialize(repeating: [], count: size)
        bytes = .allocate(capacity: size)
        bytes.initialize(repeating: [], count: size)
    }

    deinit {
        pthread_barrier_destroy(barrier)
        barrier.deallocate()
        floats.deallocate()
        doubles.deinitialize(count: size)
        doubles.deallocate()
        bytes.deinitialize(count: size)
        bytes.deallocate()
    }

    fileprivate func meet() { pthread_barrier_wait(barrier) }

    /// Floats passed to the float sums, over all ranks.
    var floatsSummed: Int { lock.withLock { summedCount } }
    fileprivate let lock = NSLock()
    fileprivate var summedCount = 0

    /// Rank `rank`'s view of the world.
    func rank(_ rank: Int) -> Collectives { Rank(world: self, rank: rank) }

    private final class Rank: Collectives {
        let world: ThreadRanks
        let rank: Int
        var size: Int { world.size }
        init(world: ThreadRanks, rank: Int) { self.world = world; self.rank = rank }

        func allreduceSum(_ tensor: Tensor) throws {
            world.lock.withLock { world.summedCount += tensor.count }
            world.floats[rank] = tensor.data
            world.meet()
            var sum = [Float](repeating: 0, count: tensor.count)
            for r in 0..<size {
                let p = world.floats[r]!
                for i in sum.indices { sum[i] = r == 0 ? p[i] : sum[i] + p[i] }
            }
            world.meet()
            for i in sum.indices { tensor.data[i] = sum[i] }
        }

        func allreduceSum(_ values: [Double]) throws -> [Double] {
            world.doubles[rank] = values
            world.meet()
            var sum = world.doubles[0]
            for r in 1..<size { for i in sum.indices { sum[i] += world.doubles[r][i] } }
            world.meet()
            return sum
        }

        func allgatherShares(_ tensor: Tensor) throws {
            world.floats[rank] = tensor.data
            world.meet()
            for r in 0..<size where r != rank {
                for i in shareOf(tensor.count, ranks: size, rank: r) { tensor.data[i] = world.floats[r]![i] }
            }
            world.meet()
        }

        func broadcast(_ tensor: Tensor, root: Int) throws {
            world.floats[rank] = tensor.data
            world.meet()
            if rank != root { for i in 0..<tensor.count { tensor.data[i] = world.floats[root]![i] } }
            world.meet()
        }

        func broadcast(_ bytes: inout [UInt8], root: Int) throws {
            world.bytes[rank] = bytes
            world.meet()
            if rank != root { bytes = world.bytes[root] }
            world.meet()
        }
    }
}
