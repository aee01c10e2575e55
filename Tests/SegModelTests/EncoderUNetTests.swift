import XCTest
import Foundation
import SegEngine
import SegEngineTestSupport
@testable import SegModel

/// The encoder UNets (issue #16): smp's parameter counts, descriptions that keep old checkpoints
/// loading, the batch counters in safetensors, thread-count independence, and BatchNorm's two modes.
final class EncoderUNetTests: XCTestCase {
    /// smp.Unet(encoder, encoder_weights=None, classes=K).parameters(), counted by smp 0.6 itself
    /// (scripts/make-smp-golden.py prints the state dicts; these totals came from the same models).
    func testParameterCountsAreSMPs() {
        let expected: [(EncoderKind, Int, Int, buffers: Int, counters: Int)] = [
            (.resnet18, 14_328_209, 14_328_499, 11_584, 30),
            (.resnet34, 24_436_369, 24_436_659, 19_008, 46),
            (.resnet50, 32_521_105, 32_521_395, 55_104, 63),
            (.mobilenetV2, 6_628_945, 6_629_235, 36_096, 62),
        ]
        for (encoder, oneClass, threeClasses, buffers, counters) in expected {
            for (classes, count) in [(1, oneClass), (3, threeClasses)] {
                let layout = EncoderUNetConfig(encoder: encoder, classes: classes).graph().layout
                XCTAssertEqual(layout.parameterCount, count, "\(encoder.rawValue), \(classes) classes")
                let counterEntries = layout.entries.filter { $0.name.hasSuffix(Safetensors.batchCounterSuffix) }
                XCTAssertEqual(counterEntries.count, counters, encoder.rawValue)
                XCTAssertEqual(layout.bufferCount - counters, buffers, "\(encoder.rawValue): running statistics")
                let estimate = EncoderUNetConfig(encoder: encoder, classes: classes).estimatedParameterCounts
                XCTAssertEqual(estimate.parameters, Double(count))
                // The layer table of `segtrain info` adds up to the same total.
                let plan = GraphPlan(EncoderUNetConfig(encoder: encoder, classes: classes).graph(), batch: 1, height: 64, width: 64, threads: 1)
                XCTAssertEqual(plan.rows.reduce(0) { $0 + $1.parameters }, count, "\(encoder.rawValue): layer table")
                // FLOPs are per image whatever the batch planned (bench's GFLOP/s multiplies by img/s);
                // the stem: 2 x (3 x 7 x 7) x 64 x 32 x 32 at 64 x 64.
                let batch4 = GraphPlan(EncoderUNetConfig(encoder: encoder, classes: classes).graph(), batch: 4, height: 64, width: 64, threads: 2)
                XCTAssertEqual(batch4.rows.map(\.forwardFLOPs), plan.rows.map(\.forwardFLOPs), encoder.rawValue)
                if encoder != .mobilenetV2 { XCTAssertEqual(batch4.rows[0].forwardFLOPs, 2.0 * 3 * 49 * 64 * 32 * 32) }
            }
        }
    }

    func testDescriptionRoundTripAndOldCheckpoints() throws {
        var config = EncoderUNetConfig(encoder: .mobilenetV2, inChannels: 1, classes: 4)
        config.decoderChannels = [128, 64, 32, 16, 8]
        let description = ModelDescription(.encoderUNet(config), imageSize: 256)
        let data = try JSONEncoder().encode(description)
        let json = String(decoding: data, as: UTF8.self)
        XCTAssertTrue(json.contains("\"encoder\":\"mobilenet_v2\""), json)
        XCTAssertEqual(try JSONDecoder().decode(ModelDescription.self, from: data), description)
        XCTAssertNil(description.problem)
        XCTAssertEqual(ModelDescription(.encoderUNet(config), imageSize: 250).problem,
                       "--image-size 250 does not suit --encoder mobilenet_v2: it must be a multiple of 32")

        // A state.json written before encoders existed (no "architecture", no "encoder") is the plain UNet.
        let old = #"{"imageSize":64,"inChannels":3,"classes":1,"baseChannels":8,"depth":2,"batchNorm":true,"upsampling":"bilinear","headKernel":3}"#
        guard case .unet(let unet) = try JSONDecoder().decode(ModelDescription.self, from: Data(old.utf8)).architecture else {
            return XCTFail("an old description must decode as the plain UNet")
        }
        XCTAssertEqual(unet.baseChannels, 8)
        let none = #"{"architecture":"unet","encoder":"none","imageSize":64,"inChannels":3,"classes":1,"baseChannels":8,"depth":2,"batchNorm":true,"upsampling":"bilinear","headKernel":3}"#
        guard case .unet = try JSONDecoder().decode(ModelDescription.self, from: Data(none.utf8)).architecture else {
            return XCTFail("encoder none is the plain UNet")
        }
        let unknown = #"{"architecture":"unet","encoder":"vgg16","imageSize":64,"inChannels":3,"classes":1}"#
        XCTAssertThrowsError(try JSONDecoder().decode(ModelDescription.self, from: Data(unknown.utf8))) {
            XCTAssertTrue("\($0)".contains("unknown encoder vgg16"), "\($0)")
        }
    }

