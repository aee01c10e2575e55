// Convolution timings for `segtrain bench --conv-layers` and `--conv-kernels` (speed is measured by
// benchmarks, never by tests; these were skipped XCTests before). The layer table times every
// distinct 3x3 convolution of a UNet, each pass under each algorithm, and marks the one the model's
// ConvPolicy runs: the measurement behind `ConvPolicy.standard`'s rule (docs/PERFORMANCE.md).

import Foundation
import SegEngine

/// One 3x3, stride-1 convolution of a model: channels in and out, square plane side in pixels.
public struct ConvLayerShape: Equatable, Sendable, CustomStringConvertible {
    public let inChannels: Int, outChannels: Int, side: Int
    public init(inChannels: Int, outChannels: Int, side: Int) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.side = side
    }
    public var description: String { "\(inChannels) -> \(outChannels) @\(side)" }
}

extension UNetConfig {
    /// The distinct 3x3 convolutions of the encoder and decoder levels (not the head) for square
    /// images of `imageSize` px, in network order. For the default UNet at 128: 3 -> 32 @128 ...
    /// 256 -> 256 @16, then 512 -> 256 @16, 384 -> 128 @32, 192 -> 64 @64, 96 -> 32 @128.
    public func convLayerShapes(imageSize: Int) -> [ConvLayerShape] {
        var shapes: [ConvLayerShape] = []
        func add(_ cin: Int, _ cout: Int, _ side: Int) {
            let shape = ConvLayerShape(inChannels: cin, outChannels: cout, side: side)
            if !shapes.contains(shape) { shapes.append(shape) }
        }
        var sides: [Int] = []
        var cin = inChannels, side = imageSize
        for i in 0..<depth {
            let c = channels(level: i)
            add(cin, c, side)
            add(c, c, side)
            sides.append(side)
            cin = c
            side /= 2
        }
        var below = channels(level: depth - 1)
        for j in 0..<depth {
            let level = depth - 1 - j, c = channels(level: level)
            add(c + below, c, sides[level])
            add(c, c, sides[level])
            below = c
        }
        return shapes
    }
}

/// Seconds of one convolution's three passes.
public struct ConvPassSeconds: Sendable {
    public var forward: Double, weightGradient: Double, inputGradient: Double
    public var total: Double { forward + weightGradient + inputGradient }
}

/// One layer timed under every algorithm; `chosen` is what the policy runs on it.
public struct ConvLayerTiming: Sendable {
    public let layer: ConvLayerShape
    public let batch: Int
    public let chosen: ConvAlgorithm
    public let seconds: [(algorithm: ConvAlgorithm, passes: ConvPassSeconds)]
}

public enum ConvBenchmark {
    /// The algorithms a 3x3 layer can run (what `auto` chooses among).
    public static let algorithms: [ConvAlgorithm] = [.gemm, .winograd, .winograd4]

    /// The algorithm `policy` runs on `layer` (gemm, winograd or winograd4; never auto).
    public static func chosenAlgorithm(_ policy: ConvPolicy, _ layer: ConvLayerShape) -> ConvAlgorithm {
        switch policy.winogradTile(kernel: 3, dilation: 1, inChannels: layer.inChannels, outChannels: layer.outChannels,
                                   height: layer.side, width: layer.side) {
        case 2: return .winograd
        case 4: return .winograd4
        default: return .gemm
        }
    }

