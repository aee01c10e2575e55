import Foundation
import SegData
import SegEngine
import XCTest

/// An RGB image whose pixel (x, y) holds R = x, G = y, B = 0 (so width, height <= 256), and a mask
/// whose value names the `cell` x `cell` block the pixel lies in: x / cell + columns * (y / cell).
struct CoordinateSample {
    let width: Int, height: Int, cell: Int
    var columns: Int { (width + cell - 1) / cell }
    var image: Image8
    var mask: Image8

    init(width: Int, height: Int, cell: Int) {
        precondition(width <= 256 && height <= 256)
        self.width = width; self.height = height; self.cell = cell
        image = Image8(width: width, height: height, channels: 3)
        mask = Image8(width: width, height: height, channels: 1)
        let columns = (width + cell - 1) / cell
        precondition(columns * ((height + cell - 1) / cell) <= 256)
        for y in 0..<height {
            for x in 0..<width {
                image[x, y, 0] = UInt8(x); image[x, y, 1] = UInt8(y)
                mask[x, y, 0] = UInt8(x / cell + columns * (y / cell))
            }
        }
    }

    /// Output pixels where the source coordinates read from the (bilinearly warped) image lie more
    /// than `tolerance` pixels outside the cell the (nearest-warped) mask names. Bilinear
    /// interpolation of a linear ramp is exact, so R, G are the source coordinates rounded; the mask
    /// reads the nearest source pixel: they agree exactly except for rounding ties, hence 1 px.
    func misaligned(image: Image8, mask: Image8, tolerance: Int = 1) -> Int {
        var bad = 0
        for y in 0..<height {
            for x in 0..<width {
                let rx = Int(image[x, y, 0]), ry = Int(image[x, y, 1]), m = Int(mask[x, y, 0])
                let cx = m % columns * cell, cy = m / columns * cell
                if rx < cx - tolerance || rx > cx + cell - 1 + tolerance || ry < cy - tolerance || ry > cy + cell - 1 + tolerance {
                    bad += 1
                }
            }
        }
        return bad
    }
}

final class AugmentTests: XCTestCase {
    func only(_ change: (inout AugmentConfig) -> Void) -> AugmentConfig {
        var config = AugmentConfig.none
        change(&config)
        return config
    }

    /// Every geometric op, alone and together; photometric ops off.
    var geometricConfigs: [(String, AugmentConfig)] {
        [
            ("hflip", only { $0.hflipProbability = 1 }),
            ("vflip", only { $0.vflipProbability = 1 }),
            ("rotate", only { $0.rotateProbability = 1; $0.rotateDegrees = 45 }),
            ("scale", only { $0.scaleProbability = 1; $0.scaleMin = 0.5; $0.scaleMax = 1.6 }),
            ("shift", only { $0.shiftProbability = 1; $0.shiftFraction = 0.3 }),
            ("all", only {
                $0.hflipProbability = 0.5; $0.vflipProbability = 0.5
                $0.rotateProbability = 1; $0.rotateDegrees = 180
                $0.scaleProbability = 1; $0.scaleMin = 0.6; $0.scaleMax = 1.5
                $0.shiftProbability = 1; $0.shiftFraction = 0.25
            }),
            ("default geometry", {
                var c = AugmentConfig.default
                c.brightnessContrastProbability = 0; c.grayscaleProbability = 0
                c.channelShuffleProbability = 0; c.blurProbability = 0
                return c
            }()),
        ]
    }

    // MARK: Alignment

