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
    /// False for a plan for inference: no gradient memory.
    private(set) var hasGradientMemory = true

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

    /// Allocates the values, and the gradients with shared offsets (`ActivationArena.place`). With
    /// `gradients: false` (a plan for inference) the gradient offsets are laid out but no gradient
    /// memory is allocated, and asking for a gradient stops the program. `valueLifetimes` (only
    /// for inference: backward reads every value) lets values whose lifetimes on the forward pass
    /// do not overlap share memory too; a slot no op touches keeps memory of its own.
    mutating func allocate(gradientLifetimes lifetimes: [ClosedRange<Int>?], gradients allocateGradients: Bool = true,
                           valueLifetimes: [ClosedRange<Int>?]? = nil) {
        precondition(lifetimes.count == shapes.count)
        precondition(valueLifetimes == nil || !allocateGradients, "values are shared only in a plan for inference")
        let sizes = shapes.map(ActivationArena.padded)
        let (offsets, end) = ActivationArena.place(sizes: sizes, lifetimes: shapes.indices.map { hasGradient[$0] ? lifetimes[$0] : nil })
        gradientOffsets = offsets
        gradientCount = allocateGradients ? end : 0
        hasGradientMemory = allocateGradients
        if let valueLifetimes {
            precondition(valueLifetimes.count == shapes.count)
            let always = Int.min...Int.max
            let (shared, total) = ActivationArena.place(sizes: sizes, lifetimes: valueLifetimes.map { $0 ?? always })
            valueOffsets = shared.map { $0! }
            valueCount = total
        }
        values = FloatBuffer(count: valueCount)
        gradients = FloatBuffer(count: gradientCount)
    }

    /// Offsets for buffers of `sizes` floats that share memory where their lifetimes do not
    /// overlap (nil lifetime: no buffer): largest first, each at the lowest offset that overlaps no
    /// placed buffer whose lifetime overlaps its own; and the floats all of them span.
    static func place(sizes: [Int], lifetimes: [ClosedRange<Int>?]) -> (offsets: [Int?], end: Int) {
        precondition(sizes.count == lifetimes.count)
        var placed: [(range: Range<Int>, life: ClosedRange<Int>)] = []
        var offsets = [Int?](repeating: nil, count: sizes.count)
        let order = sizes.indices.filter { lifetimes[$0] != nil }
            .sorted { sizes[$0] > sizes[$1] || (sizes[$0] == sizes[$1] && $0 < $1) }
        var end = 0
        for slot in order {
            let size = sizes[slot], life = lifetimes[slot]!
            let conflicts = placed.filter { $0.life.overlaps(life) }.map(\.range).sorted { $0.lowerBound < $1.lowerBound }
            var offset = 0
            while let r = conflicts.first(where: { $0.overlaps(offset..<(offset + size)) }) { offset = r.upperBound }
            offsets[slot] = offset
            placed.append((offset..<(offset + size), life))
            end = max(end, offset + size)
        }
        return (offsets, end)
    }

    /// The gradient memory of a slot, for tests: offsets and lengths in floats.
    func gradientRange(_ slot: Int) -> Range<Int>? {
        gradientOffsets[slot].map { $0..<($0 + ActivationArena.padded(shapes[slot])) }
    }

    func value(_ slot: Int) -> Tensor { values.view(shapes[slot], offset: valueOffsets[slot]) }

    func gradient(_ slot: Int) -> Tensor {
        precondition(hasGradientMemory, "the activations were planned for inference (no gradients)")
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
