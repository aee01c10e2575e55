// --encoder-weights: a torchvision-named classification checkpoint into an encoder UNet's encoder.
// The files are made here from a model of our own (names stripped of "encoder.", a classifier
// added), so no torch is needed; scripts/convert-weights.py checks the names against torchvision.

import Foundation
import SegEngine
@testable import SegModel
import XCTest

final class EncoderWeightsTests: XCTestCase {
    private func model(_ encoder: EncoderKind, seed: UInt64, inChannels: Int = 3) -> GraphModel {
        var config = EncoderUNetConfig(encoder: encoder, inChannels: inChannels, classes: 2)
        config.widthDivisor = 16
        config.seed = seed
        return GraphModel(config, pool: WorkerPool(threads: 1))
    }

    /// A torchvision-style file of `source`'s encoder (plus a classifier), with `edit` applied to
    /// the items first; returns its path.
    private func file(of source: GraphModel, classifier: String, edit: ([Safetensors.Item]) -> [Safetensors.Item] = { $0 }) throws -> String {
        let fc = OwnedTensor(Shape(10, 4, 1, 1))
        var items = Safetensors.items(of: source.store, gradients: false).filter { $0.name.hasPrefix("encoder.") }.map {
            Safetensors.Item(name: String($0.name.dropFirst(8)), shape: $0.shape, values: $0.values, isInteger: $0.isInteger)
        }
        items.append(Safetensors.Item(name: classifier + ".weight", shape: [10, 4], values: fc.tensor))
        items = edit(items)
        let path = NSTemporaryDirectory() + "segtrain-encoder-weights-\(UUID().uuidString).safetensors"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertNil(writeFileAtomically(path, bytes: Safetensors.encode(items)))
        return path
    }

