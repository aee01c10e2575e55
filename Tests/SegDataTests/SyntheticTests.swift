import Foundation
import SegData
import SegEngine
import XCTest

final class SyntheticTests: XCTestCase {
    func testSamplesDependOnlyOnSeedAndIndex() {
        let a = SyntheticGenerator(size: 64, classes: 3, seed: 11)
        let b = SyntheticGenerator(size: 64, classes: 3, seed: 11)
        _ = a.sample(2)  // order of calls must not matter
        XCTAssertEqual(a.sample(5).image, b.sample(5).image)
        XCTAssertEqual(a.sample(5).mask, b.sample(5).mask)
        XCTAssertNotEqual(a.sample(5).image, a.sample(6).image)
        XCTAssertNotEqual(a.sample(5).image, SyntheticGenerator(size: 64, classes: 3, seed: 12).sample(5).image)
        XCTAssertNotEqual(a.sample(5).mask, SyntheticGenerator(size: 64, classes: 3, seed: 12).sample(5).mask)
    }

    func testMasksHoldEveryClassAndBothForegroundAndBackground() {
        for classes in [1, 3, 5] {
            let generator = SyntheticGenerator(size: 96, classes: classes, seed: 3)
            var seen = Set<UInt8>()
            for index in 0..<6 {
                let (image, mask) = generator.sample(index)
                XCTAssertEqual([image.width, image.height, image.channels], [96, 96, 3])
                XCTAssertEqual([mask.width, mask.height, mask.channels], [96, 96, 1])
                let foreground = mask.pixels.filter { $0 != 0 }.count
                XCTAssertGreaterThan(foreground, 96 * 96 / 100, "classes \(classes) sample \(index): too little foreground")
                XCTAssertLessThan(foreground, 96 * 96 * 9 / 10, "classes \(classes) sample \(index): too little background")
                seen.formUnion(mask.pixels)
            }
            XCTAssertEqual(seen, Set((0..<max(classes, 2)).map { UInt8($0) }), "classes \(classes)")
        }
    }

    /// The best single-channel threshold (R, G, B or their mean; either direction; every level),
    /// chosen per sample with the mask known, still segments the objects poorly.
    func testNoColourThresholdSolvesIt() {
        let generator = SyntheticGenerator(size: 128, classes: 1, seed: 0)
        var ious: [Double] = []
        for index in 0..<8 {
            let (image, mask) = generator.sample(index)
            ious.append(bestThresholdIoU(image, mask))
        }
        let mean = ious.reduce(0, +) / Double(ious.count)
        print("best-threshold IoU per sample: \(ious.map { String(format: "%.2f", $0) }), mean \(String(format: "%.3f", mean))")
        XCTAssertLessThan(mean, 0.75)
        XCTAssertLessThan(ious.max()!, 0.9)
    }

    func bestThresholdIoU(_ image: Image8, _ mask: Image8) -> Double {
        let pixels = image.width * image.height
        var best = 0.0
        for channel in 0..<4 {
            // histograms of the channel over foreground and background
            var fg = [Int](repeating: 0, count: 256), bg = [Int](repeating: 0, count: 256)
            for p in 0..<pixels {
                let v = channel < 3 ? Int(image.pixels[3 * p + channel])
                    : (Int(image.pixels[3 * p]) + Int(image.pixels[3 * p + 1]) + Int(image.pixels[3 * p + 2])) / 3
                if mask.pixels[p] != 0 { fg[v] += 1 } else { bg[v] += 1 }
            }
            let totalFg = fg.reduce(0, +)
            var fgBelow = 0, bgBelow = 0
            for t in 0..<256 {  // predicted foreground: v <= t, or v > t
                fgBelow += fg[t]; bgBelow += bg[t]
                let low = Double(fgBelow) / Double(totalFg + bgBelow)
                let high = Double(totalFg - fgBelow) / Double(totalFg + (pixels - totalFg) - bgBelow)
                best = max(best, low, high)
            }
        }
        return best
    }

    /// The plain set is the standard set without its distractors: the same objects (a plain mask
    /// holds every standard mask pixel, and more only where a distractor lay over an object),
    /// the same background, and images that differ only where distractors were painted.
    func testPlainSetIsTheStandardSetWithoutDistractors() {
        for classes in [1, 3] {
            let standard = SyntheticGenerator(size: 64, classes: classes, seed: 5)
            let plain = SyntheticGenerator(size: 64, classes: classes, seed: 5, set: .plain)
            var differing = 0, total = 0
            for index in 0..<6 {
                let (si, sm) = standard.sample(index), (pi, pm) = plain.sample(index)
                XCTAssertEqual(pi.pixels, plain.sample(index).image.pixels, "deterministic")
                for p in 0..<sm.pixels.count where sm.pixels[p] != 0 {
                    XCTAssertEqual(pm.pixels[p], sm.pixels[p], "classes \(classes), sample \(index): an object pixel changed")
                }
                XCTAssertTrue(pm.pixels.contains { $0 != 0 }, "objects in every plain sample")
                for p in 0..<sm.pixels.count { differing += (0..<3).contains { si.pixels[3 * p + $0] != pi.pixels[3 * p + $0] } ? 1 : 0 }
                total += sm.pixels.count
            }
            // Distractors (3 patches of 10-25 % of the side, lines, rings) cover a good part of each image.
            XCTAssertGreaterThan(Double(differing) / Double(total), 0.05, "classes \(classes)")
            XCTAssertLessThan(Double(differing) / Double(total), 0.9, "classes \(classes)")
        }
    }

    func testFillWritesTensorsFromSamples() {
        let generator = SyntheticGenerator(size: 24, classes: 4, seed: 9)
        let indices = [7, 0, 3]
        let images = OwnedTensor(Shape(3, 3, 24, 24)), masks = OwnedTensor(Shape(3, 1, 24, 24))
        images.tensor.fill(-1); masks.tensor.fill(-1)
        let pool = WorkerPool(threads: 2)
        generator.fill(images: images.tensor, masks: masks.tensor, indices: indices, pool: pool)
        for (row, index) in indices.enumerated() {
            let (image, mask) = generator.sample(index)
            for y in 0..<24 {
                for x in 0..<24 {
                    for c in 0..<3 { XCTAssertEqual(images.tensor[row, c, y, x], Float(image[x, y, c]) / 255, accuracy: 1e-6) }
                    XCTAssertEqual(masks.tensor[row, 0, y, x], Float(mask[x, y, 0]))
                }
            }
        }
    }
}