    func testGeometricAugmentationsKeepImageAndMaskAligned() {
        for (width, height, cell) in [(64, 64, 8), (200, 100, 16)] {
            let sample = CoordinateSample(width: width, height: height, cell: cell)
            for (name, config) in geometricConfigs {
                let augmenter = Augmenter(config)
                var moved = 0
                for index in 0..<40 {
                    var image = sample.image, mask = sample.mask
                    augmenter.apply(image: &image, mask: &mask, seed: 17, epoch: 0, index: index)
                    let bad = sample.misaligned(image: image, mask: mask)
                    XCTAssertEqual(bad, 0, "\(name) \(width)x\(height) index \(index): \(bad) misaligned pixels, plan \(augmenter.plan(seed: 17, epoch: 0, index: index))")
                    if image != sample.image { moved += 1 }
                    // The image went through the plan's map: R, G are its source points (mirrored
                    // with reflect-101 outside), rounded.
                    let map = augmenter.plan(seed: 17, epoch: 0, index: index).map(width: width, height: height)
                    var far = 0
                    for v in stride(from: 0, to: height, by: 3) {
                        for u in stride(from: 0, to: width, by: 3) {
                            let (sx, sy) = map.source(Double(u), Double(v))
                            if abs(Double(image[u, v, 0]) - mirror(sx, width)) > 1 || abs(Double(image[u, v, 1]) - mirror(sy, height)) > 1 { far += 1 }
                        }
                    }
                    XCTAssertEqual(far, 0, "\(name) index \(index): image does not follow the plan's map")
                }
                // default: each op p = 0.5; a scale within ~0.2% of 1 can leave a 64 px image as it was
                let expected = name == "default geometry" ? 30 : 38
                XCTAssertGreaterThanOrEqual(moved, expected, "\(name): the augmentation did nothing too often")
            }
        }
    }

    /// Finer than cells: a 2-channel mask holding (x, y) itself must name the source pixel nearest
    /// to the point the image was sampled at, i.e. the image's interpolated coordinates rounded.
    /// They can differ only on exact rounding ties (fractions are quantised to 1/2048 px) where the
    /// point is mirrored at a border.
    func testTheMaskTakesTheNearestSourcePixel() {
        let sample = CoordinateSample(width: 200, height: 100, cell: 16)
        var mask = Image8(width: 200, height: 100, channels: 2)
        for y in 0..<100 { for x in 0..<200 { mask[x, y, 0] = UInt8(x); mask[x, y, 1] = UInt8(y) } }
        for (name, config) in geometricConfigs {
            let augmenter = Augmenter(config)
            var differ = 0, farther = 0
            for index in 0..<20 {
                var image = sample.image, warped = mask
                augmenter.apply(image: &image, mask: &warped, seed: 23, epoch: 1, index: index)
                for p in 0..<(200 * 100) {
                    for c in 0..<2 {
                        let d = abs(Int(image.pixels[3 * p + c]) - Int(warped.pixels[2 * p + c]))
                        if d > 0 { differ += 1 }
                        if d > 1 { farther += 1 }
                    }
                }
            }
            XCTAssertEqual(farther, 0, name)
            print("\(name): image and mask disagree on \(differ) of \(20 * 200 * 100 * 2) coordinates")
            XCTAssertLessThan(differ, 20 * 200 * 100 * 2 / 1000, "\(name): image and mask disagree on \(differ) coordinates")
        }
    }

    /// Continuous reflect-101: mirror about pixel centres 0 and n - 1.
    func mirror(_ x: Double, _ n: Int) -> Double {
        let period = 2 * Double(n - 1)
        var t = x.truncatingRemainder(dividingBy: period)
        if t < 0 { t += period }
        return t <= Double(n - 1) ? t : period - t
    }

    /// The checker fails when the mask is moved differently from the image.
    func testTheAlignmentCheckerCatchesAMisalignedMask() {
        let sample = CoordinateSample(width: 64, height: 64, cell: 8)
        var plan = AugmentPlan()
        plan.degrees = 12; plan.scale = 1.1; plan.shiftX = 0.05
        let map = plan.map(width: 64, height: 64)
        let image = Augmenter.warpImage(sample.image, map: map)
        XCTAssertEqual(sample.misaligned(image: image, mask: Augmenter.warpMask(sample.mask, map: map)), 0)

        var otherAngle = plan
        otherAngle.degrees = -12
        var shifted = map
        shifted.c += 2
        var flipped = plan
        flipped.hflip = true
        let broken: [(String, Image8)] = [
            ("mask rotated the other way", Augmenter.warpMask(sample.mask, map: otherAngle.map(width: 64, height: 64))),
            ("mask 2 px to the side", Augmenter.warpMask(sample.mask, map: shifted)),
            ("mask flipped, image not", Augmenter.warpMask(sample.mask, map: flipped.map(width: 64, height: 64))),
            ("mask not transformed", sample.mask),
        ]
        for (name, mask) in broken {
            let bad = sample.misaligned(image: image, mask: mask)
            XCTAssertGreaterThan(bad, 64 * 64 / 20, "\(name): only \(bad) misaligned pixels")
        }
    }

    // MARK: Geometry, exact cases

