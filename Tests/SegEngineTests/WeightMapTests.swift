// The UNet weight map (weighted-ce's per-pixel weights) and the exact distance transform under it.

import XCTest
@testable import SegEngine

#if canImport(Glibc)
import Glibc
#endif

final class WeightMapTests: XCTestCase {
    /// Brute-force Euclidean distance from (y, x) to the nearest of `pixels`.
    func distance(_ y: Int, _ x: Int, to pixels: [(Int, Int)]) -> Double {
        var best = Double.infinity
        for (py, px) in pixels {
            let dy = py - y, dx = px - x
            best = min(best, Double(dy * dy + dx * dx))
        }
        return best.squareRoot()
    }

    func testWeightMapOfTwoSquaresAndOfOneComponent() {
        let (h, w, w0, sigma) = (20, 30, 10.0, 5.0)
        let mask = OwnedTensor(Shape(2, 1, h, w)), weights = OwnedTensor(Shape(2, 1, h, w))
        // Image 0: squares A (rows 5..<15, cols 3..<12) and B (cols 15..<24), a gap of 3 columns.
        // Image 1: square A only.
        var a: [(Int, Int)] = [], b: [(Int, Int)] = []
        for y in 5..<15 {
            for x in 3..<12 { a.append((y, x)); mask.tensor[0, 0, y, x] = 1; mask.tensor[1, 0, y, x] = 1 }
            for x in 15..<24 { b.append((y, x)); mask.tensor[0, 0, y, x] = 1 }
        }
        unetWeightMap(weights.tensor, mask: mask.tensor, classes: 1, w0: w0, sigma: sigma)
        // w_c = pixels / (K * count_k), K = 2.
        let wc0 = 600.0 / (2 * 420), wc1 = 600.0 / (2 * 180)
        for y in 0..<h {
            for x in 0..<w {
                let value = Double(weights.tensor[0, 0, y, x])
                if mask.tensor[0, 0, y, x] == 1 {
                    XCTAssertEqual(value, wc1, accuracy: 1e-6, "foreground (\(y), \(x))")
                } else {
                    let s = distance(y, x, to: a) + distance(y, x, to: b)
                    XCTAssertEqual(value, wc0 + w0 * exp(-s * s / (2 * sigma * sigma)), accuracy: 1e-5, "background (\(y), \(x))")
                }
            }
        }
        // Between the squares d1 + d2 = 4: nearly w_c + w0. Far away: nearly w_c.
        XCTAssertEqual(Double(weights.tensor[0, 0, 10, 13]), wc0 + w0 * exp(-16 / 50.0), accuracy: 1e-5)
        XCTAssertGreaterThan(Double(weights.tensor[0, 0, 10, 13]), wc0 + 0.7 * w0)
        XCTAssertEqual(Double(weights.tensor[0, 0, 19, 29]), wc0, accuracy: 1e-4)
        // One component: class weights only, 90 foreground pixels of 600.
        for i in 0..<(h * w) {
            let expected = mask.tensor.plane(1, 0)[i] == 1 ? 600.0 / (2 * 90) : 600.0 / (2 * 510)
            XCTAssertEqual(Double(weights.tensor.plane(1, 0)[i]), expected, accuracy: 1e-6, "image 1 pixel \(i)")
        }
    }

    /// Class balance over the classes present; ignored labels weigh 0; diagonal neighbours are one
    /// component (8-connectivity), so they get no border term.
    func testWeightMapClassBalanceIgnoreAndConnectivity() {
        let mask = OwnedTensor(Shape(1, 1, 4, 5), [
            0, 1, 1, 0, 0,
            0, 0, 0, 3, 0,
            0, 0, 0, 0, 255,
            0, 0, 0, 0, 0,
        ])
        let weights = OwnedTensor(mask.shape)
        unetWeightMap(weights.tensor, mask: mask.tensor, classes: 4, w0: 10, sigma: 2)
        // 19 labelled pixels, 3 classes present (0: 16, 1: 2, 3: 1).
        let expected: [Float: Double] = [0: 19.0 / (3 * 16), 1: 19.0 / (3 * 2), 3: 19.0 / (3 * 1), 255: 0]
        for i in 0..<20 {
            XCTAssertEqual(Double(weights.tensor[i]), expected[mask.tensor[i]]!, accuracy: 1e-6, "pixel \(i)")
        }
    }

