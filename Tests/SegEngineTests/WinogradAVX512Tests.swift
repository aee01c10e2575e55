// The AVX-512 Winograd transforms (Sources/CWinograd) against the portable Swift versions they
// replace where the CPU has AVX-512: the same bits for every width (masked ends of 16-tile vectors,
// a row buffer read past its last full vector), height (tile rows cut by the image's bottom edge),
// band of tile rows and channel count, with tiles from several images in one chunk (tiles > the
// band's own). Without AVX-512 there is nothing to compare, and the tests say so by skipping.

import XCTest
@testable import SegEngine
import SegEngineTestSupport
import CWinograd

final class WinogradAVX512Tests: XCTestCase {
    private typealias S = OpsTestSupport

    /// Runs `body(channels, plan, rowStart, rows, tiles, offset)` over the shapes of the comparison:
    /// widths 1...37, 64, 67 and 130 (one to three 16-tile vectors, with and without a remainder),
    /// heights 1, 2, 5, 8 and 11, every band of 1 and 3 tile rows, the band written at an offset into
    /// a chunk of `tiles` columns.
    private func forEachShape(tile: Int, _ body: (Int, WinogradPlan, Int, Int, Int, Int) -> Void) {
        for width in Array(1...37) + [64, 67, 130] {
            for height in [1, 2, 5, 8, 11] {
                let channels = width % 3 + 1
                let plan = WinogradPlan(inChannels: channels, outChannels: 1, height: height, width: width, batch: 1,
                                        tile: tile, policy: .standard)
                for band in [1, 3] {
                    var rowStart = 0
                    while rowStart < plan.tilesHigh {
                        let rows = min(band, plan.tilesHigh - rowStart)
                        let own = rows * plan.tilesWide
                        body(channels, plan, rowStart, rows, 2 * own + 1, own + 1)
                        rowStart += band
                    }
                }
            }
        }
    }

    func testInputTransformF2GivesThePortableBits() throws {
        try XCTSkipUnless(avx512Kernels, "this CPU has no AVX-512: only the portable transforms run")
        try compareInputTransforms(tile: 2)
    }

    func testInputTransformF4GivesThePortableBits() throws {
        try XCTSkipUnless(avx512Kernels, "this CPU has no AVX-512: only the portable transforms run")
        try compareInputTransforms(tile: 4)
    }

    private func compareInputTransforms(tile: Int) throws {
        var compared = 0
        let points = (tile + 2) * (tile + 2)
        forEachShape(tile: tile) { channels, plan, rowStart, rows, tiles, offset in
            let what = "F\(tile) \(channels) x \(plan.height) x \(plan.width), tile rows \(rowStart) + \(rows)"
            let x = S.random(Shape(1, channels, plan.height, plan.width), seed: UInt64(plan.width * 100 + plan.height))
            // Both outputs start from the same garbage: values outside the band must stay untouched.
            let garbage = S.random(Shape(points, channels, 1, tiles), seed: 7)
            let portable = OwnedTensor(garbage.shape), fast = OwnedTensor(garbage.shape)
            portable.tensor.copy(from: garbage.tensor); fast.tensor.copy(from: garbage.tensor)
            let buffer = OwnedTensor(.vector(plan.rowFloats)), fastBuffer = OwnedTensor(.vector(plan.rowFloats))
            fastBuffer.tensor.fill(.nan)  // the padding must be written, not found
            let (c, h, w, tw) = (Int32(channels), Int32(plan.height), Int32(plan.width), Int32(plan.tilesWide))
            if tile == 2 {
                transformInputF2Portable(x.tensor.data, channels: channels, plan: plan, rowStart: rowStart, rows: rows,
                                         into: portable.tensor.data + offset, tiles: tiles, rowBuffer: buffer.tensor.data)
                segtrain_winograd_input_f2_avx512(x.tensor.data, c, h, w, tw, Int32(rowStart), Int32(rows),
                                                  fast.tensor.data + offset, tiles, fastBuffer.tensor.data)
            } else {
                transformInputF4Portable(x.tensor.data, channels: channels, plan: plan, rowStart: rowStart, rows: rows,
                                         into: portable.tensor.data + offset, tiles: tiles, rowBuffer: buffer.tensor.data)
                segtrain_winograd_input_f4_avx512(x.tensor.data, c, h, w, tw, Int32(rowStart), Int32(rows),
                                                  fast.tensor.data + offset, tiles, fastBuffer.tensor.data)
            }
            S.assertBitwiseEqual(fast.tensor, portable.tensor, what)
            compared += 1
        }
        XCTAssertGreaterThan(compared, 300)
    }

