import Foundation
import SegData
import SegEngine
import XCTest

final class PreprocessTests: XCTestCase {
    func randomImage(width: Int, height: Int, channels: Int, seed: UInt64) -> Image8 {
        Image8(width: width, height: height, channels: channels, pixels: randomBytes(width * height * channels, seed: seed))
    }

    /// Largest |a - b| over all samples (same shape required).
    func maxDifference(_ a: Image8, _ b: Image8, file: StaticString = #filePath, line: UInt = #line) -> Int {
        XCTAssertEqual([a.width, a.height, a.channels], [b.width, b.height, b.channels], "shapes", file: file, line: line)
        guard a.pixels.count == b.pixels.count else { return Int.max }
        return zip(a.pixels, b.pixels).map { abs(Int($0) - Int($1)) }.max() ?? 0
    }

    // MARK: Resize, images

    func testResizeKeepsAConstantImageConstant() {
        let sizes = [(37, 23, 5, 7), (10, 10, 33, 17), (64, 48, 16, 12), (50, 37, 17, 11), (9, 40, 27, 3), (5, 5, 1, 1)]
        for channels in [1, 2, 3, 4] {
            for value: UInt8 in [0, 1, 137, 254, 255] {
                for (inW, inH, outW, outH) in sizes {
                    let image = Image8(width: inW, height: inH, channels: channels,
                                       pixels: [UInt8](repeating: value, count: inW * inH * channels))
                    let out = Preprocess.resizeImage(image, width: outW, height: outH)
                    XCTAssertEqual([out.width, out.height, out.channels], [outW, outH, channels])
                    XCTAssertTrue(out.pixels.allSatisfy { $0 == value },
                                  "\(inW)x\(inH) -> \(outW)x\(outH), \(channels) channels, value \(value): \(Set(out.pixels))")
                }
            }
        }
    }

    /// PyTorch interpolate(mode='bilinear', align_corners=False), written out per output pixel:
    /// src = (dst + 0.5) * in / out - 0.5, negative clamped to 0, upper neighbour clamped.
    func naiveBilinear(_ image: Image8, width: Int, height: Int) -> Image8 {
        var out = Image8(width: width, height: height, channels: image.channels)
        func source(_ i: Int, _ input: Int, _ output: Int) -> (Int, Int, Double) {
            let s = max((Double(i) + 0.5) * Double(input) / Double(output) - 0.5, 0)
            let i0 = min(Int(s), input - 1)
            return (i0, min(i0 + 1, input - 1), s - Double(i0))
        }
        for y in 0..<height {
            let (y0, y1, ty) = source(y, image.height, height)
            for x in 0..<width {
                let (x0, x1, tx) = source(x, image.width, width)
                for c in 0..<image.channels {
                    let top = (1 - tx) * Double(image[x0, y0, c]) + tx * Double(image[x1, y0, c])
                    let bottom = (1 - tx) * Double(image[x0, y1, c]) + tx * Double(image[x1, y1, c])
                    out[x, y, c] = UInt8((((1 - ty) * top + ty * bottom) + 0.5).rounded(.down))
                }
            }
        }
        return out
    }

    func testUpscalingIsPlainBilinearWithHalfPixelCentres() {
        for (channels, inW, inH) in [(3, 13, 9), (1, 8, 8), (4, 5, 11)] {
            let image = randomImage(width: inW, height: inH, channels: channels, seed: UInt64(inW * 31 + channels))
            // x2: the weights (multiples of 1/16) are exact in float, so the results must match exactly.
            let doubled = Preprocess.resizeImage(image, width: 2 * inW, height: 2 * inH)
            XCTAssertEqual(doubled, naiveBilinear(image, width: 2 * inW, height: 2 * inH), "x2 \(inW)x\(inH)x\(channels)")
            // Non-integer factors: within one level (rounding of inexact weights).
            let odd = Preprocess.resizeImage(image, width: 3 * inW + 2, height: 2 * inH + 5)
            XCTAssertLessThanOrEqual(maxDifference(odd, naiveBilinear(image, width: 3 * inW + 2, height: 2 * inH + 5)), 1)
        }
    }

