import XCTest
import SegEngine
@testable import SegModel

/// Every model's `inferenceGraph` (what `segtrain export` writes) uses each of its weights and
/// running statistics exactly once, reads only earlier tensors and ends in the logits: a layer the
/// graph forgot, or one it lists twice, fails here before any runtime sees the file. That the
/// graph computes what forward computes is checked end to end against onnxruntime
/// (Tests/SegtrainCLITests/ExportTests.swift).
final class InferenceGraphTests: XCTestCase {
    func parameters(of op: InferenceOp) -> [Int] {
        switch op {
        case .conv(let weight, let bias, _, _), .convTranspose2x2(let weight, let bias): return [weight] + (bias.map { [$0] } ?? [])
        case .batchNorm(let gamma, let beta, let mean, let variance, let epsilon):
            XCTAssertEqual(epsilon, batchNormEpsilon)
            return [gamma, beta, mean, variance]
        case .groupNorm(let gamma, let beta, _, let epsilon):
            XCTAssertEqual(epsilon, groupNormEpsilon)
            return [gamma, beta]
        default: return []
        }
    }

    func assertUsesEveryTensorOnce(_ model: any SegmentationModel, _ label: String) {
        let graph = model.inferenceGraph
        var uses = [Int](repeating: 0, count: model.store.entries.count)
        for (k, node) in graph.nodes.enumerated() {
            XCTAssertEqual(node.output, k + 1, "\(label): \(node.name)")
            XCTAssertTrue(node.inputs.allSatisfy { $0 <= k }, "\(label): \(node.name) reads a later tensor")
            for p in parameters(of: node.op) { uses[p] += 1 }
        }
        for (entry, count) in zip(model.store.entries, uses) {
            // BatchNorm's num_batches_tracked counts training steps; inference does not read it.
            let expected = entry.name.hasSuffix(Safetensors.batchCounterSuffix) ? 0 : 1
            XCTAssertEqual(count, expected, "\(label): \(entry.name) used \(count) times")
        }
        XCTAssertEqual(graph.inChannels, model.inChannels, label)
        XCTAssertEqual(graph.classes, model.classes, label)
        XCTAssertEqual(graph.output, graph.nodes.count, label)
    }

    func testEveryModelUsesEachWeightOnce() {
        let pool = WorkerPool(threads: 1)
        for norm in NormLayer.allCases {
            for upsampling in Upsampling.allCases {
                var c = UNetConfig()
                c.baseChannels = 4; c.depth = 3; c.norm = norm; c.upsampling = upsampling; c.classes = 2
                assertUsesEveryTensorOnce(UNet(c, pool: pool), "unet \(norm) \(upsampling)")
            }
        }
        for encoder in EncoderKind.allCases {
            var c = EncoderUNetConfig(encoder: encoder)
            c.widthDivisor = 16
            c.decoderChannels = [16, 8, 8, 4, 4]
            assertUsesEveryTensorOnce(GraphModel(c, pool: pool), "\(encoder.rawValue)")
        }
        for encoder in EncoderKind.allCases {
            var c = DeepLabV3PlusConfig(encoder: encoder)
            c.widthDivisor = 16
            c.decoderChannels = 8
            assertUsesEveryTensorOnce(GraphModel(c, pool: pool), "deeplabv3plus \(encoder.rawValue)")
        }
    }
}
