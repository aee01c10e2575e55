// Losses, computed from logits, with PyTorch's reduction='mean' semantics, and weighted sums of
// them (LossConfig.swift). Every kind skips pixels whose target is the ignore index (PyTorch's
// `ignore_index`): no value, no gradient, not counted in the normalizers.
//
// Pixel means (divided by the counted pixels):
// - bce: BCE with logits; with --class-weights [pw], PyTorch's BCEWithLogitsLoss pos_weight:
//   l = -[pw t log s(x) + (1 - t) log(1 - s(x))], still divided by the pixel count.
// - ce: softmax cross-entropy; with class weights PyTorch's CrossEntropyLoss(weight=w):
//   sum_i w_{t_i} (-log p_{t_i}) / sum_i w_{t_i} (the denominator from `LossTerms.classPixels`).
// - weighted-ce: the UNet paper's per-pixel weight map (`unetWeightMap`) times BCE or CE.
// - focal (Lin et al. 2017, "Focal Loss for Dense Object Detection", eq. 5): binary as
//   torchvision's sigmoid_focal_loss: alpha_t (1 - p_t)^gamma BCE(x, t), p_t = p t + (1 - p)(1 - t),
//   alpha_t = alpha t + (1 - alpha)(1 - t) (no alpha: 1); multi-class on the softmax:
//   -alpha_k (1 - p_k)^gamma log p_k for target k, alpha_k the class weight (1 without). smp's
//   FocalLoss sums one-vs-rest sigmoid focal losses over the channels instead; here the softmax
//   the model is trained and evaluated with, so that gamma = 0 is exactly ce.
// Per image, averaged over images (mean over the classes within an image; p = sigmoid or softmax,
// t = target or one-hot; I = sum p t, P = sum p, T = sum t over the image's counted pixels):
// - dice: 1 - (2 I + s) / (P + T + s), s = diceSmooth.
// - tversky (Salehi et al. 2017): 1 - TI, TI = (I + s) / (I + alpha (P - I) + beta (T - I) + s),
//   i.e. TP / (TP + alpha FP + beta FN) smoothed (as smp's soft_tversky_score).
// - focal-tversky (Abraham & Khan 2019): (1 - TI)^gamma per class.
// - lovasz (Berman et al. 2018): LovaszLoss.swift.
//
// Every loss is a sum of per-sample terms divided by normalizers (`LossTerms`). The distributed
// trainer allreduces `terms(target:)` first and passes the global terms as `normalizers`, so the
// ranks' losses and gradients add up to the whole batch's. The per-image losses see whole images
// only, so a rank's images give the same terms as in the whole batch.
//
// Reproducibility: an image is cut into fixed chunks of `LossFunction.chunkPixels` pixels. Work
// items are (image, chunk) pairs; each item sums its pixels in order, in Double, into its own slot;
// the slots of an image are then combined in chunk order. So an image's value and gradient depend
// neither on the thread count nor on the other images in the batch. (Lovász: one item per image
// and class, which sorts that image's pixels.)

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A configured loss. Holds a small workspace (per-chunk partial sums) that grows on the first
/// call for a batch shape and is reused afterwards: copies share it, so one `LossFunction` must
/// not be evaluated from two threads at once (the pool parallelises inside `evaluate`).
public struct LossFunction {
    public let config: LossConfig
    public let classes: Int
    let workspace = LossWorkspace()
    /// Where each pixel-mean kind keeps its sum in a work item's slot (-1: not in the loss).
    let slots: PixelSlots

    /// Pixels per work item. Fixed (never derived from the thread count): it sets the summation order.
    static let chunkPixels = 4096