    /// The antialiased reference, as a direct 2-D sum (not separable): output (i, j) averages every
    /// input pixel with weight tri((x + 0.5 - cx) / sx) * tri((y + 0.5 - cy) / sy), where
    /// cx = (i + 0.5) * in / out, sx = max(in / out, 1) and tri(t) = max(0, 1 - |t|).
    func naiveAntialiased(_ image: Image8, width: Int, height: Int) -> Image8 {
        var out = Image8(width: width, height: height, channels: image.channels)
        let scaleX = Double(image.width) / Double(width), scaleY = Double(image.height) / Double(height)
        let supportX = max(scaleX, 1), supportY = max(scaleY, 1)
        func tri(_ t: Double) -> Double { max(0, 1 - abs(t)) }
        for j in 0..<height {
            let cy = (Double(j) + 0.5) * scaleY
            for i in 0..<width {
                let cx = (Double(i) + 0.5) * scaleX
                var sums = [Double](repeating: 0, count: image.channels), total = 0.0
                for y in 0..<image.height {
                    let wy = tri((Double(y) + 0.5 - cy) / supportY)
                    if wy == 0 { continue }
                    for x in 0..<image.width {
                        let w = wy * tri((Double(x) + 0.5 - cx) / supportX)
                        if w == 0 { continue }
                        total += w
                        for c in 0..<image.channels { sums[c] += w * Double(image[x, y, c]) }
                    }
                }
                for c in 0..<image.channels { out[i, j, c] = UInt8((sums[c] / total + 0.5).rounded(.down)) }
            }
        }
        return out
    }

    func testDownscalingMatchesADirectAntialiasedReference() {
        // integer factors, non-integer factors, and mixed (down in one axis, up in the other)
        let cases = [(64, 48, 16, 12), (60, 60, 20, 15), (50, 37, 17, 11), (97, 61, 13, 29), (40, 10, 13, 25),
                     (31, 45, 30, 44), (191, 128, 12, 8)]
        for (n, (inW, inH, outW, outH)) in cases.enumerated() {
            for channels in [1, 3] {
                let image = randomImage(width: inW, height: inH, channels: channels, seed: UInt64(100 + n))
                let out = Preprocess.resizeImage(image, width: outW, height: outH)
                let reference = naiveAntialiased(image, width: outW, height: outH)
                XCTAssertLessThanOrEqual(maxDifference(out, reference), 1, "\(inW)x\(inH) -> \(outW)x\(outH) x\(channels)")
            }
        }
        // A smooth image too (random noise averages to ~127 everywhere, which hides weight errors).
        var ramp = Image8(width: 90, height: 70, channels: 3)
        for y in 0..<70 { for x in 0..<90 { ramp[x, y, 0] = UInt8(x * 2); ramp[x, y, 1] = UInt8(y * 3); ramp[x, y, 2] = UInt8((x * y) % 256) } }
        for (outW, outH) in [(30, 35), (17, 9), (7, 50)] {
            XCTAssertLessThanOrEqual(maxDifference(Preprocess.resizeImage(ramp, width: outW, height: outH),
                                                   naiveAntialiased(ramp, width: outW, height: outH)), 1, "ramp -> \(outW)x\(outH)")
        }
    }

    /// A 1-pixel checkerboard downscaled by 3: point sampling (bilinear without antialiasing) would
    /// land on pixel centres and give pure 0 / 255; the antialiased filter gives mid grays.
    func testDownscalingIsAntialiased() {
        var board = Image8(width: 63, height: 63, channels: 1)
        for y in 0..<63 { for x in 0..<63 { board[x, y, 0] = (x + y) % 2 == 0 ? 255 : 0 } }
        let small = Preprocess.resizeImage(board, width: 21, height: 21)
        XCTAssertTrue(small.pixels.allSatisfy { (90...165).contains($0) }, "aliased: \(Set(small.pixels).sorted())")
    }

    // MARK: Resize, masks

