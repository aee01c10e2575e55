// The one single-precision GEMM every convolution calls. On a CPU with AVX-512 it is segtrain's own
// kernel (CGemm, gemm.c), single-row products (m == 1: a 1-class head) included; elsewhere
// OpenBLAS's cblas_sgemm. Which one runs depends on the CPU and the environment alone, never on
// threads or shapes, so results stay thread-count independent.
//
// Why a kernel of our own: OpenBLAS picks its kernels from OPENBLAS_CORETYPE when that is set,
// and an environment that names an AVX2 family (a Zen 5 machine's set Haswell) leaves AVX-512
// unused; segtrain's convolutions then ran at about 115 GFLOP/s per core where this kernel runs
// 190-240 on the same shapes, as OpenBLAS's own Cooperlake does (docs/PERFORMANCE.md).
// SEGTRAIN_GEMM=openblas sends every product to OpenBLAS; SEGTRAIN_GEMM=avx512 insists on the
// kernel (an error on a CPU without AVX-512); auto (the default) takes the kernel where it runs.

import CBLAS
import CGemm
#if canImport(Glibc)
import Glibc
#endif

/// Whether the C kernels written for AVX-512 beside the GEMM run: Winograd's transforms (CWinograd),
/// the depthwise 3x3 and the 3x3/2 max pool (CPlaneKernels). They follow the CPU alone (not
/// SEGTRAIN_GEMM): each gives the same bits as the portable Swift version it replaces
/// (WinogradAVX512Tests, PlaneKernelsAVX512Tests), which runs where this is false.
let avx512Kernels = Gemm.avx512Usable

public enum Gemm {
    public enum Backend: String, Sendable {
        /// segtrain's AVX-512 kernel (OpenBLAS only if its packing buffers cannot be allocated).
        case avx512
        /// OpenBLAS for every product.
        case openBLAS = "openblas"
    }

    /// The environment variable that chooses the backend: auto (default), avx512 or openblas.
    public static let variable = "SEGTRAIN_GEMM"

    /// Whether this CPU runs the AVX-512 kernel.
    public static var avx512Usable: Bool { segtrain_gemm_avx512_usable() != 0 }

    /// The backend `setting` (SEGTRAIN_GEMM's value, nil or empty: auto) selects on this CPU, or the
    /// one-line reason it cannot be used.
    public static func backend(setting: String?, avx512Usable: Bool) -> Result<Backend, GemmSettingError> {
        switch setting ?? "" {
        case "", "auto": return .success(avx512Usable ? .avx512 : .openBLAS)
        case "openblas": return .success(.openBLAS)
        case "avx512":
            return avx512Usable ? .success(.avx512)
                : .failure(GemmSettingError(description: "\(variable)=avx512 needs a CPU with AVX-512F; this one has none "
                                                + "(unset \(variable) or set it to openblas)"))
        case let other:
            return .failure(GemmSettingError(description: "\(variable) must be auto, avx512 or openblas (got \(other))"))
        }
    }

    /// What SEGTRAIN_GEMM selects here; OpenBLAS when the setting is invalid (which `problem` reports).
    public static let backend: Backend = {
        let setting = getenv(variable).map { String(cString: $0) }
        if case .success(let chosen) = Gemm.backend(setting: setting, avx512Usable: avx512Usable) { return chosen }
        return .openBLAS
    }()

    /// Why SEGTRAIN_GEMM cannot be used, in one line; nil when it can. Commands check it first.
    public static var problem: String? {
        let setting = getenv(variable).map { String(cString: $0) }
        if case .failure(let error) = backend(setting: setting, avx512Usable: avx512Usable) { return error.description }
        return nil
    }

    /// One line for `segtrain info` and `segtrain bench`.
    public static var description: String {
        switch backend {
        case .avx512: return "segtrain's AVX-512 kernel (\(variable)=openblas for OpenBLAS)"
        case .openBLAS: return avx512Usable ? "OpenBLAS (\(variable)=openblas)" : "OpenBLAS (this CPU has no AVX-512)"
        }
    }

    /// Row-major C (m x n) = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T (cblas_sgemm's meaning).
    @inline(__always)
    public static func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        sgemm(backend, transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
              beta: beta, c: c, ldc: ldc)
    }

    /// As above with the backend given (tests run both).
    @inline(__always)
    public static func sgemm(_ backend: Backend, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        // The kernel returns -1 only when its packing buffers cannot be allocated: OpenBLAS then does it.
        if backend == .avx512
            && segtrain_sgemm_avx512(transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda),
                                     b, Int32(ldb), beta, c, Int32(ldc)) == 0 {
            return
        }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }
}

/// SEGTRAIN_GEMM holds a value this CPU cannot use.
public struct GemmSettingError: Error, CustomStringConvertible, Sendable {
    public let description: String
}
