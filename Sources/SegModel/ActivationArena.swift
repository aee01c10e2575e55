import SegEngine

/// Activations of one planned batch: one buffer for all values, and one for the gradients of
/// those that need one, where gradients whose lifetimes on the backward tape do not overlap share
/// memory.
struct ActivationArena {
    private(set) var shapes: [Shape] = []
    private var valueOffsets: [Int] = []
    private var hasGradient: [Bool] = []
    private var gradientOffsets: [Int?] = []
    private(set) var valueCount = 0
    private(set) var gradientCount = 0
    /// What one gradient buffer per activation would take.
    private(set) var unsharedGradientCount = 0
    private var values = FloatBuffer(count: 0)
    private var gradients = FloatBuffer(count: 0)

    /// Floats a tensor occupies: rounded up so every tensor starts 64-byte aligned.
    private static func padded(_ shape: Shape) -> Int { (shape.count + 15) / 16 * 16 }

    /// Registers a tensor; `gradient: false` for values nothing back-propagates into.
    mutating func add(_ shape: Shape, gradient: Bool = true) -> Int {
        shapes.append(shape)
        valueOffsets.append(valueCount)
        valueCount += ActivationArena.padded(shape)
        hasGradient.append(gradient)
        gradientOffsets.append(nil)
        if gradient { unsharedGradientCount += ActivationArena.padded(shape) }
        return shapes.count - 1
    }

    /// Lifetime (first and last op index) of every slot touched by `accesses` (one list of slots
    /// per op, in execution order); slots in `liveBefore` are live from before the first op.
    static func lifetimes(of accesses: [[Int]], slots: Int, liveBefore: [Int]) -> [ClosedRange<Int>?] {
        var first = [Int?](repeating: nil, count: slots), last = [Int?](repeating: nil, count: slots)
        for slot in liveBefore { first[slot] = -1; last[slot] = -1 }
        for (op, touched) in accesses.enumerated() {
            for slot in touched {
                if first[slot] == nil { first[slot] = op }
                last[slot] = op
            }
        }
        return (0..<slots).map { s in first[s].flatMap { f in last[s].map { f...$0 } } }
    }

    /// Allocates the values, and the gradients with shared offsets: largest first, each at the
    /// lowest offset that overlaps no placed gradient whose lifetime overlaps its own.
    mutating func allocate(gradientLifetimes lifetimes: [ClosedRange<Int>?]) {
        precondition(lifetimes.count == shapes.count)
        var placed: [(range: Range<Int>, life: ClosedRange<Int>)] = []
        let order = shapes.indices.filter { hasGradient[$0] && lifetimes[$0] != nil }
            .sorted { ActivationArena.padded(shapes[$0]) > ActivationArena.padded(shapes[$1]) ||
                      (ActivationArena.padded(shapes[$0]) == ActivationArena.padded(shapes[$1]) && $0 < $1) }
        var end = 0
        for slot in order {
            let size = ActivationArena.padded(shapes[slot]), life = lifetimes[slot]!
            let conflicts = placed.filter { $0.life.overlaps(life) }.map(\.range).sorted { $0.lowerBound < $1.lowerBound }
            var offset = 0
            while let r = conflicts.first(where: { $0.overlaps(offset..<(offset + size)) }) { offset = r.upperBound }
            gradientOffsets[slot] = offset
            placed.append((offset..<(offset + size), life))
            end = max(end, offset + size)
        }
        gradientCount = end
        values = FloatBuffer(count: valueCount)
        gradients = FloatBuffer(count: gradientCount)
    }

    /// The gradient memory of a slot, for tests: offsets and lengths in floats.
    func gradientRange(_ slot: Int) -> Range<Int>? {
        gradientOffsets[slot].map { $0..<($0 + ActivationArena.padded(shapes[slot])) }
    }

    func value(_ slot: Int) -> Tensor { values.view(shapes[slot], offset: valueOffsets[slot]) }

    func gradient(_ slot: Int) -> Tensor {
        guard let offset = gradientOffsets[slot] else {
            preconditionFailure("activation \(slot) keeps no gradient (or no backward op touches it)")
        }
        return gradients.view(shapes[slot], offset: offset)
    }
}

extension ActivationArena {
    /// Bytes of the values, the (shared) gradients and `scratch`, for memory reports.
    func plannedBytes(with scratch: Scratch) -> Int {
        (valueCount + gradientCount + scratch.floatsPerThread * scratch.threadCount + scratch.sharedFloats)
            * MemoryLayout<Float>.stride
    }
}

/// Zeroes a tensor, split over the pool's threads (a gradient right before its first write).
func zeroInParallel(_ t: Tensor, pool: WorkerPool) {
    pool.parallelFor(t.count) { range, _ in (t.data + range.lowerBound).update(repeating: 0, count: range.count) }
}
