// The stall watchdog: a thread per rank that ends the job when the training loop waits too long in
// one place — a collective (the gradient sum, the weight exchange, the small sums that carry the
// loss and the stop flags, the validation totals) or the data loader. Without it a rank that hangs
// (a dead NFS mount, a stuck network link, a process stopped by a debugger) leaves every other
// rank waiting in its next collective until the scheduler's wall-time limit.
//
// The limit is `max(--stall-timeout, 20 x the slowest optimizer step seen so far)`: a few minutes
// by default, more for a model whose steps are long. Every rank's last step time travels with the
// per-step sum that already carries the loss and the stop flags (no extra collective), so the rank
// that gives up can say how long the others' last steps took. It prints one line and leaves with
// exit code 124 (as `timeout(1)` does); mpirun then ends the other ranks.

import Foundation
import SegEngine
#if canImport(Glibc)
import Glibc
#endif

public final class StallWatchdog: @unchecked Sendable {
    /// What a rank is waiting for, since when (monotonic seconds), at which optimizer step.
    public struct Wait: Equatable {
        public let what: String, step: Int, epoch: Int, since: Double
    }

    public let rank: Int, size: Int
    /// The smallest limit in seconds (--stall-timeout); 0 turns the watchdog off.
    public let minimumTimeout: Double
    /// The limit is at least this many times the slowest step seen.
    public static let stepMultiple = 20.0

    private let lock = NSLock()
    private var current: Wait?
    private var step = 0, epoch = 0
    private var slowestStep = 0.0
    private var lastStepSeconds: [Double]
    private var lastStepEnd: Double? = nil
    private var thread: Thread?
    private var stopped = false
    /// Called once with the message when a wait passes the limit; the default prints it and exits.
    public var onStall: (String) -> Void = { message in
        fputs("segtrain: error: \(message)\n", stderr)
        fflush(stderr)
        _exit(124)
    }

    public init(rank: Int, size: Int, minimumTimeout: Double) {
        precondition(minimumTimeout >= 0, "stall timeout \(minimumTimeout)")
        self.rank = rank
        self.size = size
        self.minimumTimeout = minimumTimeout
        lastStepSeconds = Array(repeating: 0, count: size)
    }

    /// The limit now: the minimum, or 20 x the slowest step if that is longer.
    public var timeout: Double {
        lock.lock(); defer { lock.unlock() }
        return max(minimumTimeout, StallWatchdog.stepMultiple * slowestStep)
    }

    /// Starts the checking thread (twice a second at most; a tenth of the limit for short limits).
    public func start() {
        guard minimumTimeout > 0, thread == nil else { return }
        lock.lock(); if lastStepEnd == nil { lastStepEnd = monotonicSeconds() }; lock.unlock()
        let interval = min(0.5, minimumTimeout / 10)
        // The thread holds the watchdog until it stops (`stop()`, or after reporting a stall).
        let thread = Thread { [self] in
            while !self.isStopped {
                Thread.sleep(forTimeInterval: interval)
                if let message = self.stallMessage(now: monotonicSeconds()) {
                    self.onStall(message)
                    return
                }
            }
        }
        thread.name = "segtrain-watchdog"
        self.thread = thread
        thread.start()
    }

    /// Ends the checking thread (within one interval).
    public func stop() {
        lock.lock(); stopped = true; lock.unlock()
    }

    private var isStopped: Bool {
        lock.lock(); defer { lock.unlock() }
        return stopped
    }

    /// Runs `body` marked as waiting for `what`.
    public func waiting<T>(for what: String, _ body: () throws -> T) rethrows -> T {
        lock.lock()
        current = Wait(what: what, step: step, epoch: epoch, since: monotonicSeconds())
        lock.unlock()
        defer { lock.lock(); current = nil; lock.unlock() }
        return try body()
    }

    /// The epoch being trained (for the message).
    public func setEpoch(_ epoch: Int) {
        lock.lock(); self.epoch = epoch; lock.unlock()
    }

