import SegEngine

/// Activations of one planned batch and the gradients of those that need one, in one buffer.
/// Gradients whose lifetimes on the backward tape do not overlap share memory. In a plan for
/// training that shares (`allocateForTraining`), values and gradients are placed together on one
/// timeline (forward, loss, backward), as PyTorch's autograd frees what it saved: a value no
/// backward op reads lives only through the forward ops that touch it, and a value backward reads
/// lives until its last reader, after which gradients may take its memory.
struct ActivationArena {
    private(set) var shapes: [Shape] = []
    private var valueOffsets: [Int] = []
    private var hasGradient: [Bool] = []
    private var gradientOffsets: [Int?] = []
    private(set) var valueCount = 0
    private(set) var gradientCount = 0
    /// What one gradient buffer per activation would take.
    private(set) var unsharedGradientCount = 0
    /// Values and gradients, at `valueOffsets` and `gradientOffsets`.
    private var memory = FloatBuffer(count: 0)
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
    /// do not overlap share memory too; every slot must be touched by some forward op.
    mutating func allocate(gradientLifetimes lifetimes: [ClosedRange<Int>?], gradients allocateGradients: Bool = true,
                           valueLifetimes: [ClosedRange<Int>?]? = nil) {
        precondition(lifetimes.count == shapes.count)
        precondition(valueLifetimes == nil || !allocateGradients, "values are shared only in a plan for inference")
        let sizes = shapes.map(ActivationArena.padded)
        let (offsets, end) = ActivationArena.place(sizes: sizes, lifetimes: shapes.indices.map { hasGradient[$0] ? lifetimes[$0] : nil })
        gradientCount = allocateGradients ? end : 0
        hasGradientMemory = allocateGradients
        if let valueLifetimes {
            precondition(valueLifetimes.count == shapes.count)
            // A slot no forward op touches would keep memory it never uses.
            if let unused = valueLifetimes.firstIndex(where: { $0 == nil }) {
                preconditionFailure("a plan for inference has slot \(unused) \(shapes[unused]), which no forward op touches")
            }
            let (shared, total) = ActivationArena.place(sizes: sizes, lifetimes: valueLifetimes)
            valueOffsets = shared.map { $0! }
            valueCount = total
        }
        // The gradients after the values.
        gradientOffsets = offsets.map { $0.map { $0 + valueCount } }
        memory = FloatBuffer(count: valueCount + gradientCount)
    }

    /// A plan for training whose values and gradients share one buffer: `valueLifetimes` and
    /// `gradientLifetimes` are on one timeline (every op of forward, then the loss, then every op
    /// of backward); two buffers share memory only where their lifetimes do not overlap. A slot
    /// with no value lifetime keeps memory of its own. `valueCount` and `gradientCount` still say
    /// what values alone and gradients alone would span (for reports).
    /// `gradientAliases[b] = a`: b's gradient takes a's memory (same shape; an op that writes b's
    /// gradient over a's, which nothing reads after it): one buffer for the union of their lifetimes.
    mutating func allocateForTraining(valueLifetimes: [ClosedRange<Int>?], gradientLifetimes: [ClosedRange<Int>?],
                                      gradientAliases: [Int: Int] = [:]) {
        precondition(valueLifetimes.count == shapes.count && gradientLifetimes.count == shapes.count)
        let sizes = shapes.map(ActivationArena.padded)
        var gradientLives = shapes.indices.map { hasGradient[$0] ? gradientLifetimes[$0] : nil }
        // Each alias chain's root holds the memory.
        func root(_ slot: Int) -> Int { gradientAliases[slot].map(root) ?? slot }
        for (b, a) in gradientAliases {
            precondition(shapes[b] == shapes[a] && hasGradient[a] && hasGradient[b], "gradient alias \(b) -> \(a)")
            let r = root(a)
            if let life = gradientLives[b] {
                gradientLives[r] = gradientLives[r].map { min($0.lowerBound, life.lowerBound)...max($0.upperBound, life.upperBound) } ?? life
            }
        }
        for b in gradientAliases.keys { gradientLives[b] = nil }
        gradientCount = ActivationArena.place(sizes: sizes, lifetimes: gradientLives).end
        let always = Int.min...Int.max
        let (offsets, end) = ActivationArena.place(sizes: sizes + sizes,
                                                   lifetimes: valueLifetimes.map { $0 ?? always } + gradientLives)
        valueOffsets = offsets[..<shapes.count].map { $0! }
        gradientOffsets = Array(offsets[shapes.count...])
        for b in gradientAliases.keys { gradientOffsets[b] = gradientOffsets[root(b)] }
        hasGradientMemory = true
        memory = FloatBuffer(count: end)
    }

    /// Lays out a model's plan from its forward (`forward`: the slots each forward op touches) and
    /// its backward tape, after checking that the tape reads no gradient before writing it (the
    /// logits' gradient, which the loss writes, aside). With `gradients`, a plan for training: values
    /// and gradients share one buffer when `sharing` (`allocateForTraining`), else every value keeps
    /// its memory and gradients share theirs. Without, a plan for inference.
    /// `gradientAliases` (a plan for training that shares only): as allocateForTraining's.
    mutating func allocate(forward: [[Int]], tape: [TapeOp], logits: Int, gradients: Bool, sharing: Bool,
                           gradientAliases: [Int: Int] = [:]) {
        precondition(gradientAliases.isEmpty || (gradients && sharing), "gradients share memory only in a plan for training")
        for (op, step) in tape.enumerated() {
            for slot in step.reads where slot != logits {
                precondition(tape[..<op].contains { $0.writes.contains(slot) }, "backward tape reads slot \(slot) before writing it")
            }
        }
        let backwardGradients = tape.map { $0.reads + $0.writes }
        if gradients && sharing {
            let lives = ActivationArena.trainingLifetimes(forward: forward, backwardValues: tape.map(\.values),
                                                          backwardGradients: backwardGradients, slots: shapes.count,
                                                          always: [logits])
            allocateForTraining(valueLifetimes: lives.values, gradientLifetimes: lives.gradients,
                                gradientAliases: gradientAliases)
        } else {
            allocate(gradientLifetimes: ActivationArena.lifetimes(of: backwardGradients, slots: shapes.count, liveBefore: [logits]),
                     gradients: gradients,
                     valueLifetimes: gradients ? nil : ActivationArena.lifetimes(of: forward, slots: shapes.count, liveBefore: []))
        }
    }

