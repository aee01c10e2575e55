import XCTest
import Foundation
import SegEngine
@testable import SegModel

final class UNetTests: XCTestCase {
    /// The Keras car-segmentation UNet: the issue's parameter and FLOP figures.
    func testDefaultModelMatchesReferenceFigures() {
        let unet = UNet(UNetConfig(), pool: WorkerPool(threads: 1))
        XCTAssertEqual(unet.parameterCount, 3_717_121)
        unet.plan(batch: 1, height: 128, width: 128)
        let forward = unet.layers.reduce(0) { $0 + $1.forwardFLOPs } / 1e9
        let training = unet.layers.reduce(0) { $0 + $1.trainingFLOPs } / 1e9
        XCTAssertEqual(forward, 6.23, accuracy: 0.005)
        XCTAssertEqual(training, 18.66, accuracy: 0.005)
        XCTAssertEqual(unet.layers.reduce(0) { $0 + $1.parameters }, 3_717_121)
    }

    func testTensorNamesAndLayouts() {
        let store = UNet(UNetConfig(), pool: WorkerPool(threads: 1)).store
        func shape(_ name: String) -> Shape? { store.value(named: name)?.shape }
        XCTAssertEqual(shape("down.0.conv1.weight"), Shape(32, 3, 3, 3))      // OIHW
        XCTAssertEqual(shape("down.0.conv1.bias"), .vector(32))
        XCTAssertEqual(shape("down.3.conv2.weight"), Shape(256, 256, 3, 3))
        XCTAssertEqual(shape("up.0.conv1.weight"), Shape(256, 512, 3, 3))     // [skip 256, up 256]
        XCTAssertEqual(shape("up.1.conv1.weight"), Shape(128, 384, 3, 3))
        XCTAssertEqual(shape("up.2.conv1.weight"), Shape(64, 192, 3, 3))
        XCTAssertEqual(shape("up.3.conv1.weight"), Shape(32, 96, 3, 3))
        XCTAssertEqual(shape("head.weight"), Shape(1, 32, 3, 3))
        XCTAssertEqual(shape("head.bias"), .vector(1))
        XCTAssertNil(shape("up.0.upconv.weight"))
        XCTAssertNil(shape("down.0.bn1.weight"))

        var config = UNetConfig()
        config.norm = .batch
        config.upsampling = .transpose
        config.classes = 3
        config.headKernel = 1
        let bnStore = UNet(config, pool: WorkerPool(threads: 1)).store
        XCTAssertEqual(bnStore.value(named: "up.0.upconv.weight")?.shape, Shape(256, 256, 2, 2))  // IOHW
        XCTAssertEqual(bnStore.value(named: "down.1.bn2.running_var")?.shape, .vector(64))
        XCTAssertNil(bnStore.value(named: "down.0.conv1.bias"), "a conv followed by BN has no bias")
        XCTAssertEqual(bnStore.value(named: "head.weight")?.shape, Shape(3, 32, 1, 1))
        let bufferNames = bnStore.entries.filter { $0.kind == .buffer }.map(\.name)
        XCTAssertTrue(bufferNames.allSatisfy { $0.hasSuffix("running_mean") || $0.hasSuffix("running_var") })
        XCTAssertEqual(bufferNames.count, 4 * 4 * 2)  // 4 levels x 2 sides x 2 BN x 2 statistics
    }

