// A deterministic synthetic segmentation dataset: textured objects on textured backgrounds, with
// distractors in the objects' colours that must NOT be segmented, so that no colour threshold
// solves it and a model has to learn shapes. Each sample depends only on (seed, index).
// See docs/DATA.md.

import Foundation
import SegEngine
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Generates sample `index` of a synthetic dataset of `size` x `size` RGB images and masks.
///
/// Masks hold class indices: 0 is background. `classes == 1` (binary): objects are 1 (all four
/// shape families). `classes >= 2`: object class c in 1..<classes has its own shape family
/// (c - 1) % 4 = ellipse, star polygon, rounded box, smooth blob; classes beyond 4 also differ in
/// texture ((c - 1) / 4 % 4 = stripes, checker, noise, smooth) and beyond 16 in size band.
/// Which synthetic set: `standard` has the distractors (object-coloured background patches,
/// lines and rings) that make a model learn shapes; `plain` has the objects on a textured
/// background alone, a set a small model learns in a minute (scripts/demo.sh).
public enum SyntheticSet: String, CaseIterable, Sendable {
    case standard, plain
}

public struct SyntheticGenerator: Sendable {
    public let size: Int
    public let classes: Int
    public let seed: UInt64

    /// Why a generator of this size and class count cannot be made (one line naming the flag), or nil.
    public static func problem(size: Int, classes: Int) -> String? {
        if size < 8 { return "--image-size must be at least 8 for the synthetic dataset (got \(size)); use --data DIR for smaller images" }
        if !(1...255).contains(classes) { return "--classes must be 1...255 for the synthetic dataset (got \(classes))" }
        return nil
    }

    /// The object-coloured background patches and the line and ring distractors (`SyntheticSet`).
    public let distractors: Bool

    public init(size: Int, classes: Int, seed: UInt64, set: SyntheticSet = .standard) {
        precondition(size >= 8, "synthetic size must be at least 8 (got \(size))")
        precondition((1...255).contains(classes), "synthetic classes must be 1...255 (got \(classes))")
        self.size = size; self.classes = classes; self.seed = seed; distractors = set == .standard
    }

    /// Object classes drawn: 1 for a binary dataset, classes - 1 otherwise.
    public var objectClasses: Int { max(classes - 1, 1) }