    /// num_batches_tracked counts training forwards and goes to safetensors as PyTorch's int64 scalar.
    func testBatchCountersRoundTripAsInt64() throws {
        let model = GraphModel(EncoderUNetConfig(encoder: .resnet18), pool: WorkerPool(threads: 1))
        model.plan(batch: 2, height: 32, width: 32)
        let images = OwnedTensor(Shape(2, 3, 32, 32))
        SMPGolden.fill(images.tensor, rule: "input")
        model.forward(images.tensor, training: true)
        model.forward(images.tensor, training: true)
        model.forward(images.tensor, training: false)
        let counter = try XCTUnwrap(model.store.value(named: "encoder.layer3.1.bn2.num_batches_tracked"))
        XCTAssertEqual(counter[0], 2, "two training forwards; evaluation does not count")

        let bytes = Safetensors.encode(Safetensors.items(of: model.store, gradients: false))
        let file = try SafetensorsFile(bytes: bytes, name: "model.safetensors")
        let entry = try XCTUnwrap(file.entries["encoder.bn1.num_batches_tracked"])
        XCTAssertEqual(entry.shape, [])
        XCTAssertTrue(entry.isInteger)
        let copy = GraphModel(EncoderUNetConfig(encoder: .resnet18), pool: WorkerPool(threads: 1))
        try file.read(into: Safetensors.items(of: copy.store, gradients: false))
        XCTAssertEqual(copy.store.buffers.tensor.toArray(), model.store.buffers.tensor.toArray())
        XCTAssertEqual(copy.store.values.tensor.toArray(), model.store.values.tensor.toArray())
    }

    /// Under `--conv gemm` every op of the model splits its work by shape only: 1 and 2 threads give
    /// the same bits, forward, backward and running statistics. (The default policy runs the 3x3
    /// stride-1 convolutions with Winograd, whose weight gradient sums per-thread partials; its
    /// accuracy is SMPGoldenTests'.)
    func testThreadCountDoesNotChangeAnyBitUnderGEMM() {
        for encoder in [EncoderKind.resnet50, .mobilenetV2] {
            var results: [[[Float]]] = []
            for threads in [1, 2] {
                let model = GraphModel(EncoderUNetConfig(encoder: encoder, classes: 3), convPolicy: ConvPolicy(algorithm: .gemm),
                                        pool: WorkerPool(threads: threads))
                model.plan(batch: 2, height: 64, width: 32)
                let images = OwnedTensor(Shape(2, 3, 64, 32))
                SMPGolden.fill(images.tensor, rule: "input")
                model.forward(images.tensor, training: true)
                model.zeroActivationGradients()
                SMPGolden.fill(model.logitsGradient, rule: "projection")
                model.store.zeroGradients()
                model.backward()
                let eval = model.forward(images.tensor, training: false).toArray()
                results.append([model.store.gradients.tensor.toArray(), model.store.buffers.tensor.toArray(), eval])
            }
            for (part, name) in ["gradients", "buffers", "eval logits"].enumerated() {
                XCTAssertEqual(results[0][part].map(\.bitPattern), results[1][part].map(\.bitPattern),
                               "\(encoder.rawValue): \(name) differ between 1 and 2 threads")
            }
        }
    }

