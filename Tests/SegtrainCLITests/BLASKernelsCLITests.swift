// segtrain runs OpenBLAS's kernels for this CPU, not its generic fallback (SegEngine/BLASKernels.swift):
// on a CPU with AVX2 + FMA, `segtrain info` names a family from Haswell on, and a user's
// OPENBLAS_CORETYPE is kept. On an Intel Emerald Rapids with Debian's OpenBLAS 0.3.21 the first
// check fails without the restart (OpenBLAS picks Prescott there).

import Foundation
import XCTest

/// This CPU's flags from /proc/cpuinfo (empty where there is none).
private func cpuFlags() -> Set<String> {
    let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
    return Set(cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? [])
}

final class BLASKernelsCLITests: SegtrainTestCase {
    private func kernels(_ environment: [String: String] = [:]) throws -> String {
        let result = try segtrain(["info", "--image-size", "16", "--depth", "2", "--base-channels", "4"], environment: environment)
        XCTAssertEqual(result.status, 0, result.stderr)
        let line = result.stdout.split(separator: "\n").first { $0.hasPrefix("BLAS kernels:") }
        return line.map { String($0.dropFirst("BLAS kernels:".count)).trimmingCharacters(in: .whitespaces) } ?? ""
    }

    func testKernelsSuitTheCPUAndOpenBLASCoretypeIsKept() throws {
        let flags = cpuFlags()
        let used = try kernels()
        print("segtrain info: BLAS kernels: \(used)")
        if flags.isSuperset(of: ["avx2", "fma"]) {
            let family = used.prefix { $0 != " " }.lowercased()
            XCTAssertFalse(["prescott", "core2", "nehalem", "penryn", "dunnington", "atom"].contains(family),
                           "OpenBLAS's generic kernels on a CPU with AVX2: \(used)")
        }
        // Kept, and on a CPU with AVX2 the newer family it could run is named where OpenBLAS runs the
        // convolutions; where segtrain's AVX-512 kernel runs them, no advice.
        let set = try kernels(["OPENBLAS_CORETYPE": "Sandybridge", "SEGTRAIN_GEMM": "openblas"])
        if flags.contains("avx512f") {
            XCTAssertEqual(try kernels(["OPENBLAS_CORETYPE": "Sandybridge"]),
                           "Sandybridge (OPENBLAS_CORETYPE; unused: segtrain's AVX-512 kernel runs every product)")
        }
        if flags.isSuperset(of: ["avx2", "fma"]) {
            XCTAssertTrue(set.hasPrefix("Sandybridge (OPENBLAS_CORETYPE; this CPU also runs OpenBLAS's newer "), set)
        } else {
            XCTAssertEqual(set, "Sandybridge (OPENBLAS_CORETYPE)")
        }
    }
}

/// SEGTRAIN_GEMM chooses the GEMM (SegEngine/Gemm.swift): `info` names it, and a value the CPU
/// cannot use ends every command with one line naming the variable.
final class GemmCLITests: SegtrainTestCase {
    private let info = ["info", "--image-size", "16", "--depth", "2", "--base-channels", "4"]

    private func gemmLine(_ environment: [String: String]) throws -> String {
        let result = try segtrain(info, environment: environment)
        XCTAssertEqual(result.status, 0, result.stderr)
        let line = result.stdout.split(separator: "\n").first { $0.hasPrefix("GEMM:") }
        return line.map { String($0.dropFirst("GEMM:".count)).trimmingCharacters(in: .whitespaces) } ?? ""
    }

    func testInfoNamesTheGemmAndBadSettingsAreOneLine() throws {
        let avx512 = cpuFlags().contains("avx512f")
        XCTAssertEqual(try gemmLine(["SEGTRAIN_GEMM": "openblas"]),
                       avx512 ? "OpenBLAS (SEGTRAIN_GEMM=openblas)" : "OpenBLAS (this CPU has no AVX-512)")
        let automatic = try gemmLine([:])
        XCTAssertTrue(avx512 ? automatic.hasPrefix("segtrain's AVX-512 kernel") : automatic == "OpenBLAS (this CPU has no AVX-512)",
                      automatic)
        for (setting, reason) in [("fast", "SEGTRAIN_GEMM must be auto, avx512 or openblas (got fast)"),
                                  ("avx512", avx512 ? nil : "SEGTRAIN_GEMM=avx512 needs a CPU with AVX-512F")] {
            let result = try segtrain(info, environment: ["SEGTRAIN_GEMM": setting])
            guard let reason = reason else {
                XCTAssertEqual(result.status, 0, result.stderr)
                continue
            }
            XCTAssertEqual(result.status, 1, "SEGTRAIN_GEMM=\(setting)")
            XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, result.stderr)
            XCTAssertTrue(result.stderr.hasPrefix("segtrain: error: \(reason)"), result.stderr)
        }
    }
}
