// BatchNorm2d with PyTorch's semantics. Training normalises with the batch statistics and updates
// the running statistics; evaluation normalises with the running statistics. In training (forward
// and backward) the work is split over channels and each channel's sums run over (n, h, w) in one
// fixed order in Double, so the statistics do not depend on the thread count.

@inline(__always) private func checkChannelVector(_ t: Tensor, _ channels: Int, _ name: StaticString,
                                                  _ who: StaticString) {
    precondition(t.count == channels, "\(who): \(name) has \(t.count) elements for \(channels) channels")
}

/// BatchNorm's eps (PyTorch's default), the one value every BatchNorm of segtrain uses; exporters
/// read it here (SegExport's ONNX BatchNormalization).
public let batchNormEpsilon: Float = 1e-5

/// y = gamma * (x - mean) / sqrt(var + eps) + beta per channel.
/// - training: mean and var of the batch over (N, H, W) (biased var for normalising); the running
///   stats are updated r = (1 - momentum) * r + momentum * stat with the UNBIASED var (m / (m - 1),
///   m = N*H*W, which must be > 1); saveMean / saveInvStd receive the batch mean and
///   1 / sqrt(var + eps) for batchNormBackward.
/// - eval: normalises with runningMean / runningVar; nothing else is written.
/// Statistics are accumulated in Double, per channel in a fixed order (thread-count independent).
/// x, y: (N, C, H, W)  gamma, beta, runningMean, runningVar, saveMean, saveInvStd: C elements,
/// e.g. (C, 1, 1, 1).
/// With `synchronized` (SyncBatchNorm, `--sync-bn`) a training forward's statistics are those of
/// the batches of all ranks together (`synchronizedBatchNormForward`).
/// `relu`: a ReLU follows, applied as each value is written (v > 0 ? v : 0, reluForward's
/// expression, so the bits of the two passes), instead of a second pass over y.
public func batchNormForward(_ y: Tensor, _ x: Tensor, gamma: Tensor, beta: Tensor, runningMean: Tensor,
                             runningVar: Tensor, saveMean: Tensor, saveInvStd: Tensor, training: Bool,
                             momentum: Float = 0.1, epsilon: Float = batchNormEpsilon, synchronized: BatchStatisticsSum? = nil,
                             relu: Bool = false, pool: WorkerPool) {
    let who: StaticString = "batchNormForward"
    precondition(y.shape == x.shape, "\(who): y \(y.shape) differs from x \(x.shape)")
    let channels = x.c, plane = x.shape.plane, batch = x.n
    checkChannelVector(gamma, channels, "gamma", who)
    checkChannelVector(beta, channels, "beta", who)
    checkChannelVector(runningMean, channels, "runningMean", who)
    checkChannelVector(runningVar, channels, "runningVar", who)
    checkChannelVector(saveMean, channels, "saveMean", who)
    checkChannelVector(saveInvStd, channels, "saveInvStd", who)

    guard training else {
        pool.parallelFor(batch * channels) { planes, _ in
            for q in planes {
                let c = q % channels
                let scale = gamma[c] / (runningVar[c] + epsilon).squareRoot()
                let mean = runningMean[c], shift = beta[c]
                BatchNormChannel.normalize(y.data + q * plane, x.data + q * plane, count: plane, mean: mean,
                                           scale: scale, shift: shift, relu: relu)
            }
        }
        return
    }

    if let synchronized {
        synchronizedBatchNormForward(y, x, gamma: gamma, beta: beta, runningMean: runningMean, runningVar: runningVar,
                                     saveMean: saveMean, saveInvStd: saveInvStd, momentum: momentum, epsilon: epsilon,
                                     sum: synchronized, relu: relu, pool: pool)
        return
    }
    let m = batch * plane
    precondition(m > 1, "\(who): training needs more than one value per channel, got \(x.shape)")
    pool.parallelFor(channels) { channelRange, _ in
        for c in channelRange {
            let mean = BatchNormChannel.sum(x, c) / Double(m)
            let variance = BatchNormChannel.squaredDeviations(x, c, from: mean) / Double(m)
            BatchNormChannel.finish(y, x, c, mean: mean, variance: variance, count: Double(m), gamma: gamma, beta: beta,
                                    runningMean: runningMean, runningVar: runningVar, saveMean: saveMean,
                                    saveInvStd: saveInvStd, momentum: momentum, epsilon: epsilon, relu: relu)
        }
    }
}