    func testFlipsRotationShiftAndScaleMoveContentTheDocumentedWay() {
        let sample = CoordinateSample(width: 64, height: 64, cell: 8)
        func applied(_ change: (inout AugmentPlan) -> Void) -> (Image8, Image8) {
            var plan = AugmentPlan()
            change(&plan)
            var image = sample.image, mask = sample.mask
            Augmenter.apply(plan, image: &image, mask: &mask)
            return (image, mask)
        }
        // hflip / vflip: exact mirror, image and mask.
        let (h, hm) = applied { $0.hflip = true }
        let (v, vm) = applied { $0.vflip = true }
        // 90 degrees counter-clockwise (numpy.rot90): output (u, v) shows input (63 - v, u).
        let (r, rm) = applied { $0.degrees = 90 }
        for y in 0..<64 {
            for x in 0..<64 {
                XCTAssertEqual([h[x, y, 0], h[x, y, 1], hm[x, y, 0]], [UInt8(63 - x), UInt8(y), sample.mask[63 - x, y, 0]])
                XCTAssertEqual([v[x, y, 0], v[x, y, 1], vm[x, y, 0]], [UInt8(x), UInt8(63 - y), sample.mask[x, 63 - y, 0]])
                XCTAssertEqual([r[x, y, 0], r[x, y, 1], rm[x, y, 0]], [UInt8(63 - y), UInt8(x), sample.mask[63 - y, x, 0]])
            }
        }
        // The flip fast path gives what the general warp gives.
        var plan = AugmentPlan()
        plan.hflip = true; plan.vflip = true
        var image = sample.image, mask = sample.mask
        Augmenter.apply(plan, image: &image, mask: &mask)
        XCTAssertEqual(image, Augmenter.warpImage(sample.image, map: plan.map(width: 64, height: 64)))
        XCTAssertEqual(mask, Augmenter.warpMask(sample.mask, map: plan.map(width: 64, height: 64)))

        // Shift right by 16 px (exact) and up by 8.5 px (between rows): output (u, v) shows input
        // (u - 16, v + 8.5), mirrored at the borders.
        let (s, _) = applied { $0.shiftX = 0.25; $0.shiftY = -8.5 / 64 }
        for y in 0..<64 {
            for x in 0..<64 {
                XCTAssertEqual(Int(s[x, y, 0]), x >= 16 ? x - 16 : 16 - x, "shift x at (\(x), \(y))")
                XCTAssertEqual(Double(s[x, y, 1]), mirror(Double(y) + 8.5, 64), accuracy: 0.5, "shift y at (\(x), \(y))")
            }
        }
        // Zoom x2 about the centre: output pixel centre u + 0.5 shows input point (u + 0.5 - 32) / 2 + 32.
        let (z, _) = applied { $0.scale = 2 }
        for y in 0..<64 {
            for x in 0..<64 {
                XCTAssertEqual(Double(z[x, y, 0]), (Double(x) + 0.5 - 32) / 2 + 32 - 0.5, accuracy: 0.5)
                XCTAssertEqual(Double(z[x, y, 1]), (Double(y) + 0.5 - 32) / 2 + 32 - 0.5, accuracy: 0.5)
            }
        }
    }

    func testNonSquareRotationKeepsTheCentreAndMirrorsBorders() {
        // 200 x 100 rotated by 90 degrees: the centre stays; the corners sample the mirrored image.
        let sample = CoordinateSample(width: 200, height: 100, cell: 16)
        var plan = AugmentPlan()
        plan.degrees = 90
        var image = sample.image, mask = sample.mask
        Augmenter.apply(plan, image: &image, mask: &mask)
        XCTAssertEqual(sample.misaligned(image: image, mask: mask), 0)
        // Continuous coordinates, centre (100, 50): source = centre + R^-1 (output - centre) with
        // R^-1 = [[0, -1], [1, 0]]; pixel centres are at index + 0.5.
        for v in 0..<100 {
            for u in 0..<200 {
                let sx = 100 - (Double(v) + 0.5 - 50) - 0.5, sy = 50 + (Double(u) + 0.5 - 100) - 0.5
                XCTAssertEqual(Double(image[u, v, 0]), mirror(sx, 200), accuracy: 0.5)
                XCTAssertEqual(Double(image[u, v, 1]), mirror(sy, 100), accuracy: 0.5)
            }
        }
    }

