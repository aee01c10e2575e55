// What a loss is made of: its kinds, a weighted sum of them (`--loss ce:1,dice:0.5`), their
// parameters (class weights, focal and Tversky exponents), the checks that give the CLI a one-line
// error, and the normalizers (`LossTerms`) the ranks sum. The formulas are in Losses.swift and
// LovaszLoss.swift.

public enum LossKind: String, CaseIterable, Sendable {
    case bce, dice, bceDice = "bce+dice", ce, weightedCE = "weighted-ce"
    case focal, tversky, focalTversky = "focal-tversky", lovasz

    /// A mean over counted pixels (bce, ce, weighted-ce, focal); the others are per image.
    var isPixelMean: Bool { self == .bce || self == .ce || self == .weightedCE || self == .focal }
    /// Per image, from the sums (sum p t, sum p, sum t) of each class: Dice and the Tversky kinds.
    var isRegionRatio: Bool { self == .dice || self == .tversky || self == .focalTversky }
}

/// One term of a loss: `weight` times the loss of `kind`.
public struct LossComponent: Equatable, Sendable {
    public var kind: LossKind
    public var weight: Double

    public init(_ kind: LossKind, _ weight: Double) {
        self.kind = kind
        self.weight = weight
    }
}

public struct LossConfig: Sendable {
    /// The loss is the sum of these (weight x loss); each kind at most once, never `.bceDice`
    /// (it is bce and dice).
    public private(set) var components: [LossComponent]
    /// Target value excluded from every term: such pixels get zero gradient and are not counted.
    /// nil: nothing is ignored.
    public var ignoreIndex: Int?
    /// Added to the numerator and denominator of the Dice and Tversky ratios; must be > 0.
    public var diceSmooth: Double
    /// UNet weight map parameters (see `unetWeightMap`).
    public var w0: Double
    public var sigma: Double
    /// `--class-weights`. Classes >= 2: one weight per class, for ce (PyTorch's CrossEntropyLoss
    /// `weight`: the mean divides by the summed weights of the counted pixels' targets) and focal
    /// (the alpha_t of each pixel's class). 1 class: one value, BCE's `pos_weight` (PyTorch's
    /// BCEWithLogitsLoss; the mean still divides by the pixel count). nil: all 1.
    public var classWeights: [Double]?
    /// Focal loss exponent gamma (Lin et al. 2017; 0 makes focal plain BCE / CE).
    public var focalGamma: Double
    /// Binary focal alpha (torchvision's sigmoid_focal_loss): weight alpha on foreground, 1 - alpha on
    /// background. nil: no alpha weighting (smp's FocalLoss default).
    public var focalAlpha: Double?
    /// Tversky index TP / (TP + alpha FP + beta FN) (Salehi et al. 2017; alpha = beta = 0.5 is Dice).
    public var tverskyAlpha: Double
    public var tverskyBeta: Double
    /// Focal Tversky exponent: per class (1 - TI)^gamma (Abraham & Khan 2019 write 1/gamma; their
    /// recommended 4/3 is 0.75 here).
    public var tverskyGamma: Double

    /// A single kind (bce+dice: bceWeight x bce + diceWeight x dice).
    public init(kind: LossKind, bceWeight: Double = 1, diceWeight: Double = 1, ignoreIndex: Int? = nil,
                diceSmooth: Double = 1, w0: Double = 10, sigma: Double = 5) {
        let components = kind == .bceDice
            ? [LossComponent(.bce, bceWeight), LossComponent(.dice, diceWeight)] : [LossComponent(kind, 1)]
        self.init(components: components, ignoreIndex: ignoreIndex, diceSmooth: diceSmooth, w0: w0, sigma: sigma)
    }

    /// A weighted sum; `.bceDice` in the list stands for bce and dice at its weight.
    public init(components: [LossComponent], ignoreIndex: Int? = nil, diceSmooth: Double = 1,
                w0: Double = 10, sigma: Double = 5) {
        self.components = components.flatMap {
            $0.kind == .bceDice ? [LossComponent(.bce, $0.weight), LossComponent(.dice, $0.weight)] : [$0]
        }
        self.ignoreIndex = ignoreIndex
        self.diceSmooth = diceSmooth
        self.w0 = w0
        self.sigma = sigma
        classWeights = nil
        focalGamma = 2
        focalAlpha = nil
        tverskyAlpha = 0.3
        tverskyBeta = 0.7
        tverskyGamma = 0.75
    }

