// Losses, computed from logits, with PyTorch's reduction='mean' semantics: BCE with logits, soft
// Dice, BCE + Dice, softmax cross-entropy and weighted cross-entropy (the UNet paper's weight map,
// built by `unetWeightMap`). Every kind skips pixels whose target is the ignore index (PyTorch's
// `ignore_index`): no value, no gradient, not counted in the normalizers.
//
// Every loss is a sum of per-sample terms divided by normalizers (counted pixels, images). The
// distributed trainer allreduces `terms(target:)` first and passes the global counts as
// `normalizers`, so the ranks' losses and gradients add up to the whole batch's.
//
// Reproducibility: an image is cut into fixed chunks of `LossFunction.chunkPixels` pixels. Work
// items are (image, chunk) pairs; each item sums its pixels in order, in Double, into its own slot;
// the slots of an image are then combined in chunk order. So an image's value and gradient depend
// neither on the thread count nor on the other images in the batch.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum LossKind: String, CaseIterable, Sendable {
    case bce, dice, bceDice = "bce+dice", ce, weightedCE = "weighted-ce"
}

public struct LossConfig: Sendable {
    public var kind: LossKind
    /// bce+dice only: loss = bceWeight * BCE + diceWeight * Dice.
    public var bceWeight: Double
    public var diceWeight: Double
    /// Target value excluded from every term (bce, ce, weighted-ce, and the Dice sums): such
    /// pixels get zero gradient and are not counted. nil: nothing is ignored.
    public var ignoreIndex: Int?
    /// Added to the numerator and denominator of the Dice ratio; must be > 0.
    public var diceSmooth: Double
    /// UNet weight map parameters (see `unetWeightMap`).
    public var w0: Double
    public var sigma: Double

    public init(kind: LossKind, bceWeight: Double = 1, diceWeight: Double = 1, ignoreIndex: Int? = nil,
                diceSmooth: Double = 1, w0: Double = 10, sigma: Double = 5) {
        self.kind = kind
        self.bceWeight = bceWeight
        self.diceWeight = diceWeight
        self.ignoreIndex = ignoreIndex
        self.diceSmooth = diceSmooth
        self.w0 = w0
        self.sigma = sigma
    }
}

/// How many terms a batch contributes: pixels that count (not ignored) and images.
/// Sum them over ranks (`+`) to get the global normalizers.
public struct LossTerms: Equatable, Sendable {
    public var pixels: Double
    public var images: Double

    public init(pixels: Double, images: Double) {
        self.pixels = pixels
        self.images = images
    }

    public static func + (a: LossTerms, b: LossTerms) -> LossTerms {
        LossTerms(pixels: a.pixels + b.pixels, images: a.images + b.images)
    }
}

/// A configured loss. Holds a small workspace (per-chunk partial sums) that grows on the first
/// call for a batch shape and is reused afterwards: copies share it, so one `LossFunction` must
/// not be evaluated from two threads at once (the pool parallelises inside `evaluate`).
public struct LossFunction {
    public let config: LossConfig
    public let classes: Int
    private let workspace = LossWorkspace()

    /// Pixels per work item. Fixed (never derived from the thread count): it sets the summation order.
    static let chunkPixels = 4096

    /// - Parameter classes: 1 for a sigmoid (binary) output, C >= 2 for a softmax over C classes.
    public init(_ config: LossConfig, classes: Int) {
        if let error = LossFunction.validate(config, classes: classes) { fatalError(error) }
        self.config = config
        self.classes = classes
    }

    /// The loss for masks described by `labels`: its class count, and its ignore value as the
    /// config's `ignoreIndex` (whatever the config held), so data and loss agree on what is ignored.
    public init(_ config: LossConfig, labels: LabelSpec) {
        var config = config
        config.ignoreIndex = labels.ignoreIndex
        self.init(config, classes: labels.classes)
    }

    /// The labels this loss reads: its classes and ignore index.
    public var labels: LabelSpec { LabelSpec(classes: classes, ignoreIndex: config.ignoreIndex) }