    private func values(_ m: GraphModel, prefix: String, not: Bool = false) -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for (i, e) in m.store.entries.enumerated() where e.name.hasPrefix(prefix) != not { out[e.name] = m.store.value(i).toArray() }
        return out
    }

    func testTheEncoderIsLoadedTheDecoderKeptTheClassifierIgnored() throws {
        for (encoder, classifier) in [(EncoderKind.resnet18, "fc"), (.mobilenetV2, "classifier.1")] {
            let source = model(encoder, seed: 1), target = model(encoder, seed: 2)
            // Counters too: the source has trained.
            for (i, e) in source.store.entries.enumerated() where Safetensors.isBatchCounter(e) { source.store.value(i)[0] = 7 }
            let decoder = values(target, prefix: "encoder.", not: true)
            XCTAssertNotEqual(values(source, prefix: "encoder."), values(target, prefix: "encoder."))
            let loaded = try EncoderWeights.load(try file(of: source, classifier: classifier), into: target.store)
            XCTAssertEqual(loaded, values(source, prefix: "encoder.").count)
            XCTAssertEqual(values(target, prefix: "encoder."), values(source, prefix: "encoder."), "\(encoder)")
            XCTAssertEqual(values(target, prefix: "encoder.", not: true), decoder, "\(encoder): the decoder is untouched")
        }
    }

    /// DeepLabV3+ (issue #17) dilates its encoder's last stages but keeps torchvision's names and
    /// shapes: the same file loads into it, at either output stride, and leaves ASPP and the decoder alone.
    func testTheSameFileLoadsIntoDeepLabV3PlusAtEitherOutputStride() throws {
        for (encoder, classifier) in [(EncoderKind.resnet50, "fc"), (.mobilenetV2, "classifier.1")] {
            let source = model(encoder, seed: 1)
            let path = try file(of: source, classifier: classifier)
            for stride in [16, 8] {
                var config = DeepLabV3PlusConfig(encoder: encoder, classes: 2)
                config.widthDivisor = 16
                config.outputStride = stride
                config.seed = 2
                let target = GraphModel(config, pool: WorkerPool(threads: 1))
                let decoder = values(target, prefix: "encoder.", not: true)
                XCTAssertEqual(try EncoderWeights.load(path, into: target.store), values(source, prefix: "encoder.").count)
                XCTAssertEqual(values(target, prefix: "encoder."), values(source, prefix: "encoder."), "\(encoder) stride \(stride)")
                XCTAssertEqual(values(target, prefix: "encoder.", not: true), decoder, "\(encoder) stride \(stride)")
            }
        }
    }

    func testFilesThatDoNotFitAreRefusedNamingTheTensor() throws {
        let source = model(.resnet18, seed: 1), target = model(.resnet18, seed: 2)
        // The odd tensors' values, alive for the whole test (a Tensor does not keep its storage).
        let spare = OwnedTensor(.vector(4)), spareOne = OwnedTensor(.vector(1))
        defer { withExtendedLifetime((spare, spareOne)) {} }
        let cases: [(String, ([Safetensors.Item]) -> [Safetensors.Item])] = [
            ("tensor layer4.1.bn2.weight is missing", { $0.filter { $0.name != "layer4.1.bn2.weight" } }),
            ("unexpected tensor layer5.0.conv1.weight", { $0 + [Safetensors.Item(name: "layer5.0.conv1.weight", shape: [1], values: spareOne.tensor)] }),
            ("tensor layer1.0.conv1.weight has shape [4]", { items in items.map {
                $0.name == "layer1.0.conv1.weight" ? Safetensors.Item(name: $0.name, shape: [4], values: spare.tensor) : $0
            } }),
        ]
        for (message, edit) in cases {
            let path = try file(of: source, classifier: "fc", edit: edit)
            XCTAssertThrowsError(try EncoderWeights.load(path, into: target.store)) {
                XCTAssertTrue("\($0)".hasPrefix(path + ": ") && "\($0)".contains(message), "\($0)")
            }
        }
        // A mobilenet file for a ResNet.
        let mobile = try file(of: model(.mobilenetV2, seed: 1), classifier: "classifier.1")
        XCTAssertThrowsError(try EncoderWeights.load(mobile, into: target.store)) {
            XCTAssertTrue("\($0)".contains("unexpected tensor features.0.0.weight"), "\($0)")
        }
        // A plain UNet has no encoder.
        let unet = UNet(UNetConfig(), pool: WorkerPool(threads: 1))
        XCTAssertThrowsError(try EncoderWeights.load(mobile, into: unet.store)) {
            XCTAssertTrue("\($0)".contains("the model has no encoder"), "\($0)")
        }
    }

    /// smp's patch_first_conv: 1 channel sums RGB; C channels repeat RGB scaled by 3 / C.
    func testTheFirstConvolutionIsAdaptedToOtherInputChannels() throws {
        for encoder in [EncoderKind.resnet18, .mobilenetV2] {
            let source = model(encoder, seed: 1)
            let path = try file(of: source, classifier: "fc")
            let name = encoder == .resnet18 ? "encoder.conv1.weight" : "encoder.features.0.0.weight"
            let rgb = try XCTUnwrap(source.store.value(named: name))
            for channels in [1, 2, 4] {
                let target = model(encoder, seed: 2, inChannels: channels)
                try EncoderWeights.load(path, into: target.store)
                let adapted = try XCTUnwrap(target.store.value(named: name))
                let plane = rgb.h * rgb.w
                for o in [0, rgb.n - 1] {
                    for i in 0..<channels {
                        for p in [0, plane - 1] {
                            let expected = channels == 1 ? rgb.plane(o, 0)[p] + rgb.plane(o, 1)[p] + rgb.plane(o, 2)[p]
                                : rgb.plane(o, i % 3)[p] * 3 / Float(channels)
                            XCTAssertEqual(adapted.plane(o, i)[p], expected, accuracy: 1e-6 * max(1, abs(expected)),
                                           "\(encoder) C=\(channels) o \(o) i \(i) p \(p)")
                        }
                    }
                }
            }
        }
    }

    /// --encoder-lr-mult's parameter group: the encoder's parameters are one contiguous range.
    func testTheEncoderParametersAreOneRange() throws {
        for encoder in EncoderKind.allCases {
            let m = model(encoder, seed: 1)
            let range = try XCTUnwrap(m.store.parameterRange(prefix: "encoder."), "\(encoder)")
            for e in m.store.entries where e.kind == .parameter {
                XCTAssertEqual(range.contains(e.offset), e.name.hasPrefix("encoder."), "\(encoder) \(e.name)")
            }
            XCTAssertEqual(range.count, m.store.entries.filter { $0.kind == .parameter && $0.name.hasPrefix("encoder.") }
                .reduce(0) { $0 + $1.shape.count })
        }
        XCTAssertNil(UNet(UNetConfig(), pool: WorkerPool(threads: 1)).store.parameterRange(prefix: "encoder."))
    }
}