    /// With `maskOutside` (an ignore value) a rotated mask takes it wherever its nearest source
    /// pixel lies beyond the edge, and keeps the mirrored-warp labels everywhere else; the image is
    /// warped exactly as without it. 200 x 100 rotated by 90 degrees: columns 0..<50 and 150..<200
    /// read source rows beyond 0..<100.
    func testMaskOutsideFillsWhatTheWarpBringsInFromBeyondTheEdge() {
        let sample = CoordinateSample(width: 200, height: 100, cell: 16)
        var plan = AugmentPlan()
        plan.degrees = 90
        var mirroredImage = sample.image, mirroredMask = sample.mask
        Augmenter.apply(plan, image: &mirroredImage, mask: &mirroredMask)
        var image = sample.image, mask = sample.mask
        Augmenter.apply(plan, image: &image, mask: &mask, maskOutside: 255)
        XCTAssertEqual(image, mirroredImage, "the image does not depend on the mask's fill")
        var filled = 0
        for v in 0..<100 {
            for u in 0..<200 {
                // Source row (see testNonSquareRotationKeepsTheCentreAndMirrorsBorders): u - 50.
                let sy = 50 + (Double(u) + 0.5 - 100) - 0.5
                if sy < -0.5 || sy >= 99.5 {
                    XCTAssertEqual(mask[u, v, 0], 255, "(\(u), \(v)) reads source row \(sy)")
                    filled += 1
                } else {
                    XCTAssertEqual(mask[u, v, 0], mirroredMask[u, v, 0], "(\(u), \(v)) reads source row \(sy)")
                }
            }
        }
        XCTAssertEqual(filled, 100 * 100)
        // Flips never read beyond the edge: nothing is filled.
        var flip = AugmentPlan()
        flip.hflip = true
        var flippedImage = sample.image, flippedMask = sample.mask
        Augmenter.apply(flip, image: &flippedImage, mask: &flippedMask, maskOutside: 255)
        XCTAssertFalse(flippedMask.pixels.contains(255))
    }

    // MARK: Determinism

    func testTheSameSeedEpochAndIndexGiveTheSameResult() {
        let generator = SyntheticGenerator(size: 48, classes: 3, seed: 1)
        var everything = AugmentConfig.default
        everything.vflipProbability = 0.5; everything.grayscaleProbability = 0.3
        everything.channelShuffleProbability = 0.3; everything.blurProbability = 0.5
        let a = Augmenter(everything), b = Augmenter(everything)
        var differentEpoch = 0, differentSeed = 0
        for index in 0..<30 {
            let (image0, mask0) = generator.sample(index)
            var i1 = image0, m1 = mask0, i2 = image0, m2 = mask0, i3 = image0, m3 = mask0, i4 = image0, m4 = mask0
            _ = a.plan(seed: 5, epoch: 3, index: index + 1)  // other calls do not disturb it
            a.apply(image: &i1, mask: &m1, seed: 5, epoch: 3, index: index)
            b.apply(image: &i2, mask: &m2, seed: 5, epoch: 3, index: index)
            XCTAssertEqual(i1, i2); XCTAssertEqual(m1, m2)
            XCTAssertEqual(a.plan(seed: 5, epoch: 3, index: index), b.plan(seed: 5, epoch: 3, index: index))
            a.apply(image: &i3, mask: &m3, seed: 5, epoch: 4, index: index)
            a.apply(image: &i4, mask: &m4, seed: 6, epoch: 3, index: index)
            if i3 != i1 { differentEpoch += 1 }
            if i4 != i1 { differentSeed += 1 }
        }
        XCTAssertGreaterThanOrEqual(differentEpoch, 27)
        XCTAssertGreaterThanOrEqual(differentSeed, 27)
    }

