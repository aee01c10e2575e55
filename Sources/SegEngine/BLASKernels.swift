// OpenBLAS picks its kernel family once, when the library loads, from the CPU's model number. On a
// CPU newer than the OpenBLAS build it falls back to its generic Prescott (SSE3) kernels although
// the CPU has AVX2 and AVX-512: Debian 12's OpenBLAS 0.3.21 does so on Intel's Emerald Rapids
// (family 6, model 207), where the default UNet's training step (128 px, batch 4, 2 threads) took
// 0.51-0.57 s against 0.28-0.29 s with OPENBLAS_CORETYPE=Cooperlake, half the speed. So segtrain
// checks as it starts and, when OpenBLAS fell back to a family older than Sandybridge on a CPU with
// AVX2 + FMA, runs itself again (execv, the same process id, before MPI starts) with
// OPENBLAS_CORETYPE set to the newest family the CPU's flags allow. A user's OPENBLAS_CORETYPE is
// always kept. `segtrain info` and `segtrain bench` say which kernels run and why, and, where
// OpenBLAS runs the convolutions (no AVX-512, or SEGTRAIN_GEMM=openblas), name the newer family the
// CPU runs when OPENBLAS_CORETYPE holds an older vector generation (a Zen 5's environment set
// Haswell: its convolutions ran a third slower than with OpenBLAS's own Cooperlake).

import CBLAS
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum BLASKernels {
    /// OpenBLAS's families, newest first, with the CPU flags (/proc/cpuinfo) their kernels need
    /// (as scripts/openblas-coretype.py).
    static let families: [(name: String, flags: Set<String>)] = [
        ("Cooperlake", ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"]),
        ("SkylakeX", ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"]),
        ("Haswell", ["avx2", "fma"]),
    ]
    /// OpenBLAS's generic pre-AVX families: what it falls back to on a CPU it does not know.
    static let fallbacks: Set<String> = ["prescott", "core2", "nehalem", "penryn", "dunnington", "atom"]
    /// Set in the environment of the restarted process: the family OpenBLAS had picked.
    static let restartedFrom = "SEGTRAIN_OPENBLAS_FELL_BACK_TO"

    /// The family whose kernels run (OpenBLAS's name, e.g. "cooperlake", "haswell", "prescott").
    public static var coreName: String { String(cString: openblas_get_corename()) }

    /// The family to ask for instead of `picked` on a CPU with `flags`, or nil to keep `picked`:
    /// only a generic fallback is replaced, and only on a CPU with AVX2 + FMA at least.
    public static func replacement(picked: String, flags: Set<String>) -> String? {
        guard fallbacks.contains(picked.lowercased()) else { return nil }
        return families.first { $0.flags.isSubset(of: flags) }?.name
    }

    /// The CPU's flags from /proc/cpuinfo (empty where there is none).
    public static func cpuFlags() -> Set<String> {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
              let colon = line.firstIndex(of: ":") else { return [] }
        return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
    }

    /// Runs the program again with better kernels when OpenBLAS fell back (see above); returns when
    /// nothing is to be done, or when the restart could not be made (the program then goes on with
    /// OpenBLAS's choice). Call first thing in main, before any thread or MPI starts.
    public static func restartWithBetterKernelsIfNeeded() {
        let environment = ProcessInfo.processInfo.environment
        guard environment["OPENBLAS_CORETYPE"] == nil, environment[restartedFrom] == nil else { return }
        let picked = coreName
        guard let better = replacement(picked: picked, flags: cpuFlags()) else { return }
        setenv("OPENBLAS_CORETYPE", better, 1)
        setenv(restartedFrom, picked, 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // execv returned: it failed. Go on with OpenBLAS's own choice.
        unsetenv("OPENBLAS_CORETYPE")
    }

    /// OpenBLAS's AVX2 families: on a CPU with AVX-512 a newer generation exists.
    static let avx2Families: Set<String> = ["haswell", "zen"]
    /// Its AVX-512 families.
    static let avx512Families: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]

    /// The newest family a CPU with `flags` runs when OPENBLAS_CORETYPE asks for an older vector
    /// generation (AVX2 or older on a CPU with AVX-512, pre-AVX2 on one with AVX2), else nil.
    /// The variable is kept (it may be set on purpose); `segtrain info` and `bench` name the
    /// newer family. On a Zen 5 that had OPENBLAS_CORETYPE=Haswell in its environment, Cooperlake
    /// ran Unet(resnet34)'s convolutions in 0.76-0.80 s per step against 1.02-1.08 s.
    public static func newerFamily(than set: String, flags: Set<String>) -> String? {
        let name = set.lowercased()
        guard !avx512Families.contains(name), let best = families.first(where: { $0.flags.isSubset(of: flags) }),
              best.name.lowercased() != name else { return nil }
        if avx2Families.contains(name) && !best.flags.contains("avx512f") { return nil }
        return best.name
    }

    /// One line for `segtrain info`: the kernels in use and who chose them.
    public static var description: String {
        let core = coreName
        if let picked = ProcessInfo.processInfo.environment[restartedFrom] {
            return "\(core) (OpenBLAS picked its generic \(picked) kernels for this CPU, which it does not know; "
                + "segtrain set OPENBLAS_CORETYPE)"
        }
        if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] != nil {
            // Where segtrain's own kernel runs the convolutions (Gemm.swift), OpenBLAS's family no
            // longer decides their speed: no advice to change it.
            if Gemm.backend == .avx512 { return "\(core) (OPENBLAS_CORETYPE; unused: segtrain's AVX-512 kernel runs every product)" }
            guard let newer = newerFamily(than: core, flags: cpuFlags()) else { return "\(core) (OPENBLAS_CORETYPE)" }
            return "\(core) (OPENBLAS_CORETYPE; this CPU also runs OpenBLAS's newer \(newer) kernels: "
                + "unset OPENBLAS_CORETYPE or set it to \(newer), often faster)"
        }
        return "\(core) (OpenBLAS's choice)"
    }
}
