// The report's line charts: inline SVG, one polyline per run of finite values (see Report.swift),
// axes with round tick steps.

import Foundation
import SegEngine

struct Series {
    /// The metrics.csv column: the polylines' data-series.
    let key: String
    let label: String
    let colour: String
    let values: [Double?]
}

/// A line chart over epochs: axes with round ticks, a legend, one polyline per gap-free run of
/// each series, a dashed vertical line at the best epoch.
struct Chart {
    let id: String
    let title: String
    let yTitle: String
    let epochs: [Int]
    let series: [Series]
    let best: Int?
    /// A log scale when every value is positive and they span at least a factor of 10.
    let allowLog: Bool
    /// Scores in [0, 1]: the axis does not go beyond.
    var unitInterval = false

    static let width = 600.0, height = 330.0
    static let right = width - 20, top = 44.0, bottom = height - 46

    func figure() -> String {
        "<figure class=\"chart\" id=\"chart-\(htmlEscaped(id))\">\n<h3>\(htmlEscaped(title))</h3>\n" + svg() + "</figure>\n"
    }

    func svg() -> String {
        // y: every finite value of every series; room on the left for the longest tick label.
        let finite = series.flatMap { $0.values.compactMap { $0 }.filter(\.isFinite) }
        let axis = YAxis(values: finite, allowLog: allowLog, unitInterval: unitInterval)
        let left = max(52, 30 + 7 * Double(axis.ticks.map(\.label.count).max() ?? 0))
        let (right, top, bottom) = (Chart.right, Chart.top, Chart.bottom)
        func py(_ v: Double) -> Double { bottom - axis.fraction(v) * (bottom - top) }
        var s = "<svg class=\"chart\" data-chart=\"\(htmlEscaped(id))\" width=\"\(Int(Chart.width))\" "
            + "height=\"\(Int(Chart.height))\" viewBox=\"0 0 \(Int(Chart.width)) \(Int(Chart.height))\" role=\"img\">\n"
            + "<title>\(htmlEscaped(title))</title>\n"

        // x: epochs, integer ticks.
        let first = Double(epochs.first ?? 1), last = Double(epochs.last ?? 1)
        let x0 = first == last ? first - 0.5 : first, x1 = first == last ? last + 0.5 : last
        func px(_ epoch: Double) -> Double { left + (epoch - x0) / (x1 - x0) * (right - left) }
        let xStep = max(1, niceStep((x1 - x0) / 8))
        var xTicks: [Double] = []
        var k = (x0 / xStep).rounded(.up)
        while k * xStep <= x1 + 1e-9 && xTicks.count < 100 { xTicks.append(k * xStep); k += 1 }

        // Grid and y ticks.
        s += "<g class=\"y-ticks\">\n"
        for tick in axis.ticks {
            let y = coordinate(py(tick.value))
            s += "<line class=\"grid\" x1=\"\(coordinate(left))\" y1=\"\(y)\" x2=\"\(coordinate(right))\" y2=\"\(y)\"/>"
                + "<line class=\"axis\" x1=\"\(coordinate(left - 5))\" y1=\"\(y)\" x2=\"\(coordinate(left))\" y2=\"\(y)\"/>"
                + "<text x=\"\(coordinate(left - 8))\" y=\"\(y)\" dy=\"0.35em\" text-anchor=\"end\">\(htmlEscaped(tick.label))</text>\n"
        }
        s += "</g>\n<g class=\"x-ticks\">\n"
        for tick in xTicks {
            let x = coordinate(px(tick))
            s += "<line class=\"axis\" x1=\"\(x)\" y1=\"\(coordinate(bottom))\" x2=\"\(x)\" y2=\"\(coordinate(bottom + 5))\"/>"
                + "<text x=\"\(x)\" y=\"\(coordinate(bottom + 19))\" text-anchor=\"middle\">\(Int(tick))</text>\n"
        }
        s += "</g>\n"
        // Axes and their titles.
        s += "<line class=\"axis\" x1=\"\(coordinate(left))\" y1=\"\(coordinate(top))\" x2=\"\(coordinate(left))\" y2=\"\(coordinate(bottom))\"/>\n"
            + "<line class=\"axis\" x1=\"\(coordinate(left))\" y1=\"\(coordinate(bottom))\" x2=\"\(coordinate(right))\" y2=\"\(coordinate(bottom))\"/>\n"
            + "<text x=\"\(coordinate((left + right) / 2))\" y=\"\(coordinate(Chart.height - 8))\" text-anchor=\"middle\">epoch</text>\n"
            + "<text transform=\"translate(14 \(coordinate((top + bottom) / 2))) rotate(-90)\" text-anchor=\"middle\">"
            + "\(htmlEscaped(yTitle + (axis.isLog ? " (log scale)" : axis.factor)))</text>\n"

        // The best epoch.
        if let best, epochs.contains(best) {
            let x = coordinate(px(Double(best)))
            let anchorEnd = px(Double(best)) > (left + right) / 2
            s += "<line class=\"best\" data-best-epoch=\"\(best)\" x1=\"\(x)\" y1=\"\(coordinate(top))\" x2=\"\(x)\" y2=\"\(coordinate(bottom))\"/>\n"
                + "<text class=\"best-label\" x=\"\(coordinate(px(Double(best)) + (anchorEnd ? -4 : 4)))\" "
                + "y=\"\(coordinate(top - 6))\" text-anchor=\"\(anchorEnd ? "end" : "start")\">best: epoch \(best)</text>\n"
        }

        // The curves: a polyline per run of finite values, a dot per point (when few, or alone).
        let dots = epochs.count <= 60
        for item in series {
            var runs: [[(epoch: Int, value: Double)]] = [[]]
            for (epoch, value) in zip(epochs, item.values) {
                if let value, value.isFinite {
                    runs[runs.count - 1].append((epoch, value))
                } else if !runs[runs.count - 1].isEmpty {
                    runs.append([])
                }
            }
            runs.removeAll { $0.isEmpty }
            for run in runs {
                let points = run.map { "\(coordinate(px(Double($0.epoch)))),\(coordinate(py($0.value)))" }.joined(separator: " ")
                s += "<polyline class=\"series\" data-series=\"\(htmlEscaped(item.key))\" "
                    + "data-epochs=\"\(run.map { String($0.epoch) }.joined(separator: " "))\" "
                    + "stroke=\"\(htmlEscaped(item.colour))\" points=\"\(points)\"/>\n"
                if dots || run.count == 1 {
                    s += "<g fill=\"\(htmlEscaped(item.colour))\">"
                    for point in run {
                        s += "<circle cx=\"\(coordinate(px(Double(point.epoch))))\" cy=\"\(coordinate(py(point.value)))\" r=\"3\">"
                            + "<title>epoch \(point.epoch): \(htmlEscaped(item.label)) \(htmlEscaped(shortNumber(point.value)))</title></circle>"
                    }
                    s += "</g>\n"
                }
            }
        }
        if finite.isEmpty {
            s += "<text class=\"empty\" x=\"\(coordinate((left + right) / 2))\" y=\"\(coordinate((top + bottom) / 2))\" "
                + "text-anchor=\"middle\">no finite values</text>\n"
        }

        // The legend, in a row above the plot.
        s += "<g class=\"legend\">\n"
        var x = left
        let y = 18.0
        for item in series {
            let empty = !item.values.contains { $0.map(\.isFinite) ?? false }
            let label = item.label + (empty ? " (no values)" : "")
            s += "<line x1=\"\(coordinate(x))\" y1=\"\(coordinate(y))\" x2=\"\(coordinate(x + 22))\" y2=\"\(coordinate(y))\" "
                + "stroke=\"\(htmlEscaped(item.colour))\" stroke-width=\"3\"/>"
                + "<text x=\"\(coordinate(x + 28))\" y=\"\(coordinate(y))\" dy=\"0.35em\">\(htmlEscaped(label))</text>\n"
            x += 28 + Double(label.count) * 6.6 + 18
        }
        if let best, epochs.contains(best) {
            s += "<line class=\"best\" x1=\"\(coordinate(x))\" y1=\"\(coordinate(y))\" x2=\"\(coordinate(x + 22))\" y2=\"\(coordinate(y))\"/>"
                + "<text x=\"\(coordinate(x + 28))\" y=\"\(coordinate(y))\" dy=\"0.35em\">best epoch (lowest validation loss)</text>\n"
        }
        s += "</g>\n</svg>\n"
        return s
    }
}