    /// Ranks see interleaved shards and threads finish in any order: the output for a sample must
    /// not depend on who augments it or when.
    func testResultsDoNotDependOnTheRankCountOrOrder() {
        let generator = SyntheticGenerator(size: 32, classes: 2, seed: 4)
        let augmenter = Augmenter(.default)
        let count = 24
        func run(ranks: Int, reversed: Bool) -> [Image8] {
            let results = UnsafeMutableBufferPointer<Image8>.allocate(capacity: count)
            defer { results.deallocate() }
            let blank = Image8(width: 1, height: 1, channels: 1)
            results.initialize(repeating: blank)
            DispatchQueue.concurrentPerform(iterations: ranks) { rank in
                var shard = Array(stride(from: rank, to: count, by: ranks))
                if reversed { shard.reverse() }
                for index in shard {
                    var (image, mask) = generator.sample(index)
                    augmenter.apply(image: &image, mask: &mask, seed: 99, epoch: 2, index: index)
                    results[index] = image
                }
            }
            return Array(results)
        }
        let one = run(ranks: 1, reversed: false)
        XCTAssertEqual(run(ranks: 2, reversed: true), one)
        XCTAssertEqual(run(ranks: 3, reversed: false), one)
        XCTAssertEqual(run(ranks: 5, reversed: true), one)
    }

    func testNoneIsTheIdentity() {
        let augmenter = Augmenter(.none)
        let generator = SyntheticGenerator(size: 40, classes: 4, seed: 2)
        for index in 0..<20 {
            let (image, mask) = generator.sample(index)
            var i = image, m = mask
            augmenter.apply(image: &i, mask: &m, seed: UInt64(index), epoch: index, index: index)
            XCTAssertEqual(i, image); XCTAssertEqual(m, mask)
            XCTAssertEqual(augmenter.plan(seed: 1, epoch: 2, index: index), AugmentPlan())
        }
    }

    func testPhotometricOpsNeverChangeTheMask() {
        var photometric = AugmentConfig.none
        photometric.brightnessContrastProbability = 1; photometric.grayscaleProbability = 0.5
        photometric.channelShuffleProbability = 1; photometric.blurProbability = 1
        let augmenter = Augmenter(photometric)
        let generator = SyntheticGenerator(size: 40, classes: 4, seed: 2)
        var changed = 0
        for index in 0..<20 {
            let (image, mask) = generator.sample(index)
            var i = image, m = mask
            augmenter.apply(image: &i, mask: &m, seed: 3, epoch: 0, index: index)
            XCTAssertEqual(m, mask)
            XCTAssertTrue(augmenter.plan(seed: 3, epoch: 0, index: index).isGeometricIdentity)
            if i != image { changed += 1 }
        }
        XCTAssertEqual(changed, 20)
    }

    func testProbabilitiesAreHonoured() {
        var config = AugmentConfig.none
        config.hflipProbability = 0.3; config.rotateProbability = 0.7; config.blurProbability = 0.5
        let augmenter = Augmenter(config)
        var flips = 0, rotations = 0, blurs = 0, angles: [Float] = []
        for index in 0..<4000 {
            let plan = augmenter.plan(seed: 8, epoch: 1, index: index)
            if plan.hflip { flips += 1 }
            if plan.degrees != 0 { rotations += 1; angles.append(plan.degrees) }
            if plan.blurSigma > 0 { blurs += 1; XCTAssertTrue((config.blurSigmaMin...config.blurSigmaMax).contains(plan.blurSigma)) }
            XCTAssertFalse(plan.vflip); XCTAssertEqual(plan.scale, 1); XCTAssertEqual(plan.contrast, 1)
        }
        // binomial standard deviations are about 30 here; 4 sigma bounds
        XCTAssertEqual(Double(flips), 1200, accuracy: 120)
        XCTAssertEqual(Double(rotations), 2800, accuracy: 120)
        XCTAssertEqual(Double(blurs), 2000, accuracy: 130)
        XCTAssertTrue(angles.allSatisfy { abs($0) <= 15 })
        XCTAssertGreaterThan(angles.max()!, 14); XCTAssertLessThan(angles.min()!, -14)
    }

    // MARK: Photometric ops

