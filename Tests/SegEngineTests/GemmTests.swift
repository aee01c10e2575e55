// The GEMM every convolution calls (SegEngine/Gemm.swift): segtrain's AVX-512 kernel (CGemm) and
// OpenBLAS, each against the exact product (float64 on the same float32 operands) within the
// rounding model's bound. A product of k terms scaled by alpha plus beta * C has at most k + 3
// roundings along one element's chain (k products and sums in any order and blocking, the alpha
// scaling, beta * C, the final sum), whatever the kernel's blocking (RoundingModel). Shapes straddle
// the kernel's micro-tile (8 x 48), its packed blocks (k 256, rows 96, columns 2304) and every edge;
// elements of C outside the m x n window must keep their values.

import SegEngine
import SegEngineTestSupport
import XCTest

final class GemmTests: XCTestCase {
    private struct Product {
        let transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, beta: Float
        var lda: Int { (transA ? m : k) + 3 }
        var ldb: Int { (transB ? k : n) + 5 }
        var ldc: Int { n + 2 }
        var aCount: Int { (transA ? k : m) * lda }
        var bCount: Int { (transB ? n : k) * ldb }
        /// One row more than C has: the kernel must not write it either.
        var cCount: Int { (m + 1) * ldc }
        func a(_ i: Int, _ p: Int) -> Int { transA ? p * lda + i : i * lda + p }
        func b(_ p: Int, _ j: Int) -> Int { transB ? j * ldb + p : p * ldb + j }
    }

    /// Outside the window: a value no product makes.
    private let sentinel: Float = 12345.5

