import XCTest
import Foundation
#if canImport(FoundationXML)
import FoundationXML  // XMLParser on Linux (libxml2, a prerequisite of the Swift toolchain there)
#endif
import SegTestSupport

/// `segtrain report RUN_DIR`: the page is well-formed XML (parsed strictly here), each chart has one
/// polyline per curve with a point per epoch, drawn in the metrics' order, the best epoch marked,
/// the sample grids linked relatively; bad run folders give one line and exit 1.
final class ReportTests: SegtrainTestCase {
    var folders: [String] = []

    override func tearDown() {
        for folder in folders { try? FileManager.default.removeItem(atPath: folder) }
    }

    func temporaryFolder(_ name: String) -> String {
        let path = NSTemporaryDirectory() + "segtrain-report-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: path)
        folders.append(path)
        return path
    }

    /// A tiny 3-epoch training run into a new folder.
    func train(valSamples: Int, _ name: String) throws -> String {
        let out = temporaryFolder(name)
        let r = try segtrain(["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--epochs", "3",
                              "--train-samples", "16", "--val-samples", "\(valSamples)", "--batch-size", "4",
                              "--threads", "2", "--out", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        return out
    }

    func report(_ arguments: [String]) throws -> Element {
        let r = try segtrain(["report"] + arguments)
        XCTAssertEqual(r.status, 0, r.stderr)
        let path = arguments.count >= 3 ? arguments[2] : arguments[0] + "/report.html"
        XCTAssertEqual(r.stdout, "report: \(path)\n")
        let data = try XCTUnwrap(FileManager.default.contents(atPath: path), "no \(path)")
        let text = String(decoding: data, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("<!DOCTYPE html>\n<html"), String(text.prefix(80)))
        for forbidden in ["http://", "https://", "<script", "//cdn", "url("] {
            XCTAssertFalse(text.contains(forbidden), "the page must be self-contained: it contains \(forbidden)")
        }
        return try Element.parse(data)
    }

    /// metrics.csv's column `name` (nil: empty).
    func column(_ run: String, _ name: String) throws -> [Double?] {
        let lines = try String(contentsOfFile: run + "/metrics.csv", encoding: .utf8).split(separator: "\n")
        let header = lines[0].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let index = try XCTUnwrap(header.firstIndex(of: name))
        return lines.dropFirst().map { line in
            let field = line.split(separator: ",", omittingEmptySubsequences: false)[index]
            return field.isEmpty ? nil : Double(field)
        }
    }

    func chart(_ page: Element, _ id: String) -> Element? {
        page.all("svg").first { $0.attributes["data-chart"] == id }
    }

    /// The polylines of a chart, by series.
    func polylines(_ chart: Element) -> [String: [Element]] {
        Dictionary(grouping: chart.all("polyline"), by: { $0.attributes["data-series"] ?? "" })
    }

    /// Checks that a polyline has one point per value, x increasing evenly with the epoch and y
    /// ordered like the values (larger = higher up = smaller y). Returns the points.
    @discardableResult
    func checkCurve(_ line: Element, values: [Double], epochs: [Int], _ what: String,
                    file: StaticString = #filePath, lineNumber: UInt = #line) throws -> [(x: Double, y: Double)] {
        let points = line.points
        XCTAssertEqual(points.count, values.count, "\(what): points \(line.attributes["points"] ?? "")",
                       file: file, line: lineNumber)
        XCTAssertEqual(line.attributes["data-epochs"], epochs.map(String.init).joined(separator: " "), what,
                       file: file, line: lineNumber)
        guard points.count == values.count, points.count >= 2 else { return points }
        let dx = (points[1].x - points[0].x) / Double(epochs[1] - epochs[0])
        XCTAssertGreaterThan(dx, 0, what, file: file, line: lineNumber)
        for i in 1..<points.count {
            XCTAssertEqual(points[i].x - points[0].x, dx * Double(epochs[i] - epochs[0]), accuracy: 0.02,
                           "\(what): x of epoch \(epochs[i])", file: file, line: lineNumber)
        }
        let range = (values.max()! - values.min()!)
        for i in 0..<values.count {
            for j in 0..<values.count where values[i] > values[j] {
                let message = "\(what): value \(values[i]) (epoch \(epochs[i])) > \(values[j]) (epoch \(epochs[j])) "
                    + "must be drawn higher: y \(points[i].y) vs \(points[j].y)"
                if (values[i] - values[j]) > 1e-3 * range {
                    XCTAssertLessThan(points[i].y, points[j].y, message, file: file, line: lineNumber)
                } else {
                    XCTAssertLessThanOrEqual(points[i].y, points[j].y + 0.01, message, file: file, line: lineNumber)
                }
            }
        }
        return points
    }

    func testReportOfATrainingRun() throws {
        let runFolder = try train(valSamples: 4, "run")
        let page = try report([runFolder])
        XCTAssertEqual(page.name, "html")
        XCTAssertTrue(page.first("title")?.text.contains(runFolder) ?? false, page.first("title")?.text ?? "no title")

        let epochs = [1, 2, 3]
        let trainLoss = try column(runFolder, "train_loss").map { try XCTUnwrap($0) }
        let valLoss = try column(runFolder, "val_loss").map { try XCTUnwrap($0) }
        let bestEpoch = epochs[valLoss.firstIndex(of: valLoss.min()!)!]

        let expected: [(chart: String, series: [(String, [Double])])] = [
            ("loss", [("train_loss", trainLoss), ("val_loss", valLoss)]),
            ("dice-iou", [("val_dice", try column(runFolder, "val_dice").map { try XCTUnwrap($0) }),
                          ("val_iou", try column(runFolder, "val_iou").map { try XCTUnwrap($0) })]),
            ("lr", [("lr", try column(runFolder, "lr").map { try XCTUnwrap($0) })]),
        ]
        XCTAssertEqual(page.all("svg").compactMap { $0.attributes["data-chart"] }, expected.map(\.chart))
        for (id, series) in expected {
            let svg = try XCTUnwrap(chart(page, id), "no chart \(id)")
            let lines = polylines(svg)
            XCTAssertEqual(Set(lines.keys), Set(series.map(\.0)), "\(id): one polyline per curve")
            XCTAssertEqual(svg.all("polyline").count, series.count, "\(id): one polyline per curve")
            var bestX: Double?
            for (name, values) in series {
                let line = try XCTUnwrap(lines[name]?.first)
                let points = try checkCurve(line, values: values, epochs: epochs, "\(id)/\(name)")
                if points.count == 3 { bestX = points[bestEpoch - 1].x }
            }
            // Axes with tick labels, a legend naming every curve, the best-epoch marker at its x.
            XCTAssertGreaterThanOrEqual(svg.all("text").count, 2 + 3 + 2, "\(id): axis titles and tick labels")
            let legend = try XCTUnwrap(svg.all("g").first { $0.attributes["class"] == "legend" }, "\(id): no legend")
            XCTAssertEqual(legend.all("text").count, series.count + 1, "\(id): legend \(legend.text)")
            let markers = svg.all("line").filter { $0.attributes["data-best-epoch"] != nil }
            XCTAssertEqual(markers.count, 1, "\(id): one best-epoch marker")
            XCTAssertEqual(markers.first?.attributes["data-best-epoch"], "\(bestEpoch)")
            let x1 = try XCTUnwrap(markers.first?.attributes["x1"].flatMap(Double.init))
            XCTAssertEqual(x1, try XCTUnwrap(bestX), accuracy: 0.01, "\(id): the marker is at the best epoch")
        }

        // The summary names the best epoch; the command line is there.
        let summary = try XCTUnwrap(page.all("table").first { $0.attributes["class"] == "summary" })
        XCTAssertTrue(summary.text.contains("Best epoch\(bestEpoch) (validation loss"), summary.text)
        XCTAssertTrue(page.all("pre").contains { $0.text.hasPrefix("segtrain train --image-size 16") })

        // Sample grids: relative links to files that exist (the newest is shown).
        let sources = page.all("img").compactMap { $0.attributes["src"] }
        XCTAssertTrue(sources.contains("samples/epoch-003.png"), "\(sources)")
        let links = page.all("a").compactMap { $0.attributes["href"] }.filter { $0.hasPrefix("samples/") }
        XCTAssertEqual(links, ["samples/epoch-001.png", "samples/epoch-002.png", "samples/epoch-003.png"])
        for src in sources + links {
            XCTAssertFalse(src.hasPrefix("/") || src.contains(":"), "not relative: \(src)")
            XCTAssertTrue(FileManager.default.fileExists(atPath: runFolder + "/" + src), src)
        }

        // --out elsewhere: the links lead back into the run folder.
        let elsewhere = temporaryFolder("elsewhere")
        try FileManager.default.createDirectory(atPath: elsewhere + "/sub", withIntermediateDirectories: true)
        let other = try report([runFolder, "--out", elsewhere + "/sub/page.html"])
        let otherSources = other.all("img").compactMap { $0.attributes["src"] }
        XCTAssertFalse(otherSources.isEmpty)
        for src in otherSources {
            XCTAssertTrue(src.hasPrefix("../../"), src)
            XCTAssertTrue(FileManager.default.fileExists(atPath: elsewhere + "/sub/" + src), src)
        }
    }

    func testWithoutValidationOnlyTheTrainCurve() throws {
        let runFolder = try train(valSamples: 0, "noval")
        let page = try report([runFolder])
        let loss = try XCTUnwrap(chart(page, "loss"))
        XCTAssertEqual(Array(polylines(loss).keys), ["train_loss"])
        try checkCurve(try XCTUnwrap(polylines(loss)["train_loss"]?.first),
                       values: try column(runFolder, "train_loss").map { try XCTUnwrap($0) }, epochs: [1, 2, 3], "train_loss")
        XCTAssertNil(chart(page, "dice-iou"))
        XCTAssertNotNil(chart(page, "lr"))
        XCTAssertTrue(page.all("line").allSatisfy { $0.attributes["data-best-epoch"] == nil }, "no best epoch")
        XCTAssertTrue(page.all("p").contains { $0.text.contains("No validation set") })
        XCTAssertTrue(page.all("img").isEmpty)
    }

    func testMissingValuesBreakTheLineAndStringsAreEscaped() throws {
        let runFolder = temporaryFolder("nan")
        try FileManager.default.createDirectory(atPath: runFolder, withIntermediateDirectories: true)
        let csv = """
            epoch,train_loss,val_loss,val_accuracy,val_precision,val_recall,val_dice,val_iou,lr,images_per_second,seconds
            1,0.9,0.95,0.5,0.5,0.5,0.1,0.05,0.001,100,1
            2,0.8,0.85,0.6,0.5,0.5,0.2,0.1,0.001,100,1
            3,nan,0.7,0.7,0.5,0.5,0.3,0.2,0.0005,100,1
            4,0.6,,,,,,,0.0005,100,1
            5,0.5,0.75,0.8,0.5,0.5,0.4,0.3,0.0001,100,1

            """
        try csv.write(toFile: runFolder + "/metrics.csv", atomically: true, encoding: .utf8)
        let hostile = "<script>alert('x & y')</script>\"\u{1}"
        let summary: [String: Any] = ["arguments": ["train", "--out", hostile], "ranks": 2, "threads_per_rank": 3,
                                      "parameters": 1234567, "seconds": 75.5, "epochs_trained": 5]
        try JSONSerialization.data(withJSONObject: summary).write(to: URL(fileURLWithPath: runFolder + "/summary.json"))
        let page = try report([runFolder])

        let loss = polylines(try XCTUnwrap(chart(page, "loss")))
        XCTAssertEqual(loss["train_loss"]?.map { $0.attributes["data-epochs"] ?? "" }, ["1 2", "4 5"])
        XCTAssertEqual(loss["val_loss"]?.map { $0.attributes["data-epochs"] ?? "" }, ["1 2 3", "5"])
        XCTAssertEqual(loss["val_loss"]?.last?.points.count, 1)
        let dice = polylines(try XCTUnwrap(chart(page, "dice-iou")))
        XCTAssertEqual(dice["val_dice"]?.map { $0.attributes["data-epochs"] ?? "" }, ["1 2 3", "5"])
        let best = try XCTUnwrap(chart(page, "loss")?.all("line").first { $0.attributes["data-best-epoch"] != nil })
        XCTAssertEqual(best.attributes["data-best-epoch"], "3")
        // The lr spans a factor of 10: a log axis, still one polyline of five points.
        let lr = polylines(try XCTUnwrap(chart(page, "lr")))
        try checkCurve(try XCTUnwrap(lr["lr"]?.first), values: [0.001, 0.001, 0.0005, 0.0005, 0.0001],
                       epochs: [1, 2, 3, 4, 5], "lr")

        // The hostile argument is text, not markup; the summary uses summary.json.
        XCTAssertTrue(page.all("script").isEmpty)
        let command = try XCTUnwrap(page.all("pre").first)
        XCTAssertTrue(command.text.contains("<script>alert"), command.text)
        let summaryText = page.all("table").first?.text ?? ""
        XCTAssertTrue(summaryText.contains("2 ranks × 3 threads"), summaryText)
        XCTAssertTrue(summaryText.contains("1,234,567"), summaryText)
        XCTAssertTrue(summaryText.contains("1 min 16 s"), summaryText)
    }

    /// Diverged runs: huge and nearly equal huge values render (no crash, no endless tick loop),
    /// and an absurd epoch number is refused with one line.
    func testExtremeValuesRenderAndAbsurdEpochsAreRefused() throws {
        let runFolder = temporaryFolder("extreme")
        try FileManager.default.createDirectory(atPath: runFolder, withIntermediateDirectories: true)
        let csv = """
            epoch,train_loss,val_loss,val_accuracy,val_precision,val_recall,val_dice,val_iou,lr,images_per_second,seconds
            1,1e308,-1e308,0.5,0.5,0.5,0.1,0.05,0.001,100,1
            2,10000000000000000,10000000000000002,0.6,0.5,0.5,0.2,0.1,0.001,100,1

            """
        try csv.write(toFile: runFolder + "/metrics.csv", atomically: true, encoding: .utf8)
        _ = try report([runFolder])
        try "epoch,train_loss\n100000000000000000,0.5\n".write(toFile: runFolder + "/metrics.csv", atomically: true, encoding: .utf8)
        let r = try segtrain(["report", runFolder])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("is not a whole number in 1...1000000000"), r.stderr)
    }

    func testBadRunFolderGivesOneLine() throws {
        let folder = temporaryFolder("bad")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let cases: [(String?, String)] = [
            (nil, "No such file"),
            ("", "empty"),
            ("time,loss\n1,2\n", "not a segtrain metrics file"),
            ("epoch,train_loss,val_loss\n1,0.5,0.4\n2,0.4\n", "line 3"),
            ("epoch,train_loss,val_loss\n1,0.5,abc\n", "val_loss 'abc' is not a number"),
            ("epoch,train_loss\n2,0.5\n1,0.4\n", "epoch 1 comes after epoch 2"),
            ("epoch,train_loss\n", "no epochs"),
            ("epoch,train_loss\n1,\u{FF}\n", "train_loss '\u{FF}' is not a number"),
        ]
        for (contents, reason) in cases {
            let path = folder + "/metrics.csv"
            try? FileManager.default.removeItem(atPath: path)
            if let contents { try Data(contents.utf8).write(to: URL(fileURLWithPath: path)) }
            let r = try segtrain(["report", folder])
            XCTAssertEqual(r.status, 1, "\(contents ?? "no file"): \(r.stdout)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            XCTAssertTrue(r.stderr.hasPrefix("segtrain: error: \(folder)/metrics.csv: "), r.stderr)
            XCTAssertTrue(r.stderr.contains(reason), "\(reason): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/report.html"))
        }
        try Data([0x31, 0xFF]).write(to: URL(fileURLWithPath: folder + "/metrics.csv"))
        XCTAssertTrue(try segtrain(["report", folder]).stderr.contains("not UTF-8"))

        let missing = folder + "/no-such-run"
        let r = try segtrain(["report", missing])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "segtrain: error: \(missing)/metrics.csv: cannot read: the folder \(missing) does not exist\n")
    }
}

