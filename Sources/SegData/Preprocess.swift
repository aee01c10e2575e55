// Preprocessing for a data loader: resize (images antialiased bilinear, masks nearest), crop and
// random crop (with padding), and conversion to planar float tensors (x / 255, optional per-channel
// mean / std). Every function allocates its tables and buffers once per call, never per pixel.
// Conventions (see docs/DATA.md, "Preprocessing and augmentation"):
// - pixel i covers [i, i + 1) and has its centre at i + 0.5 ("half-pixel centres");
// - image resize is PIL's / torchvision's `antialias=True` bilinear: a triangle filter whose support
//   widens by the scale factor when downscaling, separable (horizontal pass, then vertical);
//   upscaling is then plain bilinear with half-pixel centres (align_corners=False), edges clamped;
// - mask resize is PyTorch's 'nearest': source index floor(dst * in / out), values copied exactly.

import SegEngine

// MARK: - Per-sample randomness

/// Random streams for per-sample data decisions (augmentation, random crops).
public enum SampleRandom {
    /// Purpose tags, so that the crop and the augmentation of a sample draw independent numbers.
    public static let augment: UInt64 = 0x6175_676D_656E_7400  // "augment"
    public static let crop: UInt64 = 0x6372_6F70_0000_0000  // "crop"

    /// The generator for sample `index` (its index in the dataset, not in a rank's shard) in
    /// `epoch`: a function of (seed, epoch, index, purpose) only.
    public static func generator(seed: UInt64, epoch: Int, index: Int, purpose: UInt64) -> SplitMix64 {
        var perEpoch = SplitMix64(seed: seed ^ purpose, stream: UInt64(bitPattern: Int64(epoch)))
        return SplitMix64(seed: perEpoch.next(), stream: UInt64(bitPattern: Int64(index)))
    }
}

public enum Preprocess {
    // MARK: - Resize

    /// One axis of a separable resampling: output i reads inputs start[i] ..< start[i] + count[i]
    /// with weights[i * taps ..< i * taps + count[i]] (they sum to 1).
    struct ResampleAxis {
        var start: [Int]
        var count: [Int]
        var weights: [Float]
        var taps: Int

        /// PIL's ImagingResample weights for the bilinear (triangle) filter: scale = in / out,
        /// support = max(scale, 1), centre = (i + 0.5) * scale, taps in
        /// [trunc(centre - support + 0.5), trunc(centre + support + 0.5)) clipped to the image,
        /// weight triangle((x - centre + 0.5) / max(scale, 1)), normalised to sum 1.
        /// For scale <= 1 this is bilinear with half-pixel centres and edges clamped.
        init(input: Int, output: Int) {
            let scale = Double(input) / Double(output)
            let filterScale = max(scale, 1)
            let support = filterScale
            taps = Int(support.rounded(.up)) * 2 + 1
            start = [Int](repeating: 0, count: output)
            count = [Int](repeating: 0, count: output)
            weights = [Float](repeating: 0, count: output * taps)
            var w = [Double](repeating: 0, count: taps)
            for i in 0..<output {
                let centre = (Double(i) + 0.5) * scale
                let lo = max(Int(centre - support + 0.5), 0)  // Int() truncates, like PIL's (int)
                let hi = min(Int(centre + support + 0.5), input)
                let n = hi - lo
                precondition(n >= 1 && n <= taps, "resample window \(n) for \(input) -> \(output)")
                var sum = 0.0
                for k in 0..<n {
                    let t = abs((Double(lo + k) - centre + 0.5) / filterScale)
                    w[k] = t < 1 ? 1 - t : 0
                    sum += w[k]
                }
                start[i] = lo; count[i] = n
                for k in 0..<n { weights[i * taps + k] = Float(sum > 0 ? w[k] / sum : (k == 0 ? 1 : 0)) }
            }
        }
    }