    /// Runs one product on `backend` and checks it; returns C (the window and the padding).
    @discardableResult
    private func check(_ p: Product, _ backend: Gemm.Backend, seed: UInt64 = 1, file: StaticString = #filePath,
                       line: UInt = #line) -> [Float] {
        var random = SplitMix64(seed: seed, stream: UInt64(p.m * 1_000_003 + p.n * 1009 + p.k))
        let a = (0..<p.aCount).map { _ in random.nextFloat(in: -1...1) }
        let b = (0..<p.bCount).map { _ in random.nextFloat(in: -1...1) }
        var c = [Float](repeating: sentinel, count: p.cCount)
        for i in 0..<p.m {
            for j in 0..<p.n {
                // beta = 0: C is not read, so a NaN there must not reach the result.
                c[i * p.ldc + j] = p.beta == 0 ? .nan : random.nextFloat(in: -1...1)
            }
        }
        let c0 = c
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    Gemm.sgemm(backend, transA: p.transA, transB: p.transB, m: p.m, n: p.n, k: p.k, alpha: p.alpha,
                               a: ap.baseAddress!, lda: p.lda, b: bp.baseAddress!, ldb: p.ldb, beta: p.beta,
                               c: cp.baseAddress!, ldc: p.ldc)
                }
            }
        }
        var exact = [Double](), magnitude = [Double](), actual = [Float]()
        for i in 0..<p.m {
            for j in 0..<p.n {
                var sum = 0.0, size = 0.0
                for q in 0..<p.k {
                    let term = Double(a[p.a(i, q)]) * Double(b[p.b(q, j)])
                    sum += term
                    size += abs(term)
                }
                let old = p.beta == 0 ? 0 : Double(c0[i * p.ldc + j])
                exact.append(Double(p.alpha) * sum + Double(p.beta) * old)
                magnitude.append(abs(Double(p.alpha)) * size + abs(Double(p.beta) * old))
                actual.append(c[i * p.ldc + j])
            }
            for j in p.n..<p.ldc {
                XCTAssertEqual(c[i * p.ldc + j], sentinel, "\(backend) \(p): C written outside its window at (\(i), \(j))",
                               file: file, line: line)
            }
        }
        XCTAssertEqual(Array(c[(p.m * p.ldc)...]), [Float](repeating: sentinel, count: p.ldc),
                       "\(backend) \(p): C written below its last row", file: file, line: line)
        let reference = RoundingReference(exact: exact, magnitude: magnitude, roundings: p.k + 3)
        let owned = OwnedTensor(Shape(actual.count, 1, 1, 1), actual)
        let result = reference.check(owned.tensor)
        result.report("gemm \(backend) \(p)")
        XCTAssertTrue(result.passed, "\(backend) \(p): \(result)", file: file, line: line)
        return c
    }

    private var backends: [Gemm.Backend] { Gemm.avx512Usable ? [.avx512, .openBLAS] : [.openBLAS] }

    func testEdgesOfTheMicroTileInEveryTransposition() {
        for backend in backends {
            for (transA, transB) in [(false, false), (false, true), (true, false), (true, true)] {
                for m in [1, 2, 7, 8, 9, 17] {
                    for n in [1, 15, 16, 17, 33, 47, 48, 49, 100] {
                        for k in [1, 13] {
                            check(Product(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 1, beta: 0), backend)
                        }
                    }
                }
            }
        }
    }

    func testPackedBlocksAlphaAndBeta() {
        for backend in backends {
            for (transA, transB) in [(false, false), (false, true), (true, false), (true, true)] {
                // k across two and a half blocks of 256, rows across the 96-row block, columns across 2304.
                check(Product(transA: transA, transB: transB, m: 97, n: 130, k: 600, alpha: 1, beta: 1), backend)
                check(Product(transA: transA, transB: transB, m: 10, n: 2305, k: 257, alpha: -0.5, beta: 0.75), backend)
                check(Product(transA: transA, transB: transB, m: 200, n: 53, k: 256, alpha: 2, beta: 0), backend)
            }
        }
    }

    func testEmptyProducts() {
        for backend in backends {
            // k = 0: C = beta * C.
            check(Product(transA: false, transB: false, m: 5, n: 9, k: 0, alpha: 1, beta: 0), backend)
            check(Product(transA: false, transB: true, m: 5, n: 9, k: 0, alpha: 1, beta: 0.5), backend)
            check(Product(transA: true, transB: false, m: 9, n: 5, k: 0, alpha: 1, beta: 1), backend)
        }
    }

    /// The kernel's bits depend on the operands alone: the same product from two threads at once and
    /// from operands at another alignment gives the same C.
    func testSameBitsFromAnyThreadAndAlignment() throws {
        try XCTSkipUnless(Gemm.avx512Usable, "this CPU has no AVX-512: OpenBLAS runs every product")
        let (m, n, k) = (37, 300, 530)
        var random = SplitMix64(seed: 7)
        let a = (0..<(m * k + 1)).map { _ in random.nextFloat(in: -1...1) }
        let b = (0..<(k * n + 1)).map { _ in random.nextFloat(in: -1...1) }
        func product(offset: Int) -> [Float] {
            var c = [Float](repeating: 0, count: m * n + offset)
            let shiftedA = Array(repeating: 0, count: offset) + a.prefix(m * k)
            let shiftedB = Array(repeating: 0, count: offset) + b.prefix(k * n)
            shiftedA.withUnsafeBufferPointer { ap in
                shiftedB.withUnsafeBufferPointer { bp in
                    c.withUnsafeMutableBufferPointer { cp in
                        Gemm.sgemm(.avx512, transA: false, transB: false, m: m, n: n, k: k, a: ap.baseAddress! + offset, lda: k,
                                   b: bp.baseAddress! + offset, ldb: n, beta: 0, c: cp.baseAddress! + offset, ldc: n)
                    }
                }
            }
            return Array(c[offset...])
        }
        let reference = product(offset: 0)
        XCTAssertEqual(product(offset: 1), reference)
        XCTAssertEqual(product(offset: 3), reference)
        let pool = WorkerPool(threads: 2)
        var results = [[Float]](repeating: [], count: 2)
        let lock = NSLock()
        pool.run { thread in
            let c = product(offset: thread)
            lock.lock()
            results[thread] = c
            lock.unlock()
        }
        XCTAssertEqual(results[0], reference)
        XCTAssertEqual(results[1], reference)
    }

    func testSettingSelectsTheBackend() {
        func chosen(_ setting: String?, _ usable: Bool) -> String {
            switch Gemm.backend(setting: setting, avx512Usable: usable) {
            case .success(let backend): return backend.rawValue
            case .failure(let error): return "error: \(error)"
            }
        }
        XCTAssertEqual(chosen(nil, true), "avx512")
        XCTAssertEqual(chosen("", false), "openblas")
        XCTAssertEqual(chosen("auto", true), "avx512")
        XCTAssertEqual(chosen("openblas", true), "openblas")
        XCTAssertEqual(chosen("avx512", true), "avx512")
        XCTAssertEqual(chosen("avx512", false),
                       "error: SEGTRAIN_GEMM=avx512 needs a CPU with AVX-512F; this one has none (unset SEGTRAIN_GEMM or set it to openblas)")
        XCTAssertEqual(chosen("AVX", true), "error: SEGTRAIN_GEMM must be auto, avx512 or openblas (got AVX)")
    }
}
