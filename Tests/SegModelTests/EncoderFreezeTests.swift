import XCTest
import Foundation
import SegEngine
import SegEngineTestSupport
@testable import SegModel

/// --freeze-encoder at the model: a frozen encoder's BatchNorm runs in evaluation mode in a training
/// forward (running statistics used, not updated), backward stops at the decoder (the encoder's
/// parameter gradients stay zero) and gives the decoder the gradients of the ordinary backward
/// through an evaluation-mode encoder, which finite differences confirm. Narrowed models as in
/// EncoderUNetGradientTests (resnet18 with every width / 16, decoder 16-8-8-4-4, 32 x 32, batch 2).
final class EncoderFreezeTests: XCTestCase {
    private let (batch, size) = (2, 32)

    private func model(frozen: Bool) -> GraphModel {
        var config = EncoderUNetConfig(encoder: .resnet18, classes: 2)
        config.widthDivisor = 16
        config.decoderChannels = [16, 8, 8, 4, 4]
        config.seed = 7
        let model = GraphModel(config, pool: WorkerPool(threads: 2))
        model.plan(batch: batch, height: size, width: size)
        // Running statistics other than 0 and 1, so evaluation mode is not the identity.
        for (index, entry) in model.store.entries.enumerated() where entry.name.hasSuffix("running_mean") || entry.name.hasSuffix("running_var") {
            let t = model.store.value(index), v = SMPGolden.rule(entry.name, count: t.count)
            for i in 0..<t.count { t[i] = entry.name.hasSuffix("running_var") ? 0.75 + 0.25 * v[i] : 0.1 * v[i] }
        }
        model.frozenEncoder = frozen
        return model
    }

    private func images() -> OwnedTensor {
        let images = OwnedTensor(Shape(batch, 3, size, size))
        SMPGolden.fill(images.tensor, rule: "input")
        return images
    }

    /// One training forward, the projection's gradient into the logits, backward.
    private func gradientStep(_ model: GraphModel, _ images: Tensor, _ projection: Projection) {
        model.store.zeroGradients()
        model.forward(images, training: true)
        model.zeroActivationGradients()
        projection.seed(model.logitsGradient)
        model.backward()
    }

    /// A frozen step (forward, backward, Adam with weight decay skipping the encoder) leaves every
    /// encoder.* weight, running statistic and counter bitwise as it was, with zero gradients; the
    /// decoder's weights, gradients, running statistics and counters all move.
    func testAFrozenStepLeavesTheEncoderBitwiseAndTrainsTheDecoder() throws {
        let model = model(frozen: true), images = images()
        let projection = Projection(shape: model.logits.shape, seed: 3)
        let store = model.store
        let encoder = try XCTUnwrap(store.parameterRange(prefix: "encoder."))
        let values = store.values.tensor.toArray(), buffers = store.buffers.tensor.toArray()
        let unfrozen = self.model(frozen: false)
        let unfrozenLogits = unfrozen.forward(images.tensor, training: true).toArray()
        gradientStep(model, images.tensor, projection)
        XCTAssertNotEqual(model.logits.toArray(), unfrozenLogits, "the frozen encoder normalises with its running statistics")

        let gradients = store.gradients.tensor.toArray()
        XCTAssertTrue(gradients[encoder].allSatisfy { $0.bitPattern == 0 }, "the encoder's gradients stay zero")
        for entry in store.entries where !entry.name.hasPrefix("encoder.") {
            let range = entry.offset..<(entry.offset + entry.shape.count)
            if entry.kind == .parameter {
                XCTAssertTrue(gradients[range].contains { $0 != 0 }, "\(entry.name): no gradient")
            } else {
                XCTAssertNotEqual(Array(store.buffers.tensor.toArray()[range]), Array(buffers[range]), "\(entry.name) did not move")
            }
        }
        for entry in store.entries where entry.name.hasPrefix("encoder.") && entry.kind == .buffer {
            let range = entry.offset..<(entry.offset + entry.shape.count)
            XCTAssertEqual(store.buffers.tensor.toArray()[range].map(\.bitPattern), buffers[range].map(\.bitPattern), entry.name)
        }

        let optimizer = Optimizer(OptimizerConfig(kind: .adamw, weightDecay: 0.01), parameterCount: store.parameterCount)
        optimizer.freezable = encoder
        optimizer.frozen = true
        optimizer.apply(values: store.values.tensor, gradients: store.gradients.tensor, learningRate: 0.01, pool: model.pool)
        let after = store.values.tensor.toArray()
        XCTAssertEqual(after[encoder].map(\.bitPattern), values[encoder].map(\.bitPattern), "the encoder's weights")
        XCTAssertNotEqual(Array(after[encoder.upperBound...]), Array(values[encoder.upperBound...]), "the decoder's weights")

        // Unfrozen again, the encoder trains: its BatchNorm statistics move and it gets gradients.
        model.frozenEncoder = false
        gradientStep(model, images.tensor, projection)
        XCTAssertTrue(store.gradients.tensor.toArray()[encoder].contains { $0 != 0 })
        let bn1 = try XCTUnwrap(store.index(of: "encoder.bn1.running_mean"))
        XCTAssertNotEqual(store.value(bn1).toArray(), Array(buffers[store.entries[bn1].offset..<(store.entries[bn1].offset + store.entries[bn1].shape.count)]))
    }