    /// Resizes an image to `width` x `height` with PIL / torchvision `antialias=True` bilinear
    /// resampling: when downscaling an axis by s, a triangle filter s pixels wide on each side
    /// (every input pixel under the output pixel contributes); when upscaling, plain bilinear with
    /// half-pixel centres (PyTorch align_corners=False) and edges clamped. Separable: horizontal
    /// then vertical, in float, rounded to UInt8 once at the end. All channels (alpha included)
    /// are resampled alike. Same size returns the image unchanged.
    public static func resizeImage(_ image: Image8, width: Int, height: Int) -> Image8 {
        precondition(width >= 1 && height >= 1, "resize to \(width)x\(height)")
        if width == image.width && height == image.height { return image }
        let inW = image.width, inH = image.height, channels = image.channels
        let horizontal = ResampleAxis(input: inW, output: width)
        let vertical = ResampleAxis(input: inH, output: height)
        // Horizontal pass, one input row at a time, into a ring of the last `vertical.taps` rows
        // (windows only move down, so that is every row an output row needs; it stays in cache).
        // The input row is converted to floats as stored (interleaved); a tap reads 4 floats at the
        // pixel (its channels, then the next pixel's, which land in unused lanes), so there is one
        // SIMD multiply-add per tap whatever the channel count.
        let ringRows = vertical.taps
        var ring = [SIMD4<Float>](repeating: .zero, count: ringRows * width)
        var row = [Float](repeating: 0, count: inW * channels + 4)
        var acc = [SIMD4<Float>](repeating: .zero, count: width)
        var pixels = [UInt8](repeating: 0, count: width * height * channels)
        image.pixels.withUnsafeBufferPointer { src in
        row.withUnsafeMutableBufferPointer { row in
        ring.withUnsafeMutableBufferPointer { ring in
        acc.withUnsafeMutableBufferPointer { acc in
        pixels.withUnsafeMutableBufferPointer { dst in
        horizontal.weights.withUnsafeBufferPointer { weights in
        horizontal.start.withUnsafeBufferPointer { start in
        horizontal.count.withUnsafeBufferPointer { count in
            let row = UnsafeRawPointer(row.baseAddress!), ring = ring.baseAddress!, acc = acc.baseAddress!
            let taps = horizontal.taps, stride = channels * MemoryLayout<Float>.stride
            let floats = UnsafeMutableRawPointer(mutating: row).assumingMemoryBound(to: Float.self)
            var nextRow = 0  // the next input row to resample horizontally
            for y in 0..<height {
                let first = vertical.start[y], n = vertical.count[y]
                while nextRow < first + n {
                    let line = src.baseAddress! + nextRow * inW * channels
                    for i in 0..<(inW * channels) { floats[i] = Float(line[i]) }
                    let out = ring + (nextRow % ringRows) * width
                    nextRow += 1
                    if inW == width {
                        for x in 0..<width { out[x] = row.loadUnaligned(fromByteOffset: x * stride, as: SIMD4<Float>.self) }
                        continue
                    }
                    for x in 0..<width {
                        let w = weights.baseAddress! + x * taps, pixels = row + start[x] * stride
                        @inline(__always) func pixel(_ k: Int) -> SIMD4<Float> {
                            pixels.loadUnaligned(fromByteOffset: k &* stride, as: SIMD4<Float>.self)
                        }
                        // Four independent sums, so the adds do not wait on each other.
                        var acc0 = SIMD4<Float>.zero, acc1 = acc0, acc2 = acc0, acc3 = acc0
                        let n = count[x]
                        var k = 0
                        while k &+ 4 <= n {
                            acc0 += w[k] * pixel(k); acc1 += w[k &+ 1] * pixel(k &+ 1)
                            acc2 += w[k &+ 2] * pixel(k &+ 2); acc3 += w[k &+ 3] * pixel(k &+ 3)
                            k &+= 4
                        }
                        while k < n { acc0 += w[k] * pixel(k); k &+= 1 }
                        out[x] = (acc0 + acc1) + (acc2 + acc3)
                    }
                }
                // Vertical: a weighted sum of whole rows of the ring.
                for x in 0..<width { acc[x] = .zero }
                for k in 0..<n {
                    let w = vertical.weights[y * vertical.taps + k]
                    let line = ring + ((first + k) % ringRows) * width
                    for x in 0..<width { acc[x] += w * line[x] }
                }
                storeRow(acc, into: dst.baseAddress! + y * width * channels, width: width, channels: channels)
            }
        }
        }
        }
        }
        }
        }
        }
        }
        return Image8(width: width, height: height, channels: channels, pixels: pixels)
    }

