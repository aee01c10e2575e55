// The one finite-difference gradient checker. Every op, every loss and the whole UNet are checked
// with it: central differences on every element of the given tensors, the objective accumulated in
// double precision, a relative tolerance whose scale never drops below 1 (Caffe's rule), and points
// at a kink (ReLU at 0, a max-pool tie) skipped: where the one-sided differences on either side of
// the point disagree, or the central differences over h and h/2 do (two kinks either side of the
// point fool the first test, not the second), the function is not smooth within the step and no
// derivative is checked there.

public struct GradientCheckReport: CustomStringConvertible {
    public struct Failure: CustomStringConvertible {
        public let tensor: Int, index: Int
        public let analytic: Double, numeric: Double
        public var description: String {
            "tensor \(tensor) element \(index): analytic \(analytic) numeric \(numeric)"
        }
    }
    public var checked = 0
    public var skippedKinks = 0
    public var failures: [Failure] = []
    public var maxError = 0.0

    public var passed: Bool { failures.isEmpty && checked > 0 }
    public var description: String {
        "checked \(checked), kinks skipped \(skippedKinks), failures \(failures.count), max scaled error \(maxError)"
            + (failures.isEmpty ? "" : "; first: \(failures.prefix(5).map(\.description).joined(separator: "; "))")
    }
}

public struct GradientChecker {
    /// Finite-difference step, applied to float32 values.
    public var step: Float
    /// Allowed |analytic - numeric| / max(1, |analytic|, |numeric|).
    public var tolerance: Double
    /// One-sided differences that differ by more than this (scaled likewise) mark a kink.
    public var kinkTolerance: Double

    public init(step: Float = 1e-2, tolerance: Double = 2e-3, kinkTolerance: Double = 2e-2) {
        self.step = step
        self.tolerance = tolerance
        self.kinkTolerance = kinkTolerance
    }

    /// Checks the gradients of `objective` with respect to every element of `inputs`.
    /// - Parameters:
    ///   - inputs: tensors the objective reads; they are nudged in place and restored.
    ///   - gradients: one tensor per input, same shape, where `backward` adds dObjective/dInput.
    ///     The checker zeroes them before calling `backward` once.
    ///   - objective: runs the forward pass on the current inputs and returns the scalar objective.
    ///   - backward: runs forward and backward and adds the analytic gradients into `gradients`.
    public func check(inputs: [Tensor], gradients: [Tensor],
                      objective: () -> Double, backward: () -> Void) -> GradientCheckReport {
        precondition(inputs.count == gradients.count, "one gradient tensor per input")
        for (x, g) in zip(inputs, gradients) {
            precondition(x.shape == g.shape, "gradient shape \(g.shape) differs from input \(x.shape)")
            g.zero()
        }
        backward()
        var report = GradientCheckReport()
        let h = step
        for (t, (x, g)) in zip(inputs, gradients).enumerated() {
            for i in 0..<x.count {
                let saved = x[i]
                let center = objective()
                x[i] = saved + h
                let plus = objective()
                x[i] = saved - h
                let minus = objective()
                x[i] = saved + h / 2
                let halfPlus = objective()
                x[i] = saved - h / 2
                let halfMinus = objective()
                x[i] = saved
                // The step actually taken in float32 (saved + h may round).
                let hp = Double(saved + h) - Double(saved)
                let hm = Double(saved) - Double(saved - h)
                let forwardDiff = (plus - center) / hp
                let backwardDiff = (center - minus) / hm
                let numeric = (plus - minus) / (hp + hm)
                let halfNumeric = (halfPlus - halfMinus) / (Double(saved + h / 2) - Double(saved - h / 2))
                let analytic = Double(g[i])
                let kinkScale = max(1, abs(forwardDiff), abs(backwardDiff))
                if abs(forwardDiff - backwardDiff) / kinkScale > kinkTolerance
                    || abs(numeric - halfNumeric) / kinkScale > kinkTolerance / 2 {
                    report.skippedKinks += 1
                    continue
                }
                report.checked += 1
                let scale = max(1, abs(analytic), abs(numeric))
                let error = abs(analytic - numeric) / scale
                report.maxError = max(report.maxError, error)
                if error > tolerance {
                    report.failures.append(.init(tensor: t, index: i, analytic: analytic, numeric: numeric))
                }
            }
        }
        return report
    }
}

/// A random projection objective: L = sum_i r_i * y_i with fixed random r, accumulated in double.
/// Its gradient with respect to y is r, so an op's backward is seeded by copying r into dy.
public struct Projection {
    public let weights: OwnedTensor

    public init(shape: Shape, seed: UInt64) {
        weights = OwnedTensor(shape)
        var rng = SplitMix64(seed: seed)
        for i in 0..<shape.count { weights.tensor[i] = rng.nextFloat(in: -1...1) }
    }

    public func value(_ y: Tensor) -> Double {
        precondition(y.shape.count == weights.tensor.count)
        var sum = 0.0
        for i in 0..<y.count { sum += Double(y[i]) * Double(weights.tensor[i]) }
        return sum
    }

    /// Writes dL/dy = r into `dy`.
    public func seed(_ dy: Tensor) { dy.copy(from: weights.tensor) }
}
