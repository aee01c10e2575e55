import XCTest
import SegEngine
@testable import SegModel

/// A plan for training places values and gradients in one buffer by their lifetimes on the
/// forward, loss and backward timeline (`ActivationArena.allocateForTraining`): a value backward
/// does not read lives only through forward, and gradients take the memory of values backward has
/// finished with; cheap values (BatchNorm's and the upsamplings' outputs, the decoder's
/// concatenations) are made again in backward instead of kept. Where the values live must change
/// nothing: a model that shares and one that keeps every value (`sharesTrainingMemory = false`)
/// give the same logits, parameter gradients and BatchNorm statistics bit for bit, over training
/// and evaluation forwards and a frozen encoder. A backward op whose value reads are not declared
/// (or a lifetime that ends too early, or a value recomputed wrong or too late) lets a later op
/// overwrite a value still to be read, and the gradients differ.
final class TrainingMemoryTests: XCTestCase {
    private func check(_ make: (_ shares: Bool) -> any SegmentationModel, _ name: String, size: Int, batch: Int = 2,
                       freezes: Bool = false, file: StaticString = #filePath, line: UInt = #line) {
        let kept = make(false), shared = make(true)
        kept.plan(batch: batch, height: size, width: size)
        shared.plan(batch: batch, height: size, width: size)
        let k = kept.plannedActivationMemory, s = shared.plannedActivationMemory
        XCTAssertEqual(k.valuesAndGradients, k.values + k.gradients, "\(name): unshared", file: file, line: line)
        XCTAssertLessThan(s.valuesAndGradients, k.values + k.gradients, "\(name): values and gradients share memory",
                          file: file, line: line)
        // Values made again in backward have slots of their own (the plain UNet's only with
        // bilinear upsampling; every other model here has BatchNorm), so the sharing plan lays
        // out more value floats than the plan that keeps every value.
        let recomputes = (kept as? UNet).map { $0.config.upsampling == .bilinear } ?? true
        if recomputes {
            XCTAssertGreaterThan(s.values, k.values, "\(name): some value is made again in backward", file: file, line: line)
        } else {
            XCTAssertEqual(s.values, k.values, "\(name): nothing is made again", file: file, line: line)
        }
        var random = SplitMix64(seed: 13)
        let images = OwnedTensor(Shape(batch, kept.inChannels, size, size))
        var passes: [(training: Bool, frozen: Bool)] = [(true, false), (true, false), (false, false)]
        if freezes { passes.append((true, true)) }
        for (pass, mode) in passes.enumerated() {
            for i in 0..<images.tensor.count { images.tensor.data[i] = random.nextFloat(in: -1...1) }
            var results: [(logits: [Float], gradients: [Float], values: [Float])] = []
            for model in [kept, shared] {
                if freezes { model.frozenEncoder = mode.frozen }
                let logits = model.forward(images.tensor, training: mode.training).toArray()
                model.zeroActivationGradients()
                let dlogits = model.logitsGradient
                for i in 0..<dlogits.count { dlogits[i] = Float((i * 7 + pass) % 11) / 11 - 0.5 }
                model.store.zeroGradients()
                model.backward()
                results.append((logits, model.store.gradients.tensor.toArray(), model.store.values.tensor.toArray()))
            }
            let what = "\(name), pass \(pass) (training \(mode.training), frozen \(mode.frozen))"
            XCTAssertEqual(results[1].logits.map(\.bitPattern), results[0].logits.map(\.bitPattern), "\(what): logits",
                           file: file, line: line)
            XCTAssertEqual(results[1].gradients.map(\.bitPattern), results[0].gradients.map(\.bitPattern), "\(what): gradients",
                           file: file, line: line)
            XCTAssertEqual(results[1].values.map(\.bitPattern), results[0].values.map(\.bitPattern),
                           "\(what): parameters and BatchNorm statistics", file: file, line: line)
            XCTAssertTrue(results[0].gradients.contains { $0 != 0 }, "\(what): some gradient", file: file, line: line)
        }
    }

    /// `model` with `sharesTrainingMemory` set.
    private func sharing(_ model: SmallModel) -> (Bool) -> any SegmentationModel {
        { shares in
            let made = model.make()
            (made as? UNet)?.sharesTrainingMemory = shares
            (made as? GraphModel)?.sharesTrainingMemory = shares
            return made
        }
    }

    func testThePlainUNetInEveryVariant() {
        for model in SmallModel.plainUNets { check(sharing(model), model.name, size: model.size, batch: model.batch) }
    }

