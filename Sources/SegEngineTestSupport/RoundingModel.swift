// The float32 rounding model behind the numeric tolerances of the engine's tests. A fast kernel is
// compared with the exact result (float64 arithmetic on the same float32 inputs), and each element
// may differ by at most
//
//     bound_i = gamma(n) * magnitude_i
//
//   magnitude_i  the sum of the absolute values of every term that reaches element i through the
//                algorithm that ran: for a dot product or GEMM, sum_k |a_k| |b_k|; for Winograd the
//                same algorithm run on |B|, |G|, |A| and |inputs| (its transforms amplify, F(4x4)
//                more than F(2x2)); plus |the value a backward pass added into|.
//   n            the roundings along the longest chain that produces element i: the reduction length
//                (Cin x 9 for a GEMM convolution, Cin for Winograd's channel sums, batch x plane for
//                weight gradients), plus a few per transform and for partial sums and accumulation.
//   gamma(n)     min(n u / (1 - n u), lambda sqrt(n) u) with u = 2^-24 (float32's unit roundoff). The
//                first is the classical worst case (Higham, Accuracy and Stability of Numerical
//                Algorithms, section 3.1): it holds for every order of summation, blocking and use
//                of FMA, so it holds for every OpenBLAS kernel family. The second is Higham & Mary's
//                probabilistic bound (SIAM J. Sci. Comput. 41(5), 2019, Theorem 3.1): it holds with
//                probability at least 1 - 2n exp(-lambda^2 (1-u)^2 / 2) when rounding errors are
//                independent and of mean zero — here lambda = 9, so at most 2n * 2.6e-18 per element.
//
// Neither figure comes from a measurement. Both scale with what drives the rounding: the reduction
// length (through n), the tile (through the magnitude of the Winograd path) and the operands
// (through the magnitude). A real bug changes an element by about one whole term (|x||w| ~ 0.25 for
// inputs in [-1, 1]) or more; the bounds of the tested shapes are listed in docs/ENGINE.md next to
// the worst error measured under each OpenBLAS core type.

import Foundation
import SegEngine
#if canImport(Glibc)
import Glibc
#endif

public enum RoundingModel {
    /// float32's unit roundoff (round to nearest): 2^-24.
    public static let unit = 0x1p-24
    /// Higham & Mary's lambda.
    public static let confidence = 9.0

    /// The classical worst-case factor n u / (1 - n u).
    public static func worstCaseGamma(_ n: Int) -> Double {
        let nu = Double(n) * unit
        precondition(nu < 1, "rounding model: chain of \(n) roundings is too long for float32")
        return nu / (1 - nu)
    }

    /// Higham & Mary's probabilistic factor exp(lambda sqrt(n) u + n u^2 / (1 - u)) - 1.
    public static func probabilisticGamma(_ n: Int) -> Double {
        let n = Double(n)
        return expm1(confidence * n.squareRoot() * unit + n * unit * unit / (1 - unit))
    }

    /// The factor applied to the magnitude: the smaller of the two bounds (both hold).
    public static func gamma(_ n: Int) -> Double { min(worstCaseGamma(n), probabilisticGamma(n)) }
}

/// The exact result of a computation on float32 inputs and what its rounding scales with.
public struct RoundingReference {
    /// The result in float64 arithmetic (exact to about 1e-16 relative).
    public var exact: [Double]
    /// Per element: the sum of the absolute values of the terms along the algorithm's path.
    public var magnitude: [Double]
    /// Roundings along the longest chain to one element.
    public var roundings: Int

    public init(exact: [Double], magnitude: [Double], roundings: Int) {
        precondition(exact.count == magnitude.count)
        self.exact = exact
        self.magnitude = magnitude
        self.roundings = roundings
    }

    /// The allowed difference at element i.
    public func bound(_ i: Int) -> Double { RoundingModel.gamma(roundings) * magnitude[i] }

    /// The same reference with the exact values scaled by `factor` (e.g. 2 after two identical
    /// backward calls), the magnitude likewise and `extraRoundings` more roundings along the chain.
    public func scaled(by factor: Double, extraRoundings: Int = 0) -> RoundingReference {
        RoundingReference(exact: exact.map { $0 * factor }, magnitude: magnitude.map { $0 * abs(factor) },
                          roundings: roundings + extraRoundings)
    }

    /// Compares a float32 result with the reference.
    public func check(_ actual: Tensor) -> RoundingCheck {
        precondition(actual.count == exact.count, "rounding check: \(actual.count) values for \(exact.count)")
        let gamma = RoundingModel.gamma(roundings)
        var check = RoundingCheck(roundings: roundings, gamma: gamma)
        for i in 0..<exact.count {
            let error = abs(Double(actual[i]) - exact[i])
            let bound = gamma * magnitude[i]
            // A NaN is an infinite error; an exact zero bound admits only an exact result.
            let ratio = error.isNaN ? .infinity : (error == 0 ? 0 : (bound > 0 ? error / bound : .infinity))
            check.largestBound = max(check.largestBound, bound)
            check.largestExact = max(check.largestExact, abs(exact[i]))
            check.largestError = max(check.largestError, error.isNaN ? .infinity : error)
            if ratio > check.worstRatio || check.index < 0 {
                check.worstRatio = ratio
                check.index = i
                check.actual = actual[i]
                check.exact = exact[i]
                check.bound = bound
            }
        }
        return check
    }
}

/// The outcome of a rounding check: passes when every element is within its bound (ratio <= 1).
public struct RoundingCheck: CustomStringConvertible {
    public let roundings: Int, gamma: Double
    /// max_i |actual_i - exact_i| / bound_i, and where it was.
    public var worstRatio = 0.0
    public var index = -1
    public var actual: Float = 0, exact = 0.0, bound = 0.0
    public var largestBound = 0.0, largestExact = 0.0, largestError = 0.0

    public var passed: Bool { worstRatio <= 1 }

    public var description: String {
        let f = { (v: Double) in String(format: "%.3g", v) }
        return "worst error/bound \(f(worstRatio)) at element \(index) (\(actual) against \(f(exact)), bound \(f(bound)));"
            + " n = \(roundings), gamma \(f(gamma)), largest bound \(f(largestBound)) for |values| up to \(f(largestExact)),"
            + " largest error \(f(largestError))"
    }

    /// With SEGTRAIN_ROUNDING_REPORT set, every check prints one line (how docs/ENGINE.md's figures
    /// are collected): `rounding: LABEL: ratio ... error ... bound ...`.
    public func report(_ label: String) {
        guard getenv("SEGTRAIN_ROUNDING_REPORT") != nil else { return }
        print("rounding: \(label): \(self)")
    }
}
