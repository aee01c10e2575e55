// Files that must never be seen half-written (metrics, checkpoints): written to a temporary name
// in the same folder, flushed to disk, then renamed over the target in one step.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes `bytes` to `path` atomically; returns a one-line error naming the path, or nil.
public func writeFileAtomically(_ path: String, bytes: [UInt8]) -> String? {
    let temporary = path + ".tmp.\(getpid())"
    guard let file = fopen(temporary, "w") else { return "\(path): cannot write: \(String(cString: strerror(errno)))" }
    let written = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
    let flushed = fflush(file) == 0 && fsync(fileno(file)) == 0
    let reason = String(cString: strerror(errno))
    fclose(file)
    guard written == bytes.count && flushed else {
        unlink(temporary)
        return "\(path): write failed: \(reason)"
    }
    guard rename(temporary, path) == 0 else {
        let reason = String(cString: strerror(errno))
        unlink(temporary)
        return "\(path): cannot rename into place: \(reason)"
    }
    return nil
}

/// The same for text.
public func writeFileAtomically(_ path: String, _ contents: String) -> String? {
    writeFileAtomically(path, bytes: Array(contents.utf8))
}
