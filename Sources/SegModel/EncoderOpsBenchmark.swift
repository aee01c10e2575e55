// Encoder-op timings for `segtrain bench --encoder-ops` (speed is measured by benchmarks, never by
// tests; these were skipped XCTests before): the strided convolution on ResNet-shaped layers and
// the depthwise 3x3 on MobileNetV2-shaped ones at a 256x256 input, forward and backward, each
// against its naive twin. The figures in docs/ENGINE.md ("Speed") come from here.

import Foundation
import SegEngine

public enum EncoderOpsBenchmark {
    /// ResNet-shaped strided convolutions: forward and backward (dx, dweight) ms and GFLOP/s of the
    /// fast kernel, one line per layer; then fast against naive on a 3x3/s2 32 -> 64 layer at
    /// 32x32, batch 2. Best of `repeats` after a warm-up.
    public static func stridedConv(batch n: Int, pool: WorkerPool, repeats: Int = 3, report: (String) -> Void) {
        let threads = pool.threadCount
        // (name, cin, cout, input side, geometry)
        let layers: [(String, Int, Int, Int, ConvGeometry)] = [
            ("stem 7x7/s2", 3, 64, 256, ConvGeometry(kernel: 7, stride: 2, padding: 3)),
            ("3x3/s2 64->128", 64, 128, 64, ConvGeometry(kernel: 3, stride: 2, padding: 1)),
            ("1x1/s2 64->128", 64, 128, 64, ConvGeometry(kernel: 1, stride: 2)),
            ("1x1 256->64", 256, 64, 64, ConvGeometry(kernel: 1)),
            ("3x3/d2 256->256", 256, 256, 16, ConvGeometry(kernel: 3, stride: 1, padding: 2, dilation: 2)),
        ]
        for (name, cin, cout, side, g) in layers {
            let operands = StridedConvOperands(batch: n, cin: cin, cout: cout, side: side, geometry: g, threads: threads)
            let flops = 2.0 * Double(operands.y.tensor.count * cin * g.kernel * g.kernel)
            let forward = ConvBenchmark.bestSeconds(repeats) { operands.forward(pool: pool) }
            let backward = ConvBenchmark.bestSeconds(repeats) { operands.backward(pool: pool) }
            report(String(format: "stridedConv %@ N=%d %dx%d threads %d: forward %.2f ms (%.1f GFLOP/s), backward %.2f ms (%.1f GFLOP/s)",
                          name, n, side, side, threads, forward * 1e3, flops / forward / 1e9, backward * 1e3,
                          2 * flops / backward / 1e9))
        }
        let small = StridedConvOperands(batch: 2, cin: 32, cout: 64, side: 32, geometry: ConvGeometry(kernel: 3, stride: 2, padding: 1),
                                        threads: threads)
        let fast = ConvBenchmark.bestSeconds(repeats) {
            small.forward(pool: pool)
            small.backward(pool: pool)
        }
        let naive = ConvBenchmark.bestSeconds(repeats) { small.naive() }
        report(String(format: "stridedConv 3x3/s2 32->64 N=2 32x32 forward+backward: fast %.2f ms (threads %d), naive %.2f ms (1 thread), %.1fx",
                      fast * 1e3, threads, naive * 1e3, naive / fast))
    }

