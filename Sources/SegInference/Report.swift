// The training report: RUN_DIR/report.html, one self-contained page (inline CSS and SVG, no
// JavaScript, no external URLs; links to the sample grids are relative, so the page opens from
// the filesystem). The markup is also well-formed XML (void elements self-closed, only XML's
// five entities), so tests can parse it strictly.
//
// Curves: one <polyline data-series="COLUMN"> per run of consecutive finite values. A missing
// (empty), NaN or infinite value breaks the line; a curve without such gaps is exactly one
// polyline with one point per epoch. Each polyline lists its points' epochs in data-epochs.

import Foundation
import SegData
import SegEngine
import SegModel

// MARK: - What the run folder tells

/// What summary.json (written at the end of training) or, failing that, checkpoints/last/state.json
/// tells about the run. Every field is optional: the report works from metrics.csv alone.
struct RunFacts {
    var arguments: [String]?
    var ranks: Int?
    var threadsPerRank: Int?
    var parameters: Int?
    var seconds: Double?
    var epochsTrained: Int?
    /// confusion.csv (multi-class runs): the best epoch's validation confusion matrix.
    var confusion: (epoch: Int, classNames: [String], matrix: [[Double]])?
    var notes: [String] = []

    static func read(_ run: RunDirectory) -> RunFacts {
        var facts = RunFacts()
        do {
            if let summary = try run.readSummary() {
                facts.arguments = summary.arguments
                facts.ranks = summary.ranks
                facts.threadsPerRank = summary.threadsPerRank
                facts.parameters = summary.parameters
                facts.seconds = summary.seconds
                facts.epochsTrained = summary.epochsTrained
            }
        } catch {
            facts.notes.append("\(error); ignored")
        }
        do { facts.confusion = try run.readConfusion() } catch { facts.notes.append("\(error); ignored") }
        if facts.arguments == nil || facts.ranks == nil,
           let data = FileManager.default.contents(atPath: run.lastCheckpoint + "/state.json") {
            if let state = try? JSONDecoder().decode(CheckpointState.self, from: data) {
                facts.arguments = facts.arguments ?? state.arguments
                facts.ranks = facts.ranks ?? state.ranks
            } else {
                facts.notes.append("checkpoints/last/state.json is not a segtrain checkpoint state; ignored")
            }
        }
        return facts
    }

    /// The value of `--name V` or `--name=V` on the command line (the last one wins).
    func option(_ name: String) -> String? {
        guard let arguments else { return nil }
        var value: String?
        for (i, a) in arguments.enumerated() {
            if a == name, i + 1 < arguments.count { value = arguments[i + 1] }
            if a.hasPrefix(name + "=") { value = String(a.dropFirst(name.count + 1)) }
        }
        return value
    }
}

// MARK: - The entry point

/// Writes the training report of `run` to `output` (default RUN/report.html), atomically, and
/// returns the path written. Training calls it at its end; so does `segtrain report`. A missing
/// folder or a missing or garbled metrics.csv throws "RUN/metrics.csv: <reason>".
@discardableResult
public func writeReport(_ run: RunDirectory, to output: String? = nil) throws -> String {
    let table = try run.readMetrics()
    let outputPath = output ?? run.reportFile
    let page = ReportPage(runDirectory: run.path, table: table, facts: RunFacts.read(run),
                          samples: run.sampleGrids(),
                          linkPrefix: relativeLinkPrefix(fromFileAt: outputPath, to: run.path))
    if let error = writeFileAtomically(outputPath, page.render()) { throw FileError(error) }
    return outputPath
}

/// The URL prefix ("" or "../run/" ...) from the folder of the file at `file` to `folder`,
/// each component percent-encoded.
func relativeLinkPrefix(fromFileAt file: String, to folder: String) -> String {
    func components(_ path: String) -> [String] {
        URL(fileURLWithPath: path).standardizedFileURL.pathComponents.filter { $0 != "/" }
    }
    let from = Array(components(file).dropLast()), to = components(folder)
    var common = 0
    while common < from.count && common < to.count && from[common] == to[common] { common += 1 }
    let parts = Array(repeating: "..", count: from.count - common) + to[common...].map(percentEncoded)
    return parts.map { $0 + "/" }.joined()
}

