// The per-image ratio losses (formulas and sources in Losses.swift): Dice, Tversky and focal
// Tversky. All three read the same sums per image and class (I = sum p t, P = sum p, T = sum t
// over counted pixels), and each one's derivative in p_c(i) has the form a_c t_c(i) + b_c, so one
// gradient pass serves any weighted sum of them.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension LossFunction {
    /// Adds the chunk's sums into `sums` (per class: I, P, T; p = sigmoid or softmax, t = target or
    /// one-hot), skipping ignored pixels.
    @inline(__always)
    func regionSumsChunk(_ sums: UnsafeMutablePointer<Double>, _ logits: Tensor, _ target: Tensor,
                         _ image: Int, _ start: Int, _ end: Int) {
        let hasIgnore = config.ignoreIndex != nil, ignore = ignoreValue ?? 0
        let t = target.plane(image, 0)
        if classes == 1 {
            let x = logits.plane(image, 0)
            var inter = 0.0, predicted = 0.0, truth = 0.0
            for i in start..<end {
                if hasIgnore && t[i] == ignore { continue }
                let p = stableSigmoid(Double(x[i])), ti = Double(t[i])
                inter += p * ti; predicted += p; truth += ti
            }
            sums[0] += inter; sums[1] += predicted; sums[2] += truth
            return
        }
        let plane = logits.shape.plane, classes = self.classes
        let x = logits.sample(image)
        for i in start..<end {
            if hasIgnore && t[i] == ignore { continue }
            let k = classIndex(t[i], classes)
            let (m, expSum) = softmaxNormalizer(x, pixel: i, plane: plane, classes: classes)
            let inverse = 1 / expSum
            for c in 0..<classes {
                let p = exp(Double(x[c * plane + i]) - m) * inverse
                sums[3 * c + 1] += p
                if c == k { sums[3 * c] += p; sums[3 * c + 2] += 1 }
            }
        }
    }

    /// One image's region losses: combines its chunks' sums (`chunks` slots `stride` apart) in
    /// order, writes the gradient coefficients (a_c, b_c per class, times `scale`) and returns
    /// sum over the region components of weight x (mean over classes of the class's loss).
    func regionTermsOfImage(_ sums: UnsafeMutablePointer<Double>, chunks: Int, stride: Int,
                            coefficients: UnsafeMutablePointer<Double>, scale: Double) -> Double {
        let smooth = config.diceSmooth, classTerms = Double(classes)
        let alpha = config.tverskyAlpha, beta = config.tverskyBeta, gamma = config.tverskyGamma
        var value = 0.0
        for c in 0..<classes {
            var inter = 0.0, predicted = 0.0, truth = 0.0
            for chunk in 0..<chunks {
                let s = sums + chunk * stride + 3 * c
                inter += s[0]; predicted += s[1]; truth += s[2]
            }
            var a = 0.0, b = 0.0
            for component in config.components where component.kind.isRegionRatio {
                let weight = component.weight / classTerms
                switch component.kind {
                case .dice:
                    // 1 - r, r = (2I + s) / D, D = P + T + s: d/dp_i = -2 t_i / D + r / D.
                    let denominator = predicted + truth + smooth
                    let ratio = (2 * inter + smooth) / denominator
                    value += weight * (1 - ratio)
                    a += weight * -2 / denominator
                    b += weight * ratio / denominator
                default:
                    // TI = (I + s) / D, D = I + alpha (P - I) + beta (T - I) + s:
                    // dTI/dp_i = t_i (1 - TI (1 - alpha - beta)) / D - alpha TI / D.
                    let denominator = inter + alpha * (predicted - inter) + beta * (truth - inter) + smooth
                    let index = (inter + smooth) / denominator
                    let da = (1 - index * (1 - alpha - beta)) / denominator, db = -alpha * index / denominator
                    // Loss 1 - TI (tversky) or (1 - TI)^gamma (focal-tversky); its slope in TI.
                    let miss = max(1 - index, 0)
                    let loss: Double, slope: Double
                    if component.kind == .tversky {
                        (loss, slope) = (1 - index, -1)
                    } else {
                        (loss, slope) = (pow(miss, gamma), miss > 0 ? -gamma * pow(miss, gamma - 1) : 0)
                    }
                    value += weight * loss
                    a += weight * slope * da
                    b += weight * slope * db
                }
            }
            coefficients[2 * c] = a * scale
            coefficients[2 * c + 1] = b * scale
        }
        return value
    }

    /// Adds the region gradient (coefficients: per class a_c, b_c with dLoss/dp_c = a_c t_c + b_c,
    /// already scaled) into `dlogits`, through the sigmoid or softmax.
    @inline(__always)
    func regionGradientChunk(_ dlogits: Tensor, _ logits: Tensor, _ target: Tensor,
                             _ coefficients: UnsafeMutablePointer<Double>, _ image: Int, _ start: Int, _ end: Int) {
        let hasIgnore = config.ignoreIndex != nil, ignore = ignoreValue ?? 0
        let t = target.plane(image, 0)
        if classes == 1 {
            let x = logits.plane(image, 0), dx = dlogits.plane(image, 0)
            let a = coefficients[0], b = coefficients[1]
            for i in start..<end {
                if hasIgnore && t[i] == ignore { continue }
                let p = stableSigmoid(Double(x[i])), ti = Double(t[i])
                dx[i] += Float((a * ti + b) * p * (1 - p))
            }
            return
        }
        let plane = logits.shape.plane, classes = self.classes
        let x = logits.sample(image), dx = dlogits.sample(image)
        for i in start..<end {
            if hasIgnore && t[i] == ignore { continue }
            let k = classIndex(t[i], classes)
            let (m, expSum) = softmaxNormalizer(x, pixel: i, plane: plane, classes: classes)
            let inverse = 1 / expSum
            // Softmax backward: dx_c = p_c (g_c - sum_j p_j g_j), g_c = a_c [c == k] + b_c.
            var dot = 0.0
            for c in 0..<classes {
                let p = exp(Double(x[c * plane + i]) - m) * inverse
                dot += p * (coefficients[2 * c + 1] + (c == k ? coefficients[2 * c] : 0))
            }
            for c in 0..<classes {
                let p = exp(Double(x[c * plane + i]) - m) * inverse
                let g = coefficients[2 * c + 1] + (c == k ? coefficients[2 * c] : 0)
                dx[c * plane + i] += Float(p * (g - dot))
            }
        }
    }
}
