// A dataset listing every rank agrees on: rank 0 alone lists the folders (no other rank touches
// them) and broadcasts the lists; every rank checks it holds the same (hash); then every file is
// checked, the work spread over ranks (sample i on rank i % N) and threads. Used by `train`,
// `bench` and `evaluate`. Every failure reaches every rank as a `SharedError`.

import SegEngine

public enum SharedListing {
    /// The lists, made on rank 0 by `list` (which may print notes) and received by every rank.
    /// `roots`: the folders the listings' relative paths start from (training, validation).
    public static func receive(roots: [String], collectives: Collectives,
                               list: () throws -> [DatasetListing]) throws -> [DatasetListing] {
        var message = "", wires = [String](repeating: "", count: roots.count)
        if collectives.rank == 0 {
            do {
                let listings = try list()
                precondition(listings.count == roots.count, "SharedListing.receive: \(listings.count) lists for \(roots.count) roots")
                wires = listings.map(\.wire)
            } catch { message = "\(error)" }
        }
        message = try collectives.broadcast(message)
        if !message.isEmpty { throw SharedError(description: message) }
        var listings: [DatasetListing] = []
        for (root, wire) in zip(roots, wires) {
            let received = try collectives.broadcast(wire)
            do { listings.append(try DatasetListing(root: root, wire: received)) } catch {
                throw SharedError(description: "\(error)")
            }
        }
        for (k, listing) in listings.enumerated() {
            try collectives.checkSame(listing.hash, what: roots.count == 1 ? "the dataset list"
                                      : ["the training list", "the validation list"][min(k, 1)])
        }
        return listings
    }

    /// Checks every sample of `listings` (decoding all with `full`, else headers only). Invalid
    /// samples end every rank with the first one's reason, or, with `skipInvalid`, are left out:
    /// `warn` gets each reason on rank 0. Returns the listings without them.
    public static func checkFiles(_ listings: [DatasetListing], spec: SampleSpec, full: Bool, skipInvalid: Bool,
                                  collectives: Collectives, pool: WorkerPool,
                                  warn: (String) -> Void) throws -> (listings: [DatasetListing], skipped: Int) {
        let offsets = listings.reduce(into: [0]) { $0.append($0.last! + $1.count) }
        let total = offsets.last!
        let ranks = collectives.size, rank = collectives.rank
        var reasons = [String?](repeating: nil, count: total)
        let mine = Array(stride(from: rank, to: total, by: ranks))
        reasons.withUnsafeMutableBufferPointer { out in
            let datasets = listings.map { FileDataset(listing: $0, spec: spec) }
            pool.run { t in
                for k in WorkerPool.split(mine.count, parts: pool.threadCount, index: t) {
                    let i = mine[k]
                    let d = offsets.lastIndex { $0 <= i }!
                    out[i] = datasets[d].check(i - offsets[d], full: full)
                }
            }
        }
        let flags = try collectives.allreduceSum(reasons.map { $0 == nil ? 0.0 : 1.0 })
        let bad = flags.indices.filter { flags[$0] > 0 }
        if bad.isEmpty { return (listings, 0) }
        // The reasons travel from the rank that found them.
        let shown = skipInvalid ? bad : [bad[0]]
        var texts: [String] = []
        for i in shown { texts.append(try collectives.broadcast(reasons[i] ?? "", root: i % ranks)) }
        if !skipInvalid {
            let more = bad.count > 1 ? " (and \(bad.count - 1) more invalid sample(s); --skip-invalid trains without them)" : ""
            throw SharedError(description: texts[0] + more)
        }
        if rank == 0 { texts.forEach(warn) }
        let kept = listings.enumerated().map { d, listing in
            listing.removing(Set(bad.filter { offsets[d] <= $0 && $0 < offsets[d + 1] }.map { $0 - offsets[d] }))
        }
        return (kept, bad.count)
    }
}