    /// The weight map on random masks with many components (and a small sigma, so the per-component
    /// windows are cut by the image) against a brute-force d1, d2 over all components.
    func testWeightMapMatchesBruteForceOnRandomMasks() {
        var rng = SplitMix64(seed: 71)
        let (h, w, w0, sigma) = (24, 40, 10.0, 1.5)
        let mask = OwnedTensor(Shape(2, 1, h, w)), weights = OwnedTensor(mask.shape)
        for i in 0..<mask.tensor.count { mask.tensor[i] = rng.nextUnitFloat() < 0.08 ? Float(1 + rng.next() % 2) : 0 }
        unetWeightMap(weights.tensor, mask: mask.tensor, classes: 3, w0: w0, sigma: sigma)
        for n in 0..<2 {
            let m = mask.tensor.plane(n, 0)
            // Components by union-find over 8-neighbours.
            var parent = Array(0..<(h * w))
            func root(_ i: Int) -> Int { var i = i; while parent[i] != i { i = parent[i] }; return i }
            for y in 0..<h {
                for x in 0..<w where m[y * w + x] != 0 {
                    for (dy, dx) in [(0, 1), (1, -1), (1, 0), (1, 1)] {
                        let ny = y + dy, nx = x + dx
                        if ny < h && nx >= 0 && nx < w && m[ny * w + nx] != 0 { parent[root(ny * w + nx)] = root(y * w + x) }
                    }
                }
            }
            var components: [Int: [(Int, Int)]] = [:]
            var counts = [0, 0, 0]
            for i in 0..<(h * w) {
                counts[Int(m[i])] += 1
                if m[i] != 0 { components[root(i), default: []].append((i / w, i % w)) }
            }
            XCTAssertGreaterThan(components.count, 10)
            let present = Double(counts.filter { $0 > 0 }.count)
            for y in 0..<h {
                for x in 0..<w {
                    let label = Int(m[y * w + x])
                    var expected = Double(h * w) / (present * Double(counts[label]))
                    if label == 0 {
                        let d = components.values.map { distance(y, x, to: $0) }.sorted()
                        let s = d[0] + d[1]
                        expected += w0 * exp(-s * s / (2 * sigma * sigma))
                    }
                    XCTAssertEqual(Double(weights.tensor[n, 0, y, x]), expected, accuracy: 1e-5 * expected, "image \(n) (\(y), \(x))")
                }
            }
        }
    }

    func testDistanceTransformIsExact() {
        var rng = SplitMix64(seed: 81)
        for (h, w, density) in [(13, 17, 0.05), (13, 17, 0.3), (1, 9, 0.2), (9, 1, 0.2), (8, 8, 0.0), (16, 11, 0.01)] {
            var grid = [Double](repeating: .infinity, count: h * w)
            var features: [(Int, Int)] = []
            for i in 0..<(h * w) where rng.nextUnitDouble() < density {
                grid[i] = 0
                features.append((i / w, i % w))
            }
            if density == 0.01 {
                // A single feature.
                grid = [Double](repeating: .infinity, count: h * w)
                grid[5 * w + 7] = 0
                features = [(5, 7)]
            }
            squaredDistanceTransform(&grid, height: h, width: w)
            for i in 0..<(h * w) {
                let y = i / w, x = i % w
                var brute = Double.infinity
                for (fy, fx) in features {
                    let dy = fy - y, dx = fx - x
                    brute = min(brute, Double(dy * dy + dx * dx))
                }
                XCTAssertEqual(grid[i], brute, "\(h)x\(w) density \(density) at (\(y), \(x))")
            }
        }
    }
}
