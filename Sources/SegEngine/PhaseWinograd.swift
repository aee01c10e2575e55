// Dilated 3x3 convolutions by Winograd on phase planes (issue #17: DeepLabV3+'s dilated ResNet stages).
// A 3x3 convolution with stride 1, dilation d and padding d on a plane whose sides are multiples of d
// reads, for the output at (d*i + a, d*j + b), only inputs of the same phase (a, b): it is d*d
// independent 3x3 convolutions with dilation 1 and padding 1, one on each phase plane
// x[c, a::d, b::d] (H/d x W/d), and those Winograd takes. Per image: gather its d*d phase planes,
// transform them (Winograd.swift's transforms), one GEMM per point, transform back, scatter into y.
// The forward and the input gradient (the forward of dy with the kernel flipped and Cin, Cout
// swapped) run here; the weight gradient stays on the strided kernel (on ResNet-50's layer4, 8 x 8
// phase planes, Winograd's was no faster: docs/PERFORMANCE.md).
// The transformed weights of `block` output channels at a time sit in shared scratch (those of
// layer4's 512 -> 512 would take 16 MiB, more than the memory target allows): each block transforms
// the input again. One image per chunk of work, so the bits depend neither on the thread count nor
// on the batch. The strided kernel (im2col + GEMM) stays the reference; tests hold this one to
// Winograd's rounding bound on the phase planes.

/// Most floats of one block's transformed weights (8 MiB): half of layer4's 512 -> 512 under F(2x2).
public let phaseWinogradSharedFloats = 1 << 21

/// Most per-thread floats (16 MiB) a convolution may take this way: a chunk is a whole image, so its
/// scratch grows with the image (DeepLabV3+(resnet50)'s layer4 at 256 x 256: 3.8 MiB; at 1024 x
/// 1024, F(4x4) on 32 x 32 phase planes: 29 MiB). Larger ones stay on the strided kernel, whose
/// bands keep its scratch small.
public let phaseWinogradMaximumThreadFloats = 1 << 22

/// Blocks and sizes of one phase-plane Winograd convolution (`inChannels` -> `outChannels` as this
/// pass sees them: the input gradient's are the layer's swapped).
public struct PhaseWinogradPlan {
    public let inChannels: Int, outChannels: Int, height: Int, width: Int, dilation: Int
    /// Output channels per pass, whose transformed weights fit `phaseWinogradSharedFloats`.
    public let block: Int
    /// The Winograd plan of one phase plane (`block` output channels, all its tile rows at once).
    let plane: WinogradPlan

    /// `sharedLimit`: the most floats of one block's transformed weights (tests make it small).
    public init(inChannels: Int, outChannels: Int, height: Int, width: Int, dilation: Int, tile: Int,
                policy: ConvPolicy, sharedLimit: Int = phaseWinogradSharedFloats) {
        precondition(dilation >= 2 && height % dilation == 0 && width % dilation == 0,
                     "phase winograd: \(height)x\(width) at dilation \(dilation)")
        self.inChannels = inChannels; self.outChannels = outChannels
        self.height = height; self.width = width; self.dilation = dilation
        let points = (tile + 2) * (tile + 2)
        var b = max(1, outChannels)
        while points * inChannels * b > sharedLimit && b > 1 { b = (b + 1) / 2 }
        block = b
        plane = WinogradPlan(inChannels: inChannels, outChannels: b, height: height / dilation, width: width / dilation,
                             batch: 1, threads: 1, tile: tile, policy: policy)
    }

    var phases: Int { dilation * dilation }
    var tilesPerPhase: Int { plane.tilesHigh * plane.tilesWide }
    /// Tiles of one image (the GEMMs' columns).
    var tiles: Int { phases * tilesPerPhase }
    var points: Int { plane.points }

    /// Per thread: V and M of one image, its gathered phase planes, one block's phase outputs, row buffers.
    public var scratchFloatsPerThread: Int {
        points * (inChannels + block) * tiles + (inChannels + block) * height * width + plane.rowFloats
    }

    /// Shared: one block's transformed weights.
    public var sharedFloats: Int { points * inChannels * block }
}