/// One channel's pieces of the training forward and backward, shared by BatchNorm and SyncBatchNorm
/// (which sums the pieces over the ranks in between). Sums in Double over (n, h, w) in one order.
enum BatchNormChannel {
    /// Two sums over a channel's `batch` planes of `plane` values, in Double on eight lanes: lane l
    /// takes the terms at i = l (mod 8) of each plane's first plane - plane % 8 values (`lanes(n, i)`
    /// gives the terms of i..<i+8), a ninth sum the rest (`one(n, i)`), and the lanes are added in
    /// lane order at the end. One fixed order, whatever the threads; and eight independent chains
    /// of additions instead of one, which ran at one value per addition's latency (BatchNorm took
    /// 18 % of a MobileNetV2 UNet's step on a Zen 5, most of it in these sums).
    @inline(__always) static func laneSums(batch: Int, plane: Int,
                                           _ lanes: (_ n: Int, _ i: Int) -> (SIMD8<Double>, SIMD8<Double>),
                                           _ one: (_ n: Int, _ i: Int) -> (Double, Double)) -> (Double, Double) {
        var a = SIMD8<Double>(), b = SIMD8<Double>(), restA = 0.0, restB = 0.0
        let whole = plane - plane % 8
        for n in 0..<batch {
            var i = 0
            while i < whole {
                let t = lanes(n, i)
                a += t.0
                b += t.1
                i += 8
            }
            while i < plane {
                let t = one(n, i)
                restA += t.0
                restB += t.1
                i += 1
            }
        }
        var sumA = 0.0, sumB = 0.0
        for l in 0..<8 {
            sumA += a[l]
            sumB += b[l]
        }
        return (sumA + restA, sumB + restB)
    }

    /// The sum of channel c's values.
    @inline(__always) static func sum(_ x: Tensor, _ c: Int) -> Double {
        laneSums(batch: x.n, plane: x.shape.plane, { n, i in
            (SIMD8<Double>(loadLanes(x.plane(n, c) + i, 8)), SIMD8<Double>())
        }, { n, i in (Double(x.plane(n, c)[i]), 0) }).0
    }

    /// The sum of channel c's squared deviations from `mean`.
    @inline(__always) static func squaredDeviations(_ x: Tensor, _ c: Int, from mean: Double) -> Double {
        let means = SIMD8<Double>(repeating: mean)
        return laneSums(batch: x.n, plane: x.shape.plane, { n, i in
            let d = SIMD8<Double>(loadLanes(x.plane(n, c) + i, 8)) - means
            return (d * d, SIMD8<Double>())
        }, { n, i in
            let d = Double(x.plane(n, c)[i]) - mean
            return (d * d, 0)
        }).0
    }

    /// Saves the statistics, updates the running ones (the variance unbiased with `count` values)
    /// and writes channel c of y (through a ReLU with `relu`).
    @inline(__always) static func finish(_ y: Tensor, _ x: Tensor, _ c: Int, mean: Double, variance: Double, count: Double,
                                         gamma: Tensor, beta: Tensor, runningMean: Tensor, runningVar: Tensor,
                                         saveMean: Tensor, saveInvStd: Tensor, momentum: Float, epsilon: Float,
                                         relu: Bool) {
        let invStd = 1 / (variance + Double(epsilon)).squareRoot()
        saveMean[c] = Float(mean)
        saveInvStd[c] = Float(invStd)
        runningMean[c] = (1 - momentum) * runningMean[c] + momentum * Float(mean)
        runningVar[c] = (1 - momentum) * runningVar[c] + momentum * Float(variance * count / (count - 1))
        let meanF = Float(mean), scale = gamma[c] * Float(invStd), shift = beta[c]
        for n in 0..<x.n {
            normalize(y.plane(n, c), x.plane(n, c), count: x.shape.plane, mean: meanF, scale: scale, shift: shift,
                      relu: relu)
        }
    }