    /// Sample `index`: an RGB image and a 1-channel mask of class indices (0/1 when binary).
    public func sample(_ index: Int) -> (image: Image8, mask: Image8) {
        var rng = SplitMix64(seed: seed, stream: UInt64(bitPattern: Int64(index)))
        var canvas = Canvas(size: size)
        let s = Float(size)
        // Objects and distractors share one palette; each palette colour gets its own background patch.
        let palette = [randomColour(&rng), randomColour(&rng), randomColour(&rng)]

        drawBackground(&canvas, &rng, palette: palette)

        // Background patches in object colours: irregular, textured like the background.
        for patch in 0..<3 {
            let r = s * rng.nextFloat(in: 0.1...0.25)
            let shape = Figure.patch(cx: rng.nextFloat(in: 0...s), cy: rng.nextFloat(in: 0...s), radius: r,
                                    noise: ValueNoise(&rng, extent: 2 * r, cell: r / 2.5))
            let colour = jitter(palette[patch], &rng, by: 0.06)
            let fill = Fill(&rng, base: colour, texture: .noise, extent: r, size: s)
            // The plain set draws every random number the standard set does and paints no distractor,
            // so its samples are the standard ones without them (SyntheticTests).
            if self.distractors { canvas.paint(shape, fill: fill, mask: nil) }
        }

        // Thin lines and rings in object colours, some under the objects and some over them.
        var distractors: [(Figure, Fill)] = []
        for _ in 0..<(1 + Int(rng.next() % 3)) {
            let half = max(0.5, s / 128 * rng.nextFloat(in: 0.5...1.6))
            var x = rng.nextFloat(in: 0...s), y = rng.nextFloat(in: 0...s)
            let colour = jitter(palette[Int(rng.next() % 3)], &rng, by: 0.06)
            for _ in 0..<(2 + Int(rng.next() % 3)) {
                let angle = rng.nextFloat(in: 0...(2 * .pi)), length = s * rng.nextFloat(in: 0.15...0.4)
                let x1 = x + length * cos(angle), y1 = y + length * sin(angle)
                distractors.append((.segment(x0: x, y0: y, x1: x1, y1: y1, halfWidth: half),
                                    Fill(&rng, base: colour, texture: .smooth, extent: length, size: s)))
                x = x1; y = y1
            }
        }
        for _ in 0..<(1 + Int(rng.next() % 2)) {
            let a = s * rng.nextFloat(in: 0.07...0.2), b = a * rng.nextFloat(in: 0.6...1)
            let angle = rng.nextFloat(in: 0...Float.pi)
            let thickness = max(1.2, s / 128 * rng.nextFloat(in: 1.5...3.5))
            let colour = jitter(palette[Int(rng.next() % 3)], &rng, by: 0.06)
            distractors.append((.ring(cx: rng.nextFloat(in: 0...s), cy: rng.nextFloat(in: 0...s), a: a, b: b,
                                      cos: cos(angle), sin: sin(angle), thickness: thickness),
                                Fill(&rng, base: colour, texture: .stripes, extent: a, size: s)))
        }
        let under = distractors.filter { _ in rng.next() % 10 < 6 }.count
        for (shape, fill) in distractors[0..<under] where self.distractors { canvas.paint(shape, fill: fill, mask: nil) }

        // Objects, later ones occluding earlier ones; classes cycle from a random start so a
        // multi-class sample shows several classes.
        let objectCount = 2 + Int(rng.next() % 4)
        let firstClass = Int(rng.next() % UInt64(objectClasses))
        for k in 0..<objectCount {
            let objectClass = (firstClass + k) % objectClasses + 1
            let family = classes == 1 ? Int(rng.next() % 4) : objectClass - 1
            let sizeBand = classes == 1 ? 0 : (family / 16) % 2
            let r = s * (sizeBand == 0 ? rng.nextFloat(in: 0.08...0.2) : rng.nextFloat(in: 0.04...0.08))
            let cx = rng.nextFloat(in: (0.4 * r)...(s - 0.4 * r)), cy = rng.nextFloat(in: (0.4 * r)...(s - 0.4 * r))
            let shape = objectShape(family: family % 4, cx: cx, cy: cy, r: r, &rng)
            let texture: Texture = classes == 1 || family < 4
                ? [.stripes, .checker, .noise, .smooth][Int(rng.next() % 4)]
                : [.stripes, .checker, .noise, .smooth][(family / 4) % 4]
            let colour = jitter(palette[Int(rng.next() % 3)], &rng, by: 0.08)
            canvas.paint(shape, fill: Fill(&rng, base: colour, texture: texture, extent: r, size: s),
                         mask: UInt8(classes == 1 ? 1 : objectClass))
        }
        for (shape, fill) in distractors[under...] where self.distractors { canvas.paint(shape, fill: fill, mask: 0) }

        // Sensor noise, then quantise.
        let sigma = rng.nextFloat(in: 0.015...0.05)
        var pixels = [UInt8](repeating: 0, count: size * size * 3)
        for i in 0..<pixels.count {
            let u = rng.next()
            // Sum of four 16-bit uniforms: roughly normal, mean 2, variance 1/3.
            let g = Float(u & 0xFFFF) + Float((u >> 16) & 0xFFFF) + Float((u >> 32) & 0xFFFF) + Float(u >> 48)
            let noise = (g / 65536 - 2) * 1.732 * sigma
            let v = (canvas.rgb[i] + noise) * 255
            pixels[i] = UInt8(min(max(v.rounded(), 0), 255))
        }
        return (Image8(width: size, height: size, channels: 3, pixels: pixels),
                Image8(width: size, height: size, channels: 1, pixels: canvas.mask))
    }

