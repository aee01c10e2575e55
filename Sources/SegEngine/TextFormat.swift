// Numbers as people read them in tables and log lines: fixed decimals, thousands grouped, padded
// columns.

import Foundation

/// `s` left-aligned in `width` columns (and one space after it when it fills them).
public func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count) }
public func lpad(_ s: String, _ width: Int) -> String { s.count >= width ? " " + s : String(repeating: " ", count: width - s.count) + s }

/// 3717121 -> "3,717,121"
public func grouped(_ n: Int) -> String {
    let digits = String(n.magnitude)
    var out = ""
    for (i, ch) in digits.enumerated() {
        if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
        out.append(ch)
    }
    return (n < 0 ? "-" : "") + out
}

/// Fixed-point formatting without Foundation.
public func fixed(_ x: Double, _ digits: Int) -> String {
    if !x.isFinite { return "\(x)" }
    if abs(x) >= 1e15 { return String(format: "%.\(digits)e", x) }  // beyond Int's range once scaled
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let rounded = (abs(x) * scale).rounded()
    let whole = Int(rounded / scale)
    var frac = String(Int(rounded - Double(whole) * scale))
    while frac.count < digits { frac = "0" + frac }
    return (x < 0 && rounded != 0 ? "-" : "") + String(whole) + (digits > 0 ? "." + frac : "")
}