    func testBrightnessContrastFollowsTheFormula() {
        var ramp = Image8(width: 256, height: 1, channels: 1)
        for v in 0..<256 { ramp.pixels[v] = UInt8(v) }
        for (contrast, brightness) in [(Float(1.5), Float(-0.1)), (0.8, 0.2), (1.2, 0.05), (1, 0), (0.9, -0.2)] {
            var out = ramp
            Augmenter.adjustBrightnessContrast(&out, contrast: contrast, brightness: brightness)
            var inexact = 0
            for v in 0..<256 {
                let expected = min(max((Double(contrast) * Double(v) + Double(brightness) * 255).rounded(), 0), 255)
                let diff = abs(Double(out.pixels[v]) - expected)
                XCTAssertLessThanOrEqual(diff, 1, "contrast \(contrast) brightness \(brightness) at \(v)")
                // Exact ties (x.5 in float, x.4999996 in double) may round either way.
                let exact = Double(contrast) * Double(v) + Double(brightness) * 255
                let nearTie = abs(exact - exact.rounded(.down) - 0.5) < 1e-4
                if diff != 0 && !nearTie { inexact += 1 }
            }
            XCTAssertLessThanOrEqual(inexact, 2, "contrast \(contrast) brightness \(brightness)")
        }
        // RGBA: alpha untouched.
        var rgba = Image8(width: 2, height: 1, channels: 4, pixels: [10, 100, 200, 50, 0, 255, 128, 7])
        Augmenter.adjustBrightnessContrast(&rgba, contrast: 2, brightness: 0.1)
        XCTAssertEqual(rgba.pixels, [46, 226, 255, 50, 26, 255, 255, 7])
    }

    func testGrayscaleMakesChannelsEqualWithLuma() {
        var image = Image8(width: 4, height: 1, channels: 3, pixels: [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])
        Augmenter.grayscale(&image)
        // 0.299 * 255 = 76.2, 0.587 * 255 = 149.7, 0.114 * 255 = 29.1, 2.99 + 11.74 + 3.42 = 18.15
        XCTAssertEqual(image.pixels, [76, 76, 76, 150, 150, 150, 29, 29, 29, 18, 18, 18])
        var random = Image8(width: 30, height: 20, channels: 4, pixels: randomBytes(30 * 20 * 4, seed: 4))
        let before = random
        Augmenter.grayscale(&random)
        for p in 0..<600 {
            let r = Double(before.pixels[4 * p]), g = Double(before.pixels[4 * p + 1]), b = Double(before.pixels[4 * p + 2])
            XCTAssertEqual(random.pixels[4 * p], random.pixels[4 * p + 1]); XCTAssertEqual(random.pixels[4 * p], random.pixels[4 * p + 2])
            XCTAssertEqual(Double(random.pixels[4 * p]), 0.299 * r + 0.587 * g + 0.114 * b, accuracy: 0.5 + 1e-9)
            XCTAssertEqual(random.pixels[4 * p + 3], before.pixels[4 * p + 3], "alpha changed")
        }
    }

    func testChannelShufflePermutesChannels() {
        let image = Image8(width: 20, height: 10, channels: 3, pixels: randomBytes(600, seed: 6))
        var out = image
        Augmenter.shuffleChannels(&out, order: [2, 0, 1])
        for p in 0..<200 {
            XCTAssertEqual([out.pixels[3 * p], out.pixels[3 * p + 1], out.pixels[3 * p + 2]],
                           [image.pixels[3 * p + 2], image.pixels[3 * p], image.pixels[3 * p + 1]])
        }
        // Drawn permutations: one permutation for the whole image, all six seen.
        var config = AugmentConfig.none
        config.channelShuffleProbability = 1
        let augmenter = Augmenter(config)
        var seen = Set<[Int]>()
        let mask = Image8(width: 20, height: 10, channels: 1)
        for index in 0..<60 {
            var i = image, m = mask
            augmenter.apply(image: &i, mask: &m, seed: 0, epoch: 0, index: index)
            // order[c]: the input channel that output channel c equals everywhere (-1: none)
            var order: [Int] = []
            for c in 0..<3 {
                let source = (0..<3).first { (k: Int) -> Bool in
                    (0..<200).allSatisfy { (p: Int) -> Bool in i.pixels[3 * p + c] == image.pixels[3 * p + k] }
                }
                order.append(source ?? -1)
            }
            XCTAssertEqual(Set(order), [0, 1, 2], "not a channel permutation")
            XCTAssertEqual(order, augmenter.plan(seed: 0, epoch: 0, index: index).channelOrder)
            seen.insert(order)
        }
        XCTAssertEqual(seen.count, 6)
    }

