import SegEngine

/// Activations of one planned batch: shapes collected first, then one buffer for all values and
/// one for the gradients of those that need one.
struct ActivationArena {
    private(set) var shapes: [Shape] = []
    private var valueOffsets: [Int] = []
    private var gradientOffsets: [Int?] = []
    private(set) var valueCount = 0
    private(set) var gradientCount = 0
    private var values = FloatBuffer(count: 0)
    private var gradients = FloatBuffer(count: 0)

    /// Registers a tensor; `gradient: false` for values nothing back-propagates into.
    mutating func add(_ shape: Shape, gradient: Bool = true) -> Int {
        // Keep every tensor 64-byte aligned.
        let padded = (shape.count + 15) / 16 * 16
        shapes.append(shape)
        valueOffsets.append(valueCount)
        valueCount += padded
        if gradient {
            gradientOffsets.append(gradientCount)
            gradientCount += padded
        } else {
            gradientOffsets.append(nil)
        }
        return shapes.count - 1
    }

    mutating func allocate() {
        values = FloatBuffer(count: valueCount)
        gradients = FloatBuffer(count: gradientCount)
    }

    func value(_ slot: Int) -> Tensor { values.view(shapes[slot], offset: valueOffsets[slot]) }

    func gradient(_ slot: Int) -> Tensor {
        guard let offset = gradientOffsets[slot] else { preconditionFailure("activation \(slot) keeps no gradient") }
        return gradients.view(shapes[slot], offset: offset)
    }

    func zeroGradients(pool: WorkerPool) {
        let g = gradients
        pool.parallelFor(g.count) { range, _ in
            (g.pointer + range.lowerBound).update(repeating: 0, count: range.count)
        }
    }
}
