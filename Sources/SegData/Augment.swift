// Joint image + mask augmentation for segmentation. Every random choice for a sample comes from one
// SplitMix64 stream derived from (seed, epoch, index) only, so a run reproduces exactly whatever
// the number of ranks or loader threads.
//
// Geometric ops (flips, rotation, scale, shift) are composed into ONE affine map, applied once:
// the image is sampled bilinearly and the mask by nearest neighbour, with the same map and the
// same border rule (reflect-101, OpenCV's BORDER_REFLECT_101 = Albumentations' default), so they
// stay aligned; with an ignore value the mask takes it beyond the edge instead (mmsegmentation's
// seg_pad_val), so the loss skips mirrored, made-up content. Photometric ops (brightness/contrast,
// grayscale, channel shuffle, Gaussian blur) touch the image only, never the mask, and never an
// alpha channel. See docs/DATA.md.

import Foundation
import SegEngine
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Configuration

/// Probabilities (0...1, each drawn independently per sample) and magnitudes of the augmentations.
/// `AugmentConfig()` / `.default` is close to a common Albumentations segmentation pipeline
/// (HorizontalFlip(p=0.5), ShiftScaleRotate(shift 0.0625, scale 0.1, rotate 15, p=0.5),
/// RandomBrightnessContrast(0.2, 0.2, p=0.5), a light GaussianBlur); `.none` turns everything off
/// (`--no-augment`). Decoding accepts any subset of the keys (missing keys keep the defaults).
public struct AugmentConfig: Sendable, Codable, Equatable {
    /// Mirror left-right.
    public var hflipProbability: Float = 0.5
    /// Mirror top-bottom (off by default: most photos have an up).
    public var vflipProbability: Float = 0
    /// Rotate by an angle uniform in [-rotateDegrees, rotateDegrees] (positive = counter-clockwise
    /// as displayed) about the image centre.
    public var rotateProbability: Float = 0.5
    public var rotateDegrees: Float = 15
    /// Zoom by a factor uniform in [scaleMin, scaleMax] about the image centre (> 1 enlarges).
    public var scaleProbability: Float = 0.5
    public var scaleMin: Float = 0.9
    public var scaleMax: Float = 1.1
    /// Translate by fractions of the width and height, each uniform in [-shiftFraction, shiftFraction].
    public var shiftProbability: Float = 0.5
    public var shiftFraction: Float = 0.0625
    /// x -> alpha * x + beta * 255 (Albumentations' RandomBrightnessContrast, brightness_by_max):
    /// alpha uniform in 1 +- contrastLimit, beta uniform in +-brightnessLimit; rounded, clamped.
    public var brightnessContrastProbability: Float = 0.5
    public var brightnessLimit: Float = 0.2
    public var contrastLimit: Float = 0.2
    /// RGB -> gray (ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B) written to all three channels.
    /// Off by default: colour often tells classes apart.
    public var grayscaleProbability: Float = 0
    /// A uniformly random permutation of R, G, B (the identity included, as in Albumentations).
    /// Off by default.
    public var channelShuffleProbability: Float = 0
    /// Separable Gaussian blur, sigma uniform in [blurSigmaMin, blurSigmaMax], kernel size
    /// round(6 sigma + 1) | 1 (OpenCV's rule for 8-bit images), reflect-101 borders.
    public var blurProbability: Float = 0.1
    public var blurSigmaMin: Float = 0.5
    public var blurSigmaMax: Float = 1.5

    public init() {}

    /// The defaults described above.
    public static let `default` = AugmentConfig()

    /// Every augmentation off: `apply` leaves image and mask unchanged.
    public static let none: AugmentConfig = {
        var c = AugmentConfig()
        c.hflipProbability = 0; c.vflipProbability = 0; c.rotateProbability = 0; c.scaleProbability = 0
        c.shiftProbability = 0; c.brightnessContrastProbability = 0; c.grayscaleProbability = 0
        c.channelShuffleProbability = 0; c.blurProbability = 0
        return c
    }()

