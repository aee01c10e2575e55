// Optimizers: SGD (momentum, Nesterov), Adam, AdamW, RAdam, exactly as PyTorch's torch.optim
// computes them (maximize=False, amsgrad=False, dampening=0, RAdam decoupled_weight_decay=False),
// plus global-norm gradient clipping (clip_grad_norm_).
//
// An optimizer is its state (flat buffers with the layout of `ParameterStore.values`) and "apply
// one update". The per-step scalars (bias corrections, RAdam's rectification) are computed once in
// Double; the update is then one elementwise pass over the flat buffers through the worker pool.
// Every element is computed alone, so the result is bitwise the same for any thread count.
// The per-element float operations follow PyTorch's CPU kernels (lerp, addcmul, addcdiv) in order.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum OptimizerKind: String, CaseIterable, Sendable { case sgd, adam, adamw, radam }

public struct OptimizerConfig: Sendable {
    public var kind: OptimizerKind
    /// SGD momentum; 0 is plain SGD (no state).
    public var momentum: Float
    /// SGD Nesterov momentum; needs momentum > 0.
    public var nesterov: Bool
    /// Adam, AdamW, RAdam moment decay rates.
    public var beta1: Float
    public var beta2: Float
    public var epsilon: Float
    /// L2 penalty added to the gradient (sgd, adam, radam); decoupled decay p *= 1 - lr*wd (adamw).
    public var weightDecay: Float
    /// When set, the gradient is scaled to at most this global L2 norm before the update.
    public var clipNorm: Float?

    public init(kind: OptimizerKind, momentum: Float = 0.9, nesterov: Bool = false,
                beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8,
                weightDecay: Float = 0, clipNorm: Float? = nil) {
        self.kind = kind
        self.momentum = momentum
        self.nesterov = nesterov
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.clipNorm = clipNorm
    }

    /// A one-line error naming the flag, for values PyTorch would reject (or that make no sense); nil when valid.
    public static func validate(_ config: OptimizerConfig, learningRate: Float) -> String? {
        func nonNegative(_ x: Float) -> Bool { x.isFinite && x >= 0 }
        if !nonNegative(learningRate) { return "--lr must be >= 0 (got \(learningRate))" }
        if !nonNegative(config.weightDecay) { return "--weight-decay must be >= 0 (got \(config.weightDecay))" }
        if !nonNegative(config.momentum) { return "--momentum must be >= 0 (got \(config.momentum))" }
        if !nonNegative(config.epsilon) { return "the optimizer's epsilon must be >= 0 (got \(config.epsilon))" }
        for (name, beta) in [("beta1", config.beta1), ("beta2", config.beta2)] where !(beta >= 0 && beta < 1) {
            return "invalid \(name) \(beta): must be in [0, 1)"
        }
        if config.nesterov && config.kind != .sgd { return "--nesterov applies only to --optimizer sgd, not \(config.kind)" }
        if config.nesterov && config.momentum == 0 { return "--nesterov needs --momentum > 0" }
        if let clip = config.clipNorm, !(clip.isFinite && clip > 0) {
            return "--clip-norm must be > 0 (got \(clip))"
        }
        return nil
    }
}

public final class Optimizer {
    public let config: OptimizerConfig
    /// Updates applied so far (PyTorch's state "step"); the next update is number step + 1.
    public private(set) var step = 0
    public let parameterCount: Int
    /// The elements `apply` updates (nil: all). Data-parallel ranks each update their share and then
    /// exchange the results; the state buffers are then valid only inside the shard until gathered.
    public var shard: Range<Int>? = nil {
        didSet {
            precondition(shard.map { $0.lowerBound >= 0 && $0.upperBound <= parameterCount } ?? true, "shard out of range")
            updatePieces = pieces(of: shard ?? 0..<parameterCount)
        }
    }