/// A coordinate with at most two decimals.
func coordinate(_ v: Double) -> String {
    let r = (v * 100).rounded() / 100
    return r == r.rounded() ? String(Int(r)) : String(r)
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
func niceStep(_ raw: Double) -> Double {
    guard raw > 0, raw.isFinite else { return 1 }
    let power = pow(10, (log10(raw)).rounded(.down))
    for m in [1.0, 2, 5, 10] where m * power >= raw * (1 - 1e-9) { return m * power }
    return 10 * power
}

/// The y axis of a chart: its domain (round numbers), ticks and their labels.
struct YAxis {
    var isLog = false
    var low = 0.0, high = 1.0  // log10 of the values on a log axis
    var ticks: [(value: Double, label: String)] = []
    /// A common factor taken out of a linear axis' labels, for the axis title: " (×1e-3)".
    var factor = ""

    init(values: [Double], allowLog: Bool, unitInterval: Bool) {
        guard var lo = values.min(), var hi = values.max() else {
            ticks = [(0, "0"), (0.5, "0.5"), (1, "1")]
            return
        }
        if allowLog && lo > 0 && hi / lo >= 10 {
            isLog = true
            low = log10(lo).rounded(.down)
            high = log10(hi).rounded(.up)
            let decades = Int(high - low)
            let multiples: [Double] = decades <= 2 ? [1, 2, 5] : [1]
            let every = max(1, (decades + 5) / 6)
            var values: [Double] = []
            for d in stride(from: Int(low), through: Int(high), by: every) {
                for m in multiples where Double(d) + log10(m) <= high + 1e-9 { values.append(m * pow(10, Double(d))) }
            }
            // Decades as 1e-4 when any label would be tiny or huge, else as decimals (0.01).
            let scientific = values.contains { $0 < 1e-3 || $0 >= 1e6 }
            ticks = values.map { v in
                let power = Int((log10(v) + 1e-9).rounded(.down))
                let mantissa = Int((v / pow(10, Double(power))).rounded())
                if scientific { return (v, "\(mantissa)e\(power)") }
                return (v, String(format: "%.\(max(0, -power))f", v))
            }
            return
        }
        if lo == hi {  // a flat line: in the middle of [0, 2v]
            if lo > 0 { lo = 0; hi *= 2 } else if lo < 0 { hi = 0; lo *= 2 } else { lo = -1; hi = 1 }
        }
        let step = niceStep((hi - lo) / 5)
        var first = (lo / step).rounded(.down), last = (hi / step).rounded(.up)
        if unitInterval {
            first = max(first, 0)
            last = min(last, (1 / step).rounded(.up))
        }
        low = first * step
        high = last * step
        // Labels with the decimals the step needs; tiny or huge ticks share a factor 1eN instead.
        let largest = max(abs(low), abs(high))
        var power = 0
        if largest < 1e-2 || largest >= 1e6 {
            power = Int((log10(largest) + 1e-9).rounded(.down))
            factor = " (×1e\(power))"
        }
        let scale = pow(10, Double(power))
        let decimals = max(0, -Int((log10(step / scale) + 1e-9).rounded(.down)))
        var k = first
        // At most 100 ticks: with values near 2^53 or spans beyond Double, k += 1 stops changing k.
        while k <= last && ticks.count < 100 {
            let v = k * step
            let label = abs(v) < step * 1e-6 ? "0" : String(format: "%.\(decimals)f", v / scale)
            ticks.append((v, label))
            k += 1
        }
    }

    /// Where `v` sits on the axis, 0 (bottom) to 1 (top).
    func fraction(_ v: Double) -> Double {
        isLog ? (log10(v) - low) / (high - low) : (v - low) / (high - low)
    }
}
