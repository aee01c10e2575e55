import XCTest
import Synchronization
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

    /// Items handed out one at a time: each runs exactly once, on a thread index of the pool, for
    /// counts below, at and above the thread count; a slow thread (one that sleeps in its first item)
    /// leaves the rest to the others instead of its static share; nested inside a job it runs
    /// inline with its own counter.
    func testParallelForEachItemRunsEveryItemOnce() {
        for threads in 1...4 {
            let pool = WorkerPool(threads: threads)
            for count in [0, 1, 2, 3, 5, 64, 1001] {
                let runs = OwnedTensor(.vector(max(count, 1))), where_ = OwnedTensor(.vector(max(count, 1)))
                pool.parallelForEachItem(count) { item, t in
                    runs.tensor[item] += 1
                    where_.tensor[item] = Float(t)
                }
                XCTAssertEqual(Array(runs.tensor.toArray().prefix(count)), [Float](repeating: 1, count: count),
                               "threads \(threads) count \(count)")
                XCTAssertTrue(where_.tensor.toArray().allSatisfy { $0 >= 0 && Int($0) < threads }, "threads \(threads)")
            }
        }
        // 2 threads, 40 items: item 0 holds its thread until the other 39 are done (at most 5 s). Handed
        // out one at a time, the other thread takes them all; a static split would leave 19 of them
        // behind item 0 on the held thread, and the wait would time out.
        let pool = WorkerPool(threads: 2)
        let owner = OwnedTensor(.vector(40))
        let done = Atomic<Int>(0)
        pool.parallelForEachItem(40) { item, t in
            owner.tensor[item] = Float(t)
            if item == 0 {
                let start = Date()
                while done.load(ordering: .acquiring) < 39 && Date().timeIntervalSince(start) < 5 { usleep(1000) }
            } else {
                done.add(1, ordering: .releasing)
            }
        }
        let held = owner.tensor[0]
        XCTAssertEqual(owner.tensor.toArray().filter { $0 == held }.count, 1, "the held thread ran only item 0")
        // Nested: each outer item runs an inner loop of its own.
        let nested = OwnedTensor(.vector(12))
        pool.parallelForEachItem(3) { outer, _ in
            pool.parallelForEachItem(4) { inner, _ in nested.tensor[outer * 4 + inner] += Float(outer * 4 + inner + 1) }
        }
        XCTAssertEqual(nested.tensor.toArray(), (1...12).map(Float.init))
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