/// y (N, Cout, H, W) = the 3x3 convolution of x (N, Cin, H, W) with stride 1, dilation d, padding d
/// (+ bias), by Winograd F(tile x tile) on the d*d phase planes. H and W multiples of d.
public func phaseWinogradForward(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?, dilation: Int, tile: Int,
                                 policy: ConvPolicy = .standard, pool: WorkerPool, scratch: Scratch,
                                 sharedLimit: Int = phaseWinogradSharedFloats) {
    precondition(weight.shape == Shape(y.c, x.c, 3, 3) && y.n == x.n && y.h == x.h && y.w == x.w,
                 "phaseWinogradForward: weight \(weight.shape), x \(x.shape), y \(y.shape)")
    if let bias { precondition(bias.count == y.c, "phaseWinogradForward: bias of \(bias.count) for \(y.c) channels") }
    phaseWinograd(y, x, weight: weight, bias: bias, forInputGradient: false, accumulate: false, dilation: dilation,
                  tile: tile, policy: policy, pool: pool, scratch: scratch, sharedLimit: sharedLimit)
}

/// dx (N, Cin, H, W) += (= with `overwrite`) the input gradient of phaseWinogradForward's
/// convolution for dy (N, Cout, H, W).
public func phaseWinogradInputGradient(dx: Tensor, dy: Tensor, weight: Tensor, dilation: Int, tile: Int,
                                       overwrite: Bool = false, policy: ConvPolicy = .standard, pool: WorkerPool,
                                       scratch: Scratch, sharedLimit: Int = phaseWinogradSharedFloats) {
    precondition(weight.shape == Shape(dy.c, dx.c, 3, 3) && dy.n == dx.n && dy.h == dx.h && dy.w == dx.w,
                 "phaseWinogradInputGradient: weight \(weight.shape), dx \(dx.shape), dy \(dy.shape)")
    phaseWinograd(dx, dy, weight: weight, bias: nil, forInputGradient: true, accumulate: !overwrite,
                  dilation: dilation, tile: tile, policy: policy, pool: pool, scratch: scratch, sharedLimit: sharedLimit)
}

/// Floats of per-thread and shared scratch phaseWinogradForward and phaseWinogradInputGradient need.
public func phaseWinogradScratchFloats(inChannels: Int, outChannels: Int, height: Int, width: Int, dilation: Int,
                                       tile: Int, policy: ConvPolicy, sharedLimit: Int = phaseWinogradSharedFloats)
    -> (perThread: Int, shared: Int) {
    func plan(_ cin: Int, _ cout: Int) -> PhaseWinogradPlan {
        PhaseWinogradPlan(inChannels: cin, outChannels: cout, height: height, width: width, dilation: dilation,
                          tile: tile, policy: policy, sharedLimit: sharedLimit)
    }
    let forward = plan(inChannels, outChannels), inputGradient = plan(outChannels, inChannels)
    return (max(forward.scratchFloatsPerThread, inputGradient.scratchFloatsPerThread),
            max(forward.sharedFloats, inputGradient.sharedFloats))
}