    /// --norm group (issue #18): each conv's GroupNorm has a weight (1) and bias (0) per channel under
    /// the module name gn{1,2}, the conv has no bias, there are no buffers; the layer rows name the
    /// group count; training and evaluation forwards are the same computation.
    func testGroupNormParametersLayersAndModes() {
        var config = UNetConfig()
        config.baseChannels = 24   // 24 -> 24 groups, 48 -> 24, 96 -> 32, 192 -> 32
        config.depth = 3
        config.norm = .group
        config.inChannels = 2
        let unet = UNet(config, pool: WorkerPool(threads: 2))
        let store = unet.store
        XCTAssertEqual(store.value(named: "down.0.gn1.weight")?.toArray(), [Float](repeating: 1, count: 24))
        XCTAssertEqual(store.value(named: "up.1.gn2.bias")?.toArray(), [Float](repeating: 0, count: 48))
        XCTAssertNil(store.value(named: "down.0.conv1.bias"), "a conv followed by GN has no bias")
        XCTAssertNil(store.value(named: "down.0.bn1.weight"))
        XCTAssertTrue(store.entries.allSatisfy { $0.kind == .parameter }, "GroupNorm keeps no running statistics")
        XCTAssertEqual(Double(unet.parameterCount), config.estimatedParameterCounts.parameters)

        unet.plan(batch: 2, height: 16, width: 16)
        let kinds = Dictionary(unet.layers.map { ($0.name, $0.kind) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(kinds["down.0.conv1"], "conv3x3+gn24+relu")
        XCTAssertEqual(kinds["down.1.conv2"], "conv3x3+gn24+relu")
        XCTAssertEqual(kinds["down.2.conv2"], "conv3x3+gn32+relu")
        XCTAssertEqual(unet.layers.reduce(0) { $0 + $1.parameters }, unet.parameterCount)

        let images = OwnedTensor(Shape(2, 2, 16, 16))
        var rng = SplitMix64(seed: 4)
        for i in 0..<images.tensor.count { images.tensor[i] = rng.nextFloat(in: -1...1) }
        let training = unet.forward(images.tensor, training: true).toArray()
        let before = store.values.tensor.toArray()
        let evaluation = unet.forward(images.tensor, training: false).toArray()
        XCTAssertEqual(training.map(\.bitPattern), evaluation.map(\.bitPattern), "GroupNorm: the same in both modes")
        XCTAssertEqual(store.values.tensor.toArray(), before, "a forward writes no parameter or buffer")
    }

    /// The description kept in state.json: "norm" for every setting; one written before --norm
    /// ("batchNorm": true / false) still loads as batch / none; an unknown norm is refused in one line.
    func testNormInModelDescriptions() throws {
        for norm in NormLayer.allCases {
            var config = UNetConfig()
            config.norm = norm
            let description = ModelDescription(.unet(config), imageSize: 64)
            let data = try JSONEncoder().encode(description)
            XCTAssertTrue(String(decoding: data, as: UTF8.self).contains("\"norm\":\"\(norm.rawValue)\""))
            XCTAssertEqual(try JSONDecoder().decode(ModelDescription.self, from: data), description)
            XCTAssertTrue(description.flagValues.contains { $0.flag == "--norm" && $0.value == norm.rawValue })
        }
        for (old, norm) in [(true, NormLayer.batch), (false, .none)] {
            let json = #"{"architecture":"unet","imageSize":64,"inChannels":3,"classes":1,"baseChannels":8,"depth":2,"batchNorm":"#
                + "\(old)" + #","upsampling":"bilinear","headKernel":3}"#
            guard case .unet(let unet) = try JSONDecoder().decode(ModelDescription.self, from: Data(json.utf8)).architecture else {
                return XCTFail("an old description must decode as the plain UNet")
            }
            XCTAssertEqual(unet.norm, norm, json)
        }
        let unknown = #"{"imageSize":64,"inChannels":3,"classes":1,"baseChannels":8,"depth":2,"norm":"layer","upsampling":"bilinear","headKernel":3}"#
        XCTAssertThrowsError(try JSONDecoder().decode(ModelDescription.self, from: Data(unknown.utf8))) {
            XCTAssertEqual("\($0)", "unknown norm layer (none, batch or group)")
        }
    }

    /// --class-names travel in the description (older ones have none); a count that does not fit
    /// the classes is refused in one line.
    func testClassNamesInModelDescriptions() throws {
        var config = UNetConfig()
        config.classes = 3
        var description = ModelDescription(.unet(config), imageSize: 64)
        let plain = try JSONEncoder().encode(description)
        XCTAssertFalse(String(decoding: plain, as: UTF8.self).contains("classNames"))
        XCTAssertNil(try JSONDecoder().decode(ModelDescription.self, from: plain).classNames)
        description.classNames = ["bg", "car", "sky"]
        let data = try JSONEncoder().encode(description)
        XCTAssertEqual(try JSONDecoder().decode(ModelDescription.self, from: data).classNames, ["bg", "car", "sky"])
        description.classNames = ["bg", "car"]
        XCTAssertThrowsError(try JSONDecoder().decode(ModelDescription.self, from: try JSONEncoder().encode(description))) {
            XCTAssertEqual("\($0)", "2 class names for 3 classes")
        }
    }

    func testInitializationIsSeededAndScaled() {
        var config = UNetConfig()
        config.seed = 7
        let a = UNet(config, pool: WorkerPool(threads: 1)).store
        let b = UNet(config, pool: WorkerPool(threads: 2)).store
        XCTAssertEqual(a.values.tensor.toArray(), b.values.tensor.toArray())
        config.seed = 8
        let c = UNet(config, pool: WorkerPool(threads: 1)).store
        XCTAssertNotEqual(a.values.tensor.toArray(), c.values.tensor.toArray())

        // He normal: std sqrt(2 / (Cin * 9)) for a 256x256 conv; biases zero.
        let w = a.value(named: "down.3.conv2.weight")!.toArray()
        let mean = w.reduce(0, +) / Float(w.count)
        let std = (w.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(w.count)).squareRoot()
        XCTAssertEqual(std, (2.0 / Float(256 * 9)).squareRoot(), accuracy: 0.01 * (2.0 / Float(256 * 9)).squareRoot() * 3)
        XCTAssertEqual(abs(mean), 0, accuracy: 1e-3)
        XCTAssertTrue(a.value(named: "down.3.conv2.bias")!.toArray().allSatisfy { $0 == 0 })

        config.initialization = .glorotUniform
        let glorot = UNet(config, pool: WorkerPool(threads: 1)).store  // keep the store alive: views do not own
        let g = glorot.value(named: "up.0.conv1.weight")!.toArray()
        let limit = (6.0 / Float(512 * 9 + 256 * 9)).squareRoot()
        XCTAssertLessThanOrEqual(g.map(abs).max()!, limit * (1 + 1e-6), "Glorot uniform stays within its limit")
        XCTAssertGreaterThan(g.map(abs).max()!, 0.95 * limit)
    }

    func testSizesTheModelCannotTakeAreReported() {
        var config = UNetConfig()
        XCTAssertNil(config.validate(imageSize: 16))
        XCTAssertNotNil(config.validate(imageSize: 15))
        config.depth = 0
        XCTAssertEqual(config.validate(), "--depth must be at least 1 (got 0)")
        config = UNetConfig(); config.classes = 0
        XCTAssertTrue(config.validate()!.hasPrefix("--classes"))
        config = UNetConfig(); config.headKernel = 5
        XCTAssertTrue(config.validate()!.hasPrefix("--head-kernel"))
    }
    /// The distinct 3x3 layers `segtrain bench --conv-layers` times: for the default UNet at 128 px,
    /// the twelve rows of docs/PERFORMANCE.md's per-layer table, in its order.
    func testConvLayerShapesOfTheDefaultUNet() {
        let expected = [(3, 32, 128), (32, 32, 128), (32, 64, 64), (64, 64, 64), (64, 128, 32), (128, 128, 32),
                        (128, 256, 16), (256, 256, 16), (512, 256, 16), (384, 128, 32), (192, 64, 64), (96, 32, 128)]
        XCTAssertEqual(UNetConfig().convLayerShapes(imageSize: 128),
                       expected.map { ConvLayerShape(inChannels: $0.0, outChannels: $0.1, side: $0.2) })
        var transposed = UNetConfig()
        transposed.upsampling = .transpose
        transposed.depth = 2
        XCTAssertEqual(transposed.convLayerShapes(imageSize: 40).map(\.description),
                       ["3 -> 32 @40", "32 -> 32 @40", "32 -> 64 @20", "64 -> 64 @20", "128 -> 64 @20", "96 -> 32 @40"])
    }

    /// The convolution policy a UNet is built with is the one its convolutions run with: the same
    /// weights under GEMM and under F(2x2) (auto's choice for the 8-channel layers at 16 px) give
    /// logits and gradients equal within rounding but not bit for bit, and one policy repeats exactly.
    func testConvPolicyChosenAtBuildReachesEveryConvolution() {
        var config = UNetConfig()
        config.baseChannels = 8
        config.depth = 1
        let images = OwnedTensor(Shape(2, 3, 16, 16))
        var rng = SplitMix64(seed: 5)
        for i in 0..<images.tensor.count { images.tensor[i] = rng.nextUnitFloat() }
        func run(_ policy: ConvPolicy) -> (logits: [Float], gradients: [Float]) {
            let unet = UNet(config, convPolicy: policy, pool: WorkerPool(threads: 2))
            XCTAssertEqual(unet.convPolicy, policy)
            unet.plan(batch: 2, height: 16, width: 16)
            let logits = unet.forward(images.tensor, training: true)
            unet.zeroActivationGradients()
            for i in 0..<unet.logitsGradient.count { unet.logitsGradient[i] = Float(i % 7) / 7 - 0.5 }
            unet.store.zeroGradients()
            unet.backward()
            let g = unet.store.gradients.tensor
            return ((0..<logits.count).map { logits[$0] }, (0..<g.count).map { g[$0] })
        }
        XCTAssertEqual(ConvPolicy.standard.winogradTile(kernel: 3, dilation: 1, inChannels: 8, outChannels: 8,
                                                        height: 16, width: 16), 2)
        let auto = run(.standard), gemm = run(ConvPolicy(algorithm: .gemm))
        XCTAssertEqual(run(.standard).logits.map(\.bitPattern), auto.logits.map(\.bitPattern))
        XCTAssertTrue(auto.logits.map(\.bitPattern) != gemm.logits.map(\.bitPattern), "the policy changed no forward kernel")
        XCTAssertTrue(auto.gradients.map(\.bitPattern) != gemm.gradients.map(\.bitPattern), "the policy changed no backward kernel")
        for (a, b) in zip(auto.logits, gemm.logits) { XCTAssertEqual(a, b, accuracy: 1e-4) }
        for (a, b) in zip(auto.gradients, gemm.gradients) { XCTAssertEqual(a, b, accuracy: 1e-3 * max(1, abs(b))) }
    }
}

final class ActivationArenaTests: XCTestCase {
    /// Gradients whose lifetimes overlap never share memory; disjoint ones may.
    func testSharedGradientsNeverOverlapWhileLive() {
        var rng = SplitMix64(seed: 4)
        for _ in 0..<50 {
            var arena = ActivationArena()
            let slots = 12
            var accesses = [[Int]](repeating: [], count: 20)
            for slot in 0..<slots {
                _ = arena.add(Shape(1, 1 + Int(rng.next() % 5), 4 + Int(rng.next() % 9), 3), gradient: true)
                let a = Int(rng.next() % 20), b = Int(rng.next() % 20)
                accesses[min(a, b)].append(slot)
                accesses[max(a, b)].append(slot)
            }
            let lifetimes = ActivationArena.lifetimes(of: accesses, slots: slots, liveBefore: [])
            arena.allocate(gradientLifetimes: lifetimes)
            for i in 0..<slots {
                for j in (i + 1)..<slots where lifetimes[i]!.overlaps(lifetimes[j]!) {
                    XCTAssertFalse(arena.gradientRange(i)!.overlaps(arena.gradientRange(j)!), "slots \(i), \(j)")
                }
            }
            XCTAssertLessThanOrEqual(arena.gradientCount, arena.unsharedGradientCount)
        }
    }

    /// The default UNet's activation gradients at 128x128, batch 8, share memory.
    func testUNetGradientMemoryIsShared() {
        let unet = UNet(UNetConfig(), pool: WorkerPool(threads: 1))
        unet.plan(batch: 2, height: 128, width: 128)
        let (shared, unshared) = unet.activationGradientFloats
        XCTAssertLessThan(Double(shared), 0.5 * Double(unshared), "shared \(shared) of \(unshared) floats")
    }

}

/// The backward tape's frontiers: which gradients are final while backward still runs.
final class GradientFrontierTests: XCTestCase {
    func testFrontiersMoveFromTheEndToZeroAndMarkFinalGradients() {
        for batchNorm in [false, true] {
            for upsampling in [Upsampling.bilinear, .transpose] {
                var config = UNetConfig()
                config.baseChannels = 4
                config.depth = 3
                config.norm = batchNorm ? .batch : .none
                config.upsampling = upsampling
                let unet = UNet(config, pool: WorkerPool(threads: 1))
                unet.plan(batch: 1, height: 16, width: 16)
                let f = unet.gradientFrontiers
                XCTAssertEqual(f.last, 0)
                XCTAssertLessThan(f[0], unet.parameterCount, "the head's gradient is final after the first op")
                XCTAssertTrue(zip(f, f.dropFirst()).allSatisfy { $0 >= $1 }, "frontiers only move down")
                // The claim itself: gradients past the frontier do not change in the rest of backward.
                let images = OwnedTensor(Shape(1, 3, 16, 16))
                var rng = SplitMix64(seed: 1)
                for i in 0..<images.tensor.count { images.tensor[i] = rng.nextUnitFloat() }
                unet.forward(images.tensor, training: true)
                unet.zeroActivationGradients()
                for i in 0..<unet.logitsGradient.count { unet.logitsGradient[i] = rng.nextUnitFloat() - 0.5 }
                unet.store.zeroGradients()
                var snapshots: [(Int, [Float])] = []
                unet.backward { op in
                    let g = unet.store.gradients.tensor
                    snapshots.append((f[op], (f[op]..<g.count).map { g[$0] }))
                }
                let g = unet.store.gradients.tensor
                for (frontier, values) in snapshots {
                    XCTAssertEqual(values, (frontier..<g.count).map { g[$0] }, "a gradient past \(frontier) changed later")
                }
                XCTAssertTrue((0..<g.count).contains { g[$0] != 0 })
            }
        }
    }
}