    func testMaskResizeIsNearestWithTheFloorRule() {
        // 5 -> 3: floor(x * 5 / 3) = 0, 1, 3.  3 -> 5: floor(x * 3 / 5) = 0, 0, 1, 1, 2.
        let row = Image8(width: 5, height: 1, channels: 1, pixels: [10, 20, 30, 40, 50])
        XCTAssertEqual(Preprocess.resizeMask(row, width: 3, height: 1).pixels, [10, 20, 40])
        let short = Image8(width: 3, height: 1, channels: 1, pixels: [7, 8, 9])
        XCTAssertEqual(Preprocess.resizeMask(short, width: 5, height: 1).pixels, [7, 7, 8, 8, 9])
        XCTAssertEqual(Preprocess.resizeMask(short, width: 3, height: 2).pixels, [7, 8, 9, 7, 8, 9])

        // A mask whose value encodes its position: every output pixel must name the source pixel
        // the rule picks, in both axes and for up- and downscaling.
        var coded = Image8(width: 15, height: 12, channels: 1)
        for y in 0..<12 { for x in 0..<15 { coded[x, y, 0] = UInt8(x + 16 * y) } }
        for (outW, outH) in [(5, 4), (7, 5), (15, 12), (30, 24), (41, 13), (1, 1)] {
            let out = Preprocess.resizeMask(coded, width: outW, height: outH)
            for y in 0..<outH {
                for x in 0..<outW {
                    let v = Int(out[x, y, 0])
                    XCTAssertEqual(v % 16, x * 15 / outW, "column of (\(x), \(y)) at \(outW)x\(outH)")
                    XCTAssertEqual(v / 16, y * 12 / outH, "row of (\(x), \(y)) at \(outW)x\(outH)")
                }
            }
        }
    }

    func testMaskResizeKeepsTheValueSet() {
        var rng = SplitMix64(seed: 5)
        let classes: [UInt8] = [0, 3, 7, 255]
        var mask = Image8(width: 57, height: 43, channels: 1)
        for i in 0..<mask.pixels.count { mask.pixels[i] = classes[Int(rng.next() % 4)] }
        for (w, h) in [(19, 11), (128, 128), (57, 20), (200, 3)] {
            let out = Preprocess.resizeMask(mask, width: w, height: h)
            XCTAssertTrue(Set(out.pixels).isSubset(of: Set(classes)), "\(w)x\(h): new values \(Set(out.pixels).subtracting(classes))")
            if w * h >= 57 * 43 { XCTAssertEqual(Set(out.pixels), Set(classes), "upscaled \(w)x\(h) lost a class") }
        }
    }

    // MARK: Crop

    func testCropCopiesTheRegionAndFillsOutside() {
        let image = randomImage(width: 20, height: 13, channels: 3, seed: 8)
        for (x, y, w, h) in [(0, 0, 20, 13), (3, 4, 5, 6), (-4, -2, 10, 8), (15, 10, 9, 9), (-3, -3, 30, 20), (25, 0, 4, 4), (0, -9, 3, 5)] {
            let out = Preprocess.crop(image, x: x, y: y, width: w, height: h, fill: 77)
            XCTAssertEqual([out.width, out.height, out.channels], [w, h, 3])
            for v in 0..<h {
                for u in 0..<w {
                    let sx = x + u, sy = y + v
                    let inside = (0..<20).contains(sx) && (0..<13).contains(sy)
                    for c in 0..<3 {
                        XCTAssertEqual(out[u, v, c], inside ? image[sx, sy, c] : 77, "crop (\(x), \(y), \(w), \(h)) at (\(u), \(v))")
                    }
                }
            }
        }
    }

