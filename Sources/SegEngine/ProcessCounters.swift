// Counters of this process that the benchmarks report: heap allocations (with
// scripts/alloc-counter's LD_PRELOAD shim), minor page faults and the peak resident set size.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Heap allocations so far (only those over 256 bytes when `large`), when scripts/alloc-counter's
/// LD_PRELOAD shim is loaded; else nil.
/// (The names go to dlsym as literals: a String turned into a C string is a heap allocation,
/// which the counters would count.)
public func heapAllocationCount(large: Bool = false) -> Int? {
    typealias Counter = @convention(c) () -> Int
    let symbol = large ? dlsym(UnsafeMutableRawPointer(bitPattern: 0), "segtrain_large_alloc_count")
                       : dlsym(UnsafeMutableRawPointer(bitPattern: 0), "segtrain_alloc_count")
    guard let symbol else { return nil }
    return unsafeBitCast(symbol, to: Counter.self)()
}

/// This process's resource usage so far (getrusage).
private func resourceUsage() -> rusage {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage
}

/// Minor page faults of this process so far.
public func minorPageFaults() -> Int { resourceUsage().ru_minflt }

/// Peak resident set size of this process in MiB (Linux reports KiB).
public func peakResidentMiB() -> Double { Double(resourceUsage().ru_maxrss) / 1024 }