func percentEncoded(_ component: String) -> String {
    var allowed = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    allowed.insert(charactersIn: "-._~")
    return component.addingPercentEncoding(withAllowedCharacters: allowed) ?? component
}

// MARK: - HTML

/// Text or attribute value made safe for HTML and XML: the five markup characters become
/// entities, control characters XML does not allow become U+FFFD.
func htmlEscaped(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    for scalar in text.unicodeScalars {
        switch scalar {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        case "\t", "\n", "\r": out.unicodeScalars.append(scalar)
        default:
            let v = scalar.value
            if v < 0x20 || v == 0x7F || (0x80...0x9F).contains(v) || v == 0xFFFE || v == 0xFFFF {
                out += "\u{FFFD}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out
}

/// One argument as a POSIX shell would need it written.
func shellQuoted(_ argument: String) -> String {
    let plain = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%")
    if !argument.isEmpty && argument.unicodeScalars.allSatisfy({ plain.contains($0) }) { return argument }
    return "'" + argument.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// A number for a table cell: `digits` decimals, "nan"/"inf" as such, "—" when absent.
private func cell(_ value: Double?, _ digits: Int) -> String {
    guard let value else { return "—" }
    return fixed(value, digits)
}

/// A learning rate or other small number: up to 4 significant digits, no float noise.
func shortNumber(_ value: Double) -> String {
    if !value.isFinite { return "\(value)" }
    if value == 0 { return "0" }
    var text = String(format: "%.4g", value)
    if let e = text.firstIndex(of: "e") {  // 1e-05 -> 1e-5
        let mantissa = text[..<e], exponent = Int(text[text.index(after: e)...]) ?? 0
        text = mantissa + "e\(exponent)"
    }
    return text
}

func durationText(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "\(seconds)" }
    if seconds < 60 { return fixed(seconds, seconds < 10 ? 2 : 1) + " s" }
    let whole = Int(seconds.rounded())
    let h = whole / 3600, m = whole / 60 % 60, s = whole % 60
    func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
    return h > 0 ? "\(h) h \(two(m)) min \(two(s)) s" : "\(m) min \(two(s)) s"
}

struct ReportPage {
    let runDirectory: String
    let table: MetricsTable
    let facts: RunFacts
    let samples: [(epoch: Int, file: String)]
    /// Prepended to links into the run folder (the page may be written elsewhere with --out).
    let linkPrefix: String

    var hasValidation: Bool { table.values("val_loss").contains { $0 != nil } }

    /// The first epoch with the lowest finite validation loss (the trainer's "best": only a
    /// strictly lower loss improves), or nil.
    var bestEpoch: (epoch: Int, loss: Double)? {
        var best: (Int, Double)?
        for (epoch, loss) in zip(table.epochs, table.values("val_loss")) {
            if let loss, loss.isFinite, best.map({ loss < $0.1 }) ?? true { best = (epoch, loss) }
        }
        return best.map { (epoch: $0.0, loss: $0.1) }
    }

    func render() -> String {
        let title = "segtrain report: " + runDirectory
        var html = """
            <!DOCTYPE html>
            <html lang="en">
            <head>
            <meta charset="utf-8"/>
            <meta name="viewport" content="width=device-width, initial-scale=1"/>
            <title>\(htmlEscaped(title))</title>
            <style>\(ReportPage.css)</style>
            </head>
            <body>
            <h1>Training report <code>\(htmlEscaped(runDirectory))</code></h1>

            """
        for note in facts.notes { html += "<p class=\"note\">\(htmlEscaped(note))</p>\n" }
        html += summarySection()
        html += chartsSection()
        html += samplesSection()
        html += configurationSection()
        html += epochsSection()
        html += filesSection()
        let stamp = ISO8601DateFormatter().string(from: Date())
        html += "<footer>Written by <code>segtrain report</code> at \(htmlEscaped(stamp)) from "
            + "<code>\(htmlEscaped(runDirectory))/metrics.csv</code>.</footer>\n</body>\n</html>\n"
        return html
    }

    static let css = """

        body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
               max-width: 1280px; margin: 0 auto; padding: 16px 24px 40px; background: #fff; }
        h1 { font-size: 1.5em; margin: 0.4em 0 0.8em; }
        h1 code { font-size: 0.8em; font-weight: normal; color: #555; overflow-wrap: anywhere; }
        h2 { font-size: 1.2em; margin: 1.6em 0 0.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
        h3 { font-size: 1em; margin: 0.2em 0 0.3em; }
        code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.9em; }
        pre { background: #f6f6f6; border: 1px solid #e2e2e2; padding: 8px 10px; white-space: pre-wrap;
              overflow-wrap: anywhere; }
        pre.command span { white-space: pre; }
        table { border-collapse: collapse; }
        th, td { text-align: left; padding: 3px 12px 3px 0; vertical-align: top; }
        table.summary th { font-weight: 600; color: #444; white-space: nowrap; }
        table.epochs { font-variant-numeric: tabular-nums; font-size: 0.9em; }
        table.epochs th, table.epochs td { text-align: right; padding: 2px 8px; border-bottom: 1px solid #eee; }
        table.epochs tr.best td { background: #fff4d6; }
        .charts { display: flex; flex-wrap: wrap; gap: 16px 24px; }
        figure { margin: 0; }
        figure.chart { flex: 1 1 540px; max-width: 640px; }
        svg.chart { width: 100%; height: auto; display: block; }
        svg.chart text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; fill: #333; }
        svg.chart .axis { stroke: #444; stroke-width: 1; }
        svg.chart .grid { stroke: #e6e6e6; stroke-width: 1; }
        svg.chart .series { fill: none; stroke-width: 2; stroke-linejoin: round; stroke-linecap: round; }
        svg.chart .best { stroke: #888; stroke-width: 1.2; stroke-dasharray: 5 4; }
        svg.chart text.best-label { fill: #666; }
        svg.chart text.empty { fill: #999; font-style: italic; }
        .samples { display: flex; flex-wrap: wrap; gap: 16px 32px; align-items: flex-start; }
        .samples img { max-width: 100%; height: auto; border: 1px solid #ccc; background: #000; }
        img.pixelated { image-rendering: pixelated; image-rendering: crisp-edges; }
        figcaption { font-size: 0.9em; color: #555; margin-top: 4px; }
        .note { color: #7a5b00; background: #fff8e1; border-left: 3px solid #f0c040; padding: 4px 10px; }
        ul.epoch-links { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 12px; }
        footer { margin-top: 2.5em; font-size: 0.85em; color: #777; }

        """

    // MARK: Summary

    private func summarySection() -> String {
        var rows: [(String, String)] = []
        let epochs = table.epochs
        var epochText = "\(epochs.count)"
        if epochs.first != 1 || epochs.last != epochs.count {
            epochText += " (epochs \(epochs.first!)–\(epochs.last!))"
        }
        if let planned = facts.option("--epochs").flatMap(Int.init), planned > epochs.last! {
            epochText += " of \(planned) planned"
        }
        rows.append(("Epochs", epochText))
        if let best = bestEpoch {
            rows.append(("Best epoch", "\(best.epoch) (validation loss \(fixed(best.loss, 4)))"))
        } else {
            rows.append(("Best epoch", hasValidation ? "— (no finite validation loss)" : "— (no validation set)"))
        }
        let last = epochs.count - 1
        var lossText = "train \(cell(table.values("train_loss")[last], 4))"
        if hasValidation { lossText += ", validation \(cell(table.values("val_loss")[last], 4))" }
        rows.append(("Last loss", lossText))
        if hasValidation {
            rows.append(("Last validation Dice / IoU",
                         "\(cell(table.values("val_dice")[last], 3)) / \(cell(table.values("val_iou")[last], 3))"))
            if let accuracy = table.values("val_accuracy")[last] {
                rows.append(("Last validation accuracy", fixed(accuracy, 3)))
            }
        }
        let speeds = table.values("images_per_second").compactMap { $0 }.filter(\.isFinite)
        if !speeds.isEmpty {
            let mean = speeds.reduce(0, +) / Double(speeds.count)
            var text = "\(fixed(mean, 1)) images/s (mean of \(speeds.count) epoch\(speeds.count == 1 ? "" : "s")"
            if speeds.count > 1 { text += "; \(fixed(speeds.min()!, 1))–\(fixed(speeds.max()!, 1))" }
            rows.append(("Throughput", text + ")"))
        }
        if let seconds = facts.seconds {
            var text = durationText(seconds)
            if let trained = facts.epochsTrained, trained != epochs.count {
                text += " (the last invocation, \(trained) epoch\(trained == 1 ? "" : "s"))"
            }
            rows.append(("Wall time", text))
        } else {
            let sum = table.values("seconds").compactMap { $0 }.filter(\.isFinite).reduce(0, +)
            if sum > 0 { rows.append(("Wall time", durationText(sum) + " (sum of the epochs' times)")) }
        }
        if let ranks = facts.ranks {
            var text = "\(ranks) rank\(ranks == 1 ? "" : "s")"
            if let threads = facts.threadsPerRank { text += " × \(threads) thread\(threads == 1 ? "" : "s")" }
            rows.append(("Ranks × threads", text))
        }
        if let parameters = facts.parameters { rows.append(("Parameters", grouped(parameters))) }
        let rates = table.values("lr").compactMap { $0 }
        if let first = rates.first, let lastRate = rates.last {
            let lo = rates.min()!, hi = rates.max()!
            var text = shortNumber(first)
            if lo != hi { text += " → \(shortNumber(lastRate)) (range \(shortNumber(lo))–\(shortNumber(hi)))" }
            rows.append(("Learning rate", text))
        }
        var html = "<h2 id=\"summary\">Summary</h2>\n<table class=\"summary\">\n"
        for (name, value) in rows {
            html += "<tr><th scope=\"row\">\(htmlEscaped(name))</th><td>\(htmlEscaped(value))</td></tr>\n"
        }
        return html + "</table>\n"
    }

    // MARK: Charts

    private func chartsSection() -> String {
        let best = bestEpoch?.epoch
        var html = "<h2 id=\"curves\">Curves</h2>\n"
        if !hasValidation {
            html += "<p class=\"note\">No validation set (trained with <code>--val-samples 0</code>): no validation "
                + "loss, Dice or IoU, and no best epoch.</p>\n"
        }
        html += "<div class=\"charts\">\n"
        var loss = [Series(key: "train_loss", label: "train loss", colour: "#1f77b4", values: table.values("train_loss"))]
        if hasValidation {
            loss.append(Series(key: "val_loss", label: "validation loss", colour: "#ff7f0e", values: table.values("val_loss")))
        }
        html += Chart(id: "loss", title: "Loss", yTitle: "loss", epochs: table.epochs, series: loss,
                      best: best, allowLog: false).figure()
        if hasValidation {
            html += Chart(id: "dice-iou", title: "Validation Dice and IoU", yTitle: "score", epochs: table.epochs,
                          series: [Series(key: "val_dice", label: "Dice", colour: "#2ca02c", values: table.values("val_dice")),
                                   Series(key: "val_iou", label: "IoU", colour: "#9467bd", values: table.values("val_iou"))],
                          best: best, allowLog: false, unitInterval: true).figure()
        }
        // Multi-class runs: each class's validation IoU (a class never predicted shows as a flat 0).
        let perClass = table.columnNames.filter { $0.hasPrefix("val_iou_") }
        if hasValidation && !perClass.isEmpty {
            let series = perClass.enumerated().map { i, key in
                Series(key: key, label: "IoU " + key.dropFirst(8), colour: ReportPage.palette[i % ReportPage.palette.count],
                       values: table.values(key))
            }
            html += Chart(id: "iou-per-class", title: "Validation IoU per class", yTitle: "IoU", epochs: table.epochs,
                          series: series, best: best, allowLog: false, unitInterval: true).figure()
        }
        if table.columns["lr"] != nil {
            html += Chart(id: "lr", title: "Learning rate", yTitle: "learning rate", epochs: table.epochs,
                          series: [Series(key: "lr", label: "learning rate", colour: "#d62728", values: table.values("lr"))],
                          best: best, allowLog: true).figure()
        }
        return html + "</div>\n" + confusionTable()
    }

    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                          "#bcbd22", "#17becf"]

    /// The best epoch's validation confusion matrix: pixels per true class (rows) and predicted
    /// class (columns), each cell shaded by its share of the row (recall on the diagonal).
    private func confusionTable() -> String {
        guard let c = facts.confusion else { return "" }
        var html = "<h3 id=\"confusion\">Confusion matrix, validation of epoch \(c.epoch) (the best)</h3>\n"
            + "<table class=\"epochs confusion\">\n<tr><th>true \\ predicted</th>"
            + c.classNames.map { "<th>\(htmlEscaped($0))</th>" }.joined() + "<th>recall</th></tr>\n"
        for (t, row) in c.matrix.enumerated() {
            let total = row.reduce(0, +)
            html += "<tr><th>\(htmlEscaped(c.classNames[t]))</th>"
            for value in row {
                let share = total > 0 ? value / total : 0
                html += "<td style=\"background: rgba(31, 119, 180, \(fixed(0.6 * share, 3)))\">\(grouped(Int(value)))</td>"
            }
            html += "<td>\(total > 0 ? fixed(row[t] / total, 3) : "—")</td></tr>\n"
        }
        return html + "</table>\n"
    }

    // MARK: Samples

    private func samplesSection() -> String {
        var html = "<h2 id=\"samples\">Sample predictions</h2>\n"
        guard let newest = samples.last else {
            return html + "<p class=\"note\">No sample grids in <code>\(htmlEscaped(runDirectory))/samples/</code> "
                + "(they are written after each epoch when there is a validation set).</p>\n"
        }
        html += "<p>Each row is one fixed validation image: the image, the true mask, the predicted mask.</p>\n"
        html += "<div class=\"samples\">\n"
        var shown = [(newest, "epoch \(newest.epoch) (newest)")]
        if let best = bestEpoch?.epoch, best != newest.epoch, let grid = samples.first(where: { $0.epoch == best }) {
            shown.append((grid, "epoch \(best) (best)"))
        }
        for (grid, caption) in shown {
            let src = linkPrefix + "samples/" + percentEncoded(grid.file)
            var size = ""
            var pixelated = ""
            if let info = try? ImageFile.info(runDirectory + "/samples/" + grid.file), case let (w, h) = (info.width, info.height) {
                let scale = max(1, min(8, 768 / w))  // large enough to judge: about 768 px wide
                size = " width=\"\(w * scale)\" height=\"\(h * scale)\""
                if scale > 1 { pixelated = " class=\"pixelated\"" }
            }
            html += "<figure><img src=\"\(htmlEscaped(src))\"\(size)\(pixelated) alt=\"sample predictions, "
                + "\(htmlEscaped(caption))\"/><figcaption>\(htmlEscaped(caption)): image (predicted outline in yellow) | truth | prediction"
                + "</figcaption></figure>\n"
        }
        html += "</div>\n"
        if samples.count > 1 {
            html += "<p>Every epoch's grid:</p>\n<ul class=\"epoch-links\">\n"
            for grid in samples {
                let href = linkPrefix + "samples/" + percentEncoded(grid.file)
                html += "<li><a href=\"\(htmlEscaped(href))\">epoch \(grid.epoch)</a></li>\n"
            }
            html += "</ul>\n"
        }
        return html
    }

    // MARK: Configuration

    private func configurationSection() -> String {
        var html = "<h2 id=\"configuration\">Configuration</h2>\n"
        guard let arguments = facts.arguments else {
            return html + "<p class=\"note\">The command line is unknown (no summary.json or checkpoints/last/state.json).</p>\n"
        }
        // One unbreakable span per argument: lines wrap between arguments only.
        let line = (["segtrain"] + arguments).map { "<span>\(htmlEscaped(shellQuoted($0)))</span>" }.joined(separator: " ")
        html += "<pre class=\"command\">\(line)</pre>\n"
        // The flags as a table: "--name value" and "--flag".
        var pairs: [(String, String)] = []
        var i = arguments.first?.hasPrefix("-") == false ? 1 : 0  // the subcommand
        while i < arguments.count {
            let a = arguments[i]
            if a.hasPrefix("--"), let eq = a.firstIndex(of: "=") {
                pairs.append((String(a[..<eq]), String(a[a.index(after: eq)...])))
            } else if a.hasPrefix("--"), i + 1 < arguments.count, !arguments[i + 1].hasPrefix("--") {
                pairs.append((a, arguments[i + 1]))
                i += 1
            } else {
                pairs.append((a, a.hasPrefix("--") ? "on" : ""))
            }
            i += 1
        }
        if !pairs.isEmpty {
            html += "<table class=\"summary flags\">\n"
            for (name, value) in pairs {
                html += "<tr><th scope=\"row\"><code>\(htmlEscaped(name))</code></th><td><code>\(htmlEscaped(value))</code></td></tr>\n"
            }
            html += "</table>\n<p>Flags not listed have their defaults (<code>segtrain train --help</code>).</p>\n"
        }
        return html
    }

    // MARK: Epochs

    private func epochsSection() -> String {
        let columns: [(key: String, title: String, digits: Int)] = [
            ("train_loss", "train loss", 4), ("val_loss", "val loss", 4), ("val_accuracy", "accuracy", 3),
            ("val_precision", "precision", 3), ("val_recall", "recall", 3), ("val_dice", "Dice", 3),
            ("val_iou", "IoU", 3), ("lr", "lr", -1), ("images_per_second", "images/s", 1), ("seconds", "seconds", 2),
        ].filter { column in table.values(column.key).contains { $0 != nil } }
        let best = bestEpoch?.epoch
        var html = "<h2 id=\"epochs\">Epochs</h2>\n<details\(table.epochs.count <= 30 ? " open=\"open\"" : "")>"
            + "<summary>metrics.csv, \(table.epochs.count) row\(table.epochs.count == 1 ? "" : "s")</summary>\n"
            + "<table class=\"epochs\">\n<tr><th>epoch</th>"
        for column in columns { html += "<th>\(htmlEscaped(column.title))</th>" }
        html += "</tr>\n"
        for (row, epoch) in table.epochs.enumerated() {
            html += epoch == best ? "<tr class=\"best\" title=\"best epoch\">" : "<tr>"
            html += "<td>\(epoch)</td>"
            for column in columns {
                let value = table.values(column.key)[row]
                let text = column.digits < 0 ? value.map(shortNumber) ?? "—" : cell(value, column.digits)
                html += "<td>\(htmlEscaped(text))</td>"
            }
            html += "</tr>\n"
        }
        return html + "</table>\n</details>\n"
    }

    // MARK: Files

    private func filesSection() -> String {
        let fm = FileManager.default
        var items: [(path: String, what: String)] = [("metrics.csv", "every epoch's metrics")]
        for (path, what) in [("summary.json", "the run at a glance"), ("model.safetensors", "the trained weights"),
                             ("checkpoints/last/state.json", "the last checkpoint"),
                             ("checkpoints/best/state.json", "the best checkpoint (lowest validation loss)")]
        where fm.fileExists(atPath: runDirectory + "/" + path) {
            var text = what
            if let attributes = try? fm.attributesOfItem(atPath: runDirectory + "/" + path),
               let size = attributes[.size] as? Int, path.hasSuffix(".safetensors") {
                text += ", \(grouped(size)) bytes"
            }
            items.append((path, text))
        }
        var html = "<h2 id=\"files\">Files</h2>\n<ul>\n"
        for item in items {
            let href = linkPrefix + item.path.split(separator: "/").map { percentEncoded(String($0)) }.joined(separator: "/")
            html += "<li><a href=\"\(htmlEscaped(href))\"><code>\(htmlEscaped(item.path))</code></a>: \(htmlEscaped(item.what))</li>\n"
        }
        return html + "</ul>\n"
    }
}

// MARK: - SVG charts
