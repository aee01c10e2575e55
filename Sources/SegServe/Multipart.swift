// The file field of a multipart/form-data body (RFC 7578), as a browser's form sends it: parts
// separated by `--boundary`, each with its headers; the part whose Content-Disposition names the field
// is returned as bytes. Errors are ServeFailure 400s.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The one file of a multipart/form-data body (RFC 7578).
enum Multipart {
    static func file(named field: String, in body: [UInt8], boundary: String) throws -> [UInt8] {
        let delimiter = Array("--\(boundary)".utf8)
        let separator = Array("\r\n\r\n".utf8)
        let next = Array("\r\n--\(boundary)".utf8)
        guard var at = find(delimiter, in: body, from: 0) else {
            throw ServeFailure(.badRequest, "multipart/form-data body without its boundary")
        }
        at += delimiter.count
        while at + 2 <= body.count, !(body[at] == 0x2D && body[at + 1] == 0x2D) {  // "--": the last one
            guard let headersEnd = find(separator, in: body, from: at) else { break }
            let headers = String(decoding: body[at..<headersEnd], as: UTF8.self)
            let start = headersEnd + separator.count
            guard let end = find(next, in: body, from: start) else {
                throw ServeFailure(.badRequest, "multipart/form-data body ends inside a part")
            }
            if name(headers) == field { return Array(body[start..<end]) }
            at = end + next.count
        }
        throw ServeFailure(.badRequest, "multipart/form-data body without a file field named \(field)")
    }

    /// The `name` of a part's Content-Disposition.
    static func name(_ headers: String) -> String? {
        for line in headers.split(separator: "\r\n") where line.lowercased().hasPrefix("content-disposition:") {
            for parameter in line.split(separator: ";").dropFirst() {
                let pair = parameter.split(separator: "=", maxSplits: 1)
                guard pair.count == 2, pair[0].trimmingCharacters(in: .whitespaces).lowercased() == "name" else { continue }
                let value = pair[1].trimmingCharacters(in: .whitespaces)
                return value.count >= 2 && value.hasPrefix("\"") && value.hasSuffix("\"") ? String(value.dropFirst().dropLast()) : value
            }
        }
        return nil
    }

    /// Where `needle` first occurs in `haystack` at or after `from`.
    static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
        guard !needle.isEmpty, haystack.count - from >= needle.count else { return nil }
        return haystack.withUnsafeBufferPointer { h in
            needle.withUnsafeBufferPointer { n in
                var i = from
                let last = h.count - n.count
                while i <= last {
                    guard let hit = memchr(h.baseAddress! + i, Int32(n[0]), last - i + 1) else { return nil }
                    i = h.baseAddress!.distance(to: hit.assumingMemoryBound(to: UInt8.self))
                    if memcmp(h.baseAddress! + i, n.baseAddress!, n.count) == 0 { return i }
                    i += 1
                }
                return nil
            }
        }
    }
}
