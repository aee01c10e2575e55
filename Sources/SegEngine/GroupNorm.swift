// GroupNorm with PyTorch's nn.GroupNorm semantics (issue #18): the C channels of each sample are cut
// into G groups of C/G consecutive channels; each (sample, group) is normalised with its own mean
// and biased variance over (C/G, H, W), then scaled and shifted per channel (affine weight gamma,
// bias beta). Nothing depends on the other samples of the batch, so training and evaluation are the
// same computation, there are no running statistics, and a data-parallel run on N ranks computes
// exactly what one rank computes on the whole batch (BatchNorm's statistics are per rank).
//
// The forward is split over the (n, g) pairs; each pair's sums run in Double over its C/G * H * W
// values (contiguous in NCHW) in one fixed order. The backward's per-channel parameter gradients
// are split over channels and sum over (n, h, w) in a fixed order; its input gradient is split
// over the (n, g) pairs. So every result is bitwise the same for any thread count.

/// The number of groups segtrain's UNet uses for `channels` channels: 32 (the GroupNorm paper's and
/// PyTorch examples' default), or fewer when the channels are few or 32 does not divide them —
/// the largest G <= 32 that divides C. E.g. 64 -> 32, 48 -> 24, 16 -> 16, 4 -> 4, 3 -> 3,
/// 37 -> 1 (then one group per sample: LayerNorm over (C, H, W)).
public func groupNormGroups(channels: Int) -> Int {
    precondition(channels >= 1, "groupNormGroups: \(channels) channels")
    var groups = min(32, channels)
    while channels % groups != 0 { groups -= 1 }
    return groups
}

@inline(__always) private func checkGroupNormShapes(_ x: Tensor, groups: Int, gamma: Tensor, saveMean: Tensor,
                                                    saveInvStd: Tensor, _ who: StaticString) {
    precondition(groups >= 1 && x.c % groups == 0, "\(who): \(groups) groups do not divide \(x.c) channels")
    precondition(gamma.count == x.c, "\(who): gamma has \(gamma.count) elements for \(x.c) channels")
    precondition(saveMean.count == x.n * groups && saveInvStd.count == x.n * groups,
                 "\(who): saveMean/saveInvStd have \(saveMean.count)/\(saveInvStd.count) elements for \(x.n) x \(groups) groups")
}

/// GroupNorm's eps (PyTorch's default), the one value every GroupNorm of segtrain uses; exporters
/// read it here.
public let groupNormEpsilon: Float = 1e-5

/// y = gamma[c] * (x - mean[n, g]) / sqrt(var[n, g] + eps) + beta[c], where g = c / (C / G) and mean
/// and the biased var run over the C/G channels of group g of sample n and all their pixels.
/// saveMean / saveInvStd receive mean and 1 / sqrt(var + eps) per (n, g) at index n * G + g, for
/// groupNormBackward. Statistics in Double, per (n, g) in a fixed order (thread-count independent).
/// x, y: (N, C, H, W), C divisible by `groups`  gamma, beta: C elements  saveMean, saveInvStd: N * G elements.
public func groupNormForward(_ y: Tensor, _ x: Tensor, groups: Int, gamma: Tensor, beta: Tensor,
                             saveMean: Tensor, saveInvStd: Tensor, epsilon: Float = groupNormEpsilon, pool: WorkerPool) {
    let who: StaticString = "groupNormForward"
    precondition(y.shape == x.shape, "\(who): y \(y.shape) differs from x \(x.shape)")
    checkGroupNormShapes(x, groups: groups, gamma: gamma, saveMean: saveMean, saveInvStd: saveInvStd, who)
    precondition(beta.count == x.c, "\(who): beta has \(beta.count) elements for \(x.c) channels")
    let perGroup = x.c / groups, plane = x.shape.plane, m = perGroup * plane
    guard m > 0 else { return }
    pool.parallelFor(x.n * groups) { pairs, _ in
        for q in pairs {
            let n = q / groups, g = q % groups, first = g * perGroup
            let src = x.plane(n, first)  // the group's C/G planes are contiguous
            var sum = 0.0
            for i in 0..<m { sum += Double(src[i]) }
            let mean = sum / Double(m)
            var squares = 0.0
            for i in 0..<m {
                let d = Double(src[i]) - mean
                squares += d * d
            }
            let invStd = 1 / (squares / Double(m) + Double(epsilon)).squareRoot()
            saveMean[q] = Float(mean)
            saveInvStd[q] = Float(invStd)
            let meanF = Float(mean), invStdF = Float(invStd)
            for c in first..<(first + perGroup) {
                let scale = gamma[c] * invStdF, shift = beta[c]
                let from = x.plane(n, c), to = y.plane(n, c)
                for i in 0..<plane { to[i] = (from[i] - meanF) * scale + shift }
            }
        }
    }
}

