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

    /// OPENBLAS_CORETYPE is kept, but an older vector generation than the CPU runs is named.
    func testAnOlderFamilyThanTheCPURunsIsNamed() {
        let bf16 = avx512.union(["avx512_bf16"]), avx2: Set<String> = ["sse3", "avx", "avx2", "fma"]
        XCTAssertEqual(BLASKernels.newerFamily(than: "Haswell", flags: bf16), "Cooperlake")
        XCTAssertEqual(BLASKernels.newerFamily(than: "zen", flags: avx512), "SkylakeX")
        XCTAssertEqual(BLASKernels.newerFamily(than: "Sandybridge", flags: avx2), "Haswell")
        XCTAssertEqual(BLASKernels.newerFamily(than: "Prescott", flags: avx512), "SkylakeX")
        XCTAssertNil(BLASKernels.newerFamily(than: "Haswell", flags: avx2), "AVX2 is the newest here")
        XCTAssertNil(BLASKernels.newerFamily(than: "Zen", flags: avx2))
        XCTAssertNil(BLASKernels.newerFamily(than: "SkylakeX", flags: bf16), "an AVX-512 family is new enough")
        XCTAssertNil(BLASKernels.newerFamily(than: "Cooperlake", flags: bf16))
        XCTAssertNil(BLASKernels.newerFamily(than: "Nehalem", flags: ["sse3", "avx"]), "nothing newer to run")
    }
}
