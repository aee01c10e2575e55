// What memory this process may use: the machine's available memory (/proc/meminfo MemAvailable),
// the address-space limit (`ulimit -v`, RLIMIT_AS) and the virtual size already mapped
// (/proc/self/status VmSize). Read before a run's first large allocation, to refuse a run that
// cannot fit with one line instead of an out-of-memory trap or kill later.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum SystemMemory {
    /// MemAvailable in bytes, or nil where /proc/meminfo does not say.
    public static func availableBytes() -> Int? { procField("/proc/meminfo", "MemAvailable:") }

    /// This process's virtual size (VmSize) in bytes, or nil.
    public static func virtualBytes() -> Int? { procField("/proc/self/status", "VmSize:") }

    /// The address-space limit (`ulimit -v`) in bytes, or nil when unlimited.
    public static func addressSpaceLimit() -> Int? {
        var limit = rlimit()
        #if canImport(Glibc)
        let resource = __rlimit_resource_t(RLIMIT_AS.rawValue)
        #else
        let resource = RLIMIT_AS
        #endif
        guard getrlimit(resource, &limit) == 0, limit.rlim_cur != rlim_t.max else { return nil }  // RLIM_INFINITY
        return limit.rlim_cur > UInt64(Int.max) ? nil : Int(limit.rlim_cur)
    }

    /// A "Name:   123 kB" line of a /proc file, in bytes.
    static func procField(_ path: String, _ name: String) -> Int? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(cString: line)
            guard text.hasPrefix(name) else { continue }
            let fields = text.dropFirst(name.count).split(whereSeparator: { $0.isWhitespace })
            guard let value = fields.first.flatMap({ Int($0) }) else { return nil }
            let unit = fields.count > 1 ? String(fields[1]) : ""
            return unit == "kB" ? value * 1024 : value
        }
        return nil
    }

    /// Bytes as a short figure: "512 MB", "16.8 GB".
    public static func describe(_ bytes: Double) -> String {
        let units = ["bytes", "KB", "MB", "GB", "TB", "PB", "EB"]
        var value = bytes, unit = 0
        while value >= 1000 && unit < units.count - 1 { value /= 1000; unit += 1 }
        if unit == 0 { return "\(Int(value)) bytes" }
        let rounded = value >= 100 ? "\(Int(value.rounded()))" : "\((value * 10).rounded() / 10)"
        return rounded + " " + units[unit]
    }
}