    func testRandomCropIsSeededInBoundsAndJoint() {
        // Coordinate image and mask: each pixel says where it came from.
        let w = 50, h = 30
        var image = Image8(width: w, height: h, channels: 3), mask = Image8(width: w, height: h, channels: 1)
        for y in 0..<h { for x in 0..<w { image[x, y, 0] = UInt8(x); image[x, y, 1] = UInt8(y); mask[x, y, 0] = UInt8(x + 1) } }
        var xs = Set<Int>(), ys = Set<Int>()
        for index in 0..<300 {
            let (ci, cm) = Preprocess.randomCrop(image: image, mask: mask, width: 20, height: 16, seed: 3, epoch: 1, index: index)
            let x0 = Int(ci[0, 0, 0]), y0 = Int(ci[0, 0, 1])
            XCTAssertTrue((0...30).contains(x0) && (0...14).contains(y0))
            xs.insert(x0); ys.insert(y0)
            for v in 0..<16 {
                for u in 0..<20 {
                    XCTAssertEqual(Int(ci[u, v, 0]), x0 + u); XCTAssertEqual(Int(ci[u, v, 1]), y0 + v)
                    XCTAssertEqual(Int(cm[u, v, 0]), x0 + u + 1, "mask cropped elsewhere")
                }
            }
            let again = Preprocess.randomCrop(image: image, mask: mask, width: 20, height: 16, seed: 3, epoch: 1, index: index)
            XCTAssertEqual(again.image, ci); XCTAssertEqual(again.mask, cm)
        }
        // Every offset is reachable, extremes included.
        XCTAssertEqual(xs, Set(0...30)); XCTAssertEqual(ys, Set(0...14))
        // Another epoch, another crop (for most samples).
        let moved = (0..<50).filter {
            Preprocess.randomCrop(image: image, mask: mask, width: 20, height: 16, seed: 3, epoch: 1, index: $0).image
                != Preprocess.randomCrop(image: image, mask: mask, width: 20, height: 16, seed: 3, epoch: 2, index: $0).image
        }.count
        XCTAssertGreaterThan(moved, 40)

        // Smaller than the crop in x: centred and padded with the fills; still random in y.
        let (pi, pm) = Preprocess.randomCrop(image: image, mask: mask, width: 60, height: 10, seed: 3, epoch: 0, index: 0,
                                             imageFill: 9, maskFill: 250)
        XCTAssertEqual([pi.width, pi.height, pm.width, pm.height], [60, 10, 60, 10])
        for v in 0..<10 {
            for u in 0..<60 {
                if u < 5 || u >= 55 {
                    XCTAssertEqual(pi[u, v, 0], 9); XCTAssertEqual(pm[u, v, 0], 250)
                } else {
                    XCTAssertEqual(Int(pi[u, v, 0]), u - 5); XCTAssertEqual(Int(pm[u, v, 0]), u - 4)
                }
            }
        }
    }

    // MARK: To floats

    func testNormalizeWritesPlanarScaledValues() {
        let image = Image8(width: 2, height: 1, channels: 3, pixels: [0, 51, 255, 102, 204, 1])
        var out = [Float](repeating: -7, count: 7)  // one spare value: must stay untouched
        out.withUnsafeMutableBufferPointer { Preprocess.normalize(image, into: $0.baseAddress!) }
        let expected: [Float] = [0, 102, 51, 204, 255, 1].map { $0 / 255 }
        for i in 0..<6 { XCTAssertEqual(out[i], expected[i], accuracy: 1e-7, "value \(i)") }
        XCTAssertEqual(out[6], -7)

        let mean: [Float] = [0.485, 0.456, 0.406], std: [Float] = [0.229, 0.224, 0.225]
        out.withUnsafeMutableBufferPointer { Preprocess.normalize(image, into: $0.baseAddress!, mean: mean, std: std) }
        for i in 0..<6 {
            let c = i / 2
            XCTAssertEqual(out[i], (expected[i] - mean[c]) / std[c], accuracy: 1e-5, "value \(i)")
        }
        // (0 - 0.485) / 0.229 by hand
        XCTAssertEqual(out[0], -2.11790, accuracy: 1e-4)

        // gray and RGBA layouts
        let gray = Image8(width: 3, height: 1, channels: 1, pixels: [255, 0, 128])
        var g = [Float](repeating: 0, count: 3)
        g.withUnsafeMutableBufferPointer { Preprocess.normalize(gray, into: $0.baseAddress!, mean: [0.5], std: [0.5]) }
        XCTAssertEqual(g[0], 1, accuracy: 1e-6); XCTAssertEqual(g[1], -1, accuracy: 1e-6); XCTAssertEqual(g[2], 1.0 / 255, accuracy: 1e-6)
        let rgba = randomImage(width: 5, height: 4, channels: 4, seed: 2)
        var q = [Float](repeating: 0, count: 80)
        q.withUnsafeMutableBufferPointer { Preprocess.normalize(rgba, into: $0.baseAddress!) }
        for c in 0..<4 { for y in 0..<4 { for x in 0..<5 { XCTAssertEqual(q[c * 20 + y * 5 + x], Float(rgba[x, y, c]) / 255) } } }
    }

    func testMaskToFloatKeepsClassIndices() {
        let mask = Image8(width: 4, height: 1, channels: 1, pixels: [0, 1, 17, 255])
        var out = [Float](repeating: -1, count: 4)
        out.withUnsafeMutableBufferPointer { Preprocess.maskToFloat(mask, into: $0.baseAddress!) }
        XCTAssertEqual(out, [0, 1, 17, 255])
    }
}