    /// Parameter groups (PyTorch's param_groups, e.g. --encoder-lr-mult): the elements of `range`
    /// update with the learning rate times `scale`; elements in no group with the rate as given.
    /// Ranges must not overlap.
    public var groups: [(range: Range<Int>, scale: Double)] = [] {
        didSet {
            let sorted = groups.map(\.range).sorted { $0.lowerBound < $1.lowerBound }
            precondition(zip(sorted, sorted.dropFirst()).allSatisfy { $0.upperBound <= $1.lowerBound }, "overlapping parameter groups")
            precondition(sorted.allSatisfy { $0.lowerBound >= 0 && $0.upperBound <= parameterCount }, "group out of range")
            updatePieces = pieces(of: shard ?? 0..<parameterCount)
        }
    }

    /// Elements that can be frozen (the encoder, --freeze-encoder). While `frozen`, `apply` skips
    /// them as PyTorch skips a parameter without a gradient: no update, no weight decay, no change
    /// of their state, and their own update count (PyTorch's per-parameter state["step"]), which
    /// Adam's and RAdam's bias corrections use, does not advance: it is `step - frozenSteps`.
    /// So after unfreezing their first update is their step 1, as in PyTorch.
    public var freezable: Range<Int>? = nil {
        didSet {
            precondition(freezable.map { $0.lowerBound >= 0 && $0.upperBound <= parameterCount } ?? true, "freezable range out of range")
            updatePieces = pieces(of: shard ?? 0..<parameterCount)
        }
    }
    /// The `freezable` elements are skipped (see there).
    public var frozen = false
    /// Updates applied while `frozen` (with a `freezable` range): how far the frozen elements'
    /// update count lags `step`. Kept in checkpoints.
    public private(set) var frozenSteps = 0

    /// The shard cut at the groups' and the freezable range's bounds, each piece with its scale
    /// and whether it is freezable (set with shard, groups and freezable, so that `apply`
    /// allocates nothing), and the piece the update kernel runs over with its update count.
    private var updatePieces: [(Range<Int>, Double, freezable: Bool)] = []
    private var active: Range<Int>? = nil
    private var activeStep = 0

    /// SGD with momentum: the velocity ("momentum_buffer").
    private let momentumBuffer: FloatBuffer?
    /// Adam, AdamW, RAdam: first and second moments ("exp_avg", "exp_avg_sq").
    private let expAvg: FloatBuffer?
    private let expAvgSq: FloatBuffer?
    /// Per-chunk partial sums of `globalNorm`, allocated once so `apply` allocates nothing.
    private let normPartials: UnsafeMutableBufferPointer<Double>

    // Hyperparameters as PyTorch sees them: Python floats (doubles) of the decimal the user gave.
    private let beta1: Double, beta2: Double, weightDecay: Double

    public init(_ config: OptimizerConfig, parameterCount: Int) {
        precondition(parameterCount >= 0)
        self.config = config
        self.parameterCount = parameterCount
        let usesMomentum = config.kind == .sgd && config.momentum != 0
        let usesMoments = config.kind != .sgd
        momentumBuffer = usesMomentum ? FloatBuffer(count: parameterCount) : nil
        expAvg = usesMoments ? FloatBuffer(count: parameterCount) : nil
        expAvgSq = usesMoments ? FloatBuffer(count: parameterCount) : nil
        normPartials = .allocate(capacity: max(1, globalNormChunkCount(parameterCount)))
        beta1 = decimalValue(config.beta1)
        beta2 = decimalValue(config.beta2)
        weightDecay = decimalValue(config.weightDecay)
    }

    deinit { normPartials.deallocate() }

    /// Named state buffers for checkpoints, PyTorch names: "momentum_buffer" (sgd with momentum),
    /// "exp_avg", "exp_avg_sq" (adam, adamw, radam). Plain SGD has none.
    public var stateBuffers: [(name: String, buffer: FloatBuffer)] {
        var list: [(name: String, buffer: FloatBuffer)] = []
        if let b = momentumBuffer { list.append(("momentum_buffer", b)) }
        if let b = expAvg { list.append(("exp_avg", b)) }
        if let b = expAvgSq { list.append(("exp_avg_sq", b)) }
        return list
    }

