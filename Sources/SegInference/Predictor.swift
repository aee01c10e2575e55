// A trained model applied to images of any size: loaded from a checkpoint (or a run folder), the
// image resized to the training size (or cut into overlapping tiles of it), normalised as in
// training, forward in eval mode, and the class probabilities resized back to the image's size.

import Foundation
import SegData
import SegEngine
import SegModel

/// Per-pixel class probabilities of one image, and the labels they give.
public struct Prediction: Sendable {
    public let width: Int
    public let height: Int
    /// 1: the foreground probability (sigmoid); >= 2: softmax over classes.
    public let classes: Int
    /// `max(classes, 1)` planes of width x height, plane-major.
    public var probabilities: [Float]
    /// With `Predictor.keepsLogits`: the network's raw output (before sigmoid/softmax) at the
    /// training size, `classes` planes of imageSize x imageSize (`predict --logits`).
    public var logits: [Float]? = nil

    /// The label mask: binary 0/1 (probability >= 0.5) or the most probable class.
    public var labels: Image8 {
        var mask = Image8(width: width, height: height, channels: 1)
        let plane = width * height
        probabilities.withUnsafeBufferPointer { p in
            mask.pixels.withUnsafeMutableBufferPointer { m in
                if classes == 1 {
                    for i in 0..<plane { m[i] = p[i] >= 0.5 ? 1 : 0 }
                    return
                }
                for i in 0..<plane {
                    var best = 0
                    for k in 1..<classes where p[k * plane + i] > p[best * plane + i] { best = k }
                    m[i] = UInt8(best)
                }
            }
        }
        return mask
    }
}

public struct PredictorError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Test-time augmentation: `flip` predicts the image, its left-right and its top-bottom mirror
/// image, and averages the three probability maps (each mirrored back): 3x the inference time.
public enum TestTimeAugmentation: String, CaseIterable, Sendable {
    case none, flip
}

public final class Predictor {
    public let model: any SegmentationModel
    /// --tta: predictions averaged over flips (predict, predictTiled and so evaluate and serve).
    public var tta = TestTimeAugmentation.none
    /// `predict` also returns each image's logits at the training size (not with `tta` or tiles).
    public var keepsLogits = false
    private var lastLogits: [Float] = []
    public let description: ModelDescription
    /// The checkpoint folder the weights came from.
    public let source: String
    private var input: OwnedTensor

    /// Loads `path`: a checkpoint folder (state.json + model.safetensors), or a run folder (its
    /// checkpoints/best, else checkpoints/last).
    public convenience init(path: String, pool: WorkerPool) throws {
        guard let folder = RunDirectory.checkpointFolder(named: path) else {
            throw PredictorError("--model \(path): not a checkpoint or run folder (no state.json, checkpoints/best or checkpoints/last)")
        }
        let statePath = folder + "/state.json"
        let description: ModelDescription
        do { description = try Checkpoint.readModelDescription(from: folder) } catch { throw PredictorError("\(error)") }
        if let problem = description.problem { throw PredictorError("\(statePath): \(problem)") }
        // A state.json may claim a model no machine holds: refuse it before building it.
        let needed = description.estimatedBytesForOneImage(threads: pool.threadCount)
        if let available = SystemMemory.availableBytes(), needed > Double(available) {
            throw PredictorError("\(statePath): the model needs about \(SystemMemory.describe(needed)) for one image, but "
                                 + "\(SystemMemory.describe(Double(available))) is available (MemAvailable)")
        }
        if let limit = SystemMemory.addressSpaceLimit(), needed + Double(SystemMemory.virtualBytes() ?? 0) > Double(limit) {
            throw PredictorError("\(statePath): the model needs about \(SystemMemory.describe(needed)) for one image, over the "
                                 + "limit of \(SystemMemory.describe(Double(limit))) (ulimit -v)")
        }
        let model = description.architecture.build(pool: pool)
        do { try Checkpoint.readWeights(from: folder, into: model.store) } catch { throw PredictorError("\(error)") }
        self.init(model: model, description: description, source: folder)
    }

    /// A predictor of `model` as it is (`bench --inference` times one with random weights).
    /// `description` must be the model's.
    public init(model: any SegmentationModel, description: ModelDescription, source: String) {
        precondition(model.inChannels == description.inChannels && model.classes == description.classes,
                     "the description is not the model's")
        self.model = model
        self.description = description
        self.source = source
        let s = description.imageSize
        input = OwnedTensor(Shape(1, description.inChannels, s, s))
        model.plan(batch: 1, height: s, width: s, gradients: false)
    }

    public var pixelFormat: PixelFormat { PixelFormat(rawValue: description.inChannels) ?? .rgb }

    /// Probabilities for `images` (any sizes), each resized to the training size and back.
    public func predict(_ images: [Image8]) -> [Prediction] {
        guard !images.isEmpty else { return [] }
        let s = description.imageSize
        ensureBatch(images.count)
        let per = description.inChannels * s * s
        for (n, image) in images.enumerated() {
            let sized = image.width == s && image.height == s ? image : Preprocess.resizeImage(image, width: s, height: s)
            Preprocess.normalize(sized, into: input.tensor.data + n * per, mean: description.mean, std: description.std)
        }
        let probabilities = forwardProbabilities()
        let perLogits = max(description.classes, 1) * s * s
        return images.enumerated().map { n, image in
            var prediction = resizeProbabilities(probabilities.batchSlice(n, 1), toWidth: image.width, height: image.height)
            if keepsLogits { prediction.logits = Array(lastLogits[(n * perLogits)..<((n + 1) * perLogits)]) }
            return prediction
        }
    }