    /// Rounds to nearest (halves up) after clamping to [0, 255].
    @inline(__always) static func storeRow(_ acc: UnsafePointer<SIMD4<Float>>, into line: UnsafeMutablePointer<UInt8>,
                                           width: Int, channels: Int) {
        let lo = SIMD4<Float>(repeating: 0), hi = SIMD4<Float>(repeating: 255), half = SIMD4<Float>(repeating: 0.5)
        for x in 0..<width {
            let v = acc[x].clamped(lowerBound: lo, upperBound: hi) + half  // in [0.5, 255.5]: truncation rounds
            let p = line + channels * x
            p[0] = UInt8(v[0])
            if channels > 1 { p[1] = UInt8(v[1]) }
            if channels > 2 { p[2] = UInt8(v[2]) }
            if channels > 3 { p[3] = UInt8(v[3]) }
        }
    }

    /// Resizes a mask (any channel count, usually 1 channel of class indices) with PyTorch's
    /// 'nearest' rule: output (x, y) copies input (floor(x * inW / outW), floor(y * inH / outH)),
    /// computed exactly in integers (PyTorch computes it in float and can differ by one index in
    /// rare cases). Values are copied, never mixed.
    public static func resizeMask(_ mask: Image8, width: Int, height: Int) -> Image8 {
        precondition(width >= 1 && height >= 1, "resize to \(width)x\(height)")
        if width == mask.width && height == mask.height { return mask }
        let inW = mask.width, inH = mask.height, channels = mask.channels
        let columns = (0..<width).map { min($0 * inW / width, inW - 1) * channels }
        var pixels = [UInt8](repeating: 0, count: width * height * channels)
        mask.pixels.withUnsafeBufferPointer { src in
            pixels.withUnsafeMutableBufferPointer { dst in
                for y in 0..<height {
                    let line = src.baseAddress! + min(y * inH / height, inH - 1) * inW * channels
                    let out = dst.baseAddress! + y * width * channels
                    if channels == 1 {
                        for x in 0..<width { out[x] = line[columns[x]] }
                    } else {
                        for x in 0..<width {
                            for c in 0..<channels { out[x * channels + c] = line[columns[x] + c] }
                        }
                    }
                }
            }
        }
        return Image8(width: width, height: height, channels: channels, pixels: pixels)
    }

    // MARK: - Crop

    /// The `width` x `height` region whose top-left pixel is (x, y) of `image` (an image or a mask:
    /// samples are copied exactly). The region may extend past any edge or lie entirely outside;
    /// pixels outside the image are `fill` in every channel.
    public static func crop(_ image: Image8, x: Int, y: Int, width: Int, height: Int, fill: UInt8 = 0) -> Image8 {
        precondition(width >= 1 && height >= 1, "crop to \(width)x\(height)")
        let channels = image.channels
        var pixels = [UInt8](repeating: fill, count: width * height * channels)
        let x0 = max(x, 0), x1 = min(x + width, image.width)
        let y0 = max(y, 0), y1 = min(y + height, image.height)
        if x0 < x1 && y0 < y1 {
            image.pixels.withUnsafeBufferPointer { src in
                pixels.withUnsafeMutableBufferPointer { dst in
                    let run = (x1 - x0) * channels
                    for row in y0..<y1 {
                        (dst.baseAddress! + ((row - y) * width + (x0 - x)) * channels)
                            .update(from: src.baseAddress! + (row * image.width + x0) * channels, count: run)
                    }
                }
            }
        }
        return Image8(width: width, height: height, channels: channels, pixels: pixels)
    }

    /// The top-left corner of a random `width` x `height` crop of an `imageWidth` x `imageHeight`
    /// image. Along an axis where the image is at least as large as the crop the offset is uniform
    /// over every position that stays inside; where the image is smaller the image is centred in
    /// the crop (negative offset; the crop pads, like Albumentations' PadIfNeeded + RandomCrop).
    /// Always draws exactly two numbers from `rng`.
    public static func randomCropOrigin(imageWidth: Int, imageHeight: Int, width: Int, height: Int,
                                        using rng: inout SplitMix64) -> (x: Int, y: Int) {
        let rx = rng.next(), ry = rng.next()
        let x = imageWidth >= width ? Int(rx % UInt64(imageWidth - width + 1)) : -((width - imageWidth) / 2)
        let y = imageHeight >= height ? Int(ry % UInt64(imageHeight - height + 1)) : -((height - imageHeight) / 2)
        return (x, y)
    }