    /// Everything that is wrong with the values, one line each (empty when usable).
    public var problems: [String] {
        var out: [String] = []
        let probabilities: [(String, Float)] = [
            ("hflipProbability", hflipProbability), ("vflipProbability", vflipProbability),
            ("rotateProbability", rotateProbability), ("scaleProbability", scaleProbability),
            ("shiftProbability", shiftProbability), ("brightnessContrastProbability", brightnessContrastProbability),
            ("grayscaleProbability", grayscaleProbability), ("channelShuffleProbability", channelShuffleProbability),
            ("blurProbability", blurProbability),
        ]
        for (name, p) in probabilities where !(0...1).contains(p) { out.append("\(name) must be in 0...1 (got \(p))") }
        if !(0...180).contains(rotateDegrees) { out.append("rotateDegrees must be in 0...180 (got \(rotateDegrees))") }
        if !(scaleMin > 0 && scaleMin <= scaleMax && scaleMax <= 10) {
            out.append("scale range must satisfy 0 < scaleMin <= scaleMax <= 10 (got \(scaleMin)...\(scaleMax))")
        }
        if !(0...1).contains(shiftFraction) { out.append("shiftFraction must be in 0...1 (got \(shiftFraction))") }
        if !(0...1).contains(brightnessLimit) { out.append("brightnessLimit must be in 0...1 (got \(brightnessLimit))") }
        if !(0...1).contains(contrastLimit) { out.append("contrastLimit must be in 0...1 (got \(contrastLimit))") }
        if !(blurSigmaMin >= 0 && blurSigmaMin <= blurSigmaMax && blurSigmaMax <= 20) {
            out.append("blur sigma range must satisfy 0 <= blurSigmaMin <= blurSigmaMax <= 20 (got \(blurSigmaMin)...\(blurSigmaMax))")
        }
        return out
    }

    enum CodingKeys: String, CodingKey {
        case hflipProbability, vflipProbability, rotateProbability, rotateDegrees, scaleProbability, scaleMin,
             scaleMax, shiftProbability, shiftFraction, brightnessContrastProbability, brightnessLimit,
             contrastLimit, grayscaleProbability, channelShuffleProbability, blurProbability, blurSigmaMin,
             blurSigmaMax
    }

    public init(from decoder: Decoder) throws {
        let k = try decoder.container(keyedBy: CodingKeys.self)
        func value(_ key: CodingKeys, _ fallback: Float) throws -> Float {
            try k.decodeIfPresent(Float.self, forKey: key) ?? fallback
        }
        hflipProbability = try value(.hflipProbability, hflipProbability)
        vflipProbability = try value(.vflipProbability, vflipProbability)
        rotateProbability = try value(.rotateProbability, rotateProbability)
        rotateDegrees = try value(.rotateDegrees, rotateDegrees)
        scaleProbability = try value(.scaleProbability, scaleProbability)
        scaleMin = try value(.scaleMin, scaleMin)
        scaleMax = try value(.scaleMax, scaleMax)
        shiftProbability = try value(.shiftProbability, shiftProbability)
        shiftFraction = try value(.shiftFraction, shiftFraction)
        brightnessContrastProbability = try value(.brightnessContrastProbability, brightnessContrastProbability)
        brightnessLimit = try value(.brightnessLimit, brightnessLimit)
        contrastLimit = try value(.contrastLimit, contrastLimit)
        grayscaleProbability = try value(.grayscaleProbability, grayscaleProbability)
        channelShuffleProbability = try value(.channelShuffleProbability, channelShuffleProbability)
        blurProbability = try value(.blurProbability, blurProbability)
        blurSigmaMin = try value(.blurSigmaMin, blurSigmaMin)
        blurSigmaMax = try value(.blurSigmaMax, blurSigmaMax)
    }
}

// MARK: - What was drawn for one sample

/// The augmentation chosen for one sample (what `Augmenter.plan` drew); the identity when
/// default-constructed. Tests and tools can also build one by hand and `Augmenter.apply` it.
public struct AugmentPlan: Equatable, Sendable {
    public var hflip = false
    public var vflip = false
    /// Counter-clockwise as displayed (y down), about the image centre.
    public var degrees: Float = 0
    public var scale: Float = 1
    /// Fractions of the width and height; positive moves the content right / down.
    public var shiftX: Float = 0
    public var shiftY: Float = 0
    /// x -> contrast * x + brightness * 255.
    public var contrast: Float = 1
    public var brightness: Float = 0
    public var grayscale = false
    /// Output channel c takes input channel channelOrder[c] (RGB only).
    public var channelOrder = [0, 1, 2]
    /// 0 = no blur.
    public var blurSigma: Float = 0

