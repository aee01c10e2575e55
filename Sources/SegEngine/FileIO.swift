// Files that must never be seen half-written (metrics, checkpoints): written to a temporary name
// in the same folder, flushed to disk, then renamed over the target in one step. Also reading a
// text file, creating folders and checking that one can be, with errors that name the path.

import Foundation
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

/// A file that cannot be read or a folder that cannot be made; the description names the path.
public struct FileError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A UTF-8 text file (at most `limit` bytes); errors name the file.
public func readTextFile(_ path: String, limit: Int = 1 << 30) throws -> String {
    guard let file = fopen(path, "rb") else {
        throw FileError("\(path): cannot open: \(String(cString: strerror(errno)))")
    }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n > 0 { bytes += chunk[0..<n] }
        if n < chunk.count {
            if ferror(file) != 0 { throw FileError("\(path): cannot read: \(String(cString: strerror(errno)))") }
            break
        }
        if bytes.count > limit { throw FileError("\(path): larger than \(limit) bytes") }
    }
    guard let text = String(validating: bytes, as: UTF8.self) else {
        throw FileError("\(path): not UTF-8 text")
    }
    return text
}

/// mkdir -p: creates `path` and its missing parents; returns the failure's reason, or nil.
public func makeDirectories(_ path: String) -> String? {
    var prefix = path.hasPrefix("/") ? "/" : ""
    for component in path.split(separator: "/") {
        prefix += component + "/"
        if mkdir(prefix, 0o755) != 0 && errno != EEXIST { return String(cString: strerror(errno)) }
    }
    var info = stat()
    if stat(path, &info) != 0 || (info.st_mode & S_IFMT) != S_IFDIR { return "not a folder" }
    return nil
}

/// Why `path` cannot become a writable folder, or nil: its deepest existing ancestor must be a
/// writable directory.
public func unwritableFolderProblem(_ path: String) -> String? {
    if path.isEmpty { return "empty path" }
    var url = URL(fileURLWithPath: path)
    let files = FileManager.default
    while true {
        var isDirectory: ObjCBool = false
        if files.fileExists(atPath: url.path, isDirectory: &isDirectory) {
            if !isDirectory.boolValue { return "\(url.path) is not a directory" }
            return files.isWritableFile(atPath: url.path) ? nil : "\(url.path) is not writable"
        }
        let parent = url.deletingLastPathComponent()
        if parent.path == url.path { return "no existing parent folder" }
        url = parent
    }
}