/// Backward of groupNormForward. With xhat = (x - mean[n, g]) * invStd[n, g] and m = C/G * H * W:
/// dbeta[c] += sum_{n,h,w} dy, dgamma[c] += sum_{n,h,w} dy * xhat, and per (n, g) with
/// a = gamma[c] * dy over the group's values:
/// dx += invStd * (a - sum(a) / m - xhat * sum(a * xhat) / m); dx nil skips it.
/// x, dx, dy: (N, C, H, W)  gamma, dgamma, dbeta: C elements  saveMean, saveInvStd (from the
/// forward): N * G elements. Sums in Double in a fixed order (thread-count independent).
public func groupNormBackward(dx: Tensor?, dgamma: Tensor, dbeta: Tensor, dy: Tensor, x: Tensor, groups: Int,
                              gamma: Tensor, saveMean: Tensor, saveInvStd: Tensor, pool: WorkerPool) {
    let who: StaticString = "groupNormBackward"
    precondition(dy.shape == x.shape, "\(who): dy \(dy.shape) differs from x \(x.shape)")
    if let dx { precondition(dx.shape == x.shape, "\(who): dx \(dx.shape) differs from x \(x.shape)") }
    checkGroupNormShapes(x, groups: groups, gamma: gamma, saveMean: saveMean, saveInvStd: saveInvStd, who)
    precondition(dgamma.count == x.c && dbeta.count == x.c,
                 "\(who): dgamma/dbeta have \(dgamma.count)/\(dbeta.count) elements for \(x.c) channels")
    let channels = x.c, batch = x.n, perGroup = channels / groups, plane = x.shape.plane, m = perGroup * plane
    guard m > 0 else { return }

    // Parameter gradients: per channel, over (n, h, w).
    pool.parallelFor(channels) { channelRange, _ in
        for c in channelRange {
            let g = c / perGroup
            var sumDy = 0.0, sumDyXhat = 0.0
            for n in 0..<batch {
                let mean = saveMean[n * groups + g], invStd = saveInvStd[n * groups + g]
                let up = dy.plane(n, c), src = x.plane(n, c)
                for i in 0..<plane {
                    let d = Double(up[i])
                    sumDy += d
                    sumDyXhat += d * Double((src[i] - mean) * invStd)
                }
            }
            dbeta[c] += Float(sumDy)
            dgamma[c] += Float(sumDyXhat)
        }
    }
    guard let dx else { return }
    // Input gradient: per (n, g), over the group's channels and pixels.
    pool.parallelFor(batch * groups) { pairs, _ in
        for q in pairs {
            let n = q / groups, first = (q % groups) * perGroup
            let mean = saveMean[q], invStd = saveInvStd[q]
            var sumA = 0.0, sumAXhat = 0.0
            for c in first..<(first + perGroup) {
                let k = Double(gamma[c])
                let up = dy.plane(n, c), src = x.plane(n, c)
                for i in 0..<plane {
                    let a = k * Double(up[i])
                    sumA += a
                    sumAXhat += a * Double((src[i] - mean) * invStd)
                }
            }
            let meanA = Float(sumA / Double(m)), meanAXhat = Float(sumAXhat / Double(m))
            for c in first..<(first + perGroup) {
                let k = gamma[c]
                let up = dy.plane(n, c), src = x.plane(n, c), grad = dx.plane(n, c)
                for i in 0..<plane {
                    let xhat = (src[i] - mean) * invStd
                    grad[i] += invStd * (k * up[i] - meanA - xhat * meanAXhat)
                }
            }
        }
    }
}

/// Reference forward and backward: plain loops, Double arithmetic throughout. Writes y (and, when
/// given, saveMean / saveInvStd) as groupNormForward does and, when dy is given, adds the gradients
/// groupNormBackward adds (each output if given). Shapes as groupNormBackward.
public func groupNormNaive(y: Tensor, saveMean: Tensor? = nil, saveInvStd: Tensor? = nil, dx: Tensor?, dgamma: Tensor?,
                           dbeta: Tensor?, dy: Tensor?, x: Tensor, groups: Int, gamma: Tensor, beta: Tensor,
                           epsilon: Float = groupNormEpsilon) {
    precondition(y.shape == x.shape, "groupNormNaive: y \(y.shape) differs from x \(x.shape)")
    precondition(x.c % groups == 0, "groupNormNaive: \(groups) groups do not divide \(x.c) channels")
    let perGroup = x.c / groups
    let m = Double(perGroup * x.h * x.w)
    var sumDy = [Double](repeating: 0, count: x.c), sumDyXhat = [Double](repeating: 0, count: x.c)
    for n in 0..<x.n {
        for g in 0..<groups {
            let channels = (g * perGroup)..<((g + 1) * perGroup)
            var sum = 0.0
            for c in channels { for i in 0..<x.h { for j in 0..<x.w { sum += Double(x[n, c, i, j]) } } }
            let mean = sum / m
            var squares = 0.0
            for c in channels {
                for i in 0..<x.h { for j in 0..<x.w { squares += (Double(x[n, c, i, j]) - mean) * (Double(x[n, c, i, j]) - mean) } }
            }
            let invStd = 1 / (squares / m + Double(epsilon)).squareRoot()
            saveMean?[n * groups + g] = Float(mean)
            saveInvStd?[n * groups + g] = Float(invStd)
            var sumA = 0.0, sumAXhat = 0.0
            for c in channels {
                for i in 0..<x.h {
                    for j in 0..<x.w {
                        let xhat = (Double(x[n, c, i, j]) - mean) * invStd
                        y[n, c, i, j] = Float(Double(gamma[c]) * xhat + Double(beta[c]))
                        guard let dy else { continue }
                        let d = Double(dy[n, c, i, j])
                        sumDy[c] += d
                        sumDyXhat[c] += d * xhat
                        sumA += Double(gamma[c]) * d
                        sumAXhat += Double(gamma[c]) * d * xhat
                    }
                }
            }
            guard let dy, let dx else { continue }
            for c in channels {
                for i in 0..<x.h {
                    for j in 0..<x.w {
                        let xhat = (Double(x[n, c, i, j]) - mean) * invStd
                        let a = Double(gamma[c]) * Double(dy[n, c, i, j])
                        dx[n, c, i, j] = Float(Double(dx[n, c, i, j]) + invStd * (a - sumA / m - xhat * sumAXhat / m))
                    }
                }
            }
        }
    }
    guard dy != nil else { return }
    for c in 0..<x.c {
        if let dbeta { dbeta[c] = Float(Double(dbeta[c]) + sumDy[c]) }
        if let dgamma { dgamma[c] = Float(Double(dgamma[c]) + sumDyXhat[c]) }
    }
}