    /// Sets the update counts after the state buffers were loaded from a checkpoint.
    public func restore(step: Int, frozenSteps: Int = 0) {
        precondition(step >= 0, "negative optimizer step \(step)")
        precondition((0...step).contains(frozenSteps), "frozen steps \(frozenSteps) outside 0...\(step)")
        self.step = step
        self.frozenSteps = frozenSteps
    }

    /// The global L2 norm of `gradients` (thread-count independent), with the optimizer's own
    /// preallocated partial sums: no allocation.
    public func gradientNorm(_ gradients: Tensor, pool: WorkerPool) -> Double {
        precondition(gradients.count == parameterCount)
        return globalNorm(gradients, pool: pool, partials: normPartials)
    }

    /// One update of `values` from `gradients` (both flat, `parameterCount` elements; only the
    /// elements of `shard` when set). Clips `gradients` in place first when `clipNorm` is set
    /// (PyTorch's clip_grad_norm_: scale = clipNorm / (norm + 1e-6) when that is below 1), with
    /// `norm` over all of `gradients` even with a shard. `gradientNorm`: that norm when the caller
    /// already computed it (with `gradientNorm(_:pool:)`), so it is not computed twice.
    /// - Returns: the global L2 norm of the gradient before clipping.
    @discardableResult
    public func apply(values: Tensor, gradients: Tensor, learningRate: Float, pool: WorkerPool,
                      gradientNorm known: Double? = nil) -> Double {
        precondition(values.count == parameterCount && gradients.count == parameterCount,
                     "optimizer for \(parameterCount) parameters given \(values.count) values, \(gradients.count) gradients")
        let norm = known ?? globalNorm(gradients, pool: pool, partials: normPartials)
        if let clip = config.clipNorm {
            let scale = Float(Double(clip) / (norm + 1e-6))
            if scale < 1 {
                let g = gradients.data
                forEachInShard(pool) { range in
                    for i in range { g[i] *= scale }
                }
            }
        }
        step += 1
        let skipFrozen = frozen && freezable != nil
        if skipFrozen { frozenSteps += 1 }
        if updatePieces.isEmpty { updatePieces = pieces(of: shard ?? 0..<parameterCount) }
        for (range, scale, inFreezable) in updatePieces where !range.isEmpty && !(inFreezable && skipFrozen) {
            active = range
            activeStep = inFreezable ? step - frozenSteps : step
            let rate = Double(learningRate) * scale
            switch config.kind {
            case .sgd: updateSGD(values, gradients, rate, pool)
            case .adam, .adamw: updateAdam(values, gradients, rate, pool)
            case .radam: updateRAdam(values, gradients, rate, pool)
            }
        }
        active = nil
        return norm
    }

    /// `elements` cut at the groups' bounds, each piece with its learning-rate scale, in order, and
    /// each cut again at the freezable range's bounds.
    private func pieces(of elements: Range<Int>) -> [(Range<Int>, Double, freezable: Bool)] {
        var list: [(Range<Int>, Double)] = []
        var at = elements.lowerBound
        for group in groups.sorted(by: { $0.range.lowerBound < $1.range.lowerBound }) {
            let inside = group.range.clamped(to: elements)
            guard !inside.isEmpty, inside.lowerBound >= at else { continue }
            if inside.lowerBound > at { list.append((at..<inside.lowerBound, 1)) }
            list.append((inside, group.scale))
            at = inside.upperBound
        }
        if at < elements.upperBound { list.append((at..<elements.upperBound, 1)) }
        guard let freezable else { return list.map { ($0.0, $0.1, false) } }
        return list.flatMap { range, scale in
            [range.lowerBound..<max(range.lowerBound, min(range.upperBound, freezable.lowerBound)),
             range.clamped(to: freezable),
             max(range.lowerBound, min(range.upperBound, freezable.upperBound))..<range.upperBound]
                .enumerated().filter { !$0.element.isEmpty }.map { ($0.element, scale, $0.offset == 1) }
        }
    }

