// The measured sgemm peak of this machine for a thread count (`segtrain bench --gemm-peak`): the
// yardstick docs/PERFORMANCE.md divides the models' GFLOP/s by. Each of the pool's threads
// multiplies its own n x n matrices with the GEMM the convolutions call (Gemm.sgemm: segtrain's
// AVX-512 kernel or single-threaded OpenBLAS) at the same time, the way the convolutions call it
// (one GEMM per thread, no BLAS threads); the best of `rounds` rounds counts.

public enum GemmPeak {
    /// GFLOP/s of all the pool's threads together, each running one n x n x n sgemm per round.
    public static func measure(n: Int = 1024, rounds: Int = 5, pool: WorkerPool) -> Double {
        precondition(n >= 1 && rounds >= 1)
        let threads = pool.threadCount
        let buffers = (0..<threads).map { _ in FloatBuffer(count: 3 * n * n) }
        for (t, b) in buffers.enumerated() {
            var random = SplitMix64(seed: 1, stream: UInt64(t))
            for i in 0..<(2 * n * n) { b.pointer[i] = random.nextFloat(in: -1...1) }
        }
        var best = Double.infinity
        for _ in 0..<(rounds + 1) {  // the first round warms up (pages, OpenBLAS's buffers)
            let start = monotonicSeconds()
            pool.run { t in
                let p = buffers[t].pointer
                Gemm.sgemm(transA: false, transB: false, m: n, n: n, k: n, a: p, lda: n, b: p + n * n, ldb: n,
                           beta: 0, c: p + 2 * n * n, ldc: n)
            }
            best = min(best, monotonicSeconds() - start)
        }
        return 2 * Double(n) * Double(n) * Double(n) * Double(threads) / best / 1e9
    }
}