    func testGaussianBlur() {
        // The kernel: OpenCV's size rule, normalised, symmetric, Gaussian shape.
        XCTAssertEqual(Augmenter.gaussianKernel(sigma: 1).count, 7)
        XCTAssertEqual(Augmenter.gaussianKernel(sigma: 0.5).count, 5)
        XCTAssertEqual(Augmenter.gaussianKernel(sigma: 0.2).count, 3)
        XCTAssertEqual(Augmenter.gaussianKernel(sigma: 0.05).count, 1)

        // A constant image stays constant (all sizes, including images smaller than the kernel).
        for (w, h, sigma) in [(32, 20, Float(1)), (5, 3, 2.5), (1, 9, 1.5), (40, 40, 0.7)] {
            var image = Image8(width: w, height: h, channels: 3, pixels: [UInt8](repeating: 201, count: w * h * 3))
            Augmenter.gaussianBlur(&image, sigma: sigma)
            XCTAssertTrue(image.pixels.allSatisfy { $0 == 201 }, "\(w)x\(h) sigma \(sigma)")
        }

        // An impulse spreads as the 2-D Gaussian exp(-(dx^2 + dy^2) / (2 sigma^2)), normalised.
        let sigma: Float = 1.2
        var impulse = Image8(width: 21, height: 21, channels: 1)
        impulse[10, 10, 0] = 255
        Augmenter.gaussianBlur(&impulse, sigma: sigma)
        let r = Augmenter.gaussianKernel(sigma: sigma).count / 2
        let twoSigmaSquared = 2 * Double(sigma) * Double(sigma)
        var norm = 0.0
        for k in -r...r { norm += exp(-Double(k * k) / twoSigmaSquared) }
        for y in 0..<21 {
            for x in 0..<21 {
                let dx = x - 10, dy = y - 10
                let inside = abs(dx) <= r && abs(dy) <= r
                let gaussian: Double = exp(-Double(dx * dx + dy * dy) / twoSigmaSquared) / (norm * norm)
                let expected: Double = inside ? 255 * gaussian : 0
                XCTAssertEqual(Double(impulse[x, y, 0]), expected, accuracy: 0.51, "(\(dx), \(dy))")
            }
        }

        // A periodic image keeps its mean and loses contrast.
        var stripes = Image8(width: 64, height: 48, channels: 3)
        for y in 0..<48 { for x in 0..<64 { for c in 0..<3 { stripes[x, y, c] = UInt8(127.5 + 100 * sin(Double(x + 2 * c) * .pi / 4)) } } }
        let before = stripes
        Augmenter.gaussianBlur(&stripes, sigma: 1.5)
        func stats(_ image: Image8) -> (mean: Double, spread: Double) {
            let values = image.pixels.map(Double.init)
            let mean = values.reduce(0, +) / Double(values.count)
            return (mean, (values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)).squareRoot())
        }
        let (m0, s0) = stats(before), (m1, s1) = stats(stripes)
        XCTAssertEqual(m1, m0, accuracy: 1)
        XCTAssertLessThan(s1, 0.7 * s0)

        // Alpha is left alone.
        var rgba = Image8(width: 16, height: 16, channels: 4, pixels: randomBytes(16 * 16 * 4, seed: 9))
        let original = rgba
        Augmenter.gaussianBlur(&rgba, sigma: 1)
        XCTAssertNotEqual(rgba, original)
        for p in 0..<256 { XCTAssertEqual(rgba.pixels[4 * p + 3], original.pixels[4 * p + 3]) }
    }

    // MARK: Configuration

    func testConfigCodingAndValidation() throws {
        XCTAssertEqual(AugmentConfig.default.problems, [])
        XCTAssertEqual(AugmentConfig.none.problems, [])
        var custom = AugmentConfig.default
        custom.vflipProbability = 0.25; custom.blurSigmaMax = 3
        let data = try JSONEncoder().encode(custom)
        XCTAssertEqual(try JSONDecoder().decode(AugmentConfig.self, from: data), custom)
        // Missing keys keep their defaults.
        let partial = try JSONDecoder().decode(AugmentConfig.self, from: Data(#"{"vflipProbability": 0.5}"#.utf8))
        var expected = AugmentConfig.default
        expected.vflipProbability = 0.5
        XCTAssertEqual(partial, expected)

        var bad = AugmentConfig.default
        bad.hflipProbability = 1.5; bad.scaleMin = 1.2; bad.scaleMax = 1.1; bad.blurSigmaMin = -1
        XCTAssertEqual(bad.problems.count, 3, "\(bad.problems)")
        XCTAssertTrue(bad.problems[0].contains("hflipProbability"))
    }
}
