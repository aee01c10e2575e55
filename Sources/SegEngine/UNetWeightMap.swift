// The UNet paper's per-pixel weight map for weighted-ce (Ronneberger et al. 2015) and the exact
// Euclidean distance transform it is built on. Runs in data preparation, not in the training step.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The UNet paper's weight map (Ronneberger et al. 2015):
/// w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)).
///
/// Per image:
/// - w_c balances class frequencies: w_c(k) = pixels / (K * count_k) for every class k present,
///   K = the number of classes present, pixels = pixels holding a class.
/// - The border term uses the 8-connected components of the foreground (label != 0, any class)
///   and exact Euclidean distance transforms: d1, d2 = distances to the nearest and second-nearest
///   component. It is added to background pixels only (label 0), as common implementations do,
///   and is 0 when the image has fewer than 2 components (or w0 == 0). A component's distances
///   are computed within its bounding box grown by sigma * sqrt(2 ln 1e12): a pixel farther away
///   has d1 + d2 beyond that, so what is left out is below 1e-12 * w0.
/// - Labels: classes == 1 reads the mask as a probability (>= 0.5 is foreground); classes >= 2
///   as class indices 0..<classes. Any other value (an ignore index) is no class: its weight is 0
///   and it counts neither as a pixel nor as foreground.
///
/// Runs in data preparation, not in the training step: it allocates its working memory per call,
/// costs O(components * window area) per image, and is single-threaded.
/// - Parameters:
///   - weights: (N, 1, H, W) output, overwritten.
///   - mask: (N, 1, H, W) labels.
public func unetWeightMap(_ weights: Tensor, mask: Tensor, classes: Int, w0: Double, sigma: Double) {
    requireValid(mask.c == 1 && weights.shape == mask.shape,
            "unetWeightMap: mask \(mask.shape) and weights \(weights.shape) must both be (N, 1, H, W)")
    requireValid(classes >= 1 && w0 >= 0 && sigma > 0, "unetWeightMap: needs classes >= 1, w0 >= 0, sigma > 0")
    let height = mask.h, width = mask.w, plane = mask.shape.plane
    var counts = [Int](repeating: 0, count: max(classes, 2))
    var labels = [Int](repeating: -1, count: plane)         // class per pixel, -1: none
    var component = [Int32](repeating: 0, count: plane)     // 1-based component id, 0: none
    var boxes: [(y0: Int, y1: Int, x0: Int, x1: Int)] = []
    var stack: [Int] = []
    var nearest = [Double](repeating: .infinity, count: plane)
    var second = [Double](repeating: .infinity, count: plane)
    var grid = [Double](repeating: 0, count: plane)
    var transform = DistanceTransform(maxLength: max(height, width))
    let reach = Int((sigma * (2 * log(1e12)).squareRoot()).rounded(.up))

    for image in 0..<mask.n {
        let m = mask.plane(image, 0), out = weights.plane(image, 0)
        for k in counts.indices { counts[k] = 0 }
        var valid = 0
        for i in 0..<plane {
            let v = m[i]
            var label = -1
            if classes == 1 {
                if v >= 0 && v <= 1 { label = v >= 0.5 ? 1 : 0 }
            } else if v >= 0 && v < Float(classes) && v == v.rounded(.down) {
                label = Int(v)
            }
            labels[i] = label
            if label >= 0 { counts[label] += 1; valid += 1 }
        }
        let present = counts.reduce(0) { $0 + ($1 > 0 ? 1 : 0) }

        // Foreground components, 8-connected, by flood fill.
        for i in 0..<plane { component[i] = 0 }
        boxes.removeAll(keepingCapacity: true)
        for start in 0..<plane where labels[start] > 0 && component[start] == 0 {
            let id = Int32(boxes.count + 1)
            var box = (y0: start / width, y1: start / width, x0: start % width, x1: start % width)
            component[start] = id
            stack.append(start)
            while let p = stack.popLast() {
                let y = p / width, x = p % width
                box = (min(box.y0, y), max(box.y1, y), min(box.x0, x), max(box.x1, x))
                for ny in max(y - 1, 0)...min(y + 1, height - 1) {
                    for nx in max(x - 1, 0)...min(x + 1, width - 1) {
                        let q = ny * width + nx
                        if labels[q] > 0 && component[q] == 0 { component[q] = id; stack.append(q) }
                    }
                }
            }
            boxes.append(box)
        }

        // d1, d2: the two smallest distances to distinct components.
        let border = boxes.count >= 2 && w0 > 0
        if border {
            for i in 0..<plane { nearest[i] = .infinity; second[i] = .infinity }
            for (index, box) in boxes.enumerated() {
                let id = Int32(index + 1)
                let y0 = max(box.y0 - reach, 0), y1 = min(box.y1 + reach, height - 1)
                let x0 = max(box.x0 - reach, 0), x1 = min(box.x1 + reach, width - 1)
                let windowHeight = y1 - y0 + 1, windowWidth = x1 - x0 + 1
                for y in 0..<windowHeight {
                    for x in 0..<windowWidth {
                        grid[y * windowWidth + x] = component[(y0 + y) * width + x0 + x] == id ? 0 : .infinity
                    }
                }
                transform.squared(&grid, height: windowHeight, width: windowWidth)
                for y in 0..<windowHeight {
                    for x in 0..<windowWidth {
                        let i = (y0 + y) * width + x0 + x, d = grid[y * windowWidth + x].squareRoot()
                        if d < nearest[i] {
                            second[i] = nearest[i]; nearest[i] = d
                        } else if d < second[i] {
                            second[i] = d
                        }
                    }
                }
            }
        }

        for i in 0..<plane {
            let label = labels[i]
            if label < 0 { out[i] = 0; continue }
            var value = Double(valid) / Double(present * counts[label])
            if border && label == 0 && second[i].isFinite {
                let s = nearest[i] + second[i]
                value += w0 * exp(-s * s / (2 * sigma * sigma))
            }
            out[i] = Float(value)
        }
    }
}

