// Timings of the data path for `segtrain bench --jpeg-decode / --augment / --synthetic`: decode,
// resize, augmentation and synthetic-sample speed on one thread. Speed is measured by these
// benchmarks, never by tests (they were skipped XCTests before). Each function reports one line
// per measurement through `report` as it finishes; the inputs are generated (no files needed).

import Foundation
import SegEngine

public enum DataBenchmark {
    /// Decode time per image on one thread at each size: 4:4:4 JPEG (what `encodeJPEG` writes),
    /// 4:2:0 JPEG (what cameras write) and PNG, each of a smooth textured colour field. Best and
    /// mean over enough runs to decode about `pixelsPerMeasurement` pixels (at least 5).
    public static func jpegDecode(sizes: [(width: Int, height: Int)], pixelsPerMeasurement: Int = 40_000_000,
                                  report: (String) -> Void) throws {
        for (width, height) in sizes {
            let image = smoothImage(width: width, height: height, seed: 40)
            let files: [(String, [UInt8])] = try [
                ("JPEG q90 4:4:4 (encodeJPEG)", ImageFile.encodeJPEG(image, quality: 90, name: "<benchmark>")),
                ("JPEG q90 4:2:0", ImageFile.encodeJPEG(image, quality: 90, name: "<benchmark>", chroma420: true)),
                ("PNG (encode)", ImageFile.encode(image)),
            ]
            for (tag, bytes) in files {
                let repeats = max(5, pixelsPerMeasurement / max(1, width * height))
                _ = try ImageFile.decode(bytes, name: tag, as: .rgb)
                var best = Double.infinity, total = 0.0
                for _ in 0..<repeats {
                    let start = monotonicSeconds()
                    _ = try ImageFile.decode(bytes, name: tag, as: .rgb)
                    let ms = (monotonicSeconds() - start) * 1000
                    best = min(best, ms)
                    total += ms
                }
                report("decode \(width)x\(height) \(tag.padding(toLength: 28, withPad: " ", startingAt: 0))"
                       + String(format: "%8d bytes  best %7.2f ms  mean %7.2f ms (%d runs)", bytes.count, best,
                                total / Double(repeats), repeats))
            }
        }
    }