    /// The weight of `kind` in the sum, nil when it is not part of it.
    public func weight(of kind: LossKind) -> Double? { components.first { $0.kind == kind }?.weight }

    /// The loss needs the UNet weight map (`unetWeightMap`) as `weights`.
    public var needsWeightMap: Bool { weight(of: .weightedCE) != nil }

    /// How the loss is written on the command line: one kind alone at weight 1 (bce and dice at 1:
    /// bce+dice), else kind:weight,...
    public var name: String {
        if components.count == 1 && components[0].weight == 1 { return components[0].kind.rawValue }
        if components == [LossComponent(.bce, 1), LossComponent(.dice, 1)] { return LossKind.bceDice.rawValue }
        return components.map { "\($0.kind.rawValue):\(formatWeight($0.weight))" }.joined(separator: ",")
    }

    /// Parses `--loss`: a kind ("ce") or a weighted sum ("ce:1,dice:0.5"). A one-line error naming
    /// `flag` for anything else.
    public static func parseComponents(_ text: String, flag: String = "--loss") -> Result<[LossComponent], LossConfigError> {
        let kinds = LossKind.allCases.map(\.rawValue).joined(separator: ", ")
        var components: [LossComponent] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let fields = part.split(separator: ":", omittingEmptySubsequences: false)
            guard fields.count <= 2, let kind = LossKind(rawValue: String(fields[0]).trimmed) else {
                return .failure(LossConfigError("\(flag): '\(part)' is not a loss (\(kinds); a sum is written ce:1,dice:0.5)"))
            }
            var weight = 1.0
            if fields.count == 2 {
                guard let value = Double(String(fields[1]).trimmed), value.isFinite, value >= 0 else {
                    return .failure(LossConfigError("\(flag): the weight of \(kind.rawValue) must be a finite number >= 0 (got '\(fields[1])')"))
                }
                weight = value
            }
            components.append(LossComponent(kind, weight))
        }
        let expanded = LossConfig(components: components).components
        for (index, component) in expanded.enumerated() where expanded[..<index].contains(where: { $0.kind == component.kind }) {
            return .failure(LossConfigError("\(flag): \(component.kind.rawValue) is listed twice in '\(text)'"))
        }
        return .success(components)
    }
}

/// A one-line description of a bad loss configuration, naming the flag.
public struct LossConfigError: Error, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// How many terms a batch contributes: pixels that count (not ignored), images, and, for ce with
/// class weights, the counted pixels of each class (PyTorch's weighted mean divides by the sum of
/// the counted pixels' class weights: sum_c w_c count_c, taken from the summed counts so that N
/// ranks get the 1-rank denominator exactly). Sum them over ranks (`+`, or `values` and
/// `init(values:)` for a collective) to get the global normalizers.
public struct LossTerms: Equatable, Sendable {
    public var pixels: Double
    public var images: Double
    /// Counted pixels per class (class-weighted ce only), else empty.
    public var classPixels: [Double]

    public init(pixels: Double, images: Double, classPixels: [Double] = []) {
        self.pixels = pixels
        self.images = images
        self.classPixels = classPixels
    }

    /// The denominator of class-weighted ce: sum_c weights[c] x classPixels[c], in class order;
    /// `pixels` when there are no class counts (e.g. normalizers given as plain scales).
    public func weightedPixels(_ weights: [Double]?) -> Double {
        guard let weights, classPixels.count == weights.count else { return pixels }
        var sum = 0.0
        for (w, count) in zip(weights, classPixels) { sum += w * count }
        return sum
    }

    /// The terms as one list for a sum over ranks (pixels, images, class counts), and back.
    public var values: [Double] { [pixels, images] + classPixels }
    public init<C: Collection>(values: C) where C.Element == Double {
        let v = Array(values)
        precondition(v.count >= 2, "LossTerms(values:) takes pixels, images and the class counts")
        self.init(pixels: v[0], images: v[1], classPixels: Array(v[2...]))
    }

