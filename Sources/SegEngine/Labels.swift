// What the values of a label mask mean: the class count and the one value that is no class (an
// ignore region, PyTorch's `ignore_index`). One `LabelSpec` is made from the flags and handed to
// everything that reads masks: the loss (`LossFunction(_:labels:)`), the metrics
// (`ConfusionCounts.add(..., ignoreIndex:)` through the trainer), the sample spec (mask decoding,
// crop padding, the fill of augmented masks) and the model description kept in checkpoints
// (so `evaluate` scores as training did).

/// Label semantics shared by data, loss and metrics.
public struct LabelSpec: Sendable, Equatable {
    /// 1: a binary mask for a sigmoid output (0 background, 1 foreground); >= 2: class indices
    /// 0..<classes for a softmax.
    public var classes: Int
    /// A mask value that is no class: such pixels add nothing to the loss (value, gradient, pixel
    /// counts) nor to the metrics. nil: every pixel counts.
    public var ignoreIndex: Int?

    public init(classes: Int, ignoreIndex: Int? = nil) {
        self.classes = classes
        self.ignoreIndex = ignoreIndex
    }

    /// The ignore value as a mask byte (masks are 8-bit), when it is one.
    public var ignoreValue: UInt8? { ignoreIndex.flatMap { (0...255).contains($0) ? UInt8($0) : nil } }

    /// nil when masks can carry these labels, else a one-line error naming `flag` (the flag that
    /// set the ignore value, e.g. "--ignore-index").
    public func validate(flag: String = "--ignore-index") -> String? {
        guard let i = ignoreIndex else { return nil }
        if !(0...255).contains(i) { return "\(flag) must be 0...255 (masks are 8-bit; got \(i))" }
        if classes == 1 && i <= 1 {
            return "\(flag) \(i) is a class of a binary mask (0 background, 1 foreground); use a value of 2...255, e.g. 255"
        }
        if i < classes { return "\(flag) \(i) is a class (below --classes \(classes))" }
        return nil
    }
}
