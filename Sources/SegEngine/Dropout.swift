// Dropout in training mode: PyTorch nn.Dropout(p), y = x * mask * (1 / (1 - p)) with mask ~
// Bernoulli(1 - p) per element; PyTorch multiplies by the Float 1 / (1 - p) (its noise tensor), so
// a kept value is x * (1 / (1 - p)), not x / (1 - p). p = 1 gives zeros, p = 0 a copy.
//
// The mask is not drawn from a generator's sequence but hashed from a counter: element e (c * H*W +
// pixel) of the image at global batch position P keeps iff a uniform in [0, 1) made from
// (seed, stream, step, P, e) is >= p. It is therefore a pure function of those values: a run
// reproduces, any thread count gives the same mask, and N data-parallel ranks holding parts of a
// global batch draw exactly the masks one rank holding the whole batch would. Nothing is stored:
// the backward recomputes the mask. Work is split over the N*C planes.

/// What a training forward's dropout masks derive from, besides the layer's stream and the element.
public struct DropoutDraw: Equatable, Sendable {
    /// The run's seed.
    public var seed: UInt64
    /// Unique per training forward (the trainer sets it from epoch and batch).
    public var step: UInt64
    /// Position in the global batch of this rank's image 0.
    public var firstPosition: Int
    /// Image k of this rank's batch has global position firstPosition + k * positionStride.
    public var positionStride: Int

    public init(seed: UInt64 = 0, step: UInt64 = 0, firstPosition: Int = 0, positionStride: Int = 1) {
        self.seed = seed
        self.step = step
        self.firstPosition = firstPosition
        self.positionStride = positionStride
    }
}

private let golden: UInt64 = 0x9E37_79B9_7F4A_7C15

/// SplitMix64's finaliser: a bijective 64-bit mix.
@inline(__always) private func mix(_ value: UInt64) -> UInt64 {
    var z = value
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// The key of image k's masks: (seed, stream, step, global position) chained through the mix.
@inline(__always) private func dropoutImageKey(_ draw: DropoutDraw, stream: UInt64, image k: Int) -> UInt64 {
    let position = UInt64(bitPattern: Int64(draw.firstPosition + k * draw.positionStride))
    return mix(mix(mix(mix(draw.seed &+ golden) ^ stream) ^ draw.step) ^ position)
}

/// Element `element` of the image keyed `key` is kept: the element-th SplitMix64 output of the key
/// as a uniform with 24 bits in [0, 1), compared with p.
@inline(__always) private func dropoutKeeps(key: UInt64, element: Int, probability: Float) -> Bool {
    let bits = mix(key &+ (UInt64(bitPattern: Int64(element)) &+ 1) &* golden)
    return Float(bits >> 40) * (1.0 / 16_777_216.0) >= probability
}

@inline(__always) private func checkDropout(_ a: Tensor, _ b: Tensor, _ probability: Float, _ who: StaticString) {
    precondition(probability >= 0 && probability <= 1, "\(who): probability \(probability) must be in [0, 1]")
    precondition(a.shape == b.shape, "\(who): shapes \(a.shape) and \(b.shape) differ")
}

/// Whether dropout keeps element `element` (c * H*W + pixel) of image k of this rank's batch: a
/// pure function of (draw.seed, stream, draw.step, global position, element) and p.
public func dropoutKeeps(_ draw: DropoutDraw, stream: UInt64, probability: Float, image k: Int, element: Int) -> Bool {
    dropoutKeeps(key: dropoutImageKey(draw, stream: stream, image: k), element: element, probability: probability)
}

// MARK: - Fast

/// y = x * mask * (1 / (1 - p)); p == 0 copies, p == 1 zeroes. y may be x (in place).
/// x, y: (N, C, H, W), image k of the batch at global position draw.firstPosition + k * draw.positionStride.
public func dropoutForward(_ y: Tensor, _ x: Tensor, probability: Float, draw: DropoutDraw, stream: UInt64,
                           pool: WorkerPool) {
    checkDropout(y, x, probability, "dropoutForward")
    let plane = x.shape.plane, channels = x.c
    let scale = 1 / (1 - probability)
    pool.parallelFor(x.n * channels) { planes, _ in
        for q in planes {
            let src = x.data + q * plane, dst = y.data + q * plane
            if probability == 0 {
                if src != dst { dst.update(from: src, count: plane) }
                continue
            }
            if probability == 1 {
                dst.update(repeating: 0, count: plane)
                continue
            }
            let key = dropoutImageKey(draw, stream: stream, image: q / channels)
            let first = (q % channels) * plane
            for i in 0..<plane {
                dst[i] = dropoutKeeps(key: key, element: first + i, probability: probability) ? src[i] * scale : 0
            }
        }
    }
}

/// dx += dy * mask * (1 / (1 - p)), the mask recomputed from the same draw and stream.
/// dx, dy: (N, C, H, W)
public func dropoutBackward(dx: Tensor, dy: Tensor, probability: Float, draw: DropoutDraw, stream: UInt64,
                            pool: WorkerPool) {
    checkDropout(dx, dy, probability, "dropoutBackward")
    if probability == 1 { return }
    let plane = dx.shape.plane, channels = dx.c
    let scale = 1 / (1 - probability)
    pool.parallelFor(dx.n * channels) { planes, _ in
        for q in planes {
            let grad = dx.data + q * plane, up = dy.data + q * plane
            if probability == 0 {
                for i in 0..<plane { grad[i] += up[i] }
                continue
            }
            let key = dropoutImageKey(draw, stream: stream, image: q / channels)
            let first = (q % channels) * plane
            for i in 0..<plane where dropoutKeeps(key: key, element: first + i, probability: probability) {
                grad[i] += up[i] * scale
            }
        }
    }
}

// MARK: - Naive

/// Reference for dropoutForward: dropoutKeeps per element.  x, y: (N, C, H, W)
public func dropoutForwardNaive(_ y: Tensor, _ x: Tensor, probability: Float, draw: DropoutDraw, stream: UInt64) {
    checkDropout(y, x, probability, "dropoutForwardNaive")
    let plane = x.shape.plane
    for n in 0..<x.n {
        for c in 0..<x.c {
            for i in 0..<x.h {
                for j in 0..<x.w {
                    let keep = dropoutKeeps(draw, stream: stream, probability: probability, image: n,
                                            element: c * plane + i * x.w + j)
                    y[n, c, i, j] = keep ? x[n, c, i, j] * (1 / (1 - probability)) : 0
                }
            }
        }
    }
}

/// Reference for dropoutBackward: dropoutKeeps per element.  dx, dy: (N, C, H, W)
public func dropoutBackwardNaive(dx: Tensor, dy: Tensor, probability: Float, draw: DropoutDraw, stream: UInt64) {
    checkDropout(dx, dy, probability, "dropoutBackwardNaive")
    let plane = dx.shape.plane
    for n in 0..<dx.n {
        for c in 0..<dx.c {
            for i in 0..<dx.h {
                for j in 0..<dx.w {
                    let keep = dropoutKeeps(draw, stream: stream, probability: probability, image: n,
                                            element: c * plane + i * dx.w + j)
                    if keep { dx[n, c, i, j] += dy[n, c, i, j] * (1 / (1 - probability)) }
                }
            }
        }
    }
}