    /// Sliding-window prediction at the training size: tiles of S x S with `overlap` pixels shared
    /// between neighbours (the last row and column of tiles end at the border), probabilities
    /// averaged where tiles overlap. An image smaller than S in a dimension is padded (reflected).
    public func predictTiled(_ image: Image8, overlap: Int) -> Prediction {
        let s = description.imageSize, c = max(description.classes, 1)
        let stride = max(1, s - overlap)
        func starts(_ length: Int) -> [Int] {
            guard length > s else { return [0] }
            var list = Array(Swift.stride(from: 0, to: length - s, by: stride))
            list.append(length - s)
            return list
        }
        let width = max(image.width, s), height = max(image.height, s)
        let padded = width == image.width && height == image.height ? image : Preprocess.padReflect(image, width: width, height: height)
        var sum = [Float](repeating: 0, count: c * width * height)
        var weight = [Float](repeating: 0, count: width * height)
        var tiles: [(Int, Int)] = []
        for y in starts(height) { for x in starts(width) { tiles.append((x, y)) } }
        let batch = 4
        var k = 0
        while k < tiles.count {
            let group = Array(tiles[k..<min(k + batch, tiles.count)])
            ensureBatch(group.count)
            let per = description.inChannels * s * s
            for (n, (x, y)) in group.enumerated() {
                let tile = Preprocess.crop(padded, x: x, y: y, width: s, height: s)
                Preprocess.normalize(tile, into: input.tensor.data + n * per, mean: description.mean, std: description.std)
            }
            let probabilities = forwardProbabilities()
            for (n, (x0, y0)) in group.enumerated() {
                let p = probabilities.batchSlice(n, 1)
                for ty in 0..<s {
                    for tx in 0..<s {
                        let o = (y0 + ty) * width + (x0 + tx)
                        weight[o] += 1
                        for ch in 0..<c { sum[ch * width * height + o] += p.plane(0, ch)[ty * s + tx] }
                    }
                }
            }
            k += group.count
        }
        var out = [Float](repeating: 0, count: c * image.width * image.height)
        for ch in 0..<c {
            for y in 0..<image.height {
                for x in 0..<image.width {
                    let o = y * width + x
                    out[(ch * image.height + y) * image.width + x] = sum[ch * width * height + o] / weight[o]
                }
            }
        }
        return Prediction(width: image.width, height: image.height, classes: description.classes, probabilities: out)
    }

    private func ensureBatch(_ n: Int) {
        let s = description.imageSize
        if input.shape.n != n {
            input = OwnedTensor(Shape(n, description.inChannels, s, s))
            model.plan(batch: n, height: s, width: s, gradients: false)
        }
    }

    /// Forward in eval mode; the logits turned into probabilities in place (sigmoid or softmax);
    /// with `tta` the mean over the input and its mirror images, each mirrored back.
    private func forwardProbabilities() -> Tensor {
        precondition(!keepsLogits || tta == .none, "logits are kept without test-time augmentation only")
        let probabilities = probabilitiesOfInput()
        guard tta == .flip else { return probabilities }
        let sum = OwnedTensor(probabilities.shape)
        sum.tensor.copy(from: probabilities)
        for horizontal in [true, false] {
            flipInPlace(input.tensor, horizontal: horizontal, pool: model.pool)
            let mirrored = probabilitiesOfInput()
            flipInPlace(mirrored, horizontal: horizontal, pool: model.pool)
            flipInPlace(input.tensor, horizontal: horizontal, pool: model.pool)
            residualAddForward(sum.tensor, sum.tensor, mirrored, relu: false, pool: model.pool)
        }
        let (out, total) = (probabilities.data, sum.tensor.data)
        model.pool.parallelFor(sum.tensor.count) { range, _ in for i in range { out[i] = total[i] / 3 } }
        return probabilities
    }

    private func probabilitiesOfInput() -> Tensor {
        let logits = model.forward(input.tensor, training: false)
        if keepsLogits { lastLogits = Array(UnsafeBufferPointer(start: logits.data, count: logits.count)) }
        if logits.shape.c == 1 {
            sigmoidForward(logits, logits, pool: model.pool)
        } else {
            softmaxForward(logits, logits, pool: model.pool)
        }
        return logits
    }

    /// Bilinear (half-pixel centres) resize of each class plane to width x height.
    private func resizeProbabilities(_ p: Tensor, toWidth width: Int, height: Int) -> Prediction {
        let s = p.shape.h, c = p.shape.c
        if width == s && height == s {  // the training size: the planes as they are
            return Prediction(width: width, height: height, classes: description.classes,
                              probabilities: Array(UnsafeBufferPointer(start: p.data, count: p.count)))
        }
        var out = [Float](repeating: 0, count: c * width * height)
        let sx = Float(s) / Float(width), sy = Float(s) / Float(height)
        for y in 0..<height {
            let fy = max(0, (Float(y) + 0.5) * sy - 0.5)
            let y0 = min(Int(fy), s - 1), y1 = min(y0 + 1, s - 1), wy = fy - Float(y0)
            for x in 0..<width {
                let fx = max(0, (Float(x) + 0.5) * sx - 0.5)
                let x0 = min(Int(fx), s - 1), x1 = min(x0 + 1, s - 1), wx = fx - Float(x0)
                for k in 0..<c {
                    let q = p.plane(0, k)
                    let top = q[y0 * s + x0] * (1 - wx) + q[y0 * s + x1] * wx
                    let bottom = q[y1 * s + x0] * (1 - wx) + q[y1 * s + x1] * wx
                    out[(k * height + y) * width + x] = top * (1 - wy) + bottom * wy
                }
            }
        }
        return Prediction(width: width, height: height, classes: description.classes, probabilities: out)
    }
}