    /// dst[i] = (src[i] - mean) * scale + shift, through a ReLU (v > 0 ? v : 0, reluForward's
    /// expression) with `relu`: the one expression of the forwards and the recompute, so they agree
    /// bit for bit.
    @inline(__always) static func normalize(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int,
                                            mean: Float, scale: Float, shift: Float, relu: Bool) {
        if relu {
            for i in 0..<count {
                let v = (src[i] - mean) * scale + shift
                dst[i] = v > 0 ? v : 0
            }
        } else {
            for i in 0..<count { dst[i] = (src[i] - mean) * scale + shift }
        }
    }

    /// A ReLU after the BatchNorm, in its backward: dy is the ReLU output's gradient, taken as 0
    /// where the forward's pre-activation (x - mean) * scale + shift (scale = gamma * invStd, the
    /// training forward's expression) was not positive, as reluBackwardInPlace would have set it.
    struct ReluMask {
        let mean: Float, scale: Float, shift: Float
        /// u where x's pre-activation was positive, else 0 (load u and x first: then a select).
        @inline(__always) func pass(_ u: Float, x: Float) -> Float { (x - mean) * scale + shift > 0 ? u : 0 }
        /// The same on eight values (the same float operations lane by lane).
        @inline(__always) func pass(_ u: Lanes, x: Lanes) -> Lanes {
            Lanes().replacing(with: u, where: (x - mean) * scale + shift .> 0)
        }
    }

    /// sum(dy) and sum(dy * xhat) of channel c, xhat from the saved statistics; dy masked by `relu`.
    @inline(__always) static func gradientSums(_ dy: Tensor, _ x: Tensor, _ c: Int, mean: Float,
                                               invStd: Float, relu: ReluMask? = nil) -> (dy: Double, dyXhat: Double) {
        if let relu {
            // A select, not a branch (the mask is as random as the data); adding +0 changes no sum.
            return laneSums(batch: x.n, plane: x.shape.plane, { n, i in
                let v = loadLanes(x.plane(n, c) + i, 8)
                let g = SIMD8<Double>(relu.pass(loadLanes(dy.plane(n, c) + i, 8), x: v))
                return (g, g * SIMD8<Double>((v - mean) * invStd))
            }, { n, i in
                let v = x.plane(n, c)[i]
                let g = Double(relu.pass(dy.plane(n, c)[i], x: v))
                return (g, g * Double((v - mean) * invStd))
            })
        }
        return dyAndDyXhatSums(dy, x, c, mean: mean, invStd: invStd)
    }

    /// sum(dy) and sum(dy * xhat) of channel c with xhat = (x - mean) * invStd (float), no mask.
    @inline(__always) static func dyAndDyXhatSums(_ dy: Tensor, _ x: Tensor, _ c: Int, mean: Float,
                                                  invStd: Float) -> (dy: Double, dyXhat: Double) {
        laneSums(batch: x.n, plane: x.shape.plane, { n, i in
            let g = SIMD8<Double>(loadLanes(dy.plane(n, c) + i, 8))
            return (g, g * SIMD8<Double>((loadLanes(x.plane(n, c) + i, 8) - mean) * invStd))
        }, { n, i in
            let g = Double(dy.plane(n, c)[i])
            return (g, g * Double((x.plane(n, c)[i] - mean) * invStd))
        })
    }

    /// dx += gamma * invStd * (dy - mean(dy) - xhat * mean(dy * xhat)) for channel c; with
    /// `overwrite`, dx = that (dx may then be dy's memory: see batchNormBackward).
    @inline(__always) static func addInputGradient(_ dx: Tensor, _ dy: Tensor, _ x: Tensor, _ c: Int, mean: Float,
                                                   invStd: Float, gamma: Float, meanDy: Float, meanDyXhat: Float,
                                                   overwrite: Bool = false, relu: ReluMask? = nil) {
        let k = gamma * invStd, count = x.shape.plane
        // dy masked by the ReLU's pre-activation where one follows (+0, as reluBackwardInPlace's).
        @inline(__always) func write(_ grad: UnsafeMutablePointer<Float>, reading up: UnsafeMutablePointer<Float>,
                                         _ src: UnsafeMutablePointer<Float>) {
            // + 0: the bits of adding into a zeroed gradient (-0 becomes +0).
            if let relu {
                for i in 0..<count {
                    let u = up[i], v = src[i]
                    grad[i] = k * (relu.pass(u, x: v) - meanDy - (v - mean) * invStd * meanDyXhat) + 0
                }
            } else {
                for i in 0..<count { grad[i] = k * (up[i] - meanDy - (src[i] - mean) * invStd * meanDyXhat) + 0 }
            }
        }
        for n in 0..<x.n {
            let up = dy.plane(n, c), src = x.plane(n, c), grad = dx.plane(n, c)
            if overwrite {
                // dx may be dy's own memory: the loop then reads and writes through one pointer and
                // vectorises (with two that overlap, the compiler's runtime check takes the scalar loop).
                if up == grad { write(grad, reading: grad, src) } else { write(grad, reading: up, src) }
            } else if let relu {
                for i in 0..<count {
                    let u = up[i], v = src[i]
                    grad[i] += k * (relu.pass(u, x: v) - meanDy - (v - mean) * invStd * meanDyXhat)
                }
            } else {
                for i in 0..<count { grad[i] += k * (up[i] - meanDy - (src[i] - mean) * invStd * meanDyXhat) }
            }
        }
    }
}