    /// The same random `width` x `height` crop of an image and its mask (same size), drawn from
    /// `SampleRandom.generator(seed:epoch:index:purpose: SampleRandom.crop)`, so it depends only on
    /// (seed, epoch, index). Padding is `imageFill` in the image and `maskFill` in the mask (e.g.
    /// an ignore index).
    public static func randomCrop(image: Image8, mask: Image8, width: Int, height: Int,
                                  seed: UInt64, epoch: Int, index: Int,
                                  imageFill: UInt8 = 0, maskFill: UInt8 = 0) -> (image: Image8, mask: Image8) {
        precondition(image.width == mask.width && image.height == mask.height,
                     "image \(image.width)x\(image.height) and mask \(mask.width)x\(mask.height) differ in size")
        var rng = SampleRandom.generator(seed: seed, epoch: epoch, index: index, purpose: SampleRandom.crop)
        let (x, y) = randomCropOrigin(imageWidth: image.width, imageHeight: image.height,
                                      width: width, height: height, using: &rng)
        return (crop(image, x: x, y: y, width: width, height: height, fill: imageFill),
                crop(mask, x: x, y: y, width: width, height: height, fill: maskFill))
    }

    // MARK: - To floats

    /// Writes the image as planar CHW floats (channels * height * width values at `out`):
    /// x / 255, then (x / 255 - mean[c]) / std[c] when both are given (one value per channel, in
    /// [0, 1] units, e.g. ImageNet's mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)).
    /// Implemented with a 256-entry table per channel.
    public static func normalize(_ image: Image8, into out: UnsafeMutablePointer<Float>,
                                 mean: [Float]? = nil, std: [Float]? = nil) {
        let channels = image.channels, plane = image.width * image.height
        precondition((mean == nil) == (std == nil), "normalize: give both mean and std, or neither")
        if let mean, let std {
            precondition(mean.count == channels && std.count == channels,
                         "normalize: \(mean.count) means and \(std.count) stds for \(channels) channels")
            precondition(std.allSatisfy { $0 > 0 && $0.isFinite }, "normalize: std must be positive (got \(std))")
        }
        var table = [Float](repeating: 0, count: 256 * channels)
        for c in 0..<channels {
            let m = mean?[c] ?? 0, s = std?[c] ?? 1
            for v in 0..<256 { table[c * 256 + v] = mean == nil ? Float(v) / 255 : (Float(v) / 255 - m) / s }
        }
        image.pixels.withUnsafeBufferPointer { src in
            table.withUnsafeBufferPointer { table in
                let src = src.baseAddress!, table = table.baseAddress!
                if channels == 1 {
                    for p in 0..<plane { out[p] = table[Int(src[p])] }
                } else if channels == 3 {
                    let g = table + 256, b = table + 512
                    let outG = out + plane, outB = out + 2 * plane
                    for p in 0..<plane {
                        out[p] = table[Int(src[3 * p])]
                        outG[p] = g[Int(src[3 * p + 1])]
                        outB[p] = b[Int(src[3 * p + 2])]
                    }
                } else {
                    for c in 0..<channels {
                        let t = table + 256 * c, o = out + c * plane
                        for p in 0..<plane { o[p] = t[Int(src[channels * p + c])] }
                    }
                }
            }
        }
    }

    /// Writes a 1-channel mask as floats (height * width values at `out`): class index v -> Float(v).
    public static func maskToFloat(_ mask: Image8, into out: UnsafeMutablePointer<Float>) {
        precondition(mask.channels == 1, "maskToFloat: a mask has 1 channel (got \(mask.channels))")
        mask.pixels.withUnsafeBufferPointer { src in
            for p in 0..<src.count { out[p] = Float(src[p]) }
        }
    }

    /// `image` enlarged to width x height (each at least the image's) by mirroring at the right and
    /// bottom edges (reflect-101: ... c b | a b c | b a ...), for tiles that overhang a small image.
    public static func padReflect(_ image: Image8, width: Int, height: Int) -> Image8 {
        precondition(width >= image.width && height >= image.height)
        func mirror(_ i: Int, _ n: Int) -> Int {
            guard n > 1 else { return 0 }
            let period = 2 * (n - 1)
            let m = i % period
            return m < n ? m : period - m
        }
        var out = Image8(width: width, height: height, channels: image.channels)
        let c = image.channels
        for y in 0..<height {
            let sy = mirror(y, image.height)
            for x in 0..<width {
                let sx = mirror(x, image.width)
                for k in 0..<c { out.pixels[(y * width + x) * c + k] = image.pixels[(sy * image.width + sx) * c + k] }
            }
        }
        return out
    }
}