    /// Times `layer` on a batch of `batch` random images: forward (with bias), weight gradient (with
    /// bias gradient) and input gradient, each the best of `repeats` runs after a warm-up, under each
    /// algorithm (with `policy`'s chunk sizes).
    public static func timeLayer(_ layer: ConvLayerShape, batch: Int, policy: ConvPolicy, pool: WorkerPool,
                                 repeats: Int = 3) -> ConvLayerTiming {
        let (cin, cout, side) = (layer.inChannels, layer.outChannels, layer.side)
        let scratch = Scratch(threads: pool.threadCount)
        scratch.reserve(floatsPerThread: conv2dScratchFloats(batch: batch, inChannels: cin, outChannels: cout, height: side,
                                                             width: side, kernel: 3, policy: policy, threads: pool.threadCount))
        scratch.reserve(sharedFloats: conv2dSharedScratchFloats(inChannels: cin, outChannels: cout, kernel: 3))
        let x = random(Shape(batch, cin, side, side), seed: 81), weight = random(Shape(cout, cin, 3, 3), seed: 82)
        let bias = random(.vector(cout), seed: 83), dy = random(Shape(batch, cout, side, side), seed: 84)
        let y = OwnedTensor(dy.shape), dx = OwnedTensor(x.shape)
        let dw = OwnedTensor(weight.shape), db = OwnedTensor(bias.shape)
        var results: [(ConvAlgorithm, ConvPassSeconds)] = []
        for algorithm in algorithms {
            var forced = policy
            forced.algorithm = algorithm
            let forward = bestSeconds(repeats) {
                conv2dForward(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, policy: forced, pool: pool,
                              scratch: scratch)
            }
            let weightGradient = bestSeconds(repeats) {
                conv2dBackward(dx: nil, dweight: dw.tensor, dbias: db.tensor, dy: dy.tensor, x: x.tensor,
                               weight: weight.tensor, policy: forced, pool: pool, scratch: scratch)
            }
            let inputGradient = bestSeconds(repeats) {
                conv2dBackward(dx: dx.tensor, dweight: nil, dbias: nil, dy: dy.tensor, x: x.tensor,
                               weight: weight.tensor, policy: forced, pool: pool, scratch: scratch)
            }
            results.append((algorithm, ConvPassSeconds(forward: forward, weightGradient: weightGradient,
                                                       inputGradient: inputGradient)))
        }
        return ConvLayerTiming(layer: layer, batch: batch, chosen: chosenAlgorithm(policy, layer), seconds: results)
    }

