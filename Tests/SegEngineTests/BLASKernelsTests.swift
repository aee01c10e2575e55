// BLASKernels.replacement: segtrain asks OpenBLAS for other kernels only when it fell back to a
// generic pre-AVX family on a CPU that has AVX2 + FMA at least (an Emerald Rapids under OpenBLAS
// 0.3.21 gets Prescott); a family OpenBLAS chose on purpose is kept.

import XCTest
import SegEngine

final class BLASKernelsTests: XCTestCase {
    let avx512: Set<String> = ["sse3", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"]

    func testOnlyAGenericFallbackIsReplaced() {
        XCTAssertEqual(BLASKernels.replacement(picked: "Prescott", flags: avx512.union(["avx512_bf16"])), "Cooperlake")
        XCTAssertEqual(BLASKernels.replacement(picked: "Prescott", flags: avx512), "SkylakeX")
        XCTAssertEqual(BLASKernels.replacement(picked: "Nehalem", flags: ["avx", "avx2", "fma"]), "Haswell")
        XCTAssertNil(BLASKernels.replacement(picked: "Prescott", flags: ["sse3", "avx"]), "no AVX2: nothing better to ask for")
        XCTAssertNil(BLASKernels.replacement(picked: "Haswell", flags: avx512), "OpenBLAS's own choice is kept")
        XCTAssertNil(BLASKernels.replacement(picked: "Zen", flags: avx512.union(["avx512_bf16"])))
        XCTAssertNil(BLASKernels.replacement(picked: "Cooperlake", flags: avx512.union(["avx512_bf16"])))
    }
}