    /// Writes samples `indices[i]` into batch row i: images (N, 3, S, S) with values in [0, 1],
    /// masks (N, 1, S, S) holding class indices as floats. Samples are spread over `pool`'s threads.
    public func fill(images: Tensor, masks: Tensor, indices: [Int], pool: WorkerPool? = nil) {
        let n = indices.count
        precondition(images.shape == SegEngine.Shape(n, 3, size, size), "images \(images.shape), expected (\(n), 3, \(size), \(size))")
        precondition(masks.shape == SegEngine.Shape(n, 1, size, size), "masks \(masks.shape), expected (\(n), 1, \(size), \(size))")
        let plane = size * size
        let work = { (range: Range<Int>) in
            for row in range {
                let (image, mask) = sample(indices[row])
                let out = images.sample(row), outMask = masks.sample(row)
                for p in 0..<plane {
                    out[p] = Float(image.pixels[3 * p]) * (1 / 255)
                    out[plane + p] = Float(image.pixels[3 * p + 1]) * (1 / 255)
                    out[2 * plane + p] = Float(image.pixels[3 * p + 2]) * (1 / 255)
                    outMask[p] = Float(mask.pixels[p])
                }
            }
        }
        if let pool { pool.parallelFor(n) { range, _ in work(range) } } else { work(0..<n) }
    }

    // MARK: Drawing

    func drawBackground(_ canvas: inout Canvas, _ rng: inout SplitMix64, palette: [SIMD3<Float>]) {
        let s = Float(size)
        // Half the time one background colour is close to an object colour.
        let b0 = randomColour(&rng)
        let b1 = rng.next() % 2 == 0 ? jitter(palette[Int(rng.next() % 3)], &rng, by: 0.12) : randomColour(&rng)
        let coarse = ValueNoise(&rng, extent: s, cell: s / rng.nextFloat(in: 2...4))
        let fine = ValueNoise(&rng, extent: s, cell: s / rng.nextFloat(in: 10...20))
        let angle = rng.nextFloat(in: 0...(2 * .pi))
        let gx = cos(angle) / s, gy = sin(angle) / s
        let stripeAmount = rng.next() % 2 == 0 ? rng.nextFloat(in: 0.03...0.1) : 0
        let stripeFrequency = rng.nextFloat(in: 0.2...0.8) * 128 / s
        for y in 0..<size {
            for x in 0..<size {
                let fx = Float(x) + 0.5, fy = Float(y) + 0.5
                let t = 0.7 * coarse.at(fx, fy) + 0.3 * fine.at(fx, fy)
                let light = 0.85 + 0.3 * (fx * gx + fy * gy) + stripeAmount * sin(stripeFrequency * (fx + 0.5 * fy))
                canvas.set(x, y, (b0 + (b1 - b0) * t) * light)
            }
        }
    }

    func objectShape(family: Int, cx: Float, cy: Float, r: Float, _ rng: inout SplitMix64) -> Figure {
        let angle = rng.nextFloat(in: 0...Float.pi)
        switch family {
        case 0:
            return .ellipse(cx: cx, cy: cy, a: r, b: r * rng.nextFloat(in: 0.45...1), cos: cos(angle), sin: sin(angle))
        case 1:
            let count = 3 + Int(rng.next() % 5)
            var vertices: [SIMD2<Float>] = []
            for i in 0..<count {
                let phi = angle + 2 * .pi * (Float(i) + rng.nextFloat(in: -0.3...0.3)) / Float(count)
                let radius = r * rng.nextFloat(in: 0.55...1.1)
                vertices.append(SIMD2(cx + radius * cos(phi), cy + radius * sin(phi)))
            }
            return .polygon(vertices)
        case 2:
            let hx = r * rng.nextFloat(in: 0.7...1.1), hy = r * rng.nextFloat(in: 0.4...0.9)
            return .roundedBox(cx: cx, cy: cy, hx: hx, hy: hy, corner: min(hx, hy) * rng.nextFloat(in: 0.15...0.5),
                               cos: cos(angle), sin: sin(angle))
        default:
            var harmonics: [SIMD3<Float>] = []
            for k in 2...4 {
                harmonics.append(SIMD3(Float(k), rng.nextFloat(in: 0.05...0.22), rng.nextFloat(in: 0...(2 * .pi))))
            }
            return .blob(cx: cx, cy: cy, r: r * 0.85, harmonics: harmonics)
        }
    }