    /// Stopping backward at the decoder changes no decoder gradient: they equal, bitwise, those of
    /// the ordinary backward through the whole tape with the encoder's BatchNorm in evaluation
    /// mode (which also writes the encoder's gradients; the stopped one leaves them zero).
    func testStoppingAtTheDecoderGivesTheOrdinaryBackwardsDecoderGradients() throws {
        let stopped = model(frozen: true), whole = model(frozen: true), images = images()
        whole.stopsBackwardAtDecoder = false
        let projection = Projection(shape: stopped.logits.shape, seed: 5)
        gradientStep(stopped, images.tensor, projection)
        gradientStep(whole, images.tensor, projection)
        let encoder = try XCTUnwrap(stopped.store.parameterRange(prefix: "encoder."))
        let a = stopped.store.gradients.tensor.toArray(), b = whole.store.gradients.tensor.toArray()
        XCTAssertEqual(Array(a[encoder.upperBound...]).map(\.bitPattern), Array(b[encoder.upperBound...]).map(\.bitPattern),
                       "decoder gradients")
        XCTAssertTrue(a[encoder].allSatisfy { $0.bitPattern == 0 })
        XCTAssertTrue(b[encoder].contains { $0 != 0 }, "the ordinary backward reaches the encoder")
        XCTAssertEqual(stopped.logits.toArray().map(\.bitPattern), whole.logits.toArray().map(\.bitPattern))
    }

    /// The frozen model's decoder and head gradients against finite differences of its training
    /// forward (encoder in evaluation mode, decoder on the batch's statistics). Tolerance as
    /// EncoderUNetGradientTests: the objective's float32 rounding noise, about u sqrt(A) sum_i |r_i|
    /// max(|y_i|, 1) with A the convolutions' fan-ins added up, divided by the step.
    func testFrozenDecoderGradientsMatchFiniteDifferences() {
        let model = model(frozen: true), images = images()
        let projection = Projection(shape: model.logits.shape, seed: 3)
        for i in 0..<projection.weights.tensor.count where i % 64 != 0 { projection.weights.tensor[i] = 0 }
        var inputs: [Tensor] = [], gradients: [Tensor] = []
        var accumulations = 0
        for (index, entry) in model.store.entries.enumerated() where entry.kind == .parameter {
            if entry.shape.c > 1 || entry.shape.h > 1 { accumulations += entry.shape.c * entry.shape.h * entry.shape.w }
            guard !entry.name.hasPrefix("encoder.") else { continue }
            let value = model.store.value(index), gradient = model.store.gradient(index)
            for i in Set([0, value.count / 4, value.count / 2, value.count - 1]).sorted() {
                inputs.append(Tensor(value.data + i, .vector(1)))
                gradients.append(Tensor(gradient.data + i, .vector(1)))
            }
        }
        let step: Float = 1e-3
        let logits = model.forward(images.tensor, training: true)
        var size1 = 0.0
        for i in 0..<logits.count { size1 += abs(Double(projection.weights.tensor[i])) * max(abs(Double(logits[i])), 1) }
        let tolerance = RoundingModel.unit * Double(accumulations).squareRoot() * size1 / Double(step)
        let report = GradientChecker(step: step, tolerance: tolerance).check(
            inputs: inputs, gradients: gradients,
            objective: { projection.value(model.forward(images.tensor, training: true)) },
            backward: { self.gradientStep(model, images.tensor, projection) })
        XCTAssertTrue(report.passed, "\(report)")
        // Training-mode BatchNorm in the decoder switches ReLUs within +-step (skipped as kinks).
        XCTAssertGreaterThan(Double(report.checked), 0.3 * Double(inputs.count), "\(report)")
    }
}