    /// Milliseconds per call on one thread of resizing a `source`-sized photo-like image and mask to
    /// each of `sizes`, augmenting (the default configuration and every op at p = 1), warping,
    /// blurring and normalising. Mean, median and minimum over a fixed number of calls: for fixed
    /// work (resize) quote the median; augmentation cost depends on what was drawn, quote the mean.
    public static func augment(sizes: [Int], source: (width: Int, height: Int) = (1918, 1280),
                               report: (String) -> Void) {
        var rng = SplitMix64(seed: 1)
        let (bigWidth, bigHeight) = source
        var big = Image8(width: bigWidth, height: bigHeight, channels: 3)
        var bigMask = Image8(width: bigWidth, height: bigHeight, channels: 1)
        let (cx, cy, r) = (bigWidth / 2, bigHeight / 2, min(bigWidth, bigHeight) * 25 / 64)  // 959, 640, 500 for a Carvana photo
        for y in 0..<bigHeight {
            for x in 0..<bigWidth {
                for c in 0..<3 { big[x, y, c] = UInt8(truncatingIfNeeded: (x / 3 + y / 5 + 40 * c) + Int(rng.next() % 16)) }
                bigMask[x, y, 0] = (x - cx) * (x - cx) + 2 * (y - cy) * (y - cy) < r * r ? 1 : 0
            }
        }
        var sink = 0
        func time(_ name: String, repeats: Int, _ body: (Int) -> Void) {
            body(0)  // warm up
            var times: [Double] = []
            for i in 0..<repeats {
                let start = monotonicSeconds()
                body(i)
                times.append((monotonicSeconds() - start) * 1000)
            }
            let mean = times.reduce(0, +) / Double(times.count)
            times.sort()
            report(String(format: "%@ mean %7.3f  median %7.3f  min %7.3f ms",
                          name.padding(toLength: 44, withPad: " ", startingAt: 0), mean, times[times.count / 2], times[0]))
        }
        let from = "\(bigWidth)x\(bigHeight)"
        for size in sizes {
            time("resizeImage \(from) -> \(size)x\(size)", repeats: 30) { _ in
                sink &+= Int(Preprocess.resizeImage(big, width: size, height: size).pixels[0])
            }
            time("resizeMask \(from) -> \(size)x\(size)", repeats: 10) { _ in
                sink &+= Int(Preprocess.resizeMask(bigMask, width: size, height: size).pixels[0])
            }
        }
        var everything = AugmentConfig.default
        everything.hflipProbability = 1; everything.vflipProbability = 1; everything.rotateProbability = 1
        everything.scaleProbability = 1; everything.shiftProbability = 1; everything.brightnessContrastProbability = 1
        everything.grayscaleProbability = 1; everything.channelShuffleProbability = 1; everything.blurProbability = 1
        for size in sizes {
            let image = Preprocess.resizeImage(big, width: size, height: size)
            let mask = Preprocess.resizeMask(bigMask, width: size, height: size)
            for (name, config) in [("default", AugmentConfig.default), ("every op, p = 1", everything)] {
                let augmenter = Augmenter(config)
                time("augment \(name) \(size)x\(size)", repeats: size <= 128 ? 400 : 40) { index in
                    var i = image, m = mask
                    augmenter.apply(image: &i, mask: &m, seed: 0, epoch: 0, index: index)
                    sink &+= Int(i.pixels[0]) &+ Int(m.pixels[0])
                }
            }
            var plan = AugmentPlan()
            plan.degrees = 10
            plan.scale = 1.05
            let map = plan.map(width: size, height: size)
            time("warpImage + warpMask (one map) \(size)x\(size)", repeats: 100) { _ in
                sink &+= Int(Augmenter.warpImage(image, map: map).pixels[0]) &+ Int(Augmenter.warpMask(mask, map: map).pixels[0])
            }
            time("gaussianBlur sigma 1.5 \(size)x\(size)", repeats: 100) { _ in
                var blurred = image
                Augmenter.gaussianBlur(&blurred, sigma: 1.5)
                sink &+= Int(blurred.pixels[0])
            }
            var floats = [Float](repeating: 0, count: 3 * size * size)
            time("normalize + maskToFloat \(size)x\(size)", repeats: 100) { _ in
                floats.withUnsafeMutableBufferPointer {
                    Preprocess.normalize(image, into: $0.baseAddress!, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225])
                    Preprocess.maskToFloat(mask, into: $0.baseAddress!)
                }
            }
        }
        if sink == -1 { report("") }  // keeps the results used
    }

    /// Milliseconds per synthetic sample (`SyntheticGenerator`, `size` px, `classes`), mean of `samples`.
    public static func synthetic(size: Int, classes: Int, samples: Int = 50, report: (String) -> Void) {
        let generator = SyntheticGenerator(size: size, classes: classes, seed: 1)
        let start = monotonicSeconds()
        var sink = 0
        for index in 0..<samples { sink &+= Int(generator.sample(index).image.pixels[0]) }
        let ms = (monotonicSeconds() - start) * 1000 / Double(max(1, samples))
        report(String(format: "synthetic %dx%d sample, %d classes: %.2f ms (mean of %d)", size, size, classes, ms, samples)
               + (sink == -1 ? " " : ""))
    }

    /// A smooth colour field with a light texture (what photographs look like to a JPEG encoder).
    static func smoothImage(width: Int, height: Int, seed: UInt64) -> Image8 {
        var rng = SplitMix64(seed: seed)
        let phase = (0..<3).map { _ in Double(rng.next() % 1000) / 100 }
        var image = Image8(width: width, height: height, channels: 3)
        for y in 0..<height { for x in 0..<width { for c in 0..<3 {
            let wave = 100 * sin(Double(x) * 0.11 + phase[c]) * cos(Double(y) * 0.07 - phase[c])
            let texture = Double(rng.next() % 9) - 4
            image[x, y, c] = UInt8(max(0, min(255, (128 + wave + texture).rounded())))
        } } }
        return image
    }
}