    /// MobileNetV2-shaped depthwise 3x3 layers (padding 1): forward and backward ms and memory
    /// traffic (x, y, dy, dx each read or written once), and the naive twin's forward + backward.
    public static func depthwise(batch n: Int, pool: WorkerPool, repeats: Int = 3, report: (String) -> Void) {
        let threads = pool.threadCount
        for (c, side, s) in [(32, 128, 1), (96, 128, 2), (144, 64, 1), (144, 64, 2), (384, 16, 1), (960, 8, 1)] {
            let out = ConvGeometry(kernel: 3, stride: s, padding: 1).output(side)
            let shape = Shape(n, c, side, side), outShape = Shape(n, c, out, out)
            let scratch = Scratch(threads: threads)
            scratch.reserve(floatsPerThread: depthwise3x3ScratchFloats(width: side, stride: s))
            let x = ConvBenchmark.random(shape, seed: 1), weight = ConvBenchmark.random(Shape(c, 1, 3, 3), seed: 2)
            let dy = ConvBenchmark.random(outShape, seed: 3)
            let y = OwnedTensor(outShape), dx = OwnedTensor(shape), dw = OwnedTensor(weight.tensor.shape)
            let forward = ConvBenchmark.bestSeconds(repeats) {
                depthwise3x3Forward(y.tensor, x.tensor, weight: weight.tensor, stride: s, pool: pool)
            }
            let backward = ConvBenchmark.bestSeconds(repeats) {
                depthwise3x3Backward(dx: dx.tensor, dweight: dw.tensor, dy: dy.tensor, x: x.tensor, weight: weight.tensor,
                                     stride: s, pool: pool, scratch: scratch)
            }
            let naive = ConvBenchmark.bestSeconds(repeats) {
                depthwise3x3ForwardNaive(y.tensor, x.tensor, weight: weight.tensor, stride: s)
                depthwise3x3BackwardNaive(dx: dx.tensor, dweight: dw.tensor, dy: dy.tensor, x: x.tensor, weight: weight.tensor, stride: s)
            }
            let forwardBytes = 4.0 * Double(shape.count + outShape.count)
            let backwardBytes = 4.0 * Double(2 * shape.count + 2 * outShape.count + shape.count)  // dx read+write, dy twice, x
            report(String(format: "depthwise3x3 C=%d %dx%d s%d N=%d threads %d: forward %.2f ms (%.1f GB/s), backward %.2f ms (%.1f GB/s); naive f+b %.2f ms (%.1fx)",
                          c, side, side, s, n, threads, forward * 1e3, forwardBytes / forward / 1e9, backward * 1e3,
                          backwardBytes / backward / 1e9, naive * 1e3, naive / (forward + backward)))
        }
    }
}

/// Random operands, results and scratch of one strided convolution (no bias).
private struct StridedConvOperands {
    let x: OwnedTensor, weight: OwnedTensor, y: OwnedTensor, dy: OwnedTensor, dx: OwnedTensor, dw: OwnedTensor
    let geometry: ConvGeometry
    let scratch: Scratch

    init(batch: Int, cin: Int, cout: Int, side: Int, geometry g: ConvGeometry, threads: Int) {
        geometry = g
        scratch = Scratch(threads: threads)
        scratch.reserve(floatsPerThread: stridedConvScratchFloats(batch: batch, inChannels: cin, outChannels: cout,
                                                                  height: side, width: side, geometry: g))
        scratch.reserve(sharedFloats: stridedConvSharedScratchFloats(batch: batch, inChannels: cin, outChannels: cout,
                                                                     height: side, width: side, geometry: g))
        x = ConvBenchmark.random(Shape(batch, cin, side, side), seed: 1)
        weight = ConvBenchmark.random(Shape(cout, cin, g.kernel, g.kernel), seed: 2)
        let out = Shape(batch, cout, g.output(side), g.output(side))
        y = OwnedTensor(out)
        dy = ConvBenchmark.random(out, seed: 3)
        dx = OwnedTensor(x.tensor.shape)
        dw = OwnedTensor(weight.tensor.shape)
    }

    func forward(pool: WorkerPool) {
        stridedConvForward(y.tensor, x.tensor, weight: weight.tensor, bias: nil, geometry: geometry, pool: pool, scratch: scratch)
    }

    func backward(pool: WorkerPool) {
        stridedConvBackward(dx: dx.tensor, dweight: dw.tensor, dbias: nil, dy: dy.tensor, x: x.tensor, weight: weight.tensor,
                            geometry: geometry, pool: pool, scratch: scratch)
    }

    /// The naive twin's forward and backward (one thread).
    func naive() {
        stridedConvForwardNaive(y.tensor, x.tensor, weight: weight.tensor, bias: nil, geometry: geometry)
        stridedConvBackwardNaive(dx: dx.tensor, dweight: dw.tensor, dbias: nil, dy: dy.tensor, x: x.tensor,
                                 weight: weight.tensor, geometry: geometry)
    }
}