    func randomColour(_ rng: inout SplitMix64) -> SIMD3<Float> {
        SIMD3(rng.nextUnitFloat(), rng.nextUnitFloat(), rng.nextUnitFloat()) * 0.8 + 0.1
    }

    func jitter(_ c: SIMD3<Float>, _ rng: inout SplitMix64, by amount: Float) -> SIMD3<Float> {
        c + SIMD3(rng.nextFloat(in: -amount...amount), rng.nextFloat(in: -amount...amount), rng.nextFloat(in: -amount...amount))
    }
}

/// Float RGB (interleaved) plus the mask being drawn.
struct Canvas {
    let size: Int
    var rgb: [Float]
    var mask: [UInt8]

    init(size: Int) {
        self.size = size
        rgb = [Float](repeating: 0, count: size * size * 3)
        mask = [UInt8](repeating: 0, count: size * size)
    }

    @inline(__always) mutating func set(_ x: Int, _ y: Int, _ c: SIMD3<Float>) {
        let i = 3 * (y * size + x)
        rgb[i] = c.x; rgb[i + 1] = c.y; rgb[i + 2] = c.z
    }

    /// Colours the pixels whose centres lie inside `shape`; sets the mask there unless `mask` is nil.
    mutating func paint(_ shape: Figure, fill: Fill, mask value: UInt8?) {
        let box = shape.bounds
        let x0 = max(0, Int(box.x.rounded(.down))), x1 = min(size - 1, Int(box.z.rounded(.up)))
        let y0 = max(0, Int(box.y.rounded(.down))), y1 = min(size - 1, Int(box.w.rounded(.up)))
        if x0 > x1 || y0 > y1 { return }
        for y in y0...y1 {
            for x in x0...x1 {
                let fx = Float(x) + 0.5, fy = Float(y) + 0.5
                guard shape.contains(fx, fy) else { continue }
                set(x, y, fill.colour(fx, fy))
                if let value { mask[y * size + x] = value }
            }
        }
    }
}

/// Smooth random field in [0, 1]: bilinear (smoothstep) interpolation of a random grid.
struct ValueNoise {
    let grid: [Float]
    let columns: Int
    let cell: Float

    init(_ rng: inout SplitMix64, extent: Float, cell: Float) {
        self.cell = max(cell, 1)
        columns = Int(extent / self.cell) + 3
        var values = [Float](repeating: 0, count: columns * columns)
        for i in values.indices { values[i] = rng.nextUnitFloat() }
        grid = values
    }

    /// Value at (x, y); coordinates wrap around the grid.
    @inline(__always) func at(_ x: Float, _ y: Float) -> Float {
        let gx = x / cell, gy = y / cell
        let fx = gx.rounded(.down), fy = gy.rounded(.down)
        let tx = gx - fx, ty = gy - fy
        let sx = tx * tx * (3 - 2 * tx), sy = ty * ty * (3 - 2 * ty)
        let n = columns - 1
        let ix = ((Int(fx) % n) + n) % n, iy = ((Int(fy) % n) + n) % n
        let v00 = grid[iy * columns + ix], v10 = grid[iy * columns + ix + 1]
        let v01 = grid[(iy + 1) * columns + ix], v11 = grid[(iy + 1) * columns + ix + 1]
        let top = v00 + (v10 - v00) * sx, bottom = v01 + (v11 - v01) * sx
        return top + (bottom - top) * sy
    }
}