    public init() {}

    public var isGeometricIdentity: Bool {
        !hflip && !vflip && degrees == 0 && scale == 1 && shiftX == 0 && shiftY == 0
    }

    /// The single map for a `width` x `height` sample. Forward (source -> output, in continuous
    /// coordinates where pixel i spans [i, i + 1)): flip about the centre, rotate, scale about the
    /// centre, then shift; returned is its inverse (output pixel -> source point), as warping needs.
    public func map(width: Int, height: Int) -> AffineMap {
        let theta = Double(degrees) * Double.pi / 180
        let cosT = cos(theta), sinT = sin(theta)
        let fx: Double = hflip ? -1 : 1, fy: Double = vflip ? -1 : 1, s = Double(scale)
        // source = centre + M (output - centre - shift), M = F R^-1 / s with
        // R = [[cos, sin], [-sin, cos]] (counter-clockwise on screen, y down).
        let a = fx * cosT / s, b = -fx * sinT / s
        let d = fy * sinT / s, e = fy * cosT / s
        let cx = Double(width) / 2, cy = Double(height) / 2
        let tx = Double(shiftX) * Double(width), ty = Double(shiftY) * Double(height)
        // In pixel-index coordinates (centres at integers): src_i = M out_i + M (0.5 - centre - shift) + centre - 0.5.
        let ox = 0.5 - cx - tx, oy = 0.5 - cy - ty
        return AffineMap(a: a, b: b, c: a * ox + b * oy + cx - 0.5,
                         d: d, e: e, f: d * ox + e * oy + cy - 0.5)
    }
}

/// Output pixel (u, v) -> source point (a u + b v + c, d u + e v + f), both in pixel-index
/// coordinates (pixel (i, j) has its centre at (i, j)).
public struct AffineMap: Equatable, Sendable {
    public var a, b, c, d, e, f: Double
    public init(a: Double, b: Double, c: Double, d: Double, e: Double, f: Double) {
        self.a = a; self.b = b; self.c = c; self.d = d; self.e = e; self.f = f
    }
    public func source(_ u: Double, _ v: Double) -> (x: Double, y: Double) {
        (a * u + b * v + c, d * u + e * v + f)
    }

    /// True when every output pixel reads exactly one source pixel inside the image (flips,
    /// identity): warping is then a copy, identical for bilinear and nearest.
    func isExactCopy(width: Int, height: Int) -> Bool {
        guard b == 0, d == 0, abs(a) == 1, abs(e) == 1, c == c.rounded(), f == f.rounded() else { return false }
        let x0 = c, x1 = a * Double(width - 1) + c, y0 = f, y1 = e * Double(height - 1) + f
        let w = Double(width - 1), h = Double(height - 1)
        return min(x0, x1) >= 0 && max(x0, x1) <= w && min(y0, y1) >= 0 && max(y0, y1) <= h
    }
}

/// A channel count known at compile time, so per-pixel loops over channels unroll.
protocol FixedChannels { static var count: Int { get } }
enum Channels1: FixedChannels { static var count: Int { 1 } }
enum Channels2: FixedChannels { static var count: Int { 2 } }
enum Channels3: FixedChannels { static var count: Int { 3 } }
enum Channels4: FixedChannels { static var count: Int { 4 } }

/// Index i of a row of n samples, mirrored about the first and last sample without repeating
/// them (OpenCV BORDER_REFLECT_101: ... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...), periodic beyond.
@inline(__always) func reflect101(_ i: Int, _ n: Int) -> Int {
    if i >= 0 && i < n { return i }
    if n == 1 { return 0 }
    let period = 2 * (n - 1)
    var k = i % period
    if k < 0 { k += period }
    return k < n ? k : period - k
}

// MARK: - Augmenter

/// Draws and applies augmentations; a pure function of (config, seed, epoch, index, input).
public struct Augmenter: Sendable {
    public let config: AugmentConfig