/// An element of the page, parsed strictly as XML.
final class Element {
    let name: String
    let attributes: [String: String]
    var children: [Element] = []
    var ownText = ""

    init(name: String, attributes: [String: String]) {
        self.name = name
        self.attributes = attributes
    }

    /// Every descendant named `name`, in document order.
    func all(_ name: String) -> [Element] {
        children.flatMap { ($0.name == name ? [$0] : []) + $0.all(name) }
    }

    func first(_ name: String) -> Element? { all(name).first }

    /// The text of the element and its descendants.
    var text: String { ownText + children.map(\.text).joined() }

    /// A polyline's points.
    var points: [(x: Double, y: Double)] {
        (attributes["points"] ?? "").split(separator: " ").compactMap { pair in
            let xy = pair.split(separator: ",").compactMap { Double($0) }
            return xy.count == 2 ? (xy[0], xy[1]) : nil
        }
    }

    static func parse(_ data: Data) throws -> Element {
        let builder = Builder()
        let parser = XMLParser(data: data)
        parser.delegate = builder
        guard parser.parse(), let root = builder.root else {
            throw ParseError(message: "\(parser.parserError.map { "\($0)" } ?? "no root element") "
                             + "at line \(parser.lineNumber), column \(parser.columnNumber)")
        }
        return root
    }

    struct ParseError: Error, CustomStringConvertible {
        let message: String
        var description: String { "report.html is not well-formed: \(message)" }
    }

    private final class Builder: NSObject, XMLParserDelegate {
        var root: Element?
        var stack: [Element] = []

        func parser(_ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?,
                    qualifiedName: String?, attributes: [String: String] = [:]) {
            let element = Element(name: elementName, attributes: attributes)
            if let parent = stack.last { parent.children.append(element) } else { root = element }
            stack.append(element)
        }

        func parser(_ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?,
                    qualifiedName: String?) {
            stack.removeLast()
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) {
            // Text is kept in place: a child element's text follows the text before it.
            if let current = stack.last {
                if let last = current.children.last, last.name == "#text" {
                    last.ownText += string
                } else {
                    let node = Element(name: "#text", attributes: [:])
                    node.ownText = string
                    current.children.append(node)
                }
            }
        }
    }
}