    /// nil if `config` works with `classes` outputs, else a one-line error for the CLI.
    public static func validate(_ config: LossConfig, classes: Int) -> String? {
        if classes < 1 { return "--classes must be >= 1 (got \(classes))" }
        switch config.kind {
        case .bce, .bceDice:
            if classes != 1 {
                return "\(config.kind.rawValue) needs --classes 1 (a sigmoid output); use ce, weighted-ce or dice for \(classes) classes"
            }
        case .ce:
            if classes < 2 { return "ce needs --classes >= 2; use bce for a binary (sigmoid) output" }
        case .dice, .weightedCE:
            break
        }
        if config.kind == .bceDice {
            for (name, value) in [("bce weight", config.bceWeight), ("dice weight", config.diceWeight)] {
                if !(value.isFinite && value >= 0) { return "\(name) must be a finite number >= 0 (got \(value))" }
            }
        }
        if config.kind == .dice || config.kind == .bceDice {
            if !(config.diceSmooth.isFinite && config.diceSmooth > 0) {
                return "dice smooth must be a finite number > 0 (got \(config.diceSmooth))"
            }
        }
        if config.kind == .weightedCE {
            if !(config.w0.isFinite && config.w0 >= 0) { return "w0 must be a finite number >= 0 (got \(config.w0))" }
            if !(config.sigma.isFinite && config.sigma > 0) { return "sigma must be a finite number > 0 (got \(config.sigma))" }
        }
        return nil
    }

    /// Grows the workspace for batches up to (batch, classes, height, width), so that `evaluate`
    /// does not allocate. Optional: `evaluate` grows it on first use.
    public func reserve(batch: Int, height: Int, width: Int) {
        workspace.reserve(workspaceCount(batch: batch, plane: height * width))
    }

    /// Counted pixels (target != ignore index) and images of a target (N, 1, H, W).
    public func terms(target: Tensor) -> LossTerms {
        guard let ignore = ignoreValue else {
            return LossTerms(pixels: Double(target.count), images: Double(target.n))
        }
        var pixels = 0
        for i in 0..<target.count where target[i] != ignore { pixels += 1 }
        return LossTerms(pixels: Double(pixels), images: Double(target.n))
    }

