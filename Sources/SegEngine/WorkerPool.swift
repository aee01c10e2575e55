// One persistent pool of worker threads per rank. The caller takes part as thread 0, so a pool
// of T threads starts T - 1 helpers. `parallelFor` splits work statically (thread t always gets
// the same part of the same job), which keeps results bitwise reproducible for a given thread
// count where a thread's part feeds a per-thread partial. `parallelForEachItem` hands items out one
// at a time, for work whose items do not depend on the thread that runs them (the convolutions'
// image bands, tiles and chunks): no core waits at the end behind a longer share.
// OpenBLAS is set to one thread: kernels call sgemm from inside the pool's threads, so BLAS and
// the pool never compete for the cores.

import CBLAS
import CSupport
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public final class WorkerPool: @unchecked Sendable {
    public let threadCount: Int

    private var workers: [pthread_t] = []
    private var mutex = pthread_mutex_t()
    private var wake = pthread_cond_t()
    private let generation = Atomic<Int>(0)
    private let pending = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    /// The running job. Swift's withoutActuallyEscaping boxes the closure: one 32-byte heap
    /// allocation per dispatch with two or more threads (measured with scripts/check-allocations.sh);
    /// avoiding it would need every kernel to pass a context struct instead of a closure.
    private var job: ((Int) -> Void)? = nil
    private var stopping = false

    /// Iterations a thread polls for new work before it sleeps on the condition variable.
    private static let spinLimit = 20_000

    public init(threads: Int) {
        precondition(threads >= 1, "a worker pool needs at least one thread")
        threadCount = threads
        openblas_set_num_threads(1)
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&wake, nil)
        for t in 1..<max(threads, 1) {
            let context = Unmanaged.passRetained(WorkerStart(pool: self, index: t)).toOpaque()
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { raw in
                let start = Unmanaged<WorkerStart>.fromOpaque(raw!).takeRetainedValue()
                start.pool.workerLoop(start.index)
                return nil
            }, context)
            precondition(rc == 0, "pthread_create failed: \(rc)")
            workers.append(thread)
        }
    }

    deinit {
        pthread_mutex_lock(&mutex)
        stopping = true
        generation.add(1, ordering: .releasing)
        pthread_cond_broadcast(&wake)
        pthread_mutex_unlock(&mutex)
        for t in workers { pthread_join(t, nil) }
        pthread_mutex_destroy(&mutex)
        pthread_cond_destroy(&wake)
    }

    /// Runs `body(t)` once for every t in 0..<threadCount, concurrently, and returns when all are
    /// done. Called from inside a running job, it runs the parts one after another on the caller.
    public func run(_ body: (Int) -> Void) {
        if threadCount == 1 || busy.exchange(true, ordering: .acquiring) {
            for t in 0..<threadCount { body(t) }
            return
        }
        withoutActuallyEscaping(body) { escapable in
            job = escapable
            pending.store(threadCount - 1, ordering: .relaxed)
            pthread_mutex_lock(&mutex)
            generation.add(1, ordering: .releasing)
            pthread_cond_broadcast(&wake)
            pthread_mutex_unlock(&mutex)
            escapable(0)
            var spins = 0
            while pending.load(ordering: .acquiring) != 0 {
                spins += 1
                if spins > WorkerPool.spinLimit { sched_yield() }
            }
            job = nil
        }
        busy.store(false, ordering: .releasing)
    }

    /// Splits 0..<count into `threadCount` contiguous ranges (the first ones one longer when the
    /// count does not divide) and runs `body(range, thread)` on each non-empty one.
    public func parallelFor(_ count: Int, _ body: (Range<Int>, Int) -> Void) {
        if count <= 0 { return }
        let parts = min(threadCount, count)
        if parts == 1 { body(0..<count, 0); return }
        run { t in
            if t < parts {
                let range = WorkerPool.split(count, parts: parts, index: t)
                body(range, t)
            }
        }
    }

    /// Runs `body(item, thread)` for every item in 0..<count, handing the items out one at a time,
    /// in order, to whichever thread is free: a thread that finished early, or that the OS did not
    /// preempt, takes more of them, so unequal items and a busy machine do not leave a core waiting
    /// at the end as a static split does. Only for items whose results do not depend on the thread
    /// that runs them (each writes its own output, or adds into memory no other item touches; per
    /// thread scratch is fine): which thread takes an item changes from run to run. Each item costs
    /// a move of the counter's cache line between cores, so items should be large (a GEMM's worth:
    /// BatchNorm's channels of a 16 x 16 layer, 8 KiB each, ran slower this way; docs/PERFORMANCE.md).
    public func parallelForEachItem(_ count: Int, _ body: (_ item: Int, _ thread: Int) -> Void) {
        if count <= 0 { return }
        if threadCount == 1 || count == 1 {
            for item in 0..<count { body(item, 0) }
            return
        }
        let next = Atomic<Int>(0)
        run { t in
            while true {
                let item = next.add(1, ordering: .relaxed).oldValue
                if item >= count { break }
                body(item, t)
            }
        }
    }

    /// The `index`-th of `parts` contiguous ranges covering 0..<count.
    public static func split(_ count: Int, parts: Int, index: Int) -> Range<Int> {
        let base = count / parts, extra = count % parts
        let start = index * base + min(index, extra)
        return start..<(start + base + (index < extra ? 1 : 0))
    }

    private func workerLoop(_ index: Int) {
        var seen = 0
        while true {
            var spins = 0
            var current = generation.load(ordering: .acquiring)
            while current == seen && spins < WorkerPool.spinLimit {
                spins += 1
                current = generation.load(ordering: .acquiring)
            }
            if current == seen {
                pthread_mutex_lock(&mutex)
                while generation.load(ordering: .acquiring) == seen && !stopping {
                    pthread_cond_wait(&wake, &mutex)
                }
                current = generation.load(ordering: .acquiring)
                let stop = stopping
                pthread_mutex_unlock(&mutex)
                if stop { return }
            }
            seen = current
            if stopping { return }
            job?(index)
            pending.subtract(1, ordering: .releasing)
        }
    }
}

