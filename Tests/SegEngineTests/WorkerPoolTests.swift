import XCTest
@testable import SegEngine

final class WorkerPoolTests: XCTestCase {
    func testSplitCoversEveryIndexOnce() {
        for count in [0, 1, 2, 7, 64, 1001] {
            for parts in 1...5 {
                var seen = [Int](repeating: 0, count: count)
                for p in 0..<parts {
                    for i in WorkerPool.split(count, parts: parts, index: p) { seen[i] += 1 }
                }
                XCTAssertEqual(seen, [Int](repeating: 1, count: count), "count \(count) parts \(parts)")
            }
        }
    }

    func testParallelForRunsEveryRangeOnEveryThreadCount() {
        for threads in 1...4 {
            let pool = WorkerPool(threads: threads)
            let out = OwnedTensor(.vector(10_007))
            for round in 0..<50 {
                pool.parallelFor(out.tensor.count) { range, _ in
                    for i in range { out.tensor[i] += Float(round + 1) }
                }
            }
            let expected = Float((1...50).reduce(0, +))
            XCTAssertTrue(out.tensor.toArray().allSatisfy { $0 == expected }, "threads \(threads)")
        }
    }

    func testNestedRunDoesNotDeadlock() {
        let pool = WorkerPool(threads: 3)
        let out = OwnedTensor(.vector(9))
        pool.run { outer in
            pool.run { inner in out.tensor[outer * 3 + inner] = Float(outer * 3 + inner) }
        }
        XCTAssertEqual(out.tensor.toArray(), (0..<9).map(Float.init))
    }
}