    /// This rank's contribution to the per-step sum, taken when the step's loss is summed: the
    /// seconds since the last step ended (or since `start`) at its own index, zeros elsewhere.
    public func stepTimeTerms(now: Double = monotonicSeconds()) -> [Double] {
        lock.lock(); defer { lock.unlock() }
        var terms = Array(repeating: 0.0, count: size)
        terms[rank] = lastStepEnd.map { now - $0 } ?? 0
        return terms
    }

    /// After optimizer step `step`, with the summed `stepTimeTerms` of every rank: that step's time
    /// on each rank, up to its loss sum.
    public func stepFinished(_ step: Int, everyRank: ArraySlice<Double>? = nil, now: Double = monotonicSeconds()) {
        lock.lock(); defer { lock.unlock() }
        lastStepEnd = now
        self.step = step
        if let everyRank, everyRank.count == size {
            for (r, seconds) in everyRank.enumerated() { lastStepSeconds[r] = seconds }
            slowestStep = max(slowestStep, everyRank.max() ?? 0)
        }
    }

    /// The message when the current wait has passed the limit, else nil.
    public func stallMessage(now: Double) -> String? {
        lock.lock(); defer { lock.unlock() }
        guard minimumTimeout > 0, let wait = current else { return nil }
        let limit = max(minimumTimeout, StallWatchdog.stepMultiple * slowestStep)
        let waited = now - wait.since
        guard waited > limit else { return nil }
        let times = lastStepSeconds.map { String(format: "%.3g s", $0) }
        return "rank \(rank): stalled: waited \(String(format: "%.0f", waited)) s (limit \(String(format: "%.0f", limit)) s,"
            + " --stall-timeout) for \(wait.what) in optimizer step \(wait.step + 1) (epoch \(wait.epoch));"
            + " step \(wait.step) took \(times.joined(separator: ", ")) on ranks 0...\(size - 1) up to its loss sum;"
            + " ending the job"
    }
}

/// Collectives whose every blocking call is marked on a `StallWatchdog`.
public final class WatchedCollectives: Collectives {
    public let inner: Collectives
    public let watchdog: StallWatchdog

    public init(_ inner: Collectives, watchdog: StallWatchdog) {
        self.inner = inner
        self.watchdog = watchdog
    }

    public var rank: Int { inner.rank }
    public var size: Int { inner.size }

    public func allreduceSum(_ tensor: Tensor) throws {
        try watchdog.waiting(for: "the gradient sum") { try inner.allreduceSum(tensor) }
    }

    public func startAllreduceSum(_ result: Tensor, from source: Tensor) throws -> PendingSum {
        // Starting may block too (a Collectives without non-blocking sums sums at once).
        try watchdog.waiting(for: "the gradient sum (buckets)") { try inner.startAllreduceSum(result, from: source) }
    }

    /// The waits for the bucket sums, marked once for all of them (no wrapper object per bucket:
    /// nothing is allocated in the step).
    public func waitAll(_ sums: [PendingSum]) throws {
        try watchdog.waiting(for: "the gradient sum (buckets)") { try inner.waitAll(sums) }
    }

    public func allreduceSum(_ values: [Double]) throws -> [Double] {
        try watchdog.waiting(for: "a small sum (loss, stop flags, counts)") { try inner.allreduceSum(values) }
    }

    public func allreduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws {
        try watchdog.waiting(for: "the BatchNorm statistics' sum (--sync-bn)") { try inner.allreduceSum(values) }
    }

    public func abort(code: Int32, message: String) -> Never { inner.abort(code: code, message: message) }

    public func allgatherShares(_ tensor: Tensor) throws {
        try watchdog.waiting(for: "the exchange of the ranks' shares (weights or optimizer state)") {
            try inner.allgatherShares(tensor)
        }
    }

    public func broadcast(_ tensor: Tensor, root: Int) throws {
        try watchdog.waiting(for: "a broadcast from rank \(root)") { try inner.broadcast(tensor, root: root) }
    }

    public func broadcast(_ bytes: inout [UInt8], root: Int) throws {
        var copy = bytes
        try watchdog.waiting(for: "a broadcast from rank \(root)") { try inner.broadcast(&copy, root: root) }
        bytes = copy
    }

    public func checkSame(_ value: UInt64, what: String) throws {
        try watchdog.waiting(for: "the check of \(what)") { try inner.checkSame(value, what: what) }
    }
}