    /// `body` over the shard's elements (all without one; within an update, the current group's
    /// part of it), split over the pool's threads.
    private func forEachInShard(_ pool: WorkerPool, _ body: (Range<Int>) -> Void) {
        let elements = active ?? shard ?? 0..<parameterCount
        pool.parallelFor(elements.count) { range, _ in
            body((elements.lowerBound + range.lowerBound)..<(elements.lowerBound + range.upperBound))
        }
    }

    // g += wd*p; buf = mu*buf + g (= g at the first step); g = nesterov ? g + mu*buf : buf; p -= lr*g.
    private func updateSGD(_ values: Tensor, _ gradients: Tensor, _ learningRate: Double, _ pool: WorkerPool) {
        let p = values.data, g = gradients.data
        let lr = Float(learningRate), wd = Float(weightDecay)
        guard let velocity = momentumBuffer?.pointer else {
            forEachInShard(pool) { range in
                for i in range {
                    let d = g[i] + wd * p[i]
                    p[i] = p[i] - lr * d
                }
            }
            return
        }
        // PyTorch sets buf = g at the first step; the buffer starts at zero, so mu*0 + g is that.
        let mu = config.momentum, nesterov = config.nesterov
        forEachInShard(pool) { range in
            for i in range {
                let d = g[i] + wd * p[i]
                let b = velocity[i] * mu + d
                velocity[i] = b
                let update = nesterov ? d + mu * b : b
                p[i] = p[i] - lr * update
            }
        }
    }

    // AdamW: p *= 1 - lr*wd. Adam: g += wd*p. Then m = lerp(m, g, 1-b1); v = b2*v + (1-b2)*g*g;
    // p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps).
    private func updateAdam(_ values: Tensor, _ gradients: Tensor, _ learningRate: Double, _ pool: WorkerPool) {
        let p = values.data, g = gradients.data, m = expAvg!.pointer, v = expAvgSq!.pointer
        let t = Double(activeStep)
        let decoupled = config.kind == .adamw
        let decay = decoupled ? Float(1 - learningRate * weightDecay) : 1
        let l2 = decoupled ? 0 : Float(weightDecay)
        let stepSize = Float(learningRate / (1 - pow(beta1, t)))
        let bias2Sqrt = Float((1 - pow(beta2, t)).squareRoot())
        let b2 = Float(beta2), oneMinusB1 = Float(1 - beta1), oneMinusB2 = Float(1 - beta2)
        let eps = config.epsilon
        // Eight elements at a time, written on lanes: as a plain loop over four pointers LLVM left it
        // scalar (one division and one square root per element: 2.7 % of DeepLabV3+(resnet50)'s step).
        // Each lane does the float operations of the scalar expression in the same order (no fused
        // multiply-add; vector square root and division round as the scalar ones), so the bits are those
        // of the element-by-element loop.
        forEachInShard(pool) { range in
            var i = range.lowerBound
            while i < range.upperBound {
                let n = min(8, range.upperBound - i)
                let param = loadLanes(p + i, n) * decay
                let grad = loadLanes(g + i, n) + l2 * param
                let mOld = loadLanes(m + i, n)
                let mi = mOld + oneMinusB1 * (grad - mOld)
                let vi = loadLanes(v + i, n) * b2 + oneMinusB2 * grad * grad
                storeLanes(mi, m + i, n)
                storeLanes(vi, v + i, n)
                let denom = vi.squareRoot() / bias2Sqrt + eps
                storeLanes(param - stepSize * mi / denom, p + i, n)
                i += n
            }
        }
    }