    /// The lifetimes on a training plan's timeline (`allocateForTraining`): forward op k is time k,
    /// the loss `forward.count`, backward op k `forward.count + 1 + k`. `forward`: the slots each
    /// forward op touches; `backwardValues` and `backwardGradients`: the value slots each backward
    /// op reads and the gradient slots it reads or writes; `always`: slots whose value and gradient
    /// live through all of it (the logits, which the loss reads and writes and callers read after
    /// backward).
    static func trainingLifetimes(forward: [[Int]], backwardValues: [[Int]], backwardGradients: [[Int]],
                                  slots: Int, always: [Int]) -> (values: [ClosedRange<Int>?], gradients: [ClosedRange<Int>?]) {
        precondition(backwardValues.count == backwardGradients.count)
        let f = forward.count, end = f + backwardValues.count
        var values = [[Int]](repeating: [], count: end + 1), gradients = values
        for (op, touched) in forward.enumerated() { values[op] = touched }
        for (op, read) in backwardValues.enumerated() { values[f + 1 + op] = read }
        for (op, touched) in backwardGradients.enumerated() { gradients[f + 1 + op] = touched }
        var valueLives = lifetimes(of: values, slots: slots, liveBefore: [])
        var gradientLives = lifetimes(of: gradients, slots: slots, liveBefore: [])
        for slot in always {
            valueLives[slot] = 0...end
            gradientLives[slot] = 0...end
        }
        return (valueLives, gradientLives)
    }

    /// Offsets for buffers of `sizes` floats that share memory where their lifetimes do not
    /// overlap (nil lifetime: no buffer), and the floats all of them span: each buffer in turn at
    /// the lowest offset that overlaps no placed buffer whose lifetime overlaps its own. Of three
    /// orders, the one that spans least: largest first, longer lifetimes first among equal sizes
    /// (the tie-break saved 32 MiB of 436 in Unet(resnet34)'s plan at 256 px); largest first;
    /// longest-lived first.
    static func place(sizes: [Int], lifetimes: [ClosedRange<Int>?]) -> (offsets: [Int?], end: Int) {
        precondition(sizes.count == lifetimes.count)
        let live = sizes.indices.filter { lifetimes[$0] != nil }
        // Lifetimes may be Int.min...Int.max (kept throughout): compare their bounds, no length.
        func longer(_ a: Int, _ b: Int) -> Bool? {
            let x = lifetimes[a]!, y = lifetimes[b]!
            if x == y { return nil }
            if x.lowerBound == y.lowerBound { return x.upperBound > y.upperBound }
            if x.upperBound == y.upperBound { return x.lowerBound < y.lowerBound }
            let lx = Double(x.upperBound) - Double(x.lowerBound), ly = Double(y.upperBound) - Double(y.lowerBound)
            return lx == ly ? nil : lx > ly
        }
        let orders = [
            live.sorted { a, b in sizes[a] != sizes[b] ? sizes[a] > sizes[b] : (longer(a, b) ?? (a < b)) },
            live.sorted { a, b in sizes[a] != sizes[b] ? sizes[a] > sizes[b] : a < b },
            live.sorted { a, b in longer(a, b) ?? (sizes[a] != sizes[b] ? sizes[a] > sizes[b] : a < b) },
        ]
        return orders.map { place(sizes: sizes, lifetimes: lifetimes, order: $0) }.min { $0.end < $1.end }!
    }

    /// `place(sizes:lifetimes:)` in the given order of the buffers to place.
    private static func place(sizes: [Int], lifetimes: [ClosedRange<Int>?], order: [Int]) -> (offsets: [Int?], end: Int) {
        var placed: [(range: Range<Int>, life: ClosedRange<Int>)] = []
        var offsets = [Int?](repeating: nil, count: sizes.count)
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

    func value(_ slot: Int) -> Tensor { memory.view(shapes[slot], offset: valueOffsets[slot]) }

    func gradient(_ slot: Int) -> Tensor {
        precondition(hasGradientMemory, "the activations were planned for inference (no gradients)")
        guard let offset = gradientOffsets[slot] else {
            preconditionFailure("activation \(slot) keeps no gradient (or no backward op touches it)")
        }
        return memory.view(shapes[slot], offset: offset)
    }
}

extension ActivationArena {
    /// Bytes of the values, the (shared) gradients and `scratch`, for memory reports.
    func plannedParts(with scratch: Scratch) -> PlannedActivationMemory {
        let bytes = MemoryLayout<Float>.stride
        return PlannedActivationMemory(
            values: valueCount * bytes, gradients: (hasGradientMemory ? gradientCount : 0) * bytes,
            valuesAndGradients: memory.count * bytes,
            scratch: (scratch.floatsPerThread * scratch.threadCount + scratch.sharedFloats) * bytes)
    }
}

/// Zeroes a tensor, split over the pool's threads (a gradient right before its first write).
func zeroInParallel(_ t: Tensor, pool: WorkerPool) {
    pool.parallelFor(t.count) { range, _ in (t.data + range.lowerBound).update(repeating: 0, count: range.count) }
}