    /// With `perImageWork` (`--conv gemm`, or `train --deterministic` under auto, Winograd included)
    /// an image's logits are the same bits in a batch of 5 (the single process) and in a batch of 3
    /// (a rank's share): what lets N ranks with --sync-bn compute each image as one process does
    /// (SyncBatchNormTests). Without it the Winograd chunks and the strided kernel's spread bands
    /// follow the batch size, and the bits differ (seen on an AMD EPYC).
    /// DeepLabV3+ too: dilated convolutions, ASPP's image pooling and the bilinear resizes are per image.
    func testAnImageGetsTheSameBitsInAnyBatchWithPerImageWork() {
        var models: [(String, () -> GraphModel)] = []
        for policy in [ConvPolicy(algorithm: .gemm), ConvPolicy(algorithm: .auto, perImageWork: true)] {
            for encoder in [EncoderKind.resnet18, .mobilenetV2] {
                models.append(("\(encoder.rawValue), \(policy.algorithm)", {
                    GraphModel(EncoderUNetConfig(encoder: encoder, classes: 2), convPolicy: policy, pool: WorkerPool(threads: 2))
                }))
            }
            models.append(("DeepLabV3+ resnet18, \(policy.algorithm)", {
                GraphModel(DeepLabV3PlusConfig(encoder: .resnet18, classes: 2), convPolicy: policy, pool: WorkerPool(threads: 2))
            }))
        }
        for (name, make) in models {
            let whole = make(), share = make()
            share.store.values.tensor.copy(from: whole.store.values.tensor)
            share.store.buffers.tensor.copy(from: whole.store.buffers.tensor)
            whole.plan(batch: 5, height: 64, width: 32)
            share.plan(batch: 3, height: 64, width: 32)
            let images = OwnedTensor(Shape(5, 3, 64, 32))
            SMPGolden.fill(images.tensor, rule: "input")
            let first = images.firstImages(3)
            let all = whole.forward(images.tensor, training: false).toArray()
            let part = share.forward(first.tensor, training: false).toArray()
            XCTAssertEqual(zip(part, all).filter { $0.bitPattern != $1.bitPattern }.count, 0,
                           "\(name): logits of the first 3 images that differ between batches of 5 and 3")
        }
    }

    /// Training mode normalises with the batch's statistics and moves the running ones by momentum
    /// 0.1 (unbiased variance); evaluation mode uses the running ones and changes nothing.
    func testBatchNormModes() throws {
        let model = GraphModel(EncoderUNetConfig(encoder: .resnet18), pool: WorkerPool(threads: 2))
        model.plan(batch: 2, height: 32, width: 32)
        let images = OwnedTensor(Shape(2, 3, 32, 32))
        SMPGolden.fill(images.tensor, rule: "input")
        let before = model.store.buffers.tensor.toArray()
        let evalLogits = model.forward(images.tensor, training: false).toArray()
        XCTAssertEqual(model.store.buffers.tensor.toArray(), before, "evaluation leaves the buffers alone")
        XCTAssertEqual(model.forward(images.tensor, training: false).toArray(), evalLogits, "evaluation is repeatable")

        let trainLogits = model.forward(images.tensor, training: true).toArray()
        XCTAssertNotEqual(trainLogits, evalLogits, "training normalises with the batch, not running mean 0 / var 1")
        // The stem's BN sees conv1's output: its running mean moves to 0.9 * 0 + 0.1 * the batch mean.
        let bn1 = try XCTUnwrap(model.store.value(named: "encoder.bn1.running_mean"))
        let weight = try XCTUnwrap(model.store.value(named: "encoder.conv1.weight"))
        let conv = OwnedTensor(Shape(2, 64, 16, 16))
        stridedConvForwardNaive(conv.tensor, images.tensor, weight: weight, bias: nil,
                                geometry: ConvGeometry(kernel: 7, stride: 2, padding: 3))
        for c in [0, 17, 63] {
            var sum = 0.0
            for n in 0..<2 { for i in 0..<256 { sum += Double(conv.tensor.plane(n, c)[i]) } }
            XCTAssertEqual(Double(bn1[c]), 0.1 * sum / 512, accuracy: 1e-6, "channel \(c)")
        }
        XCTAssertNotEqual(model.forward(images.tensor, training: false).toArray(), evalLogits,
                          "evaluation follows the updated running statistics")
    }
}