/// Exact squared Euclidean distance transform (Felzenszwalb & Huttenlocher 2012, lower envelope of
/// parabolas): d(p) = min_q |p - q|^2 + f(q), separably over columns then rows. With f = 0 on the
/// feature cells and +infinity elsewhere it is the squared distance to the nearest feature
/// (+infinity if there is none). Infinite cells are left out of the envelope, so no big sentinel
/// spoils the arithmetic.
struct DistanceTransform {
    private var f: [Double], d: [Double], z: [Double], v: [Int]

    init(maxLength: Int) {
        f = [Double](repeating: 0, count: maxLength)
        d = [Double](repeating: 0, count: maxLength)
        z = [Double](repeating: 0, count: maxLength + 1)
        v = [Int](repeating: 0, count: maxLength)
    }

    /// Transforms `grid` (height x width, row-major, the first height * width elements) in place.
    mutating func squared(_ grid: inout [Double], height: Int, width: Int) {
        precondition(grid.count >= height * width && max(height, width) <= f.count)
        for x in 0..<width {
            for y in 0..<height { f[y] = grid[y * width + x] }
            transform1D(height)
            for y in 0..<height { grid[y * width + x] = d[y] }
        }
        for y in 0..<height {
            for x in 0..<width { f[x] = grid[y * width + x] }
            transform1D(width)
            for x in 0..<width { grid[y * width + x] = d[x] }
        }
    }

    /// d[q] = min_p (q - p)^2 + f[p] for q in 0..<count.
    private mutating func transform1D(_ count: Int) {
        var k = -1
        for q in 0..<count where f[q] < .infinity {
            if k < 0 {
                k = 0; v[0] = q; z[0] = -.infinity; z[1] = .infinity
                continue
            }
            var s = intersection(q, v[k])
            while s <= z[k] {
                k -= 1
                s = intersection(q, v[k])
            }
            k += 1
            v[k] = q; z[k] = s; z[k + 1] = .infinity
        }
        if k < 0 {
            for q in 0..<count { d[q] = .infinity }
            return
        }
        k = 0
        for q in 0..<count {
            while z[k + 1] < Double(q) { k += 1 }
            let offset = Double(q - v[k])
            d[q] = offset * offset + f[v[k]]
        }
    }

    /// Where the parabolas rooted at q and p (p < q) cross.
    @inline(__always)
    private func intersection(_ q: Int, _ p: Int) -> Double {
        let dq = Double(q), dp = Double(p)
        return ((f[q] + dq * dq) - (f[p] + dp * dp)) / (2 * dq - 2 * dp)
    }
}

/// The squared Euclidean distance transform of a height x width row-major grid (0: feature,
/// +infinity: not), in place. Allocates; for tests and tools.
func squaredDistanceTransform(_ grid: inout [Double], height: Int, width: Int) {
    var transform = DistanceTransform(maxLength: max(height, width))
    transform.squared(&grid, height: height, width: width)
}
