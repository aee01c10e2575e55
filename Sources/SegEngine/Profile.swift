// Wall-clock time by kind of work, for `segtrain bench`. Charging a kind costs two clock reads.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Seconds since an arbitrary fixed point (CLOCK_MONOTONIC).
@inline(__always) public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

public enum WorkKind: Int, CaseIterable, Sendable {
    case convForward, convInputGradient, convWeightGradient, pool, upsample, elementwise,
         batchNorm, loss, optimizer, communication, data, other

    public var label: String {
        switch self {
        case .convForward: return "conv forward"
        case .convInputGradient: return "conv input-gradient"
        case .convWeightGradient: return "conv weight-gradient"
        case .pool: return "pool"
        case .upsample: return "upsample"
        case .elementwise: return "relu/concat/pad"
        case .batchNorm: return "batchnorm/groupnorm"
        case .loss: return "loss"
        case .optimizer: return "optimizer"
        case .communication: return "communication (MPI)"
        case .data: return "data (loader wait, copy)"
        case .other: return "other"
        }
    }

    /// Key for machine-readable output.
    public var key: String {
        switch self {
        case .convForward: return "conv_forward"
        case .convInputGradient: return "conv_input_gradient"
        case .convWeightGradient: return "conv_weight_gradient"
        case .pool: return "pool"
        case .upsample: return "upsample"
        case .elementwise: return "elementwise"
        case .batchNorm: return "batchnorm"
        case .loss: return "loss"
        case .optimizer: return "optimizer"
        case .communication: return "communication"
        case .data: return "data"
        case .other: return "other"
        }
    }
}

public final class Profile {
    public private(set) var seconds = [Double](repeating: 0, count: WorkKind.allCases.count)
    public var enabled = true

    public init() {}

    @inline(__always) public func measure<T>(_ kind: WorkKind, _ body: () throws -> T) rethrows -> T {
        guard enabled else { return try body() }
        let start = monotonicSeconds()
        defer { seconds[kind.rawValue] += monotonicSeconds() - start }
        return try body()
    }

    public func reset() { for i in seconds.indices { seconds[i] = 0 } }
    public subscript(kind: WorkKind) -> Double { seconds[kind.rawValue] }
    public var total: Double { seconds.reduce(0, +) }
}