/// y (+)= the same-padded 3x3 convolution of each phase plane of x: a block of output channels at a
/// time, one image per chunk.
private func phaseWinograd(_ y: Tensor, _ x: Tensor, weight: Tensor, bias: Tensor?, forInputGradient: Bool,
                           accumulate: Bool, dilation d: Int, tile: Int, policy: ConvPolicy, pool: WorkerPool,
                           scratch: Scratch, sharedLimit: Int) {
    let cin = x.c, cout = y.c, plane = x.shape.plane
    let plan = PhaseWinogradPlan(inChannels: cin, outChannels: cout, height: x.h, width: x.w, dilation: d, tile: tile,
                                 policy: policy, sharedLimit: sharedLimit)
    scratch.require(plan.scratchFloatsPerThread, "phase winograd")
    scratch.requireShared(plan.sharedFloats, "phase winograd")
    let points = plan.points, tiles = plan.tiles, perPhase = plan.tilesPerPhase, phasePlane = plane / plan.phases
    let u = scratch.shared
    for o0 in stride(from: 0, to: cout, by: plan.block) {
        let count = min(plan.block, cout - o0)
        transformAllWeights(weight, into: u, forInputGradient: forInputGradient, tile: tile, columns: o0..<o0 + count,
                            pool: pool)
        let blockBias = bias.map { Tensor($0.data + o0, .vector(count)) }
        pool.parallelForEachItem(x.n) { n, thread in
            let v = scratch.buffer(thread), m = v + points * cin * tiles
            let gathered = m + points * plan.block * tiles, results = gathered + cin * plane
            let rowBuffer = results + plan.block * plane
            gatherPhases(x.sample(n), channels: cin, height: x.h, width: x.w, dilation: d, into: gathered)
            for p in 0..<plan.phases {
                transformInput(gathered + p * cin * phasePlane, channels: cin, plan: plan.plane, rowStart: 0,
                               rows: plan.plane.tilesHigh, into: v + p * perPhase, tiles: tiles, rowBuffer: rowBuffer)
            }
            for xi in 0..<points {
                // M[xi] (block x T) = U[xi] (block x Cin) * V[xi] (Cin x T), U[xi] stored transposed
                Gemm.sgemm(transA: true, transB: false, m: count, n: tiles, k: cin, a: u + xi * count * cin,
                           lda: count, b: v + xi * cin * tiles, ldb: tiles, beta: 0, c: m + xi * count * tiles,
                           ldc: tiles)
            }
            for p in 0..<plan.phases {
                transformOutput(m + p * perPhase, tiles: tiles, into: results + p * count * phasePlane,
                                channels: count, plan: plan.plane, rowStart: 0, rows: plan.plane.tilesHigh,
                                bias: blockBias, accumulate: false, relu: false, rowBuffer: rowBuffer)
            }
            scatterPhases(results, channels: count, into: y.sample(n) + o0 * plane, height: x.h, width: x.w,
                          dilation: d, accumulate: accumulate)
        }
    }
}

/// Calls body(row, phaseRow) for every row of every phase plane of one image (C, H, W) at `image`:
/// row points at the image's row d*i + a from column b (the phase's values are row[d*j]), phaseRow
/// at phases[(a*d + b)][c][i] (W/d values).
@inline(__always)
private func forEachPhaseRow(_ image: UnsafeMutablePointer<Float>, _ phases: UnsafeMutablePointer<Float>, channels: Int,
                             height: Int, width: Int, dilation d: Int,
                             _ body: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) -> Void) {
    let (ph, pw) = (height / d, width / d), phasePlane = ph * pw, plane = height * width
    for a in 0..<d {
        for b in 0..<d {
            let phase = phases + (a * d + b) * channels * phasePlane
            for c in 0..<channels {
                for i in 0..<ph { body(image + c * plane + (d * i + a) * width + b, phase + c * phasePlane + i * pw) }
            }
        }
    }
}

/// phases[(a*d + b)][c][i][j] = x[c][d*i + a][d*j + b] for one image x (C, H, W).
private func gatherPhases(_ x: UnsafeMutablePointer<Float>, channels: Int, height: Int, width: Int, dilation d: Int,
                          into phases: UnsafeMutablePointer<Float>) {
    let pw = width / d
    forEachPhaseRow(x, phases, channels: channels, height: height, width: width, dilation: d) { row, out in
        for j in 0..<pw { out[j] = row[d * j] }
    }
}

/// y[c][d*i + a][d*j + b] (+)= phases[(a*d + b)][c][i][j] for one image y (C, H, W).
private func scatterPhases(_ phases: UnsafeMutablePointer<Float>, channels: Int, into y: UnsafeMutablePointer<Float>,
                           height: Int, width: Int, dilation d: Int, accumulate: Bool) {
    let pw = width / d
    forEachPhaseRow(y, phases, channels: channels, height: height, width: width, dilation: d) { row, values in
        if accumulate {
            for j in 0..<pw { row[d * j] += values[j] }
        } else {
            for j in 0..<pw { row[d * j] = values[j] }
        }
    }
}
