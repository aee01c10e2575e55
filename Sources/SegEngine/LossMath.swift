// The scalar pieces the losses share: checks that stop on a programming error, the class index of
// a float target, BCE with logits, the stable sigmoid and the softmax normaliser of one pixel.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Checked in every build (SegEngine is compiled -Ounchecked, where `precondition` is not).
@inline(__always)
func requireValid(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError(message()) }
}

/// The class index stored in a float target; a value that is none is a data bug and stops the run.
@inline(__always)
func classIndex(_ t: Float, _ classes: Int) -> Int {
    guard t >= 0 && t < Float(classes) && t == t.rounded(.down) else {
        fatalError("loss: target value \(t) is neither a class index in 0..<\(classes) nor the ignore index")
    }
    return Int(t)
}

/// BCE with logits, stable for large |x|: max(x, 0) - x t + log(1 + exp(-|x|)).
@inline(__always)
func bceWithLogits(_ x: Double, _ t: Double) -> Double {
    max(x, 0) - x * t + log1p(exp(-abs(x)))
}

@inline(__always)
func stableSigmoid(_ x: Double) -> Double {
    if x >= 0 { return 1 / (1 + exp(-x)) }
    let e = exp(x)
    return e / (1 + e)
}

/// The stable softmax normaliser of one pixel across the channels of `x` (a sample's (C, H, W)):
/// the largest logit m and sum_c exp(x_c - m), in double precision.
@inline(__always)
func softmaxNormalizer(_ x: UnsafeMutablePointer<Float>, pixel i: Int, plane: Int,
                               classes: Int) -> (max: Double, expSum: Double) {
    var m = Double(x[i])
    for c in 1..<classes { m = max(m, Double(x[c * plane + i])) }
    var expSum = 0.0
    for c in 0..<classes { expSum += exp(Double(x[c * plane + i]) - m) }
    return (m, expSum)
}