enum Texture { case stripes, checker, noise, smooth }

/// A colour gradient across the shape, modulated by a texture.
struct Fill {
    let base: SIMD3<Float>, delta: SIMD3<Float>
    let gx: Float, gy: Float, cx: Float, cy: Float
    let texture: Texture, amount: Float, frequency: Float, ca: Float, sa: Float
    let noise: ValueNoise

    init(_ rng: inout SplitMix64, base: SIMD3<Float>, texture: Texture, extent: Float, size: Float) {
        self.base = base
        delta = SIMD3(rng.nextFloat(in: -0.25...0.25), rng.nextFloat(in: -0.25...0.25), rng.nextFloat(in: -0.25...0.25))
        let angle = rng.nextFloat(in: 0...(2 * .pi)), stripeAngle = rng.nextFloat(in: 0...(2 * .pi))
        let e = max(extent, 1)
        gx = cos(angle) / (2 * e); gy = sin(angle) / (2 * e)
        cx = rng.nextFloat(in: 0...size); cy = rng.nextFloat(in: 0...size)
        self.texture = texture
        amount = rng.nextFloat(in: 0.06...0.18)
        frequency = 2 * .pi / max(2, rng.nextFloat(in: 3...9) * size / 128)
        ca = cos(stripeAngle); sa = sin(stripeAngle)
        noise = ValueNoise(&rng, extent: size + 2 * e, cell: max(2, rng.nextFloat(in: 2...6) * size / 128))
    }

    @inline(__always) func colour(_ x: Float, _ y: Float) -> SIMD3<Float> {
        let t = min(max(0.5 + (x - cx) * gx + (y - cy) * gy, 0), 1)
        let tex: Float
        switch texture {
        case .stripes: tex = sin(frequency * (x * ca + y * sa))
        case .checker:
            let u = Int(((x * ca + y * sa) * frequency / .pi).rounded(.down))
            let v = Int(((y * ca - x * sa) * frequency / .pi).rounded(.down))
            tex = (u + v) & 1 == 0 ? 1 : -1
        case .noise: tex = 2 * noise.at(x, y) - 1
        case .smooth: tex = 0
        }
        return (base + delta * t) * (1 + amount * tex)
    }
}

/// Shapes in pixel coordinates (pixel (x, y) has its centre at (x + 0.5, y + 0.5)).
enum Figure {
    case ellipse(cx: Float, cy: Float, a: Float, b: Float, cos: Float, sin: Float)
    case polygon([SIMD2<Float>])
    case roundedBox(cx: Float, cy: Float, hx: Float, hy: Float, corner: Float, cos: Float, sin: Float)
    case blob(cx: Float, cy: Float, r: Float, harmonics: [SIMD3<Float>])  // (k, amplitude, phase)
    case ring(cx: Float, cy: Float, a: Float, b: Float, cos: Float, sin: Float, thickness: Float)
    case segment(x0: Float, y0: Float, x1: Float, y1: Float, halfWidth: Float)
    case patch(cx: Float, cy: Float, radius: Float, noise: ValueNoise)

    /// (minX, minY, maxX, maxY)
    var bounds: SIMD4<Float> {
        switch self {
        case let .ellipse(cx, cy, a, _, _, _): return SIMD4(cx - a, cy - a, cx + a, cy + a)
        case let .polygon(v):
            let xs = v.map(\.x), ys = v.map(\.y)
            return SIMD4(xs.min()!, ys.min()!, xs.max()!, ys.max()!)
        case let .roundedBox(cx, cy, hx, hy, _, _, _):
            let r = (hx * hx + hy * hy).squareRoot()
            return SIMD4(cx - r, cy - r, cx + r, cy + r)
        case let .blob(cx, cy, r, h):
            let reach = r * (1 + h.reduce(0) { $0 + $1.y })
            return SIMD4(cx - reach, cy - reach, cx + reach, cy + reach)
        case let .ring(cx, cy, a, _, _, _, t): return SIMD4(cx - a - t, cy - a - t, cx + a + t, cy + a + t)
        case let .segment(x0, y0, x1, y1, hw):
            return SIMD4(min(x0, x1) - hw, min(y0, y1) - hw, max(x0, x1) + hw, max(y0, y1) + hw)
        case let .patch(cx, cy, r, _): return SIMD4(cx - r, cy - r, cx + r, cy + r)
        }
    }

