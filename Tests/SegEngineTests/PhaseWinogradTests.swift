// Dilated 3x3 convolutions by Winograd on the phase planes (PhaseWinograd.swift). The reference is
// the test's own split of x into its d*d phase planes (a batch of N*d*d images): on it, Winograd's
// rounding bound (ConvolutionReference.winogradForward / winogradInputGradient, exact values from the
// direct same-padded 3x3) must hold for the phase kernel's output split the same way, and the direct
// dilated convolution (the strided kernel's naive twin) must meet the same reference, which checks
// the split itself. Blocks of output channels (a small shared limit), accumulation and overwriting
// of dx, and the same bits for 1 and 3 threads.

import XCTest
@testable import SegEngine
import SegEngineTestSupport

final class PhaseWinogradTests: XCTestCase {
    private typealias S = OpsTestSupport

    /// x's phase planes as images: image n*d*d + a*d + b, channel c, (i, j) = x[n, c, d*i + a, d*j + b].
    private func phases(_ t: Tensor, _ d: Int) -> OwnedTensor {
        let out = OwnedTensor(Shape(t.n * d * d, t.c, t.h / d, t.w / d))
        for n in 0..<t.n { for a in 0..<d { for b in 0..<d { for c in 0..<t.c {
            for i in 0..<t.h / d { for j in 0..<t.w / d {
                out.tensor[(n * d + a) * d + b, c, i, j] = t[n, c, d * i + a, d * j + b]
            } }
        } } } }
        return out
    }

    private func check(_ reference: RoundingReference, _ actual: Tensor, _ label: String) {
        let result = reference.check(actual)
        result.report(label)
        XCTAssertTrue(result.passed, "\(label): \(result)")
    }