    /// The loss of a batch, and optionally its gradient.
    ///
    /// loss = (sum of the batch's per-term losses) / `normalizers`: pixel terms (bce, ce, weighted)
    /// are divided by `normalizers.pixels`, Dice terms by `normalizers.images`. A normalizer of 0
    /// (nothing counted anywhere) makes its part 0.
    /// - Parameters:
    ///   - logits: (N, classes, H, W), raw scores (before sigmoid / softmax).
    ///   - target: (N, 1, H, W): a probability in [0, 1] when classes == 1, else a class index
    ///     0..<classes stored as a float; or the ignore index.
    ///   - weights: (N, 1, H, W) per-pixel weights (`unetWeightMap`), required for weighted-ce,
    ///     ignored otherwise.
    ///   - dlogits: (N, classes, H, W) or nil. d(loss)/d(logits) is ADDED into it.
    ///   - normalizers: the global terms of the whole (distributed) batch; nil means
    ///     `terms(target:)` of this batch, i.e. the plain mean.
    /// - Returns: the loss (accumulated in Double).
    public func evaluate(logits: Tensor, target: Tensor, weights: Tensor?, dlogits: Tensor?,
                         normalizers: LossTerms?, pool: WorkerPool) -> Double {
        let n = logits.n, plane = logits.shape.plane
        let sampleShape = Shape(n, 1, logits.h, logits.w)
        require(logits.c == classes, "loss: logits have \(logits.c) channels, the loss expects \(classes) classes")
        require(target.shape == sampleShape, "loss: target \(target.shape) does not match logits \(logits.shape)")
        if let d = dlogits { require(d.shape == logits.shape, "loss: dlogits \(d.shape) differs from logits \(logits.shape)") }
        let weighted = config.kind == .weightedCE
        if weighted {
            guard let wt = weights else { fatalError("loss: weighted-ce needs a weight map") }
            require(wt.shape == sampleShape, "loss: weights \(wt.shape) do not match logits \(logits.shape)")
        }
        let norm = normalizers ?? terms(target: target)

        // How the loss is made of a pixel term (per counted pixel) and a Dice term (per image).
        let pixelWeight: Double, diceWeight: Double
        switch config.kind {
        case .bce, .ce, .weightedCE: pixelWeight = 1; diceWeight = 0
        case .dice: pixelWeight = 0; diceWeight = 1
        case .bceDice: pixelWeight = config.bceWeight; diceWeight = config.diceWeight
        }
        let usesPixel = config.kind != .dice, usesDice = config.kind == .dice || config.kind == .bceDice
        let pixelScale = norm.pixels > 0 ? pixelWeight / norm.pixels : 0
        let diceScale = norm.images > 0 ? diceWeight / norm.images : 0

        let chunks = (plane + LossFunction.chunkPixels - 1) / LossFunction.chunkPixels
        let items = n * chunks
        let stride = slotStride
        workspace.reserve(workspaceCount(batch: n, plane: plane))
        let partials = workspace.pointer
        let coefficients = partials + items * stride    // (n, classes, 2): Dice gradient a_c, b_c
        let w = weighted ? weights : nil
        // Pass 1 writes the pixel term's gradient unless pass 2 (Dice) runs and adds both at once.
        let pixelGradient = usesDice ? nil : dlogits

        // Pass 1: per-chunk pixel-term sums and Dice sums (and the pixel-term gradient).
        pool.parallelFor(items) { range, _ in
            for item in range {
                let image = item / chunks, start = (item % chunks) * LossFunction.chunkPixels
                let end = min(start + LossFunction.chunkPixels, plane)
                let slot = partials + item * stride
                slot.initialize(repeating: 0, count: stride)
                if usesPixel {
                    slot[0] = pixelTermChunk(logits, target, w, pixelGradient, pixelScale, image, start, end)
                }
                if usesDice { diceSumsChunk(slot + 1, logits, target, image, start, end) }
            }
        }

        // Combine each image's chunks in order, then the images in order.
        var pixelSum = 0.0, diceSum = 0.0
        let smooth = config.diceSmooth, classTerms = Double(classes)
        for image in 0..<n {
            var imagePixel = 0.0
            for chunk in 0..<chunks { imagePixel += partials[(image * chunks + chunk) * stride] }
            pixelSum += imagePixel
            guard usesDice else { continue }
            var imageDice = 0.0
            for c in 0..<classes {
                var inter = 0.0, predicted = 0.0, truth = 0.0
                for chunk in 0..<chunks {
                    let sums = partials + (image * chunks + chunk) * stride + 1 + 3 * c
                    inter += sums[0]; predicted += sums[1]; truth += sums[2]
                }
                let denominator = predicted + truth + smooth
                let ratio = (2 * inter + smooth) / denominator
                imageDice += 1 - ratio
                // d(Dice_c / C)/dp_c(i) = a_c * t_c(i) + b_c, scaled to the loss.
                coefficients[(image * classes + c) * 2] = -2 / denominator / classTerms * diceScale
                coefficients[(image * classes + c) * 2 + 1] = ratio / denominator / classTerms * diceScale
            }
            diceSum += imageDice / classTerms
        }

        // Pass 2: Dice gradient (plus the pixel term's, for bce+dice).
        if usesDice, let d = dlogits {
            pool.parallelFor(items) { range, _ in
                for item in range {
                    let image = item / chunks, start = (item % chunks) * LossFunction.chunkPixels
                    let end = min(start + LossFunction.chunkPixels, plane)
                    diceGradientChunk(d, logits, target, coefficients + image * classes * 2,
                                      usesPixel ? pixelScale : 0, image, start, end)
                }
            }
        }
        return (norm.pixels > 0 ? pixelSum * pixelWeight / norm.pixels : 0)
            + (norm.images > 0 ? diceSum * diceWeight / norm.images : 0)
    }

    // MARK: - Kernels over one chunk [start, end) of one image's plane

    private var ignoreValue: Float? { config.ignoreIndex.map { Float($0) } }

    /// Doubles per work item: the pixel-term sum, then (intersection, predicted, truth) per class.
    private var slotStride: Int { 1 + 3 * classes }