    @inline(__always) func contains(_ x: Float, _ y: Float) -> Bool {
        switch self {
        case let .ellipse(cx, cy, a, b, c, s):
            let dx = x - cx, dy = y - cy
            let u = (dx * c + dy * s) / a, v = (dy * c - dx * s) / b
            return u * u + v * v <= 1
        case let .polygon(v):
            var inside = false
            var j = v.count - 1
            for i in 0..<v.count {
                if (v[i].y > y) != (v[j].y > y) {
                    let xCross = v[i].x + (y - v[i].y) * (v[j].x - v[i].x) / (v[j].y - v[i].y)
                    if x < xCross { inside.toggle() }
                }
                j = i
            }
            return inside
        case let .roundedBox(cx, cy, hx, hy, corner, c, s):
            let dx = x - cx, dy = y - cy
            let u = abs(dx * c + dy * s) - (hx - corner), v = abs(dy * c - dx * s) - (hy - corner)
            let ou = max(u, 0), ov = max(v, 0)
            return (ou * ou + ov * ov).squareRoot() + min(max(u, v), 0) <= corner
        case let .blob(cx, cy, r, h):
            let dx = x - cx, dy = y - cy
            let phi = atan2(dy, dx)
            var radius = r
            for k in h { radius += r * k.y * sin(k.x * phi + k.z) }
            return dx * dx + dy * dy <= radius * radius
        case let .ring(cx, cy, a, b, c, s, t):
            let dx = x - cx, dy = y - cy
            let u = (dx * c + dy * s) / a, v = (dy * c - dx * s) / b
            let d = (u * u + v * v).squareRoot()
            return abs(d - 1) * 0.5 * (a + b) <= 0.5 * t
        case let .segment(x0, y0, x1, y1, hw):
            let ex = x1 - x0, ey = y1 - y0
            let t = min(max(((x - x0) * ex + (y - y0) * ey) / max(ex * ex + ey * ey, 1e-6), 0), 1)
            let px = x0 + t * ex - x, py = y0 + t * ey - y
            return px * px + py * py <= hw * hw
        case let .patch(cx, cy, r, noise):
            let dx = (x - cx) / r, dy = (y - cy) / r
            return noise.at(x - cx + r, y - cy + r) - 0.6 * (dx * dx + dy * dy) > 0.3
        }
    }
}

extension SyntheticGenerator {
    /// Writes samples 0..<count as a dataset folder of the pairs layout: `folder`/images/NNNNN.png
    /// (or .jpg, JPEG quality 95) and `folder`/masks/NNNNN.png; binary masks as 0/255 so that they
    /// are viewable (read back as {0, 1}). Errors name the file or folder.
    public func writeDataset(to folder: String, count: Int, jpeg: Bool = false) throws {
        let images = folder + "/images", masks = folder + "/masks"
        for path in [images, masks] {
            if let error = makeDirectories(path) { throw DatasetError("\(path): cannot create folder: \(error)") }
        }
        for index in 0..<count {
            var (image, mask) = sample(index)
            if classes == 1 { mask.pixels = mask.pixels.map { $0 == 0 ? 0 : 255 } }
            let name = String(format: "%05d", index)
            if jpeg {
                try ImageFile.writeJPEG(image, to: images + "/" + name + ".jpg", quality: 95)
            } else {
                try ImageFile.write(image, to: images + "/" + name + ".png")
            }
            try ImageFile.write(mask, to: masks + "/" + name + ".png")
        }
    }
}