    public init(_ config: AugmentConfig = .default) {
        let problems = config.problems
        precondition(problems.isEmpty, "invalid AugmentConfig: \(problems.joined(separator: "; "))")
        self.config = config
    }

    /// The augmentation for sample `index` (its index in the dataset) in `epoch`. Every call draws
    /// the same 17 numbers in the same order whatever the probabilities, so changing one
    /// probability does not reshuffle the other choices.
    public func plan(seed: UInt64, epoch: Int, index: Int) -> AugmentPlan {
        var rng = SampleRandom.generator(seed: seed, epoch: epoch, index: index, purpose: SampleRandom.augment)
        let c = config
        var p = AugmentPlan()
        p.hflip = rng.nextUnitFloat() < c.hflipProbability
        p.vflip = rng.nextUnitFloat() < c.vflipProbability
        var on = rng.nextUnitFloat() < c.rotateProbability
        let degrees = rng.nextFloat(in: -c.rotateDegrees...c.rotateDegrees)
        if on { p.degrees = degrees }
        on = rng.nextUnitFloat() < c.scaleProbability
        let scale = rng.nextFloat(in: c.scaleMin...c.scaleMax)
        if on { p.scale = scale }
        on = rng.nextUnitFloat() < c.shiftProbability
        let shiftX = rng.nextFloat(in: -c.shiftFraction...c.shiftFraction)
        let shiftY = rng.nextFloat(in: -c.shiftFraction...c.shiftFraction)
        if on { p.shiftX = shiftX; p.shiftY = shiftY }
        on = rng.nextUnitFloat() < c.brightnessContrastProbability
        let brightness = rng.nextFloat(in: -c.brightnessLimit...c.brightnessLimit)
        let contrast = 1 + rng.nextFloat(in: -c.contrastLimit...c.contrastLimit)
        if on { p.brightness = brightness; p.contrast = contrast }
        p.grayscale = rng.nextUnitFloat() < c.grayscaleProbability
        on = rng.nextUnitFloat() < c.channelShuffleProbability
        let permutation = Int(rng.next() % 6)
        if on { p.channelOrder = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]][permutation] }
        on = rng.nextUnitFloat() < c.blurProbability
        let sigma = rng.nextFloat(in: c.blurSigmaMin...c.blurSigmaMax)
        if on { p.blurSigma = sigma }
        return p
    }

    /// Augments sample `index` of `epoch`: `plan(seed:epoch:index:)` applied to image and mask
    /// (`maskOutside`: see `apply(_:image:mask:maskOutside:)`).
    public func apply(image: inout Image8, mask: inout Image8, seed: UInt64, epoch: Int, index: Int,
                      maskOutside: UInt8? = nil) {
        Augmenter.apply(plan(seed: seed, epoch: epoch, index: index), image: &image, mask: &mask, maskOutside: maskOutside)
    }

    /// Applies `plan`: the geometric part as one affine map (image bilinear, mask nearest, both
    /// reflect-101), then brightness/contrast, grayscale, channel shuffle and blur on the image.
    /// Image and mask must have the same width and height; the image has 1-4 channels (the
    /// last of 2 or 4 is alpha: warped, never recoloured), the mask any (usually 1, class indices).
    /// `maskOutside` (an ignore value): mask pixels whose source lies beyond the mask's edge get
    /// this value instead of the mirrored label, so the loss skips what the warp made up; the
    /// image still mirrors there. nil: the mask mirrors like the image.
    public static func apply(_ plan: AugmentPlan, image: inout Image8, mask: inout Image8, maskOutside: UInt8? = nil) {
        precondition(image.width == mask.width && image.height == mask.height,
                     "image \(image.width)x\(image.height) and mask \(mask.width)x\(mask.height) differ in size")
        if !plan.isGeometricIdentity {
            let map = plan.map(width: image.width, height: image.height)
            if map.isExactCopy(width: image.width, height: image.height) {
                image = copy(image, map: map)
                mask = copy(mask, map: map)
            } else {
                image = warpImage(image, map: map)
                mask = warpMask(mask, map: map, outside: maskOutside)
            }
        }
        if plan.contrast != 1 || plan.brightness != 0 {
            adjustBrightnessContrast(&image, contrast: plan.contrast, brightness: plan.brightness)
        }
        if plan.grayscale { grayscale(&image) }
        if plan.channelOrder != [0, 1, 2] { shuffleChannels(&image, order: plan.channelOrder) }
        if plan.blurSigma > 0 { gaussianBlur(&image, sigma: plan.blurSigma) }
    }

    // MARK: Geometric

    /// Exact copy through a flip/identity map (see `AffineMap.isExactCopy`).
    static func copy(_ image: Image8, map: AffineMap) -> Image8 {
        let w = image.width, h = image.height, ch = image.channels
        let a = Int(map.a), c = Int(map.c), e = Int(map.e), f = Int(map.f)
        var pixels = [UInt8](repeating: 0, count: image.pixels.count)
        image.pixels.withUnsafeBufferPointer { src in
            pixels.withUnsafeMutableBufferPointer { dst in
                for v in 0..<h {
                    let line = src.baseAddress! + (e * v + f) * w * ch
                    let out = dst.baseAddress! + v * w * ch
                    if a == 1 {
                        out.update(from: line + c * ch, count: w * ch)
                    } else {
                        for u in 0..<w {
                            let s = line + (c - u) * ch
                            for k in 0..<ch { out[u * ch + k] = s[k] }
                        }
                    }
                }
            }
        }
        return Image8(width: w, height: h, channels: ch, pixels: pixels)
    }

    /// Resamples `image` through `map` (output pixel -> source point): bilinear on the four
    /// neighbours, whose indices are mirrored with reflect-101 when outside. Source points are
    /// stepped in 32.32 fixed point; the weights use the fraction quantised to 1/2048 pixel and the
    /// arithmetic is in integers, rounded half up.
    public static func warpImage(_ image: Image8, map: AffineMap) -> Image8 {
        var pixels = [UInt8](repeating: 0, count: image.pixels.count)
        image.pixels.withUnsafeBufferPointer { src in
            pixels.withUnsafeMutableBufferPointer { dst in
                let s = src.baseAddress!, d = dst.baseAddress!, w = image.width, h = image.height
                switch image.channels {
                case 1: warpBilinear(Channels1.self, s, d, width: w, height: h, map: map)
                case 2: warpBilinear(Channels2.self, s, d, width: w, height: h, map: map)
                case 3: warpBilinear(Channels3.self, s, d, width: w, height: h, map: map)
                default: warpBilinear(Channels4.self, s, d, width: w, height: h, map: map)
                }
            }
        }
        return Image8(width: image.width, height: image.height, channels: image.channels, pixels: pixels)
    }

    /// Resamples `mask` (any channel count) through `map` by nearest neighbour: source pixel
    /// (floor(x + 0.5), floor(y + 0.5)), mirrored with reflect-101 when outside; values copied
    /// exactly. The source point is computed exactly as `warpImage` computes it, so the mask takes
    /// the pixel the image's bilinear weights favour (the larger weight; on a tie the one to the right /
    /// below, as floor(x + 0.5) picks). With `outside`, a pixel whose nearest source pixel is
    /// beyond the edge gets that value in every channel instead of a mirrored one.
    public static func warpMask(_ mask: Image8, map: AffineMap, outside: UInt8? = nil) -> Image8 {
        var pixels = [UInt8](repeating: 0, count: mask.pixels.count)
        mask.pixels.withUnsafeBufferPointer { src in
            pixels.withUnsafeMutableBufferPointer { dst in
                let s = src.baseAddress!, d = dst.baseAddress!, w = mask.width, h = mask.height
                switch mask.channels {
                case 1: warpNearest(Channels1.self, s, d, width: w, height: h, map: map, outside: outside)
                case 2: warpNearest(Channels2.self, s, d, width: w, height: h, map: map, outside: outside)
                case 3: warpNearest(Channels3.self, s, d, width: w, height: h, map: map, outside: outside)
                default: warpNearest(Channels4.self, s, d, width: w, height: h, map: map, outside: outside)
                }
            }
        }
        return Image8(width: mask.width, height: mask.height, channels: mask.channels, pixels: pixels)
    }

    /// Source points are stepped along a row in 32.32 fixed point (exact integer increments, so
    /// image and mask get bit-identical points); bilinear weights use the top 11 fraction bits.
    static let pointBits: Int64 = 32
    static let fractionBits = 11
    static let one = 1 << fractionBits

    /// Row v's first source point and the per-pixel step, in 32.32 fixed point. Coordinates are
    /// clamped to +-2^30 px (far beyond any sensible map; reflect-101 handles the rest).
    @inline(__always) static func fixedRow(_ map: AffineMap, _ v: Int) -> (x: Int64, y: Int64, dx: Int64, dy: Int64) {
        func fixed(_ value: Double) -> Int64 {
            Int64((min(max(value, -1_073_741_824), 1_073_741_824) * 4_294_967_296).rounded())
        }
        let dv = Double(v)
        return (fixed(map.b * dv + map.c), fixed(map.e * dv + map.f),
                fixed(min(max(map.a, -65536), 65536)), fixed(min(max(map.d, -65536), 65536)))
    }

    static func warpBilinear<C: FixedChannels>(_: C.Type, _ src: UnsafePointer<UInt8>, _ dst: UnsafeMutablePointer<UInt8>,
                                                width w: Int, height h: Int, map: AffineMap) {
        let ch = C.count, one = Augmenter.one, mask = Int64(one - 1), down = pointBits - Int64(fractionBits)
        let half = 1 << (2 * fractionBits - 1), shift = 2 * fractionBits
        var out = dst
        for v in 0..<h {
            var (x, y, dx, dy) = fixedRow(map, v)
            for _ in 0..<w {
                var x0 = Int(truncatingIfNeeded: x >> pointBits), y0 = Int(truncatingIfNeeded: y >> pointBits)
                let fx = Int(truncatingIfNeeded: (x >> down) & mask), fy = Int(truncatingIfNeeded: (y >> down) & mask)
                x &+= dx; y &+= dy
                var x1 = x0 &+ 1, y1 = y0 &+ 1
                if UInt(bitPattern: x0) >= UInt(bitPattern: w &- 1) { x0 = reflect101(x0, w); x1 = reflect101(x1, w) }
                if UInt(bitPattern: y0) >= UInt(bitPattern: h &- 1) { y0 = reflect101(y0, h); y1 = reflect101(y1, h) }
                let r0 = src + y0 &* w &* ch, r1 = src + y1 &* w &* ch
                let p00 = r0 + x0 &* ch, p10 = r0 + x1 &* ch, p01 = r1 + x0 &* ch, p11 = r1 + x1 &* ch
                let gx = one &- fx, gy = one &- fy
                for k in 0..<ch {
                    let top = Int(p00[k]) &* gx &+ Int(p10[k]) &* fx
                    let bottom = Int(p01[k]) &* gx &+ Int(p11[k]) &* fx
                    out[k] = UInt8(truncatingIfNeeded: (top &* gy &+ bottom &* fy &+ half) >> shift)
                }
                out += ch
            }
        }
    }

    static func warpNearest<C: FixedChannels>(_: C.Type, _ src: UnsafePointer<UInt8>, _ dst: UnsafeMutablePointer<UInt8>,
                                               width w: Int, height h: Int, map: AffineMap, outside: UInt8?) {
        let ch = C.count
        // floor(x + 0.5) on the same 11-bit-fraction point as the image: add half of its unit.
        let rounding = Int64(1) << (pointBits - 1)
        let truncate = ~((Int64(1) << (pointBits - Int64(fractionBits))) - 1)
        var out = dst
        for v in 0..<h {
            var (x, y, dx, dy) = fixedRow(map, v)
            for _ in 0..<w {
                var xi = Int(truncatingIfNeeded: ((x & truncate) &+ rounding) >> pointBits)
                var yi = Int(truncatingIfNeeded: ((y & truncate) &+ rounding) >> pointBits)
                x &+= dx; y &+= dy
                if UInt(bitPattern: xi) >= UInt(bitPattern: w) || UInt(bitPattern: yi) >= UInt(bitPattern: h) {
                    if let outside {
                        for k in 0..<ch { out[k] = outside }
                        out += ch
                        continue
                    }
                }
                if UInt(bitPattern: xi) >= UInt(bitPattern: w) { xi = reflect101(xi, w) }
                if UInt(bitPattern: yi) >= UInt(bitPattern: h) { yi = reflect101(yi, h) }
                let p = src + (yi &* w &+ xi) &* ch
                for k in 0..<ch { out[k] = p[k] }
                out += ch
            }
        }
    }

    // MARK: Photometric (image only; alpha, the last channel of 2- and 4-channel images, untouched)

    /// Colour channels of an image: all but a trailing alpha.
    static func colourChannels(_ channels: Int) -> Int { channels == 2 || channels == 4 ? channels - 1 : channels }

    /// x -> round(contrast * x + brightness * 255), clamped to 0...255, on every colour channel.
    public static func adjustBrightnessContrast(_ image: inout Image8, contrast: Float, brightness: Float) {
        var table = [UInt8](repeating: 0, count: 256)
        for v in 0..<256 {
            table[v] = UInt8(min(max((contrast * Float(v) + brightness * 255).rounded(), 0), 255))
        }
        let ch = image.channels, colour = colourChannels(ch)
        table.withUnsafeBufferPointer { table in
            image.pixels.withUnsafeMutableBufferPointer { px in
                if colour == ch {
                    for i in 0..<px.count { px[i] = table[Int(px[i])] }
                } else {
                    for p in 0..<(px.count / ch) {
                        for k in 0..<colour { px[p * ch + k] = table[Int(px[p * ch + k])] }
                    }
                }
            }
        }
    }

    /// RGB -> gray = (299 R + 587 G + 114 B + 500) / 1000 (ITU-R 601 luma, rounded), written to
    /// R, G and B. No-op on 1- and 2-channel images.
    public static func grayscale(_ image: inout Image8) {
        let ch = image.channels
        guard ch >= 3 else { return }
        image.pixels.withUnsafeMutableBufferPointer { px in
            for p in 0..<(px.count / ch) {
                let i = p * ch
                let r: Int = 299 * Int(px[i]), gr: Int = 587 * Int(px[i + 1]), b: Int = 114 * Int(px[i + 2])
                let g = UInt8((r + gr + b + 500) / 1000)
                px[i] = g; px[i + 1] = g; px[i + 2] = g
            }
        }
    }

    /// Output channel k takes input channel order[k], for k = 0, 1, 2 (a permutation of R, G, B).
    /// No-op on 1- and 2-channel images.
    public static func shuffleChannels(_ image: inout Image8, order: [Int]) {
        precondition(order.count == 3 && Set(order) == [0, 1, 2], "channel order must permute 0, 1, 2 (got \(order))")
        let ch = image.channels
        guard ch >= 3 else { return }
        let o0 = order[0], o1 = order[1], o2 = order[2]
        image.pixels.withUnsafeMutableBufferPointer { px in
            for p in 0..<(px.count / ch) {
                let i = p * ch
                let r = px[i + o0], g = px[i + o1], b = px[i + o2]
                px[i] = r; px[i + 1] = g; px[i + 2] = b
            }
        }
    }

    /// The normalised 1-D Gaussian for `sigma`: size round(6 sigma + 1) | 1 (OpenCV's choice for
    /// 8-bit images), weights exp(-k^2 / (2 sigma^2)) / sum.
    public static func gaussianKernel(sigma: Float) -> [Float] {
        let size = Int((Double(sigma) * 6 + 1).rounded()) | 1
        let r = size / 2
        let raw = (0..<size).map { k -> Double in
            let x = Double(k - r)
            return exp(-x * x / (2 * Double(sigma) * Double(sigma)))
        }
        let sum = raw.reduce(0, +)
        return raw.map { Float($0 / sum) }
    }

    /// Separable Gaussian blur of the colour channels (horizontal then vertical, in float, rounded
    /// once to nearest), reflect-101 borders. A sigma whose kernel has one tap (sigma < 1/12) does nothing.
    public static func gaussianBlur(_ image: inout Image8, sigma: Float) {
        guard sigma > 0 else { return }
        let kernel = gaussianKernel(sigma: sigma)
        let r = kernel.count / 2
        guard r >= 1 else { return }
        let w = image.width, h = image.height, ch = image.channels, rowLength = w * ch
        var padded = [Float](repeating: 0, count: (w + 2 * r) * ch)
        var middle = [Float](repeating: 0, count: h * rowLength)
        var acc = [Float](repeating: 0, count: rowLength)
        let colour = colourChannels(ch)
        kernel.withUnsafeBufferPointer { kernel in
            padded.withUnsafeMutableBufferPointer { padded in
                middle.withUnsafeMutableBufferPointer { middle in
                    acc.withUnsafeMutableBufferPointer { acc in
                        image.pixels.withUnsafeMutableBufferPointer { px in
                            let pad = padded.baseAddress!, mid = middle.baseAddress!, sum = acc.baseAddress!
                            let kernel = kernel.baseAddress!, pixels = px.baseAddress!
                            // Horizontal: each row padded with reflect-101, then one contiguous
                            // multiply-add per tap.
                            for y in 0..<h {
                                let line = pixels + y * rowLength
                                let body = pad + r * ch
                                for i in 0..<rowLength { body[i] = Float(line[i]) }
                                for j in 0..<(2 * r) {  // the r padding pixels on each side
                                    let i = j < r ? j : w + j
                                    let s = line + reflect101(i - r, w) * ch
                                    for k in 0..<ch { pad[i * ch + k] = Float(s[k]) }
                                }
                                let out = mid + y * rowLength
                                for i in 0..<rowLength { out[i] = 0 }
                                for t in 0...(2 * r) {
                                    let wt = kernel[t], shifted = pad + t * ch
                                    for i in 0..<rowLength { out[i] += wt * shifted[i] }
                                }
                            }
                            // Vertical: whole rows, reflect-101 row indices.
                            for y in 0..<h {
                                for i in 0..<rowLength { sum[i] = 0 }
                                for t in 0...(2 * r) {
                                    let wt = kernel[t], line = mid + reflect101(y - r + t, h) * rowLength
                                    for i in 0..<rowLength { sum[i] += wt * line[i] }
                                }
                                // Round to nearest (ties to even): adding 1.5 * 2^23 leaves the
                                // rounded integer in the low mantissa bits, without a checked conversion.
                                let out = pixels + y * rowLength
                                if colour == ch {
                                    for i in 0..<rowLength {
                                        out[i] = UInt8(truncatingIfNeeded: (min(max(sum[i], 0), 255) + 12_582_912).bitPattern)
                                    }
                                } else {
                                    for p in 0..<w {
                                        for k in 0..<colour {
                                            let value = min(max(sum[p * ch + k], 0), 255) + 12_582_912
                                            out[p * ch + k] = UInt8(truncatingIfNeeded: value.bitPattern)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

extension AugmentConfig {
    /// Settings from JSON, inline (starting with `{`) or the path of a .json file: the keys given
    /// over the defaults. An unknown key (a typo), a value out of range or bad JSON throws
    /// (the message starts with what is wrong, for the caller to prefix with its flag).
    public static func parse(_ text: String) throws -> AugmentConfig {
        let text = text.trimmingCharacters(in: .whitespaces)
        let json: Data
        if text.hasPrefix("{") {
            json = Data(text.utf8)
        } else {
            guard let data = FileManager.default.contents(atPath: text) else {
                throw DatasetError("\(text): neither JSON (starting with {) nor a readable file")
            }
            json = data
        }
        if let given = (try? JSONSerialization.jsonObject(with: json)) as? [String: Any],
           let known = (try? JSONSerialization.jsonObject(with: JSONEncoder().encode(AugmentConfig.default))) as? [String: Any],
           let unknown = given.keys.sorted().first(where: { known[$0] == nil }) {
            throw DatasetError("unknown key \(unknown) (known: \(known.keys.sorted().joined(separator: ", ")))")
        }
        let config: AugmentConfig
        do { config = try JSONDecoder().decode(AugmentConfig.self, from: json) } catch {
            throw DatasetError("not valid settings: \(error)")
        }
        if let problem = config.problems.first { throw DatasetError(problem) }
        return config
    }
}