/// Training-mode backward (the batch statistics depend on x). With xhat = (x - mean) * invStd and
/// m = N*H*W per channel:
/// dbeta += sum(dy), dgamma += sum(dy * xhat),
/// dx += gamma * invStd * (dy - sum(dy) / m - xhat * sum(dy * xhat) / m); dx nil skips it.
/// x, dx, dy: (N, C, H, W)  gamma, saveMean, saveInvStd (from the training forward), dgamma, dbeta:
/// C elements. Sums in Double per channel in a fixed order (thread-count independent).
/// With `synchronized` (the forward's), the sums in dx run over the batches of all ranks; dgamma and
/// dbeta stay this rank's (the gradient's allreduce adds the others').
/// `overwrite`: dx = ... instead of dx += ..., the same bits as adding into a zeroed dx; dx may then
/// be dy's own memory (a plan for training lets the input gradient take the output gradient's).
/// `reluBeta` (the layer's beta): the forward's output went through a ReLU and dy is the ReLU
/// output's gradient, masked here from x in the same passes (the bits of reluBackwardInPlace with
/// the kept output, then this without; dy is left as it is): no output to keep, one pass less.
public func batchNormBackward(dx: Tensor?, dgamma: Tensor, dbeta: Tensor, dy: Tensor, x: Tensor, gamma: Tensor,
                              saveMean: Tensor, saveInvStd: Tensor, synchronized: BatchStatisticsSum? = nil,
                              overwrite: Bool = false, reluBeta: Tensor? = nil, pool: WorkerPool) {
    let who: StaticString = "batchNormBackward"
    precondition(dy.shape == x.shape, "\(who): dy \(dy.shape) differs from x \(x.shape)")
    if let dx { precondition(dx.shape == x.shape, "\(who): dx \(dx.shape) differs from x \(x.shape)") }
    let channels = x.c, plane = x.shape.plane, batch = x.n
    checkChannelVector(dgamma, channels, "dgamma", who)
    checkChannelVector(dbeta, channels, "dbeta", who)
    checkChannelVector(gamma, channels, "gamma", who)
    checkChannelVector(saveMean, channels, "saveMean", who)
    checkChannelVector(saveInvStd, channels, "saveInvStd", who)
    if let reluBeta { checkChannelVector(reluBeta, channels, "reluBeta", who) }
    if let synchronized, dx != nil {
        synchronizedBatchNormBackward(dx: dx!, dgamma: dgamma, dbeta: dbeta, dy: dy, x: x, gamma: gamma,
                                      saveMean: saveMean, saveInvStd: saveInvStd, sum: synchronized,
                                      overwrite: overwrite, reluBeta: reluBeta, pool: pool)
        return
    }
    let m = batch * plane
    guard m > 0 else { return }

    pool.parallelFor(channels) { channelRange, _ in
        for c in channelRange {
            let mean = saveMean[c], invStd = saveInvStd[c]
            let relu = reluBeta.map { BatchNormChannel.ReluMask(mean: mean, scale: gamma[c] * invStd, shift: $0[c]) }
            let sums = BatchNormChannel.gradientSums(dy, x, c, mean: mean, invStd: invStd, relu: relu)
            dbeta[c] += Float(sums.dy)
            dgamma[c] += Float(sums.dyXhat)
            guard let dx else { continue }
            BatchNormChannel.addInputGradient(dx, dy, x, c, mean: mean, invStd: invStd, gamma: gamma[c],
                                              meanDy: Float(sums.dy / Double(m)), meanDyXhat: Float(sums.dyXhat / Double(m)),
                                              overwrite: overwrite, relu: relu)
        }
    }
}

