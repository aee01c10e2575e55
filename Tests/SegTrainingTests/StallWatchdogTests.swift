import XCTest
import Foundation
import SegEngine
@testable import SegTraining

/// The stall watchdog in-process: its limit, its message, which waits it marks, and its thread.
/// (The whole job ending under mpirun: DataParallelTests.testStalledRankEndsTheJobWithOneLine.)
final class StallWatchdogTests: XCTestCase {
    /// A collective that records what the watchdog said while each call was waiting.
    final class Probe: Collectives {
        let watchdog: StallWatchdog
        var seen: [String] = []
        init(_ watchdog: StallWatchdog) { self.watchdog = watchdog }
        var rank: Int { 1 }
        var size: Int { 3 }
        private func look() { seen.append(watchdog.stallMessage(now: monotonicSeconds() + 1e6) ?? "nothing") }
        func allreduceSum(_ tensor: Tensor) throws { look() }
        func allreduceSum(_ values: [Double]) throws -> [Double] { look(); return values }
        func allgatherShares(_ tensor: Tensor) throws { look() }
        func waitAll(_ sums: [PendingSum]) throws { look(); for sum in sums { try sum.wait() } }
        func broadcast(_ tensor: Tensor, root: Int) throws { look() }
        func broadcast(_ bytes: inout [UInt8], root: Int) throws { look() }
    }

    func testLimitMessageAndStepTimes() {
        let watchdog = StallWatchdog(rank: 1, size: 3, minimumTimeout: 10)
        XCTAssertNil(watchdog.stallMessage(now: 1e9), "no wait, no stall")
        XCTAssertEqual(watchdog.stepTimeTerms(now: 5), [0, 0, 0], "no step yet")
        watchdog.stepFinished(1, everyRank: [0.2, 0.3, 0.1], now: 100)
        XCTAssertEqual(watchdog.stepTimeTerms(now: 100.75), [0, 0.75, 0], "own time since the last step, at its index")
        XCTAssertEqual(watchdog.timeout, 10, "20 x 0.3 s is under the minimum")
        watchdog.stepFinished(2, everyRank: [0.2, 0.9, 0.1], now: 101)
        XCTAssertEqual(watchdog.timeout, 18, accuracy: 1e-9, "20 x the slowest step")
        watchdog.setEpoch(3)
        watchdog.waiting(for: "the gradient sum") {
            let now = monotonicSeconds()
            XCTAssertNil(watchdog.stallMessage(now: now + 17), "within the limit")
            let message = watchdog.stallMessage(now: now + 19)
            XCTAssertEqual(message?.hasPrefix("rank 1: stalled: waited 19 s (limit 18 s, --stall-timeout) for the gradient sum"
                                              + " in optimizer step 3 (epoch 3); step 2 took 0.2 s, 0.9 s, 0.1 s on ranks 0...2"),
                           true, message ?? "no message")
        }
        XCTAssertNil(watchdog.stallMessage(now: monotonicSeconds() + 1e6), "the wait ended")
    }

    func testWatchedCollectivesMarkEveryBlockingCall() throws {
        let watchdog = StallWatchdog(rank: 1, size: 3, minimumTimeout: 1)
        let probe = Probe(watchdog)
        let watched = WatchedCollectives(probe, watchdog: watchdog)
        let t = OwnedTensor(.vector(4))
        try watched.allreduceSum(t.tensor)
        _ = try watched.allreduceSum([1, 2])
        try watched.allgatherShares(t.tensor)
        let result = OwnedTensor(.vector(4))
        let pending = try watched.startAllreduceSum(result.tensor, from: t.tensor)  // the default: copy, then sum
        try watched.waitAll([pending])
        withExtendedLifetime(result) {}
        XCTAssertEqual(probe.seen.count, 5)
        XCTAssertTrue(probe.seen[0].contains("for the gradient sum"), probe.seen[0])
        XCTAssertTrue(probe.seen[1].contains("for a small sum (loss, stop flags, counts)"), probe.seen[1])
        XCTAssertTrue(probe.seen[2].contains("for the exchange of the ranks' shares"), probe.seen[2])
        XCTAssertTrue(probe.seen[3].contains("for the gradient sum (buckets)"), probe.seen[3])
        XCTAssertTrue(probe.seen[4].contains("for the gradient sum (buckets)"), probe.seen[4])
        XCTAssertEqual(watched.rank, 1)
        XCTAssertEqual(watched.size, 3)
    }

    /// The thread calls onStall once a wait passes the limit, with the message.
    func testThreadReportsAStall() {
        let watchdog = StallWatchdog(rank: 0, size: 1, minimumTimeout: 0.2)
        let fired = expectation(description: "stall reported")
        let lock = NSLock()
        var message = ""
        watchdog.onStall = { text in lock.lock(); message = text; lock.unlock(); fired.fulfill() }
        watchdog.start()
        watchdog.waiting(for: "the data loader") { usleep(800_000) }
        wait(for: [fired], timeout: 5)
        lock.lock(); defer { lock.unlock() }
        XCTAssertTrue(message.contains("for the data loader"), message)
    }

    /// Off (0): never a message, no thread.
    func testOff() {
        let watchdog = StallWatchdog(rank: 0, size: 1, minimumTimeout: 0)
        watchdog.onStall = { _ in XCTFail("an off watchdog reported a stall") }
        watchdog.start()
        watchdog.waiting(for: "anything") { XCTAssertNil(watchdog.stallMessage(now: monotonicSeconds() + 1e9)) }
        watchdog.stop()
    }
}