    /// Every count times `factor` (the micro-batches of an accumulated step).
    public func scaled(by factor: Double) -> LossTerms {
        LossTerms(pixels: pixels * factor, images: images * factor, classPixels: classPixels.map { $0 * factor })
    }

    public static func + (a: LossTerms, b: LossTerms) -> LossTerms {
        precondition(a.classPixels.count == b.classPixels.count, "LossTerms of different losses")
        return LossTerms(pixels: a.pixels + b.pixels, images: a.images + b.images,
                         classPixels: zip(a.classPixels, b.classPixels).map { $0 + $1 })
    }
}

// MARK: - Validation

extension LossConfig {
    /// nil if this configuration works with `classes` outputs, else a one-line error naming the
    /// flag (--loss, --classes, --class-weights, --focal-*, --tversky-*).
    public func problem(classes: Int) -> String? {
        if classes < 1 { return "--classes must be >= 1 (got \(classes))" }
        if components.isEmpty { return "--loss: no loss given" }
        for component in components {
            if !(component.weight.isFinite && component.weight >= 0) {
                return "--loss: the weight of \(component.kind.rawValue) must be a finite number >= 0 (got \(component.weight))"
            }
            switch component.kind {
            case .bce where classes != 1:
                return "--loss bce needs --classes 1 (a sigmoid output); use ce, focal, dice, tversky or lovasz for \(classes) classes"
            case .ce where classes < 2:
                return "--loss ce needs --classes >= 2; use bce for a binary (sigmoid) output"
            default:
                break
            }
        }
        if components.contains(where: { $0.kind.isRegionRatio }) && !(diceSmooth.isFinite && diceSmooth > 0) {
            return "dice smooth must be a finite number > 0 (got \(diceSmooth))"
        }
        if needsWeightMap {
            if !(w0.isFinite && w0 >= 0) { return "w0 must be a finite number >= 0 (got \(w0))" }
            if !(sigma.isFinite && sigma > 0) { return "sigma must be a finite number > 0 (got \(sigma))" }
        }
        if let weights = classWeights {
            if let problem = classWeightsProblem(weights, classes: classes) { return problem }
        }
        if !(focalGamma.isFinite && focalGamma >= 0) { return "--focal-gamma must be a finite number >= 0 (got \(focalGamma))" }
        if let alpha = focalAlpha {
            if !(alpha >= 0 && alpha <= 1) { return "--focal-alpha must be in 0...1 (got \(alpha))" }
            if classes != 1 { return "--focal-alpha is the binary focal loss's alpha; with \(classes) classes give per-class alphas as --class-weights" }
            if weight(of: .focal) == nil { return "--focal-alpha needs a focal term in --loss" }
        }
        for (flag, value) in [("--tversky-alpha", tverskyAlpha), ("--tversky-beta", tverskyBeta)] where !(value.isFinite && value >= 0) {
            return "\(flag) must be a finite number >= 0 (got \(value))"
        }
        if !(tverskyGamma.isFinite && tverskyGamma > 0) { return "--tversky-gamma must be a finite number > 0 (got \(tverskyGamma))" }
        return nil
    }

    private func classWeightsProblem(_ weights: [Double], classes: Int) -> String? {
        if classes == 1 && weights.count != 1 {
            return "--class-weights takes 1 value (BCE's pos_weight) for --classes 1 (got \(weights.count))"
        }
        if classes > 1 && weights.count != classes {
            return "--class-weights takes one weight per class: \(classes) values for --classes \(classes) (got \(weights.count))"
        }
        if let bad = weights.first(where: { !($0.isFinite && $0 >= 0) }) {
            return "--class-weights must be finite numbers >= 0 (got \(bad))"
        }
        let users: [LossKind] = classes == 1 ? [.bce] : [.ce, .focal]
        if !components.contains(where: { users.contains($0.kind) }) {
            let which = classes == 1 ? "bce (as pos_weight)" : "ce and focal"
            return "--class-weights applies to \(which); --loss \(name) has no such term"
        }
        return nil
    }
}

private extension String {
    var trimmed: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

/// A weight as written back: integers without ".0".
private func formatWeight(_ w: Double) -> String {
    w == w.rounded() && abs(w) < 1e15 ? String(Int(w)) : "\(w)"
}