/// Evaluation-mode backward (PyTorch model.eval(): the forward normalised with the running
/// statistics, which do not depend on x). With invStd = 1 / sqrt(runningVar + eps) and
/// xhat = (x - runningMean) * invStd per channel:
/// dx += dy * gamma * invStd, dgamma += sum(dy * xhat), dbeta += sum(dy).
/// A frozen layer (fine-tuning with --freeze-encoder: weights and statistics fixed) passes nil for
/// dgamma and dbeta and gets only dx; nil dx skips the input gradient. Nothing else is written.
/// Split over channels; each channel's sums run in Double over (n, h, w) in one fixed order, so the
/// results are bitwise the same for any thread count. `overwrite` as batchNormBackward's.
/// x, dx, dy: (N, C, H, W)  gamma, runningMean, runningVar, dgamma, dbeta: C elements.
public func batchNormEvalBackward(dx: Tensor?, dgamma: Tensor?, dbeta: Tensor?, dy: Tensor, x: Tensor, gamma: Tensor,
                                  runningMean: Tensor, runningVar: Tensor, epsilon: Float = batchNormEpsilon,
                                  overwrite: Bool = false, pool: WorkerPool) {
    let who: StaticString = "batchNormEvalBackward"
    precondition(dy.shape == x.shape, "\(who): dy \(dy.shape) differs from x \(x.shape)")
    if let dx { precondition(dx.shape == x.shape, "\(who): dx \(dx.shape) differs from x \(x.shape)") }
    let channels = x.c, plane = x.shape.plane, batch = x.n
    if let dgamma { checkChannelVector(dgamma, channels, "dgamma", who) }
    if let dbeta { checkChannelVector(dbeta, channels, "dbeta", who) }
    checkChannelVector(gamma, channels, "gamma", who)
    checkChannelVector(runningMean, channels, "runningMean", who)
    checkChannelVector(runningVar, channels, "runningVar", who)

    pool.parallelFor(channels) { channelRange, _ in
        for c in channelRange {
            // The same float expression as the evaluation forward's scale, divided by gamma.
            let invStd = 1 / (runningVar[c] + epsilon).squareRoot()
            let mean = runningMean[c]
            if dgamma != nil || dbeta != nil {
                let sums = BatchNormChannel.dyAndDyXhatSums(dy, x, c, mean: mean, invStd: invStd)
                if let dbeta { dbeta[c] += Float(sums.dy) }
                if let dgamma { dgamma[c] += Float(sums.dyXhat) }
            }
            guard let dx else { continue }
            let scale = gamma[c] / (runningVar[c] + epsilon).squareRoot()
            for n in 0..<batch {
                let up = dy.plane(n, c), grad = dx.plane(n, c)
                if overwrite {
                    for i in 0..<plane { grad[i] = up[i] * scale + 0 }
                } else {
                    for i in 0..<plane { grad[i] += up[i] * scale }
                }
            }
        }
    }
}

/// Reference evaluation-mode forward and backward: plain loops, Double arithmetic throughout.
/// Writes y = gamma (x - runningMean) / sqrt(runningVar + eps) + beta and, when dy is given, adds the
/// gradients batchNormEvalBackward adds (each output if given). Shapes as batchNormEvalBackward.
public func batchNormEvalNaive(y: Tensor, dx: Tensor?, dgamma: Tensor?, dbeta: Tensor?, dy: Tensor?, x: Tensor,
                               gamma: Tensor, beta: Tensor, runningMean: Tensor, runningVar: Tensor,
                               epsilon: Float = batchNormEpsilon) {
    precondition(y.shape == x.shape, "batchNormEvalNaive: y \(y.shape) differs from x \(x.shape)")
    for c in 0..<x.c {
        let invStd = 1 / (Double(runningVar[c]) + Double(epsilon)).squareRoot()
        var sumDy = 0.0, sumDyXhat = 0.0
        for n in 0..<x.n {
            for i in 0..<x.h {
                for j in 0..<x.w {
                    let xhat = (Double(x[n, c, i, j]) - Double(runningMean[c])) * invStd
                    y[n, c, i, j] = Float(Double(gamma[c]) * xhat + Double(beta[c]))
                    guard let dy else { continue }
                    let g = Double(dy[n, c, i, j])
                    sumDy += g
                    sumDyXhat += g * xhat
                    if let dx { dx[n, c, i, j] = Float(Double(dx[n, c, i, j]) + g * Double(gamma[c]) * invStd) }
                }
            }
        }
        if let dbeta { dbeta[c] = Float(Double(dbeta[c]) + sumDy) }
        if let dgamma { dgamma[c] = Float(Double(dgamma[c]) + sumDyXhat) }
    }
}