    /// - Parameter classes: 1 for a sigmoid (binary) output, C >= 2 for a softmax over C classes.
    public init(_ config: LossConfig, classes: Int) {
        if let error = config.problem(classes: classes) { fatalError(error) }
        self.config = config
        self.classes = classes
        slots = PixelSlots(config)
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
    public static func validate(_ config: LossConfig, classes: Int) -> String? { config.problem(classes: classes) }

    /// Grows the workspace for batches up to (batch, classes, height, width) on a pool of `threads`,
    /// so that `evaluate` does not allocate. Optional: `evaluate` grows it on first use.
    public func reserve(batch: Int, height: Int, width: Int, threads: Int = 1) {
        let plane = height * width
        workspace.partials.reserve(partialsCount(batch: batch, plane: plane))
        if config.weight(of: .lovasz) != nil { reserveLovasz(batch: batch, plane: plane, threads: threads) }
    }

    /// Class-weighted ce divides by the counted pixels' summed class weights.
    private var countsClasses: Bool { classes >= 2 && config.classWeights != nil && config.weight(of: .ce) != nil }

    /// No pixels, no images: what a rank without a sample adds to the sums (as long as `values`).
    public var noTerms: LossTerms {
        LossTerms(pixels: 0, images: 0, classPixels: countsClasses ? [Double](repeating: 0, count: classes) : [])
    }

    /// Counted pixels (target != ignore index), images and (class-weighted ce) counted pixels per
    /// class of a target (N, 1, H, W).
    public func terms(target: Tensor) -> LossTerms {
        var terms = noTerms
        terms.images = Double(target.n)
        if countsClasses {
            terms.pixels = terms.classPixels.withUnsafeMutableBufferPointer { countPixels(target, perClass: $0.baseAddress) }
        } else {
            terms.pixels = countPixels(target, perClass: nil)
        }
        return terms
    }

    /// The counted pixels of `target`; with `perClass` (class-weighted ce), also those of each
    /// class, written there.
    private func countPixels(_ target: Tensor, perClass: UnsafeMutablePointer<Double>?) -> Double {
        let hasIgnore = config.ignoreIndex != nil, ignore = ignoreValue ?? 0
        if let perClass {
            perClass.initialize(repeating: 0, count: classes)
            for i in 0..<target.count where !(hasIgnore && target[i] == ignore) { perClass[classIndex(target[i], classes)] += 1 }
            var pixels = 0.0
            for c in 0..<classes { pixels += perClass[c] }
            return pixels
        }
        if !hasIgnore { return Double(target.count) }
        var pixels = 0
        for i in 0..<target.count where target[i] != ignore { pixels += 1 }
        return Double(pixels)
    }

    /// The denominators of this batch alone (`terms(target:)` without its arrays: the training
    /// step allocates nothing): pixels, images, and class-weighted ce's sum_c w_c count_c.
    private func ownDenominators(_ target: Tensor) -> Denominators {
        guard countsClasses, let weights = config.classWeights else {
            let pixels = countPixels(target, perClass: nil)
            return Denominators(pixels: pixels, images: Double(target.n), weightedPixels: pixels)
        }
        workspace.classCounts.reserve(classes)
        let counts = workspace.classCounts.pointer
        let pixels = countPixels(target, perClass: counts)
        var weighted = 0.0
        for c in 0..<classes { weighted += weights[c] * counts[c] }   // as LossTerms.weightedPixels
        return Denominators(pixels: pixels, images: Double(target.n), weightedPixels: weighted)
    }

    /// The loss of a batch, and optionally its gradient.
    ///
    /// loss = sum over the components of weight x (sum of the batch's terms) / normalizer: pixel
    /// means divided by `normalizers.pixels` (class-weighted ce by its weighted pixels), the per-image
    /// losses by `normalizers.images`. A normalizer of 0 (nothing counted anywhere) makes its part 0.
    /// - Parameters:
    ///   - logits: (N, classes, H, W), raw scores (before sigmoid / softmax).
    ///   - target: (N, 1, H, W): a probability in [0, 1] when classes == 1 (Lovász: >= 0.5 is
    ///     foreground), else a class index 0..<classes stored as a float; or the ignore index.
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
        requireValid(logits.c == classes, "loss: logits have \(logits.c) channels, the loss expects \(classes) classes")
        requireValid(target.shape == sampleShape, "loss: target \(target.shape) does not match logits \(logits.shape)")
        if let d = dlogits { requireValid(d.shape == logits.shape, "loss: dlogits \(d.shape) differs from logits \(logits.shape)") }
        if config.needsWeightMap {
            guard let wt = weights else { fatalError("loss: weighted-ce needs a weight map") }
            requireValid(wt.shape == sampleShape, "loss: weights \(wt.shape) do not match logits \(logits.shape)")
        }
        let norm = normalizers.map {
            Denominators(pixels: $0.pixels, images: $0.images, weightedPixels: $0.weightedPixels(config.classWeights))
        } ?? ownDenominators(target)
        let scales = PixelScales(config, slots, norm)
        let usesPixel = slots.count > 0, usesRegion = config.components.contains { $0.kind.isRegionRatio }

        let chunks = (plane + LossFunction.chunkPixels - 1) / LossFunction.chunkPixels
        let items = n * chunks
        let stride = slotStride
        workspace.partials.reserve(partialsCount(batch: n, plane: plane))
        let partials = workspace.partials.pointer
        let coefficients = partials + items * stride    // (n, classes, 2): region gradient a_c, b_c
        let w = config.needsWeightMap ? weights : nil

        // Pass 1: per-chunk pixel-mean sums (and their gradient) and the region sums.
        pool.parallelFor(items) { range, _ in
            for item in range {
                let image = item / chunks, start = (item % chunks) * LossFunction.chunkPixels
                let end = min(start + LossFunction.chunkPixels, plane)
                let slot = partials + item * stride
                slot.initialize(repeating: 0, count: stride)
                if usesPixel { pixelTermsChunk(slot, logits, target, w, dlogits, scales, image, start, end) }
                if usesRegion { regionSumsChunk(slot + slots.count, logits, target, image, start, end) }
            }
        }

        // Combine each image's chunks in order, then the images in order.
        var total = 0.0
        for (k, kind) in slots.kinds.enumerated() {
            var sum = 0.0
            for image in 0..<n {
                var imageSum = 0.0
                for chunk in 0..<chunks { imageSum += partials[(image * chunks + chunk) * stride + k] }
                sum += imageSum
            }
            total += sum * scales[kind]
        }
        var regionSum = 0.0
        let regionScale = norm.images > 0 ? 1 / norm.images : 0
        for image in 0..<n where usesRegion {
            regionSum += regionTermsOfImage(partials + image * chunks * stride + slots.count, chunks: chunks, stride: stride,
                                            coefficients: coefficients + image * classes * 2, scale: regionScale)
        }

        // Pass 2: the region losses' gradient.
        if usesRegion, let d = dlogits {
            pool.parallelFor(items) { range, _ in
                for item in range {
                    let image = item / chunks, start = (item % chunks) * LossFunction.chunkPixels
                    let end = min(start + LossFunction.chunkPixels, plane)
                    regionGradientChunk(d, logits, target, coefficients + image * classes * 2, image, start, end)
                }
            }
        }
        total += regionSum * regionScale
        if let weight = config.weight(of: .lovasz) {
            total += lovasz(logits: logits, target: target, dlogits: dlogits, scale: weight * regionScale, pool: pool)
        }
        return total
    }