    // g += wd*p; m, v as Adam; rho_t = rho_inf - 2t b2^t / (1-b2^t). When rho_t > 5:
    // p -= (m / (1-b1^t)) * lr * (sqrt(1-b2^t) / (sqrt(v) + eps)) * r_t, else p -= (m / (1-b1^t)) * lr.
    private func updateRAdam(_ values: Tensor, _ gradients: Tensor, _ learningRate: Double, _ pool: WorkerPool) {
        let p = values.data, g = gradients.data, m = expAvg!.pointer, v = expAvgSq!.pointer
        let t = Double(activeStep)
        let bias1 = 1 - pow(beta1, t), bias2 = 1 - pow(beta2, t)
        let rhoInf = 2 / (1 - beta2) - 1
        let rhoT = rhoInf - 2 * t * pow(beta2, t) / bias2
        let rectified = rhoT > 5
        let rect = rectified ? Float(((rhoT - 4) * (rhoT - 2) * rhoInf / ((rhoInf - 4) * (rhoInf - 2) * rhoT)).squareRoot()) : 0
        let lr = Float(learningRate), l2 = Float(weightDecay)
        let bias1F = Float(bias1), bias2Sqrt = Float(bias2.squareRoot())
        let b2 = Float(beta2), oneMinusB1 = Float(1 - beta1), oneMinusB2 = Float(1 - beta2)
        let eps = config.epsilon
        forEachInShard(pool) { range in
            for i in range {
                let param = p[i]
                let grad = g[i] + l2 * param
                let mi = m[i] + oneMinusB1 * (grad - m[i])
                let vi = v[i] * b2 + oneMinusB2 * grad * grad
                m[i] = mi
                v[i] = vi
                let mHat = mi / bias1F
                if rectified {
                    let adaptive = bias2Sqrt / (vi.squareRoot() + eps)
                    p[i] = param - mHat * lr * adaptive * rect
                } else {
                    p[i] = param - mHat * lr
                }
            }
        }
    }
}

/// PyTorch keeps hyperparameters as Python floats, so 1 - 0.999 is computed from the double 0.999;
/// from the float 0.999 it would be 1.3e-5 off. The shortest decimal that round-trips the float
/// (its description) is the value the user typed, so read that back as a double.
func decimalValue(_ x: Float) -> Double { Double(x.description) ?? Double(x) }

// MARK: - Global norm

/// Elements per partial sum of `globalNorm`. Fixed, so the thread split cannot change the result.
public let globalNormChunkSize = 4096

/// Partial sums `globalNorm` needs for `count` elements.
public func globalNormChunkCount(_ count: Int) -> Int { (count + globalNormChunkSize - 1) / globalNormChunkSize }

/// Global L2 norm of a flat tensor, accumulated in Double over FIXED-SIZE chunks summed in order,
/// so the result is bitwise identical for any thread count. Allocates its partial sums; the
/// optimizer uses the overload with preallocated ones.
public func globalNorm(_ x: Tensor, pool: WorkerPool) -> Double {
    let partials = UnsafeMutableBufferPointer<Double>.allocate(capacity: max(1, globalNormChunkCount(x.count)))
    defer { partials.deallocate() }
    return globalNorm(x, pool: pool, partials: partials)
}

/// `globalNorm` with caller-owned storage for `globalNormChunkCount(x.count)` partial sums.
public func globalNorm(_ x: Tensor, pool: WorkerPool, partials: UnsafeMutableBufferPointer<Double>) -> Double {
    let count = x.count, chunks = globalNormChunkCount(count)
    precondition(partials.count >= chunks, "globalNorm needs \(chunks) partial sums, given \(partials.count)")
    let data = x.data
    pool.parallelFor(chunks) { range, _ in
        for c in range {
            let start = c * globalNormChunkSize
            partials[c] = sumOfSquares(data + start, min(globalNormChunkSize, count - start))
        }
    }
    var total = 0.0
    for c in 0..<chunks { total += partials[c] }
    return total.squareRoot()
}

/// Sum of x[i]^2 in Double, eight lanes at a time then the tail; the order depends only on `count`.
@inline(__always)
private func sumOfSquares(_ x: UnsafeMutablePointer<Float>, _ count: Int) -> Double {
    let raw = UnsafeRawPointer(x)
    var lanes = SIMD8<Double>()
    var i = 0
    while i + 8 <= count {
        let v = SIMD8<Double>(raw.loadUnaligned(fromByteOffset: i * MemoryLayout<Float>.stride, as: SIMD8<Float>.self))
        lanes += v * v
        i += 8
    }
    var sum = lanes.sum()
    while i < count {
        let v = Double(x[i])
        sum += v * v
        i += 1
    }
    return sum
}