/// The output of a training-mode batchNormForward again, from the statistics it saved (a plan
/// for training recomputes BatchNorm's output in backward instead of keeping it): the same
/// expression, y = (x - saveMean) * (gamma * saveInvStd) + beta, so the same bits; with `relu`,
/// reluForward's max(y, 0) in the same pass. (Evaluation mode: batchNormForward(training: false)
/// again, which reads the running statistics and changes nothing.)
/// y, x: (N, C, H, W)  gamma, beta, saveMean, saveInvStd: C values
public func batchNormRecompute(_ y: Tensor, _ x: Tensor, gamma: Tensor, beta: Tensor, saveMean: Tensor,
                               saveInvStd: Tensor, relu: Bool, pool: WorkerPool) {
    let who: StaticString = "batchNormRecompute"
    precondition(y.shape == x.shape, "\(who): y \(y.shape) differs from x \(x.shape)")
    let channels = x.c, plane = x.shape.plane
    checkChannelVector(gamma, channels, "gamma", who)
    checkChannelVector(beta, channels, "beta", who)
    checkChannelVector(saveMean, channels, "saveMean", who)
    checkChannelVector(saveInvStd, channels, "saveInvStd", who)
    pool.parallelFor(x.n * channels) { planes, _ in
        for q in planes {
            let c = q % channels
            let mean = saveMean[c], scale = gamma[c] * saveInvStd[c], shift = beta[c]
            BatchNormChannel.normalize(y.data + q * plane, x.data + q * plane, count: plane, mean: mean, scale: scale,
                                       shift: shift, relu: relu)
        }
    }
}

/// The ReLU after a BatchNorm, backward, without its output: zeroes dy where the output was not
/// positive, from the pre-activation recomputed from x with the forward's own expression (training:
/// the saved statistics, as batchNormRecompute; evaluation: the running ones, as
/// batchNormForward(training: false)), so exactly where reluBackwardInPlace(dy, y:) zeroes it. A
/// plan for training then need not keep or recompute the output for this.
/// dy, x: (N, C, H, W)  gamma, beta, runningMean, runningVar, saveMean, saveInvStd: C values
public func batchNormReluBackwardInPlace(_ dy: Tensor, x: Tensor, gamma: Tensor, beta: Tensor, runningMean: Tensor,
                                         runningVar: Tensor, saveMean: Tensor, saveInvStd: Tensor, training: Bool,
                                         epsilon: Float = batchNormEpsilon, pool: WorkerPool) {
    let who: StaticString = "batchNormReluBackwardInPlace"
    precondition(dy.shape == x.shape, "\(who): dy \(dy.shape) differs from x \(x.shape)")
    let channels = x.c, plane = x.shape.plane
    checkChannelVector(gamma, channels, "gamma", who)
    checkChannelVector(beta, channels, "beta", who)
    checkChannelVector(runningMean, channels, "runningMean", who)
    checkChannelVector(runningVar, channels, "runningVar", who)
    checkChannelVector(saveMean, channels, "saveMean", who)
    checkChannelVector(saveInvStd, channels, "saveInvStd", who)
    pool.parallelFor(x.n * channels) { planes, _ in
        for q in planes {
            let c = q % channels
            let mask = training
                ? BatchNormChannel.ReluMask(mean: saveMean[c], scale: gamma[c] * saveInvStd[c], shift: beta[c])
                : BatchNormChannel.ReluMask(mean: runningMean[c], scale: gamma[c] / (runningVar[c] + epsilon).squareRoot(),
                                            shift: beta[c])
            let src = x.data + q * plane, g = dy.data + q * plane
            for i in 0..<plane {
                let u = g[i], v = src[i]
                g[i] = mask.pass(u, x: v)
            }
        }
    }
}