private final class WorkerStart {
    let pool: WorkerPool
    let index: Int
    init(pool: WorkerPool, index: Int) { self.pool = pool; self.index = index }
}

/// Thread-count defaults: the CPUs this process may run on (its affinity mask, as set by
/// mpirun --bind-to or Slurm's cgroup) divided by the ranks that share this node.
public enum ThreadDefaults {
    /// The thread counts a --threads flag accepts, in every command (one place).
    public static let allowed = 1...1024

    /// Why `threads` (a --threads value) cannot be used, naming the flag; nil when it can.
    /// Without the flag, SEGTRAIN_THREADS (which `threadsPerRank` reads) is held to the same bound.
    public static func problem(threads: Int?, flag: String = "--threads") -> String? {
        guard let t = threads else {
            guard let text = getenv("SEGTRAIN_THREADS").map({ String(cString: $0) }), !text.isEmpty else { return nil }
            if let n = Int(text), allowed.contains(n) { return nil }
            return "SEGTRAIN_THREADS must be \(allowed.lowerBound)...\(allowed.upperBound) (got \(text))"
        }
        guard !allowed.contains(t) else { return nil }
        return "\(flag) must be \(allowed.lowerBound)...\(allowed.upperBound) (got \(t))"
    }

    /// CPUs in this process's affinity mask (sched_getaffinity), at least 1.
    public static func availableCPUs() -> Int {
        let count = Int(segtrain_affinity_cpu_count())
        if count > 0 { return count }
        return max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    }

    /// Ranks on this node, from the launcher's environment (Open MPI, Slurm), else 1.
    public static func ranksOnNode() -> Int {
        for key in ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"] {
            if let text = getenv(key).map({ String(cString: $0) }), let n = Int(text), n > 0 { return n }
        }
        return 1
    }

    /// `SEGTRAIN_THREADS` if set, else available CPUs divided by ranks on this node, at least 1.
    /// The affinity mask already reflects binding: a rank bound to 4 cores sees 4 CPUs and is
    /// not divided again unless its mask is the whole machine.
    public static func threadsPerRank() -> Int {
        if let text = getenv("SEGTRAIN_THREADS").map({ String(cString: $0) }), let n = Int(text), n > 0 {
            return n
        }
        let cpus = availableCPUs()
        let online = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let ranks = ranksOnNode()
        // Bound by the launcher to a subset: that subset is ours alone.
        if cpus < online { return cpus }
        return max(1, cpus / ranks)
    }
}