    // MARK: - Layout of a work item's slot

    var ignoreValue: Float? { config.ignoreIndex.map { Float($0) } }

    /// Doubles per work item: the pixel-mean sums, then (I, P, T) per class when a region loss runs.
    private var slotStride: Int {
        slots.count + (config.components.contains { $0.kind.isRegionRatio } ? 3 * classes : 0)
    }

    private func partialsCount(batch: Int, plane: Int) -> Int {
        let chunks = (plane + LossFunction.chunkPixels - 1) / LossFunction.chunkPixels
        return batch * chunks * slotStride + batch * classes * 2
    }
}

/// Where the pixel-mean kinds keep their sums in a work item's slot: index or -1.
struct PixelSlots {
    var bce = -1, ce = -1, weightedCE = -1, focal = -1
    var count = 0
    var kinds: [LossKind] = []

    init(_ config: LossConfig) {
        for component in config.components where component.kind.isPixelMean {
            switch component.kind {
            case .bce: bce = count
            case .ce: ce = count
            case .weightedCE: weightedCE = count
            default: focal = count
            }
            kinds.append(component.kind)
            count += 1
        }
    }
}

/// What the loss divides by: counted pixels, images, and class-weighted ce's summed weights.
struct Denominators {
    var pixels: Double, images: Double, weightedPixels: Double
}

/// Per pixel-mean kind: its weight over its normalizer (the loss value's factor and the gradient's).
struct PixelScales {
    var bce = 0.0, ce = 0.0, weightedCE = 0.0, focal = 0.0

    init(_ config: LossConfig, _ slots: PixelSlots, _ norm: Denominators) {
        for kind in slots.kinds {
            let denominator = kind == .ce ? norm.weightedPixels : norm.pixels
            let scale = denominator > 0 ? config.weight(of: kind)! / denominator : 0
            switch kind {
            case .bce: bce = scale
            case .ce: ce = scale
            case .weightedCE: weightedCE = scale
            default: focal = scale
            }
        }
    }

    subscript(kind: LossKind) -> Double {
        switch kind {
        case .bce: return bce
        case .ce: return ce
        case .weightedCE: return weightedCE
        default: return focal
        }
    }
}

/// Growable scratch for `LossFunction`. Grows, never shrinks.
final class GrowableBuffer<Element> {
    private(set) var pointer = UnsafeMutablePointer<Element>.allocate(capacity: 1)
    private var capacity = 1

    func reserve(_ count: Int) {
        guard count > capacity else { return }
        pointer.deallocate()
        pointer = UnsafeMutablePointer<Element>.allocate(capacity: count)
        capacity = count
    }

    deinit { pointer.deallocate() }
}

/// The loss's scratch: per-chunk partial sums; for Lovász per-image values, a (N, C, H, W) plane
/// buffer (softmax probabilities, then their gradients) and per-thread sort buffers.
final class LossWorkspace {
    let partials = GrowableBuffer<Double>()
    let classCounts = GrowableBuffer<Double>()
    let lovaszValues = GrowableBuffer<Double>()
    let planes = GrowableBuffer<Double>()
    let errors = GrowableBuffer<Double>()
    let order = GrowableBuffer<Int32>()
}