    /// One table row: per algorithm, ms of forward / weight gradient / input gradient and their
    /// GFLOP/s; `*` marks the algorithm the policy runs.
    public static func line(_ timing: ConvLayerTiming) -> String {
        let l = timing.layer
        let flops = 2.0 * Double(timing.batch * l.side * l.side * l.inChannels * l.outChannels * 9)
        var line = String(format: "%4d -> %4d at %3d:", l.inChannels, l.outChannels, l.side)
        for (algorithm, s) in timing.seconds {
            let mark = algorithm == timing.chosen ? "*" : " "
            line += String(format: "  %@%@ fwd %6.1f dW %6.1f dX %6.1f ms (%3.0f/%3.0f/%3.0f GF/s)", mark,
                           algorithm.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0),
                           s.forward * 1e3, s.weightGradient * 1e3, s.inputGradient * 1e3,
                           flops / s.forward / 1e9, flops / s.weightGradient / 1e9, flops / s.inputGradient / 1e9)
        }
        return line
    }

    /// Milliseconds summed over the layers (each once) per algorithm, and for what the policy runs.
    public static func totalsLine(_ timings: [ConvLayerTiming]) -> String {
        var parts = algorithms.map { algorithm in
            let total = timings.reduce(0.0) { sum, t in sum + (t.seconds.first { $0.algorithm == algorithm }?.passes.total ?? 0) }
            return "\(algorithm.rawValue) \(String(format: "%.1f", total * 1e3)) ms"
        }
        let chosen = timings.reduce(0.0) { sum, t in sum + (t.seconds.first { $0.algorithm == t.chosen }?.passes.total ?? 0) }
        parts.append("policy (*) \(String(format: "%.1f", chosen * 1e3)) ms")
        return "sum over the layers: " + parts.joined(separator: ", ")
    }

    /// conv2d (k = 3 and k = 1, `channels` -> `channels` on `side` x `side` planes) forward and
    /// backward under `policy`, and the UNet's up-convolution (convTranspose2x2, side / 2 -> side):
    /// one line each with ms and GFLOP/s, best of `repeats` after a warm-up.
    public static func kernels(batch n: Int, channels c: Int, side: Int, policy: ConvPolicy, pool: WorkerPool,
                               repeats: Int = 3, report: (String) -> Void) {
        let threads = pool.threadCount, half = max(1, side / 2)
        let scratch = Scratch(threads: threads)
        scratch.reserve(floatsPerThread: max(
            conv2dScratchFloats(batch: n, inChannels: c, outChannels: c, height: side, width: side, kernel: 3,
                                policy: policy, threads: threads),
            convTranspose2x2ScratchFloats(batch: n, inChannels: c, outChannels: c, height: half, width: half,
                                          threads: threads)))
        scratch.reserve(sharedFloats: conv2dSharedScratchFloats(inChannels: c, outChannels: c, kernel: 3))
        let x = random(Shape(n, c, side, side), seed: 71), weight = random(Shape(c, c, 3, 3), seed: 72)
        let bias = random(.vector(c), seed: 73), y = OwnedTensor(x.shape), dy = random(x.shape, seed: 74)
        let dx = OwnedTensor(x.shape), dw = OwnedTensor(weight.shape), db = OwnedTensor(bias.shape)
        for k in [3, 1] {
            let kw = Tensor(weight.tensor.data, Shape(c, c, k, k))
            let flops = 2.0 * Double(n * side * side * c * c * k * k)
            let fwd = bestSeconds(repeats) {
                conv2dForward(y.tensor, x.tensor, weight: kw, bias: bias.tensor, policy: policy, pool: pool, scratch: scratch)
            }
            let bwd = bestSeconds(repeats) {
                conv2dBackward(dx: dx.tensor, dweight: Tensor(dw.tensor.data, kw.shape), dbias: db.tensor, dy: dy.tensor,
                               x: x.tensor, weight: kw, policy: policy, pool: pool, scratch: scratch)
            }
            report(String(format: "conv2d k=%d N=%d C=%d %dx%d threads %d (%@): forward %.1f ms (%.1f GFLOP/s), backward %.1f ms (%.1f GFLOP/s)",
                          k, n, c, side, side, threads, k == 3 ? chosenAlgorithm(policy, ConvLayerShape(inChannels: c, outChannels: c, side: side)).rawValue : "gemm",
                          fwd * 1e3, flops / fwd / 1e9, bwd * 1e3, 2 * flops / bwd / 1e9))
        }
        let xs = random(Shape(n, c, half, half), seed: 75), upW = random(Shape(c, c, 2, 2), seed: 76)
        let up = OwnedTensor(Shape(n, c, 2 * half, 2 * half)), dUp = random(up.tensor.shape, seed: 77)
        let dxs = OwnedTensor(xs.shape), dupW = OwnedTensor(upW.shape)
        let upFlops = 2.0 * Double(n * half * half * c * c * 4)
        let fwd = bestSeconds(repeats) {
            convTranspose2x2Forward(up.tensor, xs.tensor, weight: upW.tensor, bias: bias.tensor, pool: pool, scratch: scratch)
        }
        let bwd = bestSeconds(repeats) {
            convTranspose2x2Backward(dx: dxs.tensor, dweight: dupW.tensor, dbias: db.tensor, dy: dUp.tensor, x: xs.tensor,
                                     weight: upW.tensor, pool: pool, scratch: scratch)
        }
        report(String(format: "convTranspose2x2 N=%d C=%d %dx%d->%dx%d threads %d: forward %.1f ms (%.1f GFLOP/s), backward %.1f ms (%.1f GFLOP/s)",
                      n, c, half, half, 2 * half, 2 * half, threads, fwd * 1e3, upFlops / fwd / 1e9, bwd * 1e3, 2 * upFlops / bwd / 1e9))
    }

    /// Best of `repeats` timed runs after one warm-up, in seconds.
    static func bestSeconds(_ repeats: Int, _ body: () -> Void) -> Double {
        body()
        var best = Double.infinity
        for _ in 0..<max(1, repeats) {
            let start = monotonicSeconds()
            body()
            best = min(best, monotonicSeconds() - start)
        }
        return best
    }

    static func random(_ shape: Shape, seed: UInt64) -> OwnedTensor {
        let t = OwnedTensor(shape)
        var rng = SplitMix64(seed: seed)
        for i in 0..<shape.count { t.tensor[i] = rng.nextFloat(in: -1...1) }
        return t
    }
}