    func testOutputTransformsGiveThePortableBits() throws {
        try XCTSkipUnless(avx512Kernels, "this CPU has no AVX-512: only the portable transforms run")
        var compared = 0
        for tile in [2, 4] {
            let points = (tile + 2) * (tile + 2)
            forEachShape(tile: tile) { channels, plan, rowStart, rows, tiles, offset in
                let m = S.random(Shape(points, channels, 1, tiles), seed: UInt64(plan.width * 31 + plan.height))
                m.tensor.data[offset] = .nan  // the first tile's outputs of channel 0 are NaN
                let bias = S.random(.vector(channels), seed: 5)
                // y starts as garbage with a NaN and a -0 in it; relu must keep a NaN result (as Swift's max).
                let start = S.random(Shape(1, channels, plan.height, plan.width), seed: 9)
                start.tensor.data[0] = .nan
                if start.tensor.count > 1 { start.tensor.data[1] = -0.0 }
                for (accumulate, relu, withBias) in [(false, false, true), (false, true, true), (true, false, true),
                                                     (false, false, false), (false, true, false)] {
                    let what = "F\(tile) \(channels) x \(plan.height) x \(plan.width), tile rows \(rowStart) + \(rows), "
                        + "accumulate \(accumulate) relu \(relu) bias \(withBias)"
                    let portable = OwnedTensor(start.shape), fast = OwnedTensor(start.shape)
                    portable.tensor.copy(from: start.tensor); fast.tensor.copy(from: start.tensor)
                    let buffer = OwnedTensor(.vector(plan.rowFloats))
                    let b = withBias ? bias.tensor : nil
                    let mm = m.tensor.data + offset
                    if tile == 2 {
                        transformOutputF2Portable(mm, tiles: tiles, into: portable.tensor.data, channels: channels, plan: plan,
                                                  rowStart: rowStart, rows: rows, bias: b, accumulate: accumulate,
                                                  relu: relu, rowBuffer: buffer.tensor.data)
                        segtrain_winograd_output_f2_avx512(mm, tiles, fast.tensor.data, Int32(channels), Int32(plan.height),
                                                           Int32(plan.width), Int32(plan.tilesWide), Int32(rowStart),
                                                           Int32(rows), b?.data, accumulate ? 1 : 0, relu ? 1 : 0)
                    } else {
                        transformOutputF4Portable(mm, tiles: tiles, into: portable.tensor.data, channels: channels, plan: plan,
                                                  rowStart: rowStart, rows: rows, bias: b, accumulate: accumulate,
                                                  relu: relu, rowBuffer: buffer.tensor.data)
                        segtrain_winograd_output_f4_avx512(mm, tiles, fast.tensor.data, Int32(channels), Int32(plan.height),
                                                           Int32(plan.width), Int32(plan.tilesWide), Int32(rowStart),
                                                           Int32(rows), b?.data, accumulate ? 1 : 0, relu ? 1 : 0)
                    }
                    S.assertBitwiseEqual(fast.tensor, portable.tensor, what)
                    compared += 1
                }
            }
        }
        XCTAssertGreaterThan(compared, 3000)
    }