    func testForwardAndInputGradientWithinWinogradBoundOnThePhasePlanes() {
        // (n, cin, cout, h, w, dilation, tile, shared limit): d = 2, 3, 4; both tiles; non-square;
        // planes whose tiles overhang; limits that cut the output channels into 2-4 blocks (the last
        // one shorter) for the forward, the input gradient or both.
        let cases: [(Int, Int, Int, Int, Int, Int, Int, Int)] = [
            (2, 5, 7, 8, 12, 2, 2, phaseWinogradSharedFloats), (1, 3, 20, 12, 9, 3, 2, 16 * 3 * 8),
            (2, 6, 4, 16, 16, 2, 4, phaseWinogradSharedFloats), (1, 9, 11, 8, 8, 4, 2, 16 * 11 * 4),
            (3, 8, 8, 10, 14, 2, 2, 16 * 8 * 3),
        ]
        for (n, cin, cout, h, w, d, tile, limit) in cases {
            let label = "\(n)x\(cin)->\(cout) \(h)x\(w) d\(d) F\(tile) limit \(limit)"
            let geometry = ConvGeometry(kernel: 3, stride: 1, padding: d, dilation: d)
            let threads = 2, pool = WorkerPool(threads: threads)
            let scratch = Scratch(threads: threads)
            let needs = phaseWinogradScratchFloats(inChannels: cin, outChannels: cout, height: h, width: w, dilation: d,
                                                   tile: tile, policy: .standard, sharedLimit: limit)
            scratch.reserve(floatsPerThread: needs.perThread)
            scratch.reserve(sharedFloats: needs.shared)
            let x = S.random(Shape(n, cin, h, w), seed: 91), weight = S.random(Shape(cout, cin, 3, 3), seed: 92)
            let bias = S.random(.vector(cout), seed: 93), dy = S.random(Shape(n, cout, h, w), seed: 94)
            let start = S.random(x.shape, seed: 95)

            // The phase splits are kept in locals: a view must not outlive its OwnedTensor.
            let xPhases = phases(x.tensor, d), dyPhases = phases(dy.tensor, d), startPhases = phases(start.tensor, d)
            let y = OwnedTensor(dy.shape)
            y.tensor.fill(.nan)
            phaseWinogradForward(y.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, dilation: d, tile: tile,
                                 pool: pool, scratch: scratch, sharedLimit: limit)
            let forward = ConvolutionReference.winogradForward(x: xPhases.tensor, weight: weight.tensor,
                                                               bias: bias.tensor, tile: tile)
            let yPhases = phases(y.tensor, d)
            check(forward, yPhases.tensor, "forward " + label)
            let direct = OwnedTensor(dy.shape)
            stridedConvForwardNaive(direct.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, geometry: geometry)
            let directPhases = phases(direct.tensor, d)
            check(forward, directPhases.tensor, "direct forward " + label)

            let dx = OwnedTensor(x.shape)
            dx.tensor.copy(from: start.tensor)
            phaseWinogradInputGradient(dx: dx.tensor, dy: dy.tensor, weight: weight.tensor, dilation: d, tile: tile,
                                       pool: pool, scratch: scratch, sharedLimit: limit)
            let gradient = ConvolutionReference.winogradInputGradient(dy: dyPhases.tensor, weight: weight.tensor,
                                                                      tile: tile, initial: startPhases.tensor)
            let dxPhases = phases(dx.tensor, d)
            check(gradient, dxPhases.tensor, "input gradient " + label)
            let directDx = OwnedTensor(x.shape)
            directDx.tensor.copy(from: start.tensor)
            stridedConvBackwardNaive(dx: directDx.tensor, dweight: nil, dbias: nil, dy: dy.tensor, x: x.tensor,
                                     weight: weight.tensor, geometry: geometry)
            let directDxPhases = phases(directDx.tensor, d)
            check(gradient, directDxPhases.tensor, "direct input gradient " + label)

            // Overwriting (a first write): NaN before, the gradient alone after.
            let written = OwnedTensor(x.shape)
            written.tensor.fill(.nan)
            phaseWinogradInputGradient(dx: written.tensor, dy: dy.tensor, weight: weight.tensor, dilation: d, tile: tile,
                                       overwrite: true, pool: pool, scratch: scratch, sharedLimit: limit)
            let writtenPhases = phases(written.tensor, d)
            check(ConvolutionReference.winogradInputGradient(dy: dyPhases.tensor, weight: weight.tensor, tile: tile),
                  writtenPhases.tensor, "overwritten input gradient " + label)

            // One image per chunk: the same bits on 1 and 3 threads.
            for other in [1, 3] {
                let otherPool = WorkerPool(threads: other), otherScratch = Scratch(threads: other)
                otherScratch.reserve(floatsPerThread: needs.perThread)
                otherScratch.reserve(sharedFloats: needs.shared)
                let y2 = OwnedTensor(dy.shape), dx2 = OwnedTensor(x.shape)
                dx2.tensor.copy(from: start.tensor)
                phaseWinogradForward(y2.tensor, x.tensor, weight: weight.tensor, bias: bias.tensor, dilation: d, tile: tile,
                                     pool: otherPool, scratch: otherScratch, sharedLimit: limit)
                phaseWinogradInputGradient(dx: dx2.tensor, dy: dy.tensor, weight: weight.tensor, dilation: d, tile: tile,
                                           pool: otherPool, scratch: otherScratch, sharedLimit: limit)
                S.assertBitwiseEqual(y2.tensor, y.tensor, "forward \(other) threads " + label)
                S.assertBitwiseEqual(dx2.tensor, dx.tensor, "input gradient \(other) threads " + label)
            }
        }
    }

    /// The blocks: a limit of 16 x cin x 3 floats cuts 20 output channels into blocks of 3 (the last
    /// of 2); the scratch sizes follow the block, not all the channels.
    func testBlocksFollowTheSharedLimit() {
        let plan = PhaseWinogradPlan(inChannels: 3, outChannels: 20, height: 12, width: 9, dilation: 3, tile: 2,
                                     policy: .standard, sharedLimit: 16 * 3 * 3)
        XCTAssertEqual(plan.block, 3)
        XCTAssertEqual(plan.sharedFloats, 16 * 3 * 3)
        let full = PhaseWinogradPlan(inChannels: 512, outChannels: 512, height: 16, width: 16, dilation: 2, tile: 2,
                                     policy: .standard)
        XCTAssertEqual(full.block, 256, "layer4's 512 -> 512 in two blocks")
        XCTAssertEqual(full.sharedFloats, phaseWinogradSharedFloats)
    }
}