    private func workspaceCount(batch: Int, plane: Int) -> Int {
        let chunks = (plane + LossFunction.chunkPixels - 1) / LossFunction.chunkPixels
        return batch * chunks * slotStride + batch * classes * 2
    }

    /// Sum over the chunk's counted pixels of w * BCE (classes 1) or w * CE (classes >= 2); w = 1
    /// without a weight map. Adds w * scale * dloss/dlogit into `dlogits` when given.
    @inline(__always)
    private func pixelTermChunk(_ logits: Tensor, _ target: Tensor, _ weights: Tensor?, _ dlogits: Tensor?,
                                _ scale: Double, _ image: Int, _ start: Int, _ end: Int) -> Double {
        let hasIgnore = config.ignoreIndex != nil, ignore = ignoreValue ?? 0
        let t = target.plane(image, 0), wt = weights.map { $0.plane(image, 0) }
        var sum = 0.0
        if classes == 1 {
            let x = logits.plane(image, 0), dx = dlogits.map { $0.plane(image, 0) }
            for i in start..<end {
                if hasIgnore && t[i] == ignore { continue }
                let xi = Double(x[i]), ti = Double(t[i]), wi = wt.map { Double($0[i]) } ?? 1
                sum += wi * bceWithLogits(xi, ti)
                if let dx { dx[i] += Float(wi * scale * (stableSigmoid(xi) - ti)) }
            }
            return sum
        }
        let plane = logits.shape.plane, classes = self.classes
        let x = logits.sample(image), dx = dlogits.map { $0.sample(image) }
        for i in start..<end {
            if hasIgnore && t[i] == ignore { continue }
            let k = classIndex(t[i], classes), wi = wt.map { Double($0[i]) } ?? 1
            let (m, expSum) = softmaxNormalizer(x, pixel: i, plane: plane, classes: classes)
            sum += wi * (m + log(expSum) - Double(x[k * plane + i]))
            if let dx {
                let g = wi * scale, inverse = 1 / expSum
                for c in 0..<classes {
                    let p = exp(Double(x[c * plane + i]) - m) * inverse
                    dx[c * plane + i] += Float(g * (c == k ? p - 1 : p))
                }
            }
        }
        return sum
    }

    /// Adds the chunk's Dice sums into `sums` (per class: sum p*t, sum p, sum t; p = sigmoid or
    /// softmax, t = target or one-hot), skipping ignored pixels.
    @inline(__always)
    private func diceSumsChunk(_ sums: UnsafeMutablePointer<Double>, _ logits: Tensor, _ target: Tensor,
                               _ image: Int, _ start: Int, _ end: Int) {
        let hasIgnore = config.ignoreIndex != nil, ignore = ignoreValue ?? 0
        let t = target.plane(image, 0)
        if classes == 1 {
            let x = logits.plane(image, 0)
            var inter = 0.0, predicted = 0.0, truth = 0.0
            for i in start..<end {
                if hasIgnore && t[i] == ignore { continue }
                let p = stableSigmoid(Double(x[i])), ti = Double(t[i])
                inter += p * ti; predicted += p; truth += ti
            }
            sums[0] += inter; sums[1] += predicted; sums[2] += truth
            return
        }
        let plane = logits.shape.plane, classes = self.classes
        let x = logits.sample(image)
        for i in start..<end {
            if hasIgnore && t[i] == ignore { continue }
            let k = classIndex(t[i], classes)
            let (m, expSum) = softmaxNormalizer(x, pixel: i, plane: plane, classes: classes)
            let inverse = 1 / expSum
            for c in 0..<classes {
                let p = exp(Double(x[c * plane + i]) - m) * inverse
                sums[3 * c + 1] += p
                if c == k { sums[3 * c] += p; sums[3 * c + 2] += 1 }
            }
        }
    }