    func testEncoderUNetsAndDeepLabV3Plus() {
        for model in SmallModel.graphModels {
            check(sharing(model), model.name, size: model.size, batch: model.batch, freezes: model.hasEncoder)
        }
    }

    /// The timeline: forward op k at k, the loss after forward, backward op k after that; a value
    /// backward reads lives until its last reader, one it does not read only through forward;
    /// `always` slots span everything.
    func testTrainingLifetimes() {
        // Slot 0 read by backward op 1; slot 1 forward only; slot 2 the logits.
        let lives = ActivationArena.trainingLifetimes(forward: [[0], [0, 1], [1, 2]], backwardValues: [[], [0]],
                                                      backwardGradients: [[2, 1], [1, 0]], slots: 3, always: [2])
        XCTAssertEqual(lives.values[0], 0...5)
        XCTAssertEqual(lives.values[1], 1...2)
        XCTAssertEqual(lives.values[2], 0...5)
        XCTAssertEqual(lives.gradients[0], 5...5)
        XCTAssertEqual(lives.gradients[1], 4...5)
        XCTAssertEqual(lives.gradients[2], 0...5)
    }

    /// A residual block's output is made from the block before's: backward makes each one again
    /// once (kept from its stage's first refill to its own block's backward), not its stage's whole
    /// chain again for every block, which a refill per group of nearby readers would do.
    func testResidualOutputsAreMadeAgainOnce() {
        var config = EncoderUNetConfig(encoder: .resnet34, classes: 1)
        config.widthDivisor = 16
        config.decoderChannels = [16, 8, 8, 4, 4]
        let model = GraphModel(config, pool: WorkerPool(threads: 1))
        model.plan(batch: 2, height: 64, width: 64, gradients: true)
        let adds = model.graph.layers.filter { if case .add = $0.op { return true } else { return false } }
        XCTAssertEqual(adds.count, 16, "resnet34: 3 + 4 + 6 + 3 blocks")
        let recomputed = adds.filter { model.refillsOf[$0.output] != nil }
        // All but the four stages' outputs, which the decoder reads.
        XCTAssertEqual(recomputed.count, 12, "residual outputs are made again in backward")
        for layer in recomputed { XCTAssertEqual(model.refillsOf[layer.output], 1, layer.name) }
    }

    /// A gradient aliased to another (BatchNorm writing its input's gradient over its output's)
    /// takes the same memory, for the union of the two lifetimes; without the alias the two
    /// overlap at the op that reads one and writes the other, and need two buffers.
    func testAliasedGradientsShareOneBuffer() {
        func arena(aliases: [Int: Int]) -> ActivationArena {
            var a = ActivationArena()
            for _ in 0..<3 { _ = a.add(Shape(1, 2, 4, 4)) }
            // Slot 2's gradient (the output's) lives 3...4, slot 1's (the input's) 4...5, slot 0's
            // 6...7; the values 0...2, before all of them.
            a.allocateForTraining(valueLifetimes: [0...0, 1...1, 2...2], gradientLifetimes: [6...7, 4...5, 3...4],
                                  gradientAliases: aliases)
            return a
        }
        let plain = arena(aliases: [:]), aliased = arena(aliases: [1: 2])
        XCTAssertNotEqual(plain.gradientRange(1), plain.gradientRange(2))
        XCTAssertEqual(aliased.gradientRange(1), aliased.gradientRange(2))
        let bytes = { (a: ActivationArena) in a.plannedParts(with: Scratch(threads: 1)).valuesAndGradients }
        XCTAssertEqual(bytes(plain), 2 * 32 * 4)
        XCTAssertEqual(bytes(aliased), 32 * 4, "one buffer of 32 floats for everything")
    }

    /// Placement by size alone spans 6 units here; longer lifetimes first among equal sizes
    /// (one of the orders `place` tries) spans 5. No two buffers whose lifetimes overlap may
    /// overlap in memory.
    func testPlacementTriesLongerLifetimesFirstAmongEqualSizes() {
        let sizes = [2, 1, 2, 1, 2]
        let lifetimes: [ClosedRange<Int>?] = [4...4, 1...3, 1...1, 2...6, 0...3]
        let (offsets, end) = ActivationArena.place(sizes: sizes, lifetimes: lifetimes)
        XCTAssertEqual(end, 5)
        for i in sizes.indices {
            for j in sizes.indices where i < j && lifetimes[i]!.overlaps(lifetimes[j]!) {
                let a = offsets[i]!..<(offsets[i]! + sizes[i]), b = offsets[j]!..<(offsets[j]! + sizes[j])
                XCTAssertFalse(a.overlaps(b), "buffers \(i) and \(j)")
            }
        }
    }
}
