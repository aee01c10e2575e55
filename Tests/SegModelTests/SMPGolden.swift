// The golden files of scripts/make-smp-golden.py (issue #16) and the weight rule both sides share:
// v(name, i) = SplitMix64's output function on FNV-1a-64(name) + (i + 1) * 0x9E3779B97F4A7C15, top
// 24 bits k, v = (k - 2^23) / 2^23 (exact in float32). The script's docstring lists how each kind
// of tensor is made from v; every step is one float32 operation, so both sides get the same bits.

import Foundation
import SegEngine
@testable import SegModel

enum SMPGolden {
    static var folder: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden").path
    }

    static func fnv1a(_ name: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in name.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return h
    }

    /// v(name, i) for i < count.
    static func rule(_ name: String, count: Int) -> [Float] {
        let base = fnv1a(name)
        return (0..<count).map { i in
            var z = base &+ UInt64(i + 1) &* 0x9E37_79B9_7F4A_7C15
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            return Float(Int64(z >> 40) - (1 << 23)) / Float(1 << 23)
        }
    }

    /// Sets every tensor of the store by the rule (the same values the script loads into smp).
    static func setWeights(_ store: ParameterStore) {
        for (index, entry) in store.entries.enumerated() {
            let t = store.value(index), name = entry.name, s = entry.shape
            let v = rule(name, count: t.count)
            let isConv = s.c > 1 || s.h > 1
            for i in 0..<t.count {
                if name.hasSuffix(Safetensors.batchCounterSuffix) { t[i] = 0 }
                else if name.hasSuffix("running_mean") { t[i] = Float(0.1) * v[i] }
                else if name.hasSuffix("running_var") { t[i] = Float(0.75) + Float(0.25) * v[i] }
                else if isConv { t[i] = v[i] * Float((6.0 / Double(s.c * s.h * s.w)).squareRoot()) }
                else if name.hasSuffix(".weight") { t[i] = Float(1) + Float(0.25) * v[i] }
                else { t[i] = Float(0.1) * v[i] }
            }
        }
    }

    static func fill(_ t: Tensor, rule name: String) {
        for (i, x) in rule(name, count: t.count).enumerated() { t[i] = x }
    }
}