    /// Adds the Dice gradient (coefficients: per class a_c, b_c with dDice/dp_c = a_c t_c + b_c,
    /// already scaled) and `pixelScale` * the BCE gradient (bce+dice) into `dlogits`.
    @inline(__always)
    private func diceGradientChunk(_ dlogits: Tensor, _ logits: Tensor, _ target: Tensor,
                                   _ coefficients: UnsafeMutablePointer<Double>, _ pixelScale: Double,
                                   _ image: Int, _ start: Int, _ end: Int) {
        let hasIgnore = config.ignoreIndex != nil, ignore = ignoreValue ?? 0
        let t = target.plane(image, 0)
        if classes == 1 {
            let x = logits.plane(image, 0), dx = dlogits.plane(image, 0)
            let a = coefficients[0], b = coefficients[1]
            for i in start..<end {
                if hasIgnore && t[i] == ignore { continue }
                let p = stableSigmoid(Double(x[i])), ti = Double(t[i])
                dx[i] += Float((a * ti + b) * p * (1 - p) + pixelScale * (p - ti))
            }
            return
        }
        let plane = logits.shape.plane, classes = self.classes
        let x = logits.sample(image), dx = dlogits.sample(image)
        for i in start..<end {
            if hasIgnore && t[i] == ignore { continue }
            let k = classIndex(t[i], classes)
            let (m, expSum) = softmaxNormalizer(x, pixel: i, plane: plane, classes: classes)
            let inverse = 1 / expSum
            // Softmax backward: dx_c = p_c (g_c - sum_j p_j g_j), g_c = a_c [c == k] + b_c.
            var dot = 0.0
            for c in 0..<classes {
                let p = exp(Double(x[c * plane + i]) - m) * inverse
                dot += p * (coefficients[2 * c + 1] + (c == k ? coefficients[2 * c] : 0))
            }
            for c in 0..<classes {
                let p = exp(Double(x[c * plane + i]) - m) * inverse
                let g = coefficients[2 * c + 1] + (c == k ? coefficients[2 * c] : 0)
                dx[c * plane + i] += Float(p * (g - dot))
            }
        }
    }
}

/// Growable Double scratch for `LossFunction` (per-chunk partial sums). Grows, never shrinks.
private final class LossWorkspace {
    private(set) var pointer = UnsafeMutablePointer<Double>.allocate(capacity: 1)
    private var capacity = 1

    func reserve(_ count: Int) {
        guard count > capacity else { return }
        pointer.deallocate()
        pointer = UnsafeMutablePointer<Double>.allocate(capacity: count)
        capacity = count
    }

    deinit { pointer.deallocate() }
}

/// Checked in every build (SegEngine is compiled -Ounchecked, where `precondition` is not).
@inline(__always)
private func require(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError(message()) }
}

/// The class index stored in a float target; a value that is none is a data bug and stops the run.
@inline(__always)
private func classIndex(_ t: Float, _ classes: Int) -> Int {
    guard t >= 0 && t < Float(classes) && t == t.rounded(.down) else {
        fatalError("loss: target value \(t) is neither a class index in 0..<\(classes) nor the ignore index")
    }
    return Int(t)
}

/// BCE with logits, stable for large |x|: max(x, 0) - x t + log(1 + exp(-|x|)).
@inline(__always)
private func bceWithLogits(_ x: Double, _ t: Double) -> Double {
    max(x, 0) - x * t + log1p(exp(-abs(x)))
}

@inline(__always)
private func stableSigmoid(_ x: Double) -> Double {
    if x >= 0 { return 1 / (1 + exp(-x)) }
    let e = exp(x)
    return e / (1 + e)
}

// MARK: - The UNet weight map

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
    require(mask.c == 1 && weights.shape == mask.shape,
            "unetWeightMap: mask \(mask.shape) and weights \(weights.shape) must both be (N, 1, H, W)")
    require(classes >= 1 && w0 >= 0 && sigma > 0, "unetWeightMap: needs classes >= 1, w0 >= 0, sigma > 0")
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

/// The stable softmax normaliser of one pixel across the channels of `x` (a sample's (C, H, W)):
/// the largest logit m and sum_c exp(x_c - m), in double precision.
@inline(__always)
private func softmaxNormalizer(_ x: UnsafeMutablePointer<Float>, pixel i: Int, plane: Int,
                               classes: Int) -> (max: Double, expSum: Double) {
    var m = Double(x[i])
    for c in 1..<classes { m = max(m, Double(x[c * plane + i])) }
    var expSum = 0.0
    for c in 0..<classes { expSum += exp(Double(x[c * plane + i]) - m) }
    return (m, expSum)
}
