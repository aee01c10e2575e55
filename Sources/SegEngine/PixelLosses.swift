// The pixel-mean losses over one chunk of one image (formulas and sources in Losses.swift): bce
// (with pos_weight), ce (with class weights), weighted-ce (the UNet weight map) and focal. Each
// adds its sum into its slot and weight / normalizer x its gradient into dlogits.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension LossFunction {
    /// Sums over the chunk's counted pixels of each pixel-mean kind of the loss into `sums` (at the
    /// kinds' `slots`), and adds their gradient (times `scales`) into `dlogits` when given.
    @inline(__always)
    func pixelTermsChunk(_ sums: UnsafeMutablePointer<Double>, _ logits: Tensor, _ target: Tensor, _ weights: Tensor?,
                         _ dlogits: Tensor?, _ scales: PixelScales, _ image: Int, _ start: Int, _ end: Int) {
        let hasIgnore = config.ignoreIndex != nil, ignore = ignoreValue ?? 0
        let t = target.plane(image, 0), wt = weights.map { $0.plane(image, 0) }
        let slots = self.slots, gamma = config.focalGamma, classWeights = config.classWeights
        if classes == 1 {
            let x = logits.plane(image, 0), dx = dlogits.map { $0.plane(image, 0) }
            let posWeight = classWeights?[0] ?? 1, alpha = config.focalAlpha
            for i in start..<end {
                if hasIgnore && t[i] == ignore { continue }
                let xi = Double(x[i]), ti = Double(t[i])
                var g = 0.0
                if slots.bce >= 0 {
                    let (value, slope) = binaryCrossEntropy(xi, ti, posWeight: posWeight)
                    sums[slots.bce] += value
                    g += scales.bce * slope
                }
                if slots.weightedCE >= 0, let wt {
                    let wi = Double(wt[i])
                    sums[slots.weightedCE] += wi * bceWithLogits(xi, ti)
                    g += scales.weightedCE * wi * (stableSigmoid(xi) - ti)
                }
                if slots.focal >= 0 {
                    let (value, slope) = binaryFocal(xi, ti, gamma: gamma, alpha: alpha)
                    sums[slots.focal] += value
                    g += scales.focal * slope
                }
                if let dx { dx[i] += Float(g) }
            }
            return
        }
        let plane = logits.shape.plane, classes = self.classes
        let x = logits.sample(image), dx = dlogits.map { $0.sample(image) }
        for i in start..<end {
            if hasIgnore && t[i] == ignore { continue }
            let k = classIndex(t[i], classes)
            let (m, expSum) = softmaxNormalizer(x, pixel: i, plane: plane, classes: classes)
            let nll = m + log(expSum) - Double(x[k * plane + i])     // -log p_k
            // Every pixel-mean multi-class loss has the gradient f (p_c - [c == k]): f sums their factors.
            var f = 0.0
            if slots.ce >= 0 {
                let wk = classWeights?[k] ?? 1
                sums[slots.ce] += wk * nll
                f += scales.ce * wk
            }
            if slots.weightedCE >= 0, let wt {
                let wi = Double(wt[i])
                sums[slots.weightedCE] += wi * nll
                f += scales.weightedCE * wi
            }
            if slots.focal >= 0 {
                // -alpha_k q^gamma log p_k, q = 1 - p_k (the other classes' share: no cancellation).
                // d/dx_c = alpha_k (p_c - [c == k]) (q^gamma + gamma (-log p_k) p_k q^(gamma - 1)).
                let alpha = classWeights?[k] ?? 1
                let ek = exp(Double(x[k * plane + i]) - m)
                var others = 0.0
                for c in 0..<classes where c != k { others += exp(Double(x[c * plane + i]) - m) }
                let q = others / expSum, pk = ek / expSum
                let focusing = pow(q, gamma)
                sums[slots.focal] += alpha * focusing * nll
                let curvature = gamma > 0 && q > 0 ? gamma * nll * pk * pow(q, gamma - 1) : 0
                f += scales.focal * alpha * (focusing + curvature)
            }
            if let dx {
                let inverse = 1 / expSum
                for c in 0..<classes {
                    let p = exp(Double(x[c * plane + i]) - m) * inverse
                    dx[c * plane + i] += Float(f * (c == k ? p - 1 : p))
                }
            }
        }
    }
}

/// BCE with logits and PyTorch's pos_weight pw, and its derivative in x:
/// l = (1 - t) x + (1 + (pw - 1) t) softplus(-x), dl/dx = (1 - t) - (1 + (pw - 1) t) s(-x)
/// (pw = 1: the plain max(x, 0) - x t + log(1 + exp(-|x|)) and s(x) - t).
@inline(__always)
func binaryCrossEntropy(_ x: Double, _ t: Double, posWeight: Double) -> (value: Double, slope: Double) {
    if posWeight == 1 { return (bceWithLogits(x, t), stableSigmoid(x) - t) }
    let factor = 1 + (posWeight - 1) * t
    let softplusOfMinusX = log1p(exp(-abs(x))) + max(-x, 0)
    return ((1 - t) * x + factor * softplusOfMinusX, (1 - t) - factor * stableSigmoid(-x))
}

/// torchvision's sigmoid_focal_loss for one pixel and its derivative in x:
/// l = alpha_t q^gamma BCE(x, t), q = 1 - p_t = t s(-x) + (1 - t) s(x) (stable for large |x|),
/// dl/dx = alpha_t (q^gamma (s(x) - t) + gamma q^(gamma - 1) BCE (1 - 2t) s(x) s(-x)).
@inline(__always)
func binaryFocal(_ x: Double, _ t: Double, gamma: Double, alpha: Double?) -> (value: Double, slope: Double) {
    let p = stableSigmoid(x), pNot = stableSigmoid(-x)
    let bce = bceWithLogits(x, t)
    let q = t * pNot + (1 - t) * p
    let alphaT = alpha.map { $0 * t + (1 - $0) * (1 - t) } ?? 1
    let focusing = pow(q, gamma)
    let curvature = gamma > 0 && q > 0 ? gamma * pow(q, gamma - 1) * bce * (1 - 2 * t) * p * pNot : 0
    return (alphaT * focusing * bce, alphaT * (focusing * (p - t) + curvature))
}