    func testOutputGradientTransformsGiveThePortableBits() throws {
        try XCTSkipUnless(avx512Kernels, "this CPU has no AVX-512: only the portable transforms run")
        var compared = 0
        for tile in [2, 4] {
            let points = (tile + 2) * (tile + 2)
            forEachShape(tile: tile) { channels, plan, rowStart, rows, tiles, offset in
                let what = "F\(tile) \(channels) x \(plan.height) x \(plan.width), tile rows \(rowStart) + \(rows)"
                let dy = S.random(Shape(1, channels, plan.height, plan.width), seed: UInt64(plan.width * 7 + plan.height))
                let garbage = S.random(Shape(points, channels, 1, tiles), seed: 3)
                let portable = OwnedTensor(garbage.shape), fast = OwnedTensor(garbage.shape)
                portable.tensor.copy(from: garbage.tensor); fast.tensor.copy(from: garbage.tensor)
                let buffer = OwnedTensor(.vector(plan.rowFloats))
                if tile == 2 {
                    transformOutputGradientF2Portable(dy.tensor.data, channels: channels, plan: plan, rowStart: rowStart,
                                                      rows: rows, into: portable.tensor.data + offset, tiles: tiles,
                                                      rowBuffer: buffer.tensor.data)
                    segtrain_winograd_output_gradient_f2_avx512(dy.tensor.data, Int32(channels), Int32(plan.height),
                                                                Int32(plan.width), Int32(plan.tilesWide), Int32(rowStart),
                                                                Int32(rows), fast.tensor.data + offset, tiles)
                } else {
                    transformOutputGradientF4Portable(dy.tensor.data, channels: channels, plan: plan, rowStart: rowStart,
                                                      rows: rows, into: portable.tensor.data + offset, tiles: tiles,
                                                      rowBuffer: buffer.tensor.data)
                    segtrain_winograd_output_gradient_f4_avx512(dy.tensor.data, Int32(channels), Int32(plan.height),
                                                                Int32(plan.width), Int32(plan.tilesWide), Int32(rowStart),
                                                                Int32(rows), fast.tensor.data + offset, tiles)
                }
                S.assertBitwiseEqual(fast.tensor, portable.tensor, what)
                compared += 1
            }
        }
        XCTAssertGreaterThan(compared, 600)
    }

    /// The weight transforms, both tiles, forward and flipped for the input gradient, channel counts
    /// around one and two 16-kernel vectors.
    func testWeightTransformsGiveThePortableBits() throws {
        try XCTSkipUnless(avx512Kernels, "this CPU has no AVX-512: only the portable transforms run")
        let pool = WorkerPool(threads: 2)
        var compared = 0
        for tile in [2, 4] {
            for (cout, cin) in [(1, 1), (3, 5), (16, 16), (17, 15), (33, 2), (2, 40), (31, 47)] {
                let weight = S.random(Shape(cout, cin, 3, 3), seed: UInt64(cout * 100 + cin))
                let floats = (tile + 2) * (tile + 2) * cout * cin
                for flip in [false, true] {
                    let portable = S.random(.vector(floats), seed: 1), fast = OwnedTensor(.vector(floats))
                    fast.tensor.copy(from: portable.tensor)
                    transformAllWeightsPortable(weight.tensor, into: portable.tensor.data, forInputGradient: flip,
                                                tile: tile, pool: pool)
                    transformAllWeights(weight.tensor, into: fast.tensor.data, forInputGradient: flip, tile: tile,
                                        pool: pool)
                    S.assertBitwiseEqual(fast.tensor, portable.tensor, "F\(tile) \(cout) x \(cin) flip \(flip)")
                    compared += 1
                    // A window of columns (PhaseWinograd's blocks): the full transform's columns
                    // first ..< first + count, row by row, from both versions.
                    let (rows, total) = flip ? (cout, cin) : (cin, cout)
                    guard total > 2 else { continue }
                    let window = 1..<(total - 1), points = (tile + 2) * (tile + 2)
                    let slice = OwnedTensor(.vector(points * rows * window.count))
                    for xi in 0..<points {
                        for r in 0..<rows {
                            for k in 0..<window.count {
                                slice.tensor.data[(xi * rows + r) * window.count + k] =
                                    portable.tensor.data[(xi * rows + r) * total + window.lowerBound + k]
                            }
                        }
                    }
                    let windowPortable = OwnedTensor(slice.shape), windowFast = OwnedTensor(slice.shape)
                    transformAllWeightsPortable(weight.tensor, into: windowPortable.tensor.data, forInputGradient: flip,
                                                tile: tile, columns: window, pool: pool)
                    transformAllWeights(weight.tensor, into: windowFast.tensor.data, forInputGradient: flip, tile: tile,
                                        columns: window, pool: pool)
                    S.assertBitwiseEqual(windowPortable.tensor, slice.tensor, "portable window F\(tile) \(cout) x \(cin) flip \(flip)")
                    S.assertBitwiseEqual(windowFast.tensor, slice.tensor, "window F\(tile) \(cout) x \(cin) flip \(flip)")
                    compared += 1
                }
            }
        }
        XCTAssertEqual(compared, 48)
    }
}
