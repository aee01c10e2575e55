import XCTest
#if canImport(Glibc)
import Glibc
#endif
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

    /// A nested run finishes (it runs inline); a deadlock fails after 30 s instead of hanging the suite.
    func testNestedRunDoesNotDeadlock() {
        let pool = WorkerPool(threads: 3)
        let out = OwnedTensor(.vector(9))
        let done = expectation(description: "the nested run finished")
        Thread {
            pool.run { outer in
                pool.run { inner in out.tensor[outer * 3 + inner] = Float(outer * 3 + inner) }
            }
            done.fulfill()
        }.start()
        wait(for: [done], timeout: 30)
        XCTAssertEqual(out.tensor.toArray(), (0..<9).map(Float.init))
    }
}

final class ThreadDefaultsTests: XCTestCase {
    func testAffinityCountAndOverrides() {
        let cpus = ThreadDefaults.availableCPUs()
        XCTAssertGreaterThanOrEqual(cpus, 1)
        XCTAssertLessThanOrEqual(cpus, 4096)

        setenv("SEGTRAIN_THREADS", "3", 1)
        XCTAssertEqual(ThreadDefaults.threadsPerRank(), 3)
        unsetenv("SEGTRAIN_THREADS")

        // Two ranks on this node share the CPUs, unless a launcher bound this process to fewer
        // CPUs than the machine has: then those are its own.
        let bound = cpus < sysconf(Int32(_SC_NPROCESSORS_ONLN))
        setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2", 1)
        XCTAssertEqual(ThreadDefaults.ranksOnNode(), 2)
        XCTAssertEqual(ThreadDefaults.threadsPerRank(), bound ? cpus : max(1, cpus / 2))
        setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "64", 1)
        XCTAssertEqual(ThreadDefaults.threadsPerRank(), bound ? cpus : max(1, cpus / 64), "never below one thread")
        unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE")
        XCTAssertEqual(ThreadDefaults.ranksOnNode(), 1)
    }
}
